//! Checking and carrying out what a plugin asked for: the answer to the
//! caller, deliveries to destinations, key-value writes, emitted events.
//! Must never run plugins itself (emits go back through the lanes).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;

use crate::config::{CampaignConfig, DestinationConfig};
use crate::event::{Action, Headers};
use crate::runtime::PluginFailure;
use crate::store::MAX_KEY_BYTES;

/// Refuse actions the campaign's config does not allow, before any of them
/// is carried out.
pub fn check(
    campaign: &CampaignConfig,
    name: &str,
    actions: &[Action],
) -> Result<(), PluginFailure> {
    let bad = |what: String| Err(PluginFailure::BadOutput(what));
    let mut responses = 0;
    for action in actions {
        match action {
            Action::Respond { status, .. } => {
                responses += 1;
                if responses > 1 {
                    return bad("more than one respond action".into());
                }
                if !(100..=599).contains(status) {
                    return bad(format!(
                        "respond with status {status}, not a valid HTTP status"
                    ));
                }
            }
            Action::Deliver { destination, .. } => {
                if !campaign.destinations.contains(destination) {
                    return bad(format!(
                        "deliver to `{destination}`, which is not in campaigns.{name}.destinations"
                    ));
                }
            }
            Action::Emit {
                campaign: target, ..
            } => {
                if !campaign.emits.contains(target) {
                    return bad(format!(
                        "emit to `{target}`, which is not in campaigns.{name}.emits"
                    ));
                }
            }
            Action::KvSet { key, .. } | Action::KvDelete { key } => {
                if key.is_empty() || key.len() > MAX_KEY_BYTES {
                    return bad(format!(
                        "kv key of {} bytes (1-{MAX_KEY_BYTES} allowed)",
                        key.len()
                    ));
                }
            }
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("destination `{0}` is not configured")]
    Unknown(String),
    #[error("destination `{destination}` answered {status}")]
    Rejected { destination: String, status: u16 },
    #[error("destination `{destination}` could not be reached: {reason}")]
    Unreachable { destination: String, reason: String },
}

/// The configured destinations and the client that posts to them.
pub struct Destinations {
    client: reqwest::Client,
    targets: HashMap<String, DestinationConfig>,
}

impl Destinations {
    pub fn new(client: reqwest::Client, targets: HashMap<String, DestinationConfig>) -> Self {
        Self { client, targets }
    }

    /// POST `body` to the destination `name` (one attempt; the durable
    /// outbox with retries comes with the delivery issue).
    pub async fn deliver(
        &self,
        name: &str,
        headers: &Headers,
        body: Bytes,
    ) -> Result<u16, DeliveryError> {
        let target = self
            .targets
            .get(name)
            .ok_or_else(|| DeliveryError::Unknown(name.into()))?;
        let mut request = self
            .client
            .post(target.url.clone())
            .timeout(Duration::from_millis(target.timeout_ms))
            .body(body);
        for (header, value) in headers {
            request = request.header(header, value);
        }
        let response = request
            .send()
            .await
            .map_err(|e| DeliveryError::Unreachable {
                destination: name.into(),
                reason: e.to_string(),
            })?;
        let status = response.status().as_u16();
        if response.status().is_success() {
            Ok(status)
        } else {
            Err(DeliveryError::Rejected {
                destination: name.into(),
                status,
            })
        }
    }
}
