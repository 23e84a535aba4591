//! The JavaScript and Python examples (`plugins/js`, `plugins/py`) in a real
//! gateway: they answer, keep state in KV, reach only `allowed_hosts`, are
//! stopped by fuel when they spin, and an uncaught exception's message is
//! the failure's detail.

use serde_json::{json, Value};

use crate::harness::{offer_catalog, offer_toml, plugin, Gateway, Recorder};

/// `offer_toml` with `language`'s personal-offer, and its spin on source
/// `spin` with little fuel.
fn config(language: &str, recommendations: &Recorder, elsewhere: &Recorder) -> String {
    let offer = offer_toml(
        &format!("{language}/personal-offer"),
        recommendations,
        elsewhere,
    );
    format!(
        "{offer}\n[sources.spin]\n[campaigns.spin]\nsource = \"spin\"\nlane = \"speed\"\nplugin = \"{}\"\nfuel = 10_000_000\n",
        plugin(&format!("{language}/spin"))
    )
}

/// `language`'s personal-offer and spin examples, end to end; `exception` is
/// the detail a body without `customer_id` makes the example fail with.
async fn examples_work_in(language: &str, exception: &str) {
    // Each gateway compiles its big components first; one at a time, they
    // are not starved of CPU by each other.
    static STARTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let starting = STARTING.lock().await;
    let mut recommendations = Recorder::start(offer_catalog()).await;
    let mut elsewhere = Recorder::start(offer_catalog()).await;
    let gateway = Gateway::start(&config(language, &recommendations, &elsewhere)).await;
    drop(starting);

    // A profile written by another campaign, read by the example.
    let enrich = gateway
        .post_json(
            "crm",
            json!({ "customer_id": "vip-1", "attributes": {
                "orders": 25, "lifetime_value": 3200.0, "loyalty_tier": "gold",
                "preferred_category": "coffee", "avg_order_value": 220.0 } }),
        )
        .await;
    assert_eq!(enrich.status, 202);
    gateway
        .kv_eventually("customers", "profile:vip-1", |_| true)
        .await;

    // It answers, after asking the allowed recommendation service.
    let first = gateway
        .post_json("offers", json!({ "customer_id": "vip-1" }))
        .await;
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let first = first.json();
    assert_eq!(first["segment"], "vip", "{first}");
    assert_eq!(first["offer"]["id"], "grinder-pro", "{first}");
    assert_eq!(first["previous_offer"], Value::Null, "{first}");
    assert_eq!(
        recommendations.next().await.json(),
        json!({ "customer_id": "vip-1", "segment": "vip" })
    );

    // Its own KV write (the offer it made) is read back by the next event.
    let second = gateway
        .post_json("offers", json!({ "customer_id": "vip-1" }))
        .await
        .json();
    assert_eq!(second["previous_offer"], "grinder-pro", "{second}");
    recommendations.next().await;

    // A host outside the allowlist is refused by the gateway, never reached.
    let refused = gateway
        .post_json("offers-elsewhere", json!({ "customer_id": "vip-1" }))
        .await;
    let body = refused.json();
    assert_eq!(refused.status, 502, "{body}");
    assert_eq!(body["cause"], "unavailable", "{body}");
    let detail = body["detail"].as_str().unwrap().to_lowercase();
    assert!(
        detail.contains("allowed") && detail.contains("127.0.0.1"),
        "{body}"
    );
    assert!(elsewhere.drain().is_empty(), "the refused host was called");

    // An uncaught exception: its message is the detail.
    let thrown = gateway.post_json("offers", json!({})).await;
    let body = thrown.json();
    assert_eq!(thrown.status, 502, "{body}");
    assert_eq!(body["cause"], "panic", "{body}");
    assert_eq!(
        body["detail"],
        format!("campaign `personal-offer` panicked: {exception}"),
    );

    // Fuel stops the spinning one, and the gateway keeps serving.
    let spun = gateway.post_json("spin", json!({})).await;
    let body = spun.json();
    assert_eq!(spun.status, 502, "{body}");
    assert_eq!(body["cause"], "out_of_fuel", "{body}");
    let after = gateway
        .post_json("offers", json!({ "customer_id": "vip-1" }))
        .await;
    assert_eq!(
        after.status,
        200,
        "{}",
        String::from_utf8_lossy(&after.body)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_examples_work_in_the_gateway() {
    examples_work_in(
        "js",
        r#"TypeError: can't access property "trim", request.customer_id is undefined"#,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_examples_work_in_the_gateway() {
    examples_work_in("py", "KeyError: 'customer_id'").await;
}
