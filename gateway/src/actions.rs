//! Checking what a plugin asked for against what its campaign's config
//! allows, before any of it is carried out (by the gateway's commit and by
//! [`crate::delivery`]). Must never run plugins.

use crate::config::CampaignConfig;
use crate::event::Action;
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
