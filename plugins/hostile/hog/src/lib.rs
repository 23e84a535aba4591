//! Hostile: tries to allocate 1 GiB. Must be stopped by the memory limit.

use hooklane_sdk::{Action, Campaign, Error, Event};

struct Hog;

impl Campaign for Hog {
    fn handle(_event: Event) -> Result<Vec<Action>, Error> {
        let bomb = vec![1u8; 1 << 30];
        std::hint::black_box(&bomb);
        Ok(vec![])
    }
}

hooklane_sdk::export!(Hog);
