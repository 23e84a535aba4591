//! Hostile: answers with a 100 MB body. Must be refused as output too large.

use hooklane_sdk::{Action, Campaign, Error, Event};

struct Bloat;

impl Campaign for Bloat {
    fn handle(_event: Event) -> Result<Vec<Action>, Error> {
        Ok(vec![Action::respond(200, vec![], vec![b'x'; 100 << 20])])
    }
}

hooklane_sdk::export!(Bloat);
