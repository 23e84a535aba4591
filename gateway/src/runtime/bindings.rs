//! Host bindings generated from `wit/plugin.wit`, and the conversions between
//! their types and the gateway's own [`Event`]/[`Action`].

use bytes::Bytes;

use super::PluginFailure;
use crate::event as gateway;

wasmtime::component::bindgen!({
    world: "campaign",
    path: "../wit",
    imports: { default: async },
    exports: { default: async },
});

use hooklane::plugin::types as wit;

pub fn to_wit_event(event: &gateway::Event) -> wit::Event {
    wit::Event {
        id: event.id.clone(),
        source: event.source.clone(),
        received_at: event.received_at_ms,
        headers: event.headers.clone(),
        body: event.body.to_vec(),
        content_type: event.content_type.clone(),
    }
}

/// Convert the plugin's actions, refusing output larger than `max_bytes`.
pub fn from_wit_actions(
    actions: Vec<wit::Action>,
    max_bytes: usize,
) -> Result<Vec<gateway::Action>, PluginFailure> {
    let headers_len =
        |h: &[(String, String)]| h.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>();
    let size: usize = actions
        .iter()
        .map(|action| match action {
            wit::Action::Respond(r) => r.body.len() + headers_len(&r.headers),
            wit::Action::Deliver(d) => d.body.len() + headers_len(&d.headers) + d.destination.len(),
            wit::Action::KvSet(w) => w.key.len() + w.value.len(),
            wit::Action::KvDelete(key) => key.len(),
            wit::Action::Emit(e) => e.campaign.len() + e.body.len(),
        })
        .sum();
    if size > max_bytes {
        return Err(PluginFailure::OutputTooLarge {
            bytes: size,
            limit: max_bytes,
        });
    }
    Ok(actions
        .into_iter()
        .map(|action| match action {
            wit::Action::Respond(r) => gateway::Action::Respond {
                status: r.status,
                headers: r.headers,
                body: Bytes::from(r.body),
            },
            wit::Action::Deliver(d) => gateway::Action::Deliver {
                destination: d.destination,
                headers: d.headers,
                body: Bytes::from(d.body),
            },
            wit::Action::KvSet(w) => gateway::Action::KvSet {
                key: w.key,
                value: Bytes::from(w.value),
                ttl_seconds: w.ttl_seconds,
            },
            wit::Action::KvDelete(key) => gateway::Action::KvDelete { key },
            wit::Action::Emit(e) => gateway::Action::Emit {
                campaign: e.campaign,
                body: Bytes::from(e.body),
                content_type: e.content_type,
            },
        })
        .collect())
}
