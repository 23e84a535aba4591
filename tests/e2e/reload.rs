//! Config reload (SIGHUP or `POST /v1/reload`): campaigns, their lane,
//! limits, settings and plugin change without a restart; a bad new config
//! is refused with file, key and reason while the old one keeps running.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::deploy::{greet_toml, who_answers, Answered};
use crate::harness::{one_campaign_toml, plugin, within, Gateway};

/// `greet` with `burn` as its plugin and `greet_extra` in its table, plus
/// whatever `rest` adds.
fn greet_with_burn(greet_extra: &str, rest: &str) -> String {
    format!(
        r#"
[sources.site]
[campaigns.greet]
source = "site"
plugin = "{}"
settings = {{ iterations = "10" }}
{greet_extra}
{rest}
"#,
        plugin("burn")
    )
}

async fn reload(gateway: &Gateway) -> crate::harness::Reply {
    gateway.admin_with(Method::POST, "/v1/reload", "").await
}

async fn campaign(gateway: &Gateway, name: &str) -> Option<Value> {
    let listed = gateway.admin(Method::GET, "/v1/campaigns").await;
    listed["campaigns"]
        .as_array()
        .expect("campaigns")
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_plugin_lane_limits_and_campaigns() {
    let gateway = Gateway::start(&greet_toml()).await;
    assert_eq!(who_answers(&gateway).await, Answered::Trivial);

    let later = one_campaign_toml("shop", "later", "speed", &plugin("trivial"));
    gateway.rewrite_config(&greet_with_burn(
        "lane = \"segmentation\"\nmode = \"sync\"",
        &later,
    ));
    gateway.signal("HUP").await;
    within("the reload to add `later`", async {
        while campaign(&gateway, "later").await.is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        who_answers(&gateway).await,
        Answered::Burn,
        "the new plugin runs"
    );
    let greet = campaign(&gateway, "greet").await.expect("greet");
    assert_eq!(greet["lane"], "segmentation");
    assert_eq!(greet["version"], 2);
    assert_eq!(gateway.post("shop", "{}").await.status, StatusCode::OK);

    // Fuel for nothing: every run of greet now runs out of it.
    gateway.rewrite_config(&greet_with_burn(
        "lane = \"segmentation\"\nmode = \"sync\"\nfuel = 1",
        "",
    ));
    let reloaded = reload(&gateway).await;
    assert_eq!(reloaded.status, StatusCode::OK, "{:?}", reloaded.body);
    let reloaded = reloaded.json()["reloaded"].clone();
    assert_eq!(reloaded["changed"], serde_json::json!(["greet"]));
    assert_eq!(reloaded["removed"], serde_json::json!(["later"]));
    let starved = gateway.post("site", "{}").await;
    assert_eq!(starved.status, StatusCode::BAD_GATEWAY);
    assert_eq!(starved.json()["cause"], "out_of_fuel");
    assert_eq!(
        campaign(&gateway, "greet").await.expect("greet")["limits"]["fuel"],
        1
    );
    assert_eq!(
        gateway.post("shop", "{}").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_is_refused_with_file_key_and_reason_and_the_old_one_keeps_running() {
    let gateway = Gateway::start(&greet_toml()).await;
    let command = plugin("command");
    let refusals = [
        (
            greet_toml().replace("lane = \"speed\"", "lane = \"fast\""),
            "hooklane.toml:6: key `campaigns.greet.lane`",
        ),
        (
            format!("max_body_kb = 5\n{}", greet_toml()),
            "key `max_body_kb`: unchanged: it takes effect only on a restart",
        ),
        (
            greet_toml().replace(&plugin("trivial"), &command),
            "key `campaigns.greet.plugin`: campaign `greet`",
        ),
        (
            greet_toml().replace(&plugin("trivial"), "/nonexistent/greet.wasm"),
            "cannot read plugin /nonexistent/greet.wasm",
        ),
    ];
    for (config, says) in refusals {
        gateway.rewrite_config(&config);
        let refused = reload(&gateway).await;
        assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
        let body = refused.json();
        assert_eq!(body["error"], "invalid_config");
        let detail = body["detail"].as_str().expect("detail");
        assert!(detail.contains(says), "`{detail}` should say `{says}`");
        assert!(
            detail.contains("hooklane.toml"),
            "`{detail}` names the file"
        );
        assert_eq!(who_answers(&gateway).await, Answered::Trivial);
    }

    let refused = |log: String| log.matches("Reload refused").count();
    let refused_before = refused(gateway.log());
    gateway.signal("HUP").await;
    within("the refused SIGHUP reload to be logged", async {
        while refused(gateway.log()) == refused_before {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(who_answers(&gateway).await, Answered::Trivial);
    let versions = gateway
        .admin(Method::GET, "/v1/campaigns/greet/versions")
        .await;
    assert_eq!(
        versions["versions"].as_array().map(Vec::len),
        Some(1),
        "nothing refused was stored"
    );
}
