//! `login-code` (speed lane, synchronous): a login form posts a phone number;
//! the plugin creates a 6-digit code, keeps it in KV with a TTL, hands it to
//! the `sms` destination and answers `{"status": "sent"}` within its deadline.
//! If the setting `profile_campaign` names a campaign, the slow part — noting
//! the login on the customer's profile — is emitted to it instead of being
//! done here.

use hooklane_sdk::{clock, config, json, Action, Campaign, Error, Event};
use serde::Deserialize;

#[derive(Deserialize)]
struct LoginForm {
    phone: String,
}

/// How long a code stays valid unless `code_ttl_seconds` says otherwise.
const DEFAULT_TTL_SECONDS: u32 = 300;

struct LoginCode;

impl Campaign for LoginCode {
    fn handle(event: Event) -> Result<Vec<Action>, Error> {
        let form: LoginForm = event.json()?;
        let phone = normalise_phone(&form.phone)?;
        let code = six_digit_code()?;
        let ttl = config::get("code_ttl_seconds")
            .and_then(|s| s.parse().ok())
            .unwrap_or(DEFAULT_TTL_SECONDS);
        hooklane_sdk::info!(
            "Issued a login code for a phone ending in {}",
            &phone[phone.len() - 2..]
        );
        let now = clock::now_ms();
        let mut actions = vec![
            Action::kv_set_json(
                &format!("login-code:{phone}"),
                &json!({ "code": code, "issued_at": now }),
                Some(ttl),
            )?,
            Action::deliver_json(
                "sms",
                &json!({ "to": phone, "text": format!("Your login code is {code}"), "code": code }),
            )?,
            Action::respond_json(200, &json!({ "status": "sent", "expires_in": ttl }))?,
        ];
        if let Some(campaign) = config::get("profile_campaign") {
            actions.push(Action::emit_json(
                &campaign,
                &json!({ "customer_id": phone, "attributes": { "last_login_code_at": now } }),
            )?);
        }
        Ok(actions)
    }
}

/// E.164: `+`, then 8 to 15 digits; spaces, dashes and brackets are dropped.
fn normalise_phone(raw: &str) -> Result<String, Error> {
    let digits: String = raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')'))
        .collect();
    let valid = digits.strip_prefix('+').is_some_and(|rest| {
        (8..=15).contains(&rest.len()) && rest.bytes().all(|b| b.is_ascii_digit())
    });
    if valid {
        Ok(digits)
    } else {
        Err(Error::invalid_input(
            "`phone` must be an international number such as +4915112345678",
        ))
    }
}

/// A uniformly random code from 000000 to 999999 (rejection sampling avoids
/// the modulo bias).
fn six_digit_code() -> Result<String, Error> {
    const LIMIT: u32 = u32::MAX - (u32::MAX % 1_000_000);
    loop {
        let n = getrandom::u32().map_err(|e| Error::internal(format!("no randomness: {e}")))?;
        if n < LIMIT {
            return Ok(format!("{:06}", n % 1_000_000));
        }
    }
}

hooklane_sdk::export!(LoginCode);
