//! `abandoned-cart` (segmentation or care lane, asynchronous): a cart that
//! is updated and then left alone gets one reminder. Every `updated` event
//! remembers the cart's latest version in KV and asks to look at the cart
//! again after `remind_after_s` (default 1800) — an emit to this campaign
//! after a delay, which the gateway keeps durably until it is due. When the
//! look comes, a cart still at that version (not updated since, not checked
//! out) gets a reminder delivered to `destination` (default `email`).
//!
//! The shop's event: `{"cart_id": "c-1", "customer": "...", "status":
//! "updated" | "checked_out"}`.

use std::time::Duration;

use hooklane_sdk::{config, kv, later, Action, Campaign, Emission, Error, Event};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    /// The look this campaign asked for, after the delay.
    Check { check: String, version: String },
    /// An event from the shop.
    Cart {
        cart_id: String,
        customer: String,
        status: String,
    },
}

struct AbandonedCart;

impl Campaign for AbandonedCart {
    fn handle(event: Event) -> Result<Vec<Action>, Error> {
        match event.json::<Input>()? {
            Input::Cart {
                cart_id,
                customer,
                status,
            } => {
                let key = format!("cart:{cart_id}");
                if status == "checked_out" {
                    return Ok(vec![Action::kv_set_json(
                        &key,
                        &json!({ "checked_out": true }),
                        None,
                    )?]);
                }
                let remember = json!({ "version": event.id, "customer": customer });
                let look = json!({ "check": cart_id, "version": event.id });
                later::emit_after(
                    Emission {
                        campaign: config::get("self").unwrap_or_else(|| "abandoned-cart".into()),
                        body: serde_json::to_vec(&look)
                            .map_err(|e| Error::internal(e.to_string()))?,
                        content_type: Some("application/json".into()),
                    },
                    Duration::from_secs(remind_after_s()?),
                )?;
                Ok(vec![Action::kv_set_json(&key, &remember, None)?])
            }
            Input::Check { check, version } => {
                let cart: Option<serde_json::Value> = kv::get_json(&format!("cart:{check}"))?;
                let Some(cart) = cart.filter(|c| c["version"] == version.as_str()) else {
                    return Ok(vec![]); // updated since, or checked out
                };
                let destination = config::get("destination").unwrap_or_else(|| "email".into());
                let reminder = json!({ "cart_id": check, "customer": cart["customer"], "reminder": "your cart is waiting" });
                Ok(vec![Action::deliver_json(&destination, &reminder)?])
            }
        }
    }
}

/// The `remind_after_s` setting, default 1800.
fn remind_after_s() -> Result<u64, Error> {
    config::get("remind_after_s").map_or(Ok(1800), |text| {
        text.parse().map_err(|_| {
            Error::internal(format!(
                "setting `remind_after_s` is not a number: `{text}`"
            ))
        })
    })
}

hooklane_sdk::export!(AbandonedCart);
hooklane_sdk::settings!("self", "remind_after_s", "destination");
