//! Shadow runs: a campaign that keeps its events (redacted) has a changed
//! version tried on them; the report shows each event's action
//! difference, and nothing the shadow runs did reached KV, a destination
//! or another campaign, nor changed the running version or its figures.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::{plugin, Gateway, Recorder};

/// `signup` (speed, sync) runs `welcome` — KV mark, mail, 201 — and keeps
/// its last 10 events with the customer's phone redacted; the shadow
/// version is the scripted `abuse`, which writes a KV key, delivers the
/// body as it saw it to the mailer and emits to `followup` (its setting
/// `emit_to`). `plain` keeps no events; `followup` keeps them but has run
/// none.
fn shadow_toml(mailer: &Recorder) -> String {
    format!(
        r#"
[sources.site]
[sources.later]
[sources.other]
[campaigns.signup]
source = "site"
lane = "speed"
plugin = "{welcome}"
deadline_ms = 5000
destinations = ["mailer"]
emits = ["followup"]
settings = {{ emit_to = "followup" }}
shadow = {{ record = 10, redact = ["/customer/phone"] }}
[campaigns.followup]
source = "later"
lane = "care"
plugin = "{trivial}"
shadow = {{ record = 5 }}
[campaigns.plain]
source = "other"
lane = "speed"
plugin = "{trivial}"
[destinations.mailer]
url = "{mailer}"
rate_per_s = 10000
"#,
        welcome = plugin("welcome"),
        trivial = plugin("trivial"),
        mailer = mailer.url(),
    )
}

/// A sign-up that is also `abuse`'s script.
fn signup(email: &str) -> Value {
    json!({
        "email": email,
        "name": "Ann",
        "customer": { "phone": "+49 151 1234567", "tier": "gold" },
        "kv_writes": { "prefix": "shadow-", "count": 1 },
        "deliver_to": "mailer",
        "respond": { "status": 200 },
    })
}

async fn shadow(gateway: &Gateway, campaign: &str, upload: Vec<u8>) -> crate::harness::Reply {
    let path = format!("/v1/campaigns/{campaign}/shadow");
    gateway.admin_with(Method::POST, &path, upload).await
}

fn refusal(reply: &crate::harness::Reply, status: StatusCode, error: &str) -> String {
    assert_eq!(reply.status, status, "{:?}", reply.body);
    let body = reply.json();
    assert_eq!(body["error"], error, "{body}");
    body["detail"].as_str().expect("detail").to_owned()
}

