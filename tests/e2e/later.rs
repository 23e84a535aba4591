//! Work for later (WIT 0.1.1): a plugin's emit after a delay is stored with
//! the run's effects, survives a kill -9, and runs only when due; and
//! components built for WIT 0.1.0 keep running.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{care_forwarder_toml, plugin, within, Gateway, Recorder};

fn abandoned_cart_toml(email: &Recorder) -> String {
    format!(
        r#"
[sources.shop]
[campaigns.abandoned-cart]
source = "shop"
lane = "care"
plugin = "{}"
emits = ["abandoned-cart"]
destinations = ["email"]
settings = {{ remind_after_s = "2" }}
[destinations.email]
url = "{}"
"#,
        plugin("abandoned-cart"),
        email.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_emit_survives_a_kill_9_and_reminds_only_abandoned_carts() {
    let mut email = Recorder::start(json!({})).await;
    let config = abandoned_cart_toml(&email);
    let gateway = Gateway::start(&config).await;
    let posted = Instant::now();
    let post = |cart: &str, status: &str| {
        let body =
            json!({ "cart_id": cart, "customer": format!("{cart}@example.com"), "status": status });
        gateway.post_json("shop", body)
    };
    assert_eq!(post("c-1", "updated").await.status, 202);
    assert_eq!(post("c-2", "updated").await.status, 202);
    // The runs are committed, their looks-after-a-delay with them; only
    // then is c-2 checked out, so the events cannot run out of order.
    for cart in ["cart:c-1", "cart:c-2"] {
        gateway
            .kv_eventually("abandoned-cart", cart, |v| v["version"].is_string())
            .await;
    }
    assert_eq!(post("c-2", "checked_out").await.status, 202);
    gateway
        .kv_eventually("abandoned-cart", "cart:c-2", |v| v["checked_out"] == true)
        .await;
    let dir = gateway.kill().await;

    let gateway = Gateway::start_in(dir, &config, &[]).await;
    let reminder = email.next().await.json();
    assert!(
        posted.elapsed() >= Duration::from_secs(2),
        "the reminder came before its delay"
    );
    assert_eq!(reminder["cart_id"], "c-1");
    assert_eq!(reminder["customer"], "c-1@example.com");
    within("both looks to have run", async {
        loop {
            let lanes = gateway.admin(reqwest::Method::GET, "/v1/lanes").await;
            if lanes["lanes"]["care"]["backlog"] == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let more = email.drain();
    assert!(
        more.iter().all(|r| r.json()["cart_id"] == "c-1"),
        "the checked-out cart got a reminder: {more:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_built_for_wit_0_1_0_still_runs() {
    let mut sink = Recorder::start(json!({})).await;
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/relay-wit-0.1.0.wasm");
    // The relay config, with the component built before WIT 0.1.1.
    let config = care_forwarder_toml("relay", &sink, "", "")
        .replace(&plugin("relay"), fixture.to_str().expect("UTF-8 path"));
    assert!(config.contains("relay-wit-0.1.0.wasm"), "{config}");
    let gateway = Gateway::start(&config).await;
    let reply = gateway.post_json("orders", json!({ "order": 1 })).await;
    assert_eq!(reply.status, 202);
    assert_eq!(sink.next().await.json()["order"], 1);
}
