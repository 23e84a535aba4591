//! The example campaigns, one per lane, end to end.

use serde_json::{json, Value};

use crate::harness::{offer_catalog, offer_toml, plugin, Gateway, Recorder};

fn login_config(sms: &Recorder) -> String {
    format!(
        r#"
[sources.login-form]
[sources.crm]

[campaigns.login-code]
source = "login-form"
lane = "speed"
plugin = "{login}"
destinations = ["sms"]
emits = ["daily-enrich"]
settings = {{ code_ttl_seconds = "120", profile_campaign = "daily-enrich" }}

[campaigns.daily-enrich]
source = "crm"
lane = "care"
plugin = "{enrich}"
kv_namespace = "customers"

[destinations.sms]
url = "{sms}"
"#,
        login = plugin("login-code"),
        enrich = plugin("daily-enrich"),
        sms = sms.url(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_code_is_sent_stored_and_delivered() {
    let mut sms = Recorder::start(json!({ "accepted": true })).await;
    let gateway = Gateway::start(&login_config(&sms)).await;

    let reply = gateway
        .post_json("login-form", json!({ "phone": "+49 151 1234-5678" }))
        .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.json(), json!({ "status": "sent", "expires_in": 120 }));

    let delivered = sms.next().await.json();
    assert_eq!(delivered["to"], "+4915112345678");
    let code = delivered["code"].as_str().expect("code").to_owned();
    assert!(
        code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()),
        "{code}"
    );
    assert_eq!(delivered["text"], format!("Your login code is {code}"));

    let stored = gateway
        .kv("login-code", "login-code:+4915112345678")
        .await
        .expect("code stored in KV");
    assert_eq!(stored["code"], code.as_str());

    // The slow part was emitted to the care lane, which noted the login on
    // the customer's profile.
    let profile = gateway
        .kv_eventually("customers", "profile:+4915112345678", |p| {
            p.get("last_login_code_at").is_some()
        })
        .await;
    assert_eq!(profile["last_login_code_at"], stored["issued_at"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_code_refuses_a_bad_phone_number() {
    let mut sms = Recorder::start(json!({})).await;
    let gateway = Gateway::start(&login_config(&sms)).await;
    let reply = gateway
        .post_json("login-form", json!({ "phone": "12" }))
        .await;
    assert_eq!(reply.status, 422);
    let body = reply.json();
    assert_eq!(body["error"], "plugin_failed");
    assert_eq!(body["cause"], "invalid_input");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("international number"),
        "{body}"
    );

    let reply = gateway.post("login-form", "not json").await;
    assert_eq!(reply.status, 422);
    assert!(
        sms.drain().is_empty(),
        "nothing may be delivered for refused input"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_offer_depends_on_the_profile_and_the_allowlist() {
    let mut recommendations = Recorder::start(offer_catalog()).await;
    let mut elsewhere = Recorder::start(offer_catalog()).await;
    let gateway = Gateway::start(&offer_toml("personal-offer", &recommendations, &elsewhere)).await;

    let enrich = gateway
        .post_json(
            "crm",
            json!({ "records": [
                { "customer_id": "vip-1", "attributes": {
                    "orders": 25, "lifetime_value": 3200.0, "loyalty_tier": "gold",
                    "preferred_category": "coffee", "avg_order_value": 220.0, "age": 44,
                    "country": "DE", "newsletter": true, "visits_30d": 9, "device": "desktop" } },
                { "customer_id": "drifting-2", "attributes": {
                    "orders": 3, "lifetime_value": 90.0, "churn_risk": 0.8,
                    "days_since_last_order": 120, "preferred_category": "tea",
                    "avg_order_value": 25.0, "cart_abandonments": 4, "age": 17, "country": "FR" } }
            ]}),
        )
        .await;
    assert_eq!(enrich.status, 202);
    for id in ["vip-1", "drifting-2"] {
        gateway
            .kv_eventually("customers", &format!("profile:{id}"), |_| true)
            .await;
    }

    let vip = gateway
        .post_json("offers", json!({ "customer_id": "vip-1" }))
        .await;
    assert_eq!(vip.status, 200, "{}", String::from_utf8_lossy(&vip.body));
    let drifting = gateway
        .post_json("offers", json!({ "customer_id": "drifting-2" }))
        .await;
    assert_eq!(drifting.status, 200);
    let (vip, drifting) = (vip.json(), drifting.json());
    assert_eq!(vip["segment"], "vip");
    assert_eq!(vip["offer"]["id"], "grinder-pro", "{vip}");
    assert_eq!(drifting["segment"], "at-risk");
    assert_eq!(drifting["offer"]["id"], "tea-sampler", "{drifting}");

    // The plugin asked the recommendation service, once per offer, with the
    // customer's segment.
    let asked: Vec<Value> = [recommendations.next().await, recommendations.next().await]
        .iter()
        .map(|r| r.json())
        .collect();
    assert!(
        asked.contains(&json!({ "customer_id": "vip-1", "segment": "vip" })),
        "{asked:?}"
    );
    assert!(
        asked.contains(&json!({ "customer_id": "drifting-2", "segment": "at-risk" })),
        "{asked:?}"
    );

    // A host outside the allowlist is refused by the gateway, never reached.
    let refused = gateway
        .post_json("offers-elsewhere", json!({ "customer_id": "vip-1" }))
        .await;
    assert_eq!(refused.status, 502);
    let body = refused.json();
    assert_eq!(body["cause"], "unavailable");
    assert!(
        body["detail"].as_str().unwrap().contains("allowed_hosts"),
        "{body}"
    );
    assert!(elsewhere.drain().is_empty(), "the refused host was called");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_enrich_merges_records_into_profiles() {
    let recommendations = Recorder::start(offer_catalog()).await;
    let gateway = Gateway::start(&offer_toml(
        "personal-offer",
        &recommendations,
        &recommendations,
    ))
    .await;

    let first = gateway
        .post_json(
            "crm",
            json!({ "customer_id": "c-7", "attributes": { "orders": 1, "country": "AT", "device": "mobile" } }),
        )
        .await;
    assert_eq!(first.status, 202);
    assert_eq!(first.json()["campaigns"], json!(["daily-enrich"]));
    gateway
        .kv_eventually("customers", "profile:c-7", |p| p["orders"] == 1)
        .await;

    let second = gateway
        .post_json(
            "crm",
            json!({ "records": [
                { "customer_id": "c-7", "attributes": { "orders": 2, "device": null } },
                { "customer_id": "c-7", "attributes": { "lifetime_value": 80.5 } }
            ]}),
        )
        .await;
    assert_eq!(second.status, 202);
    let profile = gateway
        .kv_eventually("customers", "profile:c-7", |p| p["orders"] == 2)
        .await;
    assert_eq!(profile["country"], "AT", "untouched attributes stay");
    assert_eq!(profile["lifetime_value"], 80.5);
    assert!(profile.get("device").is_none(), "null removes: {profile}");
    assert!(profile["updated_at"].as_u64().is_some());
}
