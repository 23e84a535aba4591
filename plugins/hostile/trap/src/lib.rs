//! Hostile: executes a wasm `unreachable` instruction directly, without a
//! panic message: a bare trap.

use hooklane_sdk::{Action, Campaign, Error, Event};

struct Trap;

impl Campaign for Trap {
    fn handle(_event: Event) -> Result<Vec<Action>, Error> {
        core::arch::wasm32::unreachable()
    }
}

hooklane_sdk::export!(Trap);
