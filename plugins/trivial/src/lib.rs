//! `trivial`: answers `ok` and does nothing else; the baseline for runtime
//! and load benchmarks.

use hooklane_sdk::{Action, Campaign, Error, Event};

struct Trivial;

impl Campaign for Trivial {
    fn handle(_event: Event) -> Result<Vec<Action>, Error> {
        Ok(vec![Action::respond(200, vec![], "ok")])
    }
}

hooklane_sdk::export!(Trivial);
