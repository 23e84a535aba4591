//! `relay` (care lane): forwards every event, body unchanged, to the
//! destination named by the setting `destination` (default `sink`) — the
//! simplest durable webhook forwarder, and the crash test's witness.

use hooklane_sdk::{config, Action, Campaign, Delivery, Error, Event};

struct Relay;

impl Campaign for Relay {
    fn handle(event: Event) -> Result<Vec<Action>, Error> {
        let destination = config::get("destination").unwrap_or_else(|| "sink".into());
        let mut headers = vec![("hooklane-event-id".to_owned(), event.id.clone())];
        if let Some(content_type) = &event.content_type {
            headers.push(("content-type".to_owned(), content_type.clone()));
        }
        Ok(vec![Action::Deliver(Delivery {
            destination,
            headers,
            body: event.body,
        })])
    }
}

hooklane_sdk::export!(Relay);
