//! `revision`: a campaign whose `handle` code changes from build to build,
//! the way an author's does between two deploys — the deploy benchmark's
//! stand-in for a new version. The build's revision number
//! (`HOOKLANE_REVISION` when it is compiled, 0 without) is folded into the
//! scoring arithmetic, so two revisions differ in their machine code, not
//! only in a constant string, while the SDK, serde and std around it stay
//! the same.

use hooklane_sdk::{json, Action, Campaign, Error, Event};
use serde::Deserialize;

const REVISION: u64 = match option_env!("HOOKLANE_REVISION") {
    Some(digits) => parse(digits),
    None => 0,
};

/// `digits` as a number, at compile time (a build with a revision that is
/// not a number does not compile).
const fn parse(digits: &str) -> u64 {
    let digits = digits.as_bytes();
    let mut i = 0;
    let mut n = 0;
    while i < digits.len() {
        assert!(
            digits[i].is_ascii_digit(),
            "HOOKLANE_REVISION is not a number"
        );
        n = n * 10 + (digits[i] - b'0') as u64;
        i += 1;
    }
    n
}

/// What a source posts: a customer and what they looked at.
#[derive(Deserialize)]
struct Visit {
    #[serde(default)]
    customer: String,
    #[serde(default)]
    pages: Vec<String>,
}

struct Revision;

impl Campaign for Revision {
    fn handle(event: Event) -> Result<Vec<Action>, Error> {
        let visit: Visit = event.json()?;
        // Each revision weighs pages its own way: the multiplier and the
        // shift are constants of the build, so the compiler bakes them in.
        let score = visit.pages.iter().fold(REVISION, |score, page| {
            let weight = page.len() as u64 * (REVISION % 13 + 1);
            score.rotate_left((REVISION % 31) as u32 + 1) ^ weight
        });
        let offer = if score % (REVISION % 5 + 2) == 0 {
            "bundle"
        } else {
            "single"
        };
        Ok(vec![Action::respond_json(
            200,
            &json!({
                "revision": REVISION,
                "customer": visit.customer,
                "score": score,
                "offer": offer,
            }),
        )?])
    }
}

hooklane_sdk::export!(Revision);
