//! Hostile: loops forever. Must be stopped by fuel or by the deadline.

use hooklane_sdk::{Action, Campaign, Error, Event};

struct Spin;

impl Campaign for Spin {
    fn handle(_event: Event) -> Result<Vec<Action>, Error> {
        let mut n = 0u64;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

hooklane_sdk::export!(Spin);
