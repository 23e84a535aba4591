//! Hostile: panics. The gateway must report the panic message.

use hooklane_sdk::{Action, Campaign, Error, Event};

struct Panic;

impl Campaign for Panic {
    fn handle(event: Event) -> Result<Vec<Action>, Error> {
        panic!("hostile plugin panicked on purpose for event {}", event.id);
    }
}

hooklane_sdk::export!(Panic);
