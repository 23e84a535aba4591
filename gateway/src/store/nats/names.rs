//! Names on the NATS side: every stream, consumer, bucket and subject the
//! store uses derives from the configured prefix, and campaign, destination,
//! namespace and key names become single tokens that are valid in all of
//! them.

/// `name` as one token valid in a subject, a consumer name, a bucket name
/// and a KV key: ASCII letters, digits and `-` stay; every other byte,
/// `_` included, becomes `_` and two hex digits, so the mapping is one to
/// one and reversible. The empty name is `_` alone.
pub(crate) fn token(name: &str) -> String {
    if name.is_empty() {
        return "_".into();
    }
    let mut token = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            token.push(byte as char);
        } else {
            token.push_str(&format!("_{byte:02X}"));
        }
    }
    token
}

/// The name [`token`] made `token` from; `None` for what it never makes.
pub(crate) fn untoken(token: &str) -> Option<String> {
    if token == "_" {
        return Some(String::new());
    }
    let mut bytes = Vec::with_capacity(token.len());
    let mut rest = token.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'_' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(byte);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// Streams, subjects and buckets under one prefix.
#[derive(Debug, Clone)]
pub(super) struct Names {
    pub prefix: String,
}

impl Names {
    /// The work-queue stream of campaigns' events.
    pub fn events_stream(&self) -> String {
        format!("{}_events", self.prefix)
    }

    /// The work-queue stream of deliveries (the outbox).
    pub fn outbox_stream(&self) -> String {
        format!("{}_outbox", self.prefix)
    }

    /// The stream of dead letters.
    pub fn dead_stream(&self) -> String {
        format!("{}_dead", self.prefix)
    }

    pub fn dead_subject(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// The KV bucket of dedup records.
    pub fn dedup_bucket(&self) -> String {
        format!("{}_dedup", self.prefix)
    }

    /// The KV bucket of a plugin namespace.
    pub fn kv_bucket(&self, namespace: &str) -> String {
        format!("{}_kv_{}", self.prefix, token(namespace))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_valid_everywhere_and_reversible() {
        for name in [
            "",
            "_",
            "shop",
            "a.b",
            "sms gateway",
            "x>*",
            "naïve",
            "a_5F",
        ] {
            let token = token(name);
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{token}"
            );
            assert_eq!(untoken(&token).as_deref(), Some(name));
        }
        assert_ne!(token("a_5F"), token("a_"));
        assert_eq!(untoken("_Z"), None);
    }
}
