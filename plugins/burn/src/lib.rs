//! `burn`: a CPU-heavy campaign for load benchmarks — spends `iterations`
//! (a setting; default 10 million) rounds of arithmetic, the stand-in for a
//! segmentation model scoring many customer variables; then, if the setting
//! `then_fetch` names a URL, looks the customer up there (its answer is the
//! response's body) — a model that also reads an external source.

use hooklane_sdk::{config, http, Action, Campaign, Error, Event};

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
        let body = match config::get("then_fetch") {
            Some(url) => http::get(&url)?.body,
            None => x.to_string().into_bytes(),
        };
        Ok(vec![Action::respond(200, vec![], body)])
    }
}

hooklane_sdk::export!(Burn);
