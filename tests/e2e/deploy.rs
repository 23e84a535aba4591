//! Hot deploy: new plugin versions swap in under traffic, refused uploads
//! say why, rollbacks and the active version survive a restart, and a new
//! build compiles only the functions that changed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::harness::{plugin, within, Gateway, Recorder};

/// `greet` answers its callers synchronously; v1 is `trivial` (answers
/// `ok`), and `burn` (answers a number) is deployed as v2.
pub(crate) fn greet_toml() -> String {
    // The deadline leaves room for a deploy's compile on a loaded machine.
    format!(
        "[sources.site]\n[campaigns.greet]\nsource = \"site\"\nlane = \"speed\"\nplugin = \"{}\"\nsettings = {{ iterations = \"10\" }}\ndeadline_ms = 5000\n",
        plugin("trivial")
    )
}

/// Which plugin answered: `trivial` says `ok`, `burn` a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answered {
    Trivial,
    Burn,
}

pub(crate) async fn who_answers(gateway: &Gateway) -> Answered {
    let reply = gateway.post("site", "{}").await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    answered(&reply.body)
}

fn answered(body: &[u8]) -> Answered {
    match std::str::from_utf8(body).expect("UTF-8") {
        "ok" => Answered::Trivial,
        number if number.parse::<u64>().is_ok() => Answered::Burn,
        other => panic!("unexpected answer `{other}`"),
    }
}

pub(crate) async fn rollback(gateway: &Gateway, version: u32) -> crate::harness::Reply {
    let body = json!({ "version": version }).to_string();
    gateway
        .admin_with(Method::POST, "/v1/campaigns/greet/rollback", body)
        .await
}

