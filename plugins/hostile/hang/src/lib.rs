//! Hostile: calls a host (setting `url`) that never answers. Must be stopped
//! by the fetch timeout without holding a thread.

use hooklane_sdk::{config, http, Action, Campaign, Error, Event};

struct Hang;

impl Campaign for Hang {
    fn handle(_event: Event) -> Result<Vec<Action>, Error> {
        let response = http::get(&config::require("url")?)?;
        Ok(vec![Action::respond(
            response.status,
            vec![],
            response.body,
        )])
    }
}

hooklane_sdk::export!(Hang);
