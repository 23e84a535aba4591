//! `burn`: a CPU-heavy campaign for load benchmarks — spends `iterations`
//! (a setting; default 10 million) rounds of arithmetic, the stand-in for a
//! segmentation model scoring many customer variables.

use hooklane_sdk::{config, Action, Campaign, Error, Event};

struct Burn;

impl Campaign for Burn {
    fn handle(event: Event) -> Result<Vec<Action>, Error> {
        let iterations: u64 = config::get("iterations")
            .and_then(|s| s.parse().ok())
            .unwrap_or(10_000_000);
        // xorshift64: cheap, data-dependent, and not optimised away.
        let mut x = 0x9E37_79B9_7F4A_7C15 ^ event.body.len() as u64;
        for _ in 0..iterations {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        Ok(vec![Action::respond(200, vec![], x.to_string())])
    }
}

hooklane_sdk::export!(Burn);