pub(crate) fn burn() -> Vec<u8> {
    std::fs::read(plugin("burn")).expect("burn.wasm")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_swaps_in_under_traffic_and_a_rollback_brings_v1_back() {
    let gateway = Arc::new(Gateway::start(&greet_toml()).await);
    assert_eq!(who_answers(&gateway).await, Answered::Trivial);

    // Two callers keep posting, each one request after the other, so each
    // one's answers are in the order the gateway ran them; each stops once
    // v2 has answered it three times in a row.
    let answered_total = Arc::new(AtomicUsize::new(0));
    let answers = Arc::new(Notify::new());
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let (gateway, total, answers) =
                (gateway.clone(), answered_total.clone(), answers.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !seen.ends_with(&[Answered::Burn; 3]) {
                    let reply = gateway.post("site", "{}").await;
                    assert_eq!(
                        reply.status,
                        StatusCode::OK,
                        "a request failed during the deploy: {:?}",
                        reply.body
                    );
                    seen.push(answered(&reply.body));
                    total.fetch_add(1, Ordering::Relaxed);
                    answers.notify_waiters();
                }
                seen
            })
        })
        .collect();
    within("traffic before the deploy", async {
        while answered_total.load(Ordering::Relaxed) < 4 {
            answers.notified().await;
        }
    })
    .await;

    let deployed = gateway
        .admin_with(Method::POST, "/v1/campaigns/greet/versions", burn())
        .await;
    assert_eq!(deployed.status, StatusCode::CREATED, "{:?}", deployed.body);
    let deployed = deployed.json();
    assert_eq!(deployed["version"], 2);
    assert_eq!(deployed["origin"], "deploy");
    assert_eq!(deployed["active"], true);
    // Every request sent after the deploy answered runs v2.
    assert_eq!(who_answers(&gateway).await, Answered::Burn);
    for caller in callers {
        let seen = within("a caller to see v2", caller)
            .await
            .expect("no failed request");
        let swap = seen
            .iter()
            .position(|a| *a == Answered::Burn)
            .expect("v2 answered");
        assert!(
            seen[swap..].iter().all(|a| *a == Answered::Burn),
            "v1 answered after v2 had: {seen:?}"
        );
    }

    let versions = gateway
        .admin(Method::GET, "/v1/campaigns/greet/versions")
        .await;
    assert_eq!(versions["active"], 2);
    let origins: Vec<&Value> = versions["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| &v["origin"])
        .collect();
    assert_eq!(origins, [&json!("config"), &json!("deploy")]);
    let listed = gateway.admin(Method::GET, "/v1/campaigns").await;
    assert_eq!(listed["campaigns"][0]["version"], 2);

    let back = rollback(&gateway, 1).await;
    assert_eq!(back.status, StatusCode::OK, "{:?}", back.body);
    assert_eq!(back.json()["version"], 1);
    assert_eq!(who_answers(&gateway).await, Answered::Trivial);

    let missing = rollback(&gateway, 9).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["error"], "unknown_version");

    // Stored versions can be deleted, but not the one that runs; the
    // component and its compiled form go with the last version naming them.
    let burn_digest = deployed["digest"].as_str().expect("digest").to_owned();
    let stored = [
        format!("plugins/blobs/{burn_digest}.wasm"),
        format!("compiled/{burn_digest}.cwasm"),
    ];
    for file in &stored {
        assert!(gateway.data_file(file).exists(), "{file} is stored");
    }
    let running = gateway
        .admin_with(Method::DELETE, "/v1/campaigns/greet/versions/1", "")
        .await;
    assert_eq!(running.status, StatusCode::CONFLICT);
    assert_eq!(running.json()["error"], "version_active");
    let deleted = gateway
        .admin_with(Method::DELETE, "/v1/campaigns/greet/versions/2", "")
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{:?}", deleted.body);
    for file in &stored {
        assert!(!gateway.data_file(file).exists(), "{file} is deleted");
    }
    let versions = gateway
        .admin(Method::GET, "/v1/campaigns/greet/versions")
        .await;
    assert_eq!(versions["versions"].as_array().map(Vec::len), Some(1));
    let gone = rollback(&gateway, 2).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert!(
        gateway.log().contains("Switched plugin version"),
        "the swap is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_that_are_not_campaign_components_are_refused_with_the_reason() {
    let gateway = Gateway::start(&greet_toml()).await;
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let command = std::fs::read(plugin("command")).expect("command.wasm");
    for (upload, says) in [
        (b"#!/bin/sh\necho hi\n".to_vec(), "not a WebAssembly binary"),
        (core_module, "core wasm module, not a component"),
        (
            command,
            "does not export the `hooklane:plugin/campaign` world",
        ),
    ] {
        let refused = gateway
            .admin_with(Method::POST, "/v1/campaigns/greet/versions", upload)
            .await;
        assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
        let body = refused.json();
        assert_eq!(body["error"], "invalid_plugin");
        let detail = body["detail"].as_str().expect("detail");
        assert!(detail.contains("campaign `greet`"), "{detail}");
        assert!(detail.contains(says), "`{detail}` should say `{says}`");
    }
    let unknown = gateway
        .admin_with(Method::POST, "/v1/campaigns/nope/versions", burn())
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.json()["error"], "unknown_campaign");

    // Nothing refused was stored, and v1 still answers.
    let versions = gateway
        .admin(Method::GET, "/v1/campaigns/greet/versions")
        .await;
    assert_eq!(versions["versions"].as_array().map(Vec::len), Some(1));
    assert_eq!(who_answers(&gateway).await, Answered::Trivial);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_deploys_and_reloads_and_the_active_version_survives_a_restart() {
    let config = greet_toml();
    let gateway = Gateway::start(&config).await;
    let burn_path = plugin("burn");
    let deployed: Value =
        serde_json::from_str(&gateway.cli(&["deploy", "greet", &burn_path]).await).expect("JSON");
    assert_eq!(deployed["version"], 2);
    assert_eq!(who_answers(&gateway).await, Answered::Burn);

    let gateway = Gateway::start_in(gateway.stop().await, &config, &[]).await;
    assert_eq!(
        who_answers(&gateway).await,
        Answered::Burn,
        "a restart keeps v2"
    );
    let versions: Value =
        serde_json::from_str(&gateway.cli(&["versions", "greet"]).await).expect("JSON");
    assert_eq!(versions["active"], 2);
    assert_eq!(versions["versions"].as_array().map(Vec::len), Some(2));

    gateway.cli(&["rollback", "greet", "1"]).await;
    let logged_before = gateway.log().len();
    let gateway = Gateway::start_in(gateway.stop().await, &config, &[]).await;
    assert_eq!(
        who_answers(&gateway).await,
        Answered::Trivial,
        "and a rollback"
    );
    let restart_log = gateway.log()[logged_before..].to_owned();
    assert!(
        restart_log.contains("cached=true") && !restart_log.contains("cached=false"),
        "a restart loads compiled components from the cache:\n{restart_log}"
    );

    // A config that now names v2's component is a new intent: it runs,
    // as the version it already is.
    gateway.rewrite_config(&config.replace(&plugin("trivial"), &burn_path));
    let reloaded: Value = serde_json::from_str(&gateway.cli(&["reload"]).await).expect("JSON");
    assert_eq!(reloaded["reloaded"]["changed"], json!(["greet"]));
    assert_eq!(who_answers(&gateway).await, Answered::Burn);
    let versions: Value =
        serde_json::from_str(&gateway.cli(&["versions", "greet"]).await).expect("JSON");
    assert_eq!(versions["active"], 2);
    assert_eq!(versions["versions"].as_array().map(Vec::len), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_already_running_finishes_on_the_version_it_started_with() {
    // v1 is `personal-offer`, whose recommendation service keeps it waiting
    // until the test lets it answer.
    let mut catalog = Recorder::holding(json!({ "candidates": [] })).await;
    let config = format!(
        r#"
[sources.site]
[campaigns.greet]
source = "site"
lane = "speed"
plugin = "{}"
deadline_ms = 60000
fetch_timeout_ms = 60000
allowed_hosts = ["{}"]
settings = {{ recommendation_url = "{}" }}
"#,
        plugin("personal-offer"),
        catalog.addr,
        catalog.url()
    );
    let gateway = Arc::new(Gateway::start(&config).await);
    let waiting = {
        let gateway = gateway.clone();
        tokio::spawn(async move {
            gateway
                .post_json("site", json!({ "customer_id": "c-1" }))
                .await
        })
    };
    catalog.next().await; // v1 is running, waiting for its answer.

    let trivial = std::fs::read(plugin("trivial")).expect("trivial.wasm");
    let deployed = gateway
        .admin_with(Method::POST, "/v1/campaigns/greet/versions", trivial)
        .await;
    assert_eq!(deployed.status, StatusCode::CREATED);
    assert_eq!(
        who_answers(&gateway).await,
        Answered::Trivial,
        "new events run v2"
    );

    catalog.release();
    let finished = within("the v1 event to finish", waiting)
        .await
        .expect("task");
    assert_eq!(finished.status, StatusCode::OK);
    assert_eq!(
        finished.json()["customer_id"],
        "c-1",
        "the running event finished on `personal-offer`, the version it started with"
    );
}

/// The incremental cache's lookups in `/metrics` so far: hits, misses.
async fn cache_lookups(gateway: &Gateway) -> (u64, u64) {
    let metrics = gateway.open_admin_text("/metrics").await;
    let lookups = |result| {
        hooklane_bench::soak::counter(
            &metrics,
            "hooklane_compile_cache_lookups_total",
            &[("result", result)],
        )
    };
    (lookups("hit"), lookups("miss"))
}

/// `shop` runs `plugins/revision`; `runtime` is the `[runtime]` table's body.
fn shop_toml(revision: &std::path::Path, runtime: &str) -> String {
    format!(
        "[runtime]\n{runtime}\n[sources.site]\n[campaigns.shop]\nsource = \"site\"\nlane = \"speed\"\nplugin = {}\ndeadline_ms = 5000\n",
        toml::Value::String(revision.display().to_string())
    )
}

/// The revision number the campaign's answer names.
async fn revision_answering(gateway: &Gateway) -> u64 {
    let reply = gateway
        .post("site", r#"{"customer":"ada","pages":["/", "/shoes"]}"#)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let answer: Value = serde_json::from_slice(&reply.body).expect("a JSON answer");
    answer["revision"].as_u64().expect("a revision number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_build_compiles_only_the_functions_that_changed() {
    let revisions = hooklane_bench::revisions::revisions(3).expect("revisions of plugins/revision");
    let gateway = Gateway::start(&shop_toml(&revisions[0], "")).await;
    assert_eq!(revision_answering(&gateway).await, 0);
    let (hits, misses) = cache_lookups(&gateway).await;
    assert!(misses > 0, "compiling revision 0 filled the cache");
    let metrics = gateway.open_admin_text("/metrics").await;
    let held = hooklane_bench::soak::counter(&metrics, "hooklane_compile_cache_bytes", &[]);
    assert!(
        held > 0,
        "the cache holds revision 0's functions: {metrics}"
    );

    crate::faults::deploy_file(&gateway, "shop", &revisions[1]).await;
    assert_eq!(revision_answering(&gateway).await, 1);
    let (hits, misses) = {
        let now = cache_lookups(&gateway).await;
        (now.0 - hits, now.1 - misses)
    };
    // Its `handle` changed, so something compiled anew; most of what it
    // links (the SDK, serde, std) did not.
    assert!(misses > 0, "revision 1 differs in code from revision 0");
    assert!(
        hits > 4 * misses,
        "the cache served {hits} functions of revision 1 and missed {misses}"
    );

    // Not kept across restarts: the restart loads revision 1 from the
    // compiled-component cache on disk, compiling nothing, and the first
    // deploy after it compiles in full.
    let restarted =
        Gateway::start_in(gateway.stop().await, &shop_toml(&revisions[0], ""), &[]).await;
    assert_eq!(revision_answering(&restarted).await, 1);
    assert_eq!(
        cache_lookups(&restarted).await,
        (0, 0),
        "nothing compiled at start"
    );
    crate::faults::deploy_file(&restarted, "shop", &revisions[2]).await;
    assert_eq!(revision_answering(&restarted).await, 2);
    let (cold_hits, cold_misses) = cache_lookups(&restarted).await;
    // Its hits are functions that repeat within the one build.
    assert!(
        cold_misses > 4 * misses,
        "the first deploy after the restart compiled {cold_misses} functions ({cold_hits} hits); one with the cache warm {misses}"
    );

    // Without the cache every function compiles, and none is looked up.
    let uncached = Gateway::start(&shop_toml(&revisions[0], "incremental_cache_mb = 0")).await;
    crate::faults::deploy_file(&uncached, "shop", &revisions[2]).await;
    assert_eq!(revision_answering(&uncached).await, 2);
    assert_eq!(cache_lookups(&uncached).await, (0, 0));
}
