//! The recent runs an operator looks through (`/v1/events`): a sync run's
//! answer and KV writes, an async run's tries as it is retried and then
//! dead-lettered, filters, and clear refusals.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::{black_hole, hanging_campaign_toml, plugin, within, Gateway};

/// The runs `/v1/events{query}` lists.
async fn runs(gateway: &Gateway, query: &str) -> Vec<Value> {
    let listed = gateway
        .admin(Method::GET, &format!("/v1/events{query}"))
        .await;
    listed["runs"].as_array().expect("runs").clone()
}

/// Poll until `campaign`'s run of `event_id` ended as `ended`.
async fn until_ended(gateway: &Gateway, campaign: &str, event_id: &str, ended: &str) -> Value {
    within(
        &format!("{campaign}'s run of {event_id} to be {ended}"),
        async {
            loop {
                let kept = runs(gateway, &format!("?campaign={campaign}")).await;
                if let Some(run) = kept
                    .into_iter()
                    .find(|r| r["event_id"] == event_id && r["ended"] == ended)
                {
                    return run;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sees_each_runs_actions_tries_and_outcome() {
    let never = black_hole().await;
    // `counter` (speed, `abuse` scripted by its body) writes KV keys and
    // answers; `stuck` waits on a host that never answers until its 300 ms
    // deadline, twice.
    let gateway = Gateway::start(&format!(
        r#"
[lanes.segmentation]
max_attempts = 2
retry_base_ms = 10
retry_max_ms = 20
[sources.count]
[campaigns.counter]
source = "count"
lane = "speed"
plugin = "{counter}"
deadline_ms = 2000
{stuck}"#,
        counter = plugin("abuse"),
        stuck = hanging_campaign_toml("stuck", never, 300, ""),
    ))
    .await;

    let script = json!({
        "kv_writes": { "prefix": "u", "count": 2, "bytes": 4 },
        "respond": { "status": 200 },
    });
    let answered = gateway.post_json("count", script).await;
    assert_eq!(answered.status, StatusCode::OK, "{:?}", answered.body);
    let counted = runs(&gateway, "?campaign=counter").await;
    assert_eq!(counted.len(), 1, "{counted:?}");
    let run = &counted[0];
    assert_eq!(
        (&run["mode"], &run["ended"], &run["version"]),
        (&json!("sync"), &json!("ok"), &json!("v1"))
    );
    assert_eq!(run["actions"]["reply_status"], 200, "{run}");
    let keys: Vec<&Value> = (run["actions"]["kv"].as_array().unwrap().iter())
        .map(|write| &write["key"])
        .collect();
    assert_eq!(keys, [&json!("u0"), &json!("u1")], "its KV writes: {run}");
    assert!(run["fuel"].as_u64().unwrap() > 0, "{run}");

    let stored = gateway.post_json("stuck", json!({})).await;
    assert_eq!(stored.status, StatusCode::ACCEPTED);
    let event_id = stored.json()["event_id"]
        .as_str()
        .expect("event id")
        .to_owned();
    let retrying = until_ended(&gateway, "stuck", &event_id, "retrying").await;
    assert_eq!(retrying["mode"], "async");
    assert_eq!(retrying["cause"], "deadline", "{retrying}");
    assert_eq!(retrying["attempts"].as_array().map(Vec::len), Some(1));
    let dead = until_ended(&gateway, "stuck", &event_id, "dead").await;
    assert_eq!(dead["attempts"].as_array().map(Vec::len), Some(2), "{dead}");

    // Filters, newest first, and one event's runs.
    let only_dead = runs(&gateway, "?ended=dead").await;
    assert_eq!(only_dead.len(), 1, "{only_dead:?}");
    assert_eq!(only_dead[0]["campaign"], "stuck");
    assert_eq!(runs(&gateway, "?limit=1").await[0]["campaign"], "stuck");
    let one = gateway
        .admin(Method::GET, &format!("/v1/events/{event_id}"))
        .await;
    assert_eq!(one["runs"][0]["ended"], "dead", "{one}");

    let unknown = gateway.admin_with(Method::GET, "/v1/events/nope", "").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.json()["error"], "not_found");
    let bad = gateway
        .admin_with(Method::GET, "/v1/events?ended=maybe", "")
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["error"], "invalid_query", "{:?}", bad.body);
}
