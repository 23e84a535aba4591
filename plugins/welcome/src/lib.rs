//! `welcome`: the plugin-sdk tutorial's plugin (plugin-sdk/README.md shows
//! this file verbatim, and a test keeps the two identical).

use hooklane_sdk::{config, json, kv, Action, Campaign, Error, Event};
use serde::Deserialize;

/// What the sign-up form posts.
#[derive(Deserialize)]
struct SignUp {
    email: String,
    name: String,
}

struct Welcome;

impl Campaign for Welcome {
    fn handle(event: Event) -> Result<Vec<Action>, Error> {
        // A body that does not parse becomes `invalid-input`: the caller gets 422.
        let signup: SignUp = event.json()?;
        if !signup.email.contains('@') {
            return Err(Error::invalid_input("`email` is not an email address"));
        }

        // Plugin state lives in the campaign's own key-value namespace.
        let key = format!("welcomed:{}", signup.email);
        if kv::get(&key)?.is_some() {
            hooklane_sdk::info!("Already welcomed, nothing to do");
            return Ok(vec![Action::respond_json(
                200,
                &json!({ "status": "already-welcomed" }),
            )?]);
        }

        // Settings come from the campaign's config, never from the code.
        let discount = config::get("discount_pct").unwrap_or_else(|| "10".into());

        Ok(vec![
            // Applied by the gateway only if this function succeeds.
            Action::kv_set(&key, "1", None),
            // Posted to the destination named `mailer` in the gateway config.
            Action::deliver_json(
                "mailer",
                &json!({
                    "to": signup.email,
                    "subject": format!("Welcome, {}! Here is {discount}% off", signup.name),
                }),
            )?,
            // The answer to the caller (for a synchronous campaign).
            Action::respond_json(
                201,
                &json!({ "status": "welcomed", "discount_pct": discount }),
            )?,
        ])
    }
}

hooklane_sdk::export!(Welcome);