/// What shows that something ran or was kept: `signup`'s and `followup`'s
/// recent runs, their run figures, the care lane's backlog, `signup`'s
/// versions.
async fn footprint(gateway: &Gateway) -> Value {
    let stats = gateway.admin(Method::GET, "/v1/stats").await;
    let figures: Vec<&Value> = (stats["campaigns"].as_array().expect("campaigns").iter())
        .filter(|c| c["name"] == "signup" || c["name"] == "followup")
        .collect();
    json!({
        "signup_runs": gateway.admin(Method::GET, "/v1/events?campaign=signup").await["runs"].as_array().map(Vec::len),
        "followup_runs": gateway.admin(Method::GET, "/v1/events?campaign=followup").await["runs"],
        "figures": figures,
        "care_backlog": gateway.admin(Method::GET, "/v1/lanes").await["lanes"]["care"]["backlog"],
        "versions": gateway.admin(Method::GET, "/v1/campaigns/signup/versions").await,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_run_shows_the_difference_and_nothing_it_did_reaches_kv_destinations_or_campaigns()
{
    let mut mailer = Recorder::start(json!({})).await;
    let gateway = Gateway::start(&shadow_toml(&mailer)).await;
    let abuse = plugin_bytes("abuse");

    // Nothing kept yet: nothing to compare.
    let none = shadow(&gateway, "signup", abuse.clone()).await;
    refusal(&none, StatusCode::CONFLICT, "nothing_recorded");

    // Two sign-ups, then Ann again: welcomed twice, then "already".
    let emails = ["ann@example.com", "bob@example.com", "ann@example.com"];
    for (email, status) in emails.iter().zip([201, 201, 200]) {
        let reply = gateway.post_json("site", signup(email)).await;
        assert_eq!(reply.status, status, "{:?}", reply.body);
    }
    for _ in 0..2 {
        mailer.next().await;
    }
    let ann_mark = gateway.kv("signup", "welcomed:ann@example.com").await;
    assert_eq!(ann_mark, Some(json!(1)));
    let before = footprint(&gateway).await;
    assert_eq!(before["signup_runs"], 3, "{before}");
    assert_eq!(before["followup_runs"], json!([]), "{before}");

    let reply = shadow(&gateway, "signup", abuse.clone()).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let report = reply.json();
    assert_eq!(report["campaign"], "signup");
    assert_eq!(report["running"], "v1");
    let totals = &report["totals"];
    assert_eq!(
        (&totals["events"], &totals["differing"]),
        (&json!(3), &json!(3)),
        "{report}"
    );
    assert_eq!(
        (&totals["failed_running"], &totals["failed_candidate"]),
        (&json!(0), &json!(0)),
        "{report}"
    );
    assert!(totals["fuel_ratio"].as_f64().is_some_and(|r| r > 0.0));
    let events = report["events"].as_array().expect("events");
    for (event, email) in events.iter().zip(emails) {
        assert_eq!(
            event["differences"],
            json!(["reply", "deliveries", "emits", "kv"]),
            "{event}"
        );
        // The shadow version planned a KV write, a delivery and an emit.
        let candidate = &event["candidate"];
        assert_eq!(candidate["outcome"], "ok");
        assert_eq!(candidate["reply"]["status"], 200);
        assert_eq!(candidate["kv"][0]["key"], "shadow-0");
        assert_eq!(candidate["kv"][0]["op"], "set");
        assert_eq!(candidate["emits"][0]["campaigns"], json!(["followup"]));
        let delivered = &candidate["deliveries"][0];
        assert_eq!(delivered["destination"], "mailer");
        // It delivers the body as it saw it: the kept copy, redacted.
        let seen: Value =
            serde_json::from_str(delivered["body"]["text"].as_str().expect("text body"))
                .expect("JSON body");
        assert_eq!(seen["customer"]["phone"], "[redacted]", "{seen}");
        assert_eq!(seen["customer"]["tier"], "gold");
        assert_eq!(seen["email"], email);
        assert!(!event.to_string().contains("1234567"), "{event}");
    }
    // The running version read the store as it is: Ann was welcomed by
    // then, so in the shadow run it only answers "already" for her.
    let running: Vec<(&Value, &Value)> = events
        .iter()
        .map(|e| (&e["running"]["reply"]["status"], &e["running"]["kv"]))
        .collect();
    assert_eq!(running[0], (&json!(200), &json!([])), "{report}");
    assert_eq!(running[1], (&json!(200), &json!([])), "{report}");

    // The CLI prints a summary, or the JSON report.
    let abuse_path = plugin("abuse");
    let summary = gateway
        .cli(&["deploy", "--shadow", "signup", &abuse_path])
        .await;
    assert!(
        summary.starts_with("Shadow run of `signup`: the upload (")
            && summary.contains("3 differ; failed: 0 with v1, 0 with the upload")
            && summary.contains("differs in reply, deliveries, emits, kv")
            && summary.contains("emit to followup"),
        "{summary}"
    );
    let json_report = gateway
        .cli(&["deploy", "--shadow", "--json", "signup", &abuse_path])
        .await;
    let json_report: Value = serde_json::from_str(&json_report).expect("JSON report");
    assert_eq!(json_report["totals"]["differing"], 3);

    // Refusals, as JSON.
    let detail = refusal(
        &shadow(&gateway, "signup", b"not wasm".to_vec()).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_plugin",
    );
    assert!(detail.contains("not a WebAssembly binary"), "{detail}");
    let cart = plugin_bytes("abandoned-cart");
    let detail = refusal(
        &shadow(&gateway, "signup", cart).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_plugin",
    );
    assert!(detail.contains("settings.emit_to"), "{detail}");
    let detail = refusal(
        &shadow(&gateway, "plain", abuse.clone()).await,
        StatusCode::CONFLICT,
        "shadow_not_enabled",
    );
    assert!(detail.contains("campaigns.plain.shadow"), "{detail}");
    refusal(
        &shadow(&gateway, "followup", abuse.clone()).await,
        StatusCode::CONFLICT,
        "nothing_recorded",
    );
    refusal(
        &shadow(&gateway, "nope", abuse).await,
        StatusCode::NOT_FOUND,
        "unknown_campaign",
    );

    // Nothing of three shadow runs reached KV, ...
    assert_eq!(gateway.kv("signup", "shadow-0").await, None);
    assert_eq!(
        gateway.kv("signup", "welcomed:ann@example.com").await,
        ann_mark
    );
    // ... another campaign, the recent runs, the figures or the versions ...
    assert_eq!(footprint(&gateway).await, before);
    // ... or the mailer: the next delivery it gets is a real one's.
    let reply = gateway.post_json("site", signup("cy@example.com")).await;
    assert_eq!(reply.status, 201, "the running version answers");
    assert_eq!(mailer.next().await.json()["to"], "cy@example.com");
    let left: Vec<Value> = mailer.drain().iter().map(|r| r.json()).collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(gateway.kv("signup", "shadow-0").await, None);

    // Other redaction rules by a reload: what was kept under the old ones
    // is forgotten.
    let config = shadow_toml(&mailer);
    gateway.rewrite_config(&config.replace("\"/customer/phone\"", "\"/customer\""));
    gateway.admin(Method::POST, "/v1/reload").await;
    refusal(
        &shadow(&gateway, "signup", plugin_bytes("trivial")).await,
        StatusCode::CONFLICT,
        "nothing_recorded",
    );
}

fn plugin_bytes(name: &str) -> Vec<u8> {
    std::fs::read(plugin(name)).expect("a built plugin")
}
