//! The narrow types that travel between the gateway's stages: an [`Event`]
//! goes into a plugin, a list of [`Action`]s comes out.

use bytes::Bytes;

/// HTTP-style headers: (lower-case name, value) pairs in order.
pub type Headers = Vec<(String, String)>;

/// One webhook (or emitted body) to be handled by one campaign.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// UUIDv7 given by the gateway at ingress.
    pub id: String,
    /// Source name, or `campaign:<name>` for an emitted event.
    pub source: String,
    /// Receipt time, ms since the Unix epoch.
    pub received_at_ms: u64,
    pub headers: Headers,
    pub body: Bytes,
    pub content_type: Option<String>,
}

impl Event {
    /// A new event with a fresh id, received now.
    pub fn new(
        source: String,
        headers: Headers,
        body: Bytes,
        content_type: Option<String>,
    ) -> Self {
        Event {
            id: uuid::Uuid::now_v7().to_string(),
            source,
            received_at_ms: now_ms(),
            headers,
            body,
            content_type,
        }
    }

    /// How many emits led to this event: an emitted event's id is its
    /// parent's with `.<n>` appended, one segment per hop.
    pub fn emit_depth(&self) -> usize {
        self.id.matches('.').count()
    }
}

/// What a plugin asked for, carried out by [`crate::actions`].
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Respond {
        status: u16,
        headers: Headers,
        body: Bytes,
    },
    Deliver {
        destination: String,
        headers: Headers,
        body: Bytes,
    },
    KvSet {
        key: String,
        value: Bytes,
        ttl_seconds: Option<u32>,
    },
    KvDelete {
        key: String,
    },
    Emit {
        campaign: String,
        body: Bytes,
        content_type: Option<String>,
    },
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
