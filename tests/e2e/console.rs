//! The console in a real headless Chromium (`tests/console/console.mjs`,
//! puppeteer-core on Debian's chromium, both installed by
//! `scripts/setup.sh`): an operator logs in, watches the lanes, deploys a
//! version and rolls it back, sees why a campaign is throttled, shadow-runs a version on greet's kept
//! events, enables a destination, replays dead
//! letters, looks through the recent events and reads the advice in the
//! pages; the gateway shows the effects.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tokio::process::Command;

use crate::deploy::{greet_toml, who_answers, Answered};
use crate::faults::{dead_letters_eventually, deploy};
use crate::harness::{care_forwarder_toml, plugin, Gateway, Recorder, ADMIN_TOKEN};

/// The browser run bounds itself at 120 s; this is the last resort.
const BROWSER_PATIENCE: Duration = Duration::from_secs(180);

/// `greet` (speed, sync, keeping its events for shadow runs), `relay`
/// (care, to `sink`), `crash` (segmentation, panics, one attempt),
/// `broken` (speed) and `score` (speed, heavier than its lane's guard).
fn console_toml(sink: &Recorder) -> String {
    format!(
        r#"
[lanes.speed]
guard_fuel = 1000000
[lanes.segmentation]
max_attempts = 1
[sources.score]
[campaigns.score]
source = "score"
lane = "speed"
plugin = "{burn}"
settings = {{ iterations = "300000" }}
{greet}shadow = {{ record = 20 }}
{relay}
[sources.crash]
[campaigns.crash]
source = "crash"
lane = "segmentation"
plugin = "{panic}"
[sources.broken]
[campaigns.broken]
source = "broken"
lane = "speed"
plugin = "{trivial}"
"#,
        greet = greet_toml(),
        relay = care_forwarder_toml("relay", sink, "", ""),
        panic = plugin("panic"),
        trivial = plugin("trivial"),
        burn = plugin("burn"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_deploys_rolls_back_and_replays_dead_letters_in_the_console() {
    let console = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/console");
    assert!(
        console.join("node_modules/puppeteer-core").exists(),
        "puppeteer-core is missing: run scripts/setup.sh"
    );
    // The sink answers 410 Gone once: that delivery becomes a dead letter,
    // and so does the next, to the then disabled destination.
    let mut sink = Recorder::failing_first(&[410], json!({})).await;
    let config = console_toml(&sink);
    // `broken` runs a deployed version whose stored component is gone after
    // a restart: it is unavailable.
    let gateway = Gateway::start(&config).await;
    let digest = deploy(&gateway, "broken", "welcome").await;
    let blob = gateway.data_file(&format!("plugins/blobs/{digest}.wasm"));
    let dir = gateway.stop().await;
    std::fs::remove_file(blob).expect("remove a stored component");
    let gateway = Arc::new(Gateway::start_in(dir, &config, &[]).await);

    // The first body would run as script if the console put it into the
    // page as HTML.
    let orders = [
        json!({ "order": "o-1", "note": "<b id=\"xss\">bold</b>" }),
        json!({ "order": "o-2" }),
    ];
    assert_eq!(
        gateway.post_json("orders", orders[0].clone()).await.status,
        202
    );
    assert_eq!(sink.next().await.json(), orders[0]);
    dead_letters_eventually(&gateway, 1).await;
    assert_eq!(
        gateway.post_json("orders", orders[1].clone()).await.status,
        202
    );
    dead_letters_eventually(&gateway, 2).await;
    assert_eq!(gateway.post_json("crash", json!({})).await.status, 202);
    // Judged after eight runs: throttled by the speed lane's guard.
    for _ in 0..8 {
        assert_eq!(gateway.post("score", "{}").await.status, 200);
    }
    dead_letters_eventually(&gateway, 3).await;
    assert_eq!(who_answers(&gateway).await, Answered::Trivial);

    // A caller keeps greet busy, so the lanes page has a rate to show.
    let traffic = tokio::spawn({
        let gateway = gateway.clone();
        async move {
            loop {
                gateway.post("site", "{}").await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    // The page itself is open and holds no data.
    let page = gateway.open_admin_text("/console/").await;
    assert!(page.contains("<main></main>") && !page.contains("greet"));
    let screenshots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let run = Command::new("node")
        .arg(console.join("console.mjs"))
        .arg(format!("http://{}", gateway.admin))
        .arg(ADMIN_TOKEN)
        .arg(&screenshots)
        .arg(plugin("burn"))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(BROWSER_PATIENCE, run)
        .await
        .expect("the browser run to end")
        .expect("run node");
    traffic.abort();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the console run failed (screenshots in {}):\n{stdout}{}",
        screenshots.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("console: all steps passed"), "{stdout}");
    for page in [
        "login",
        "lanes",
        "campaigns",
        "shadow",
        "events",
        "destinations",
        "dead-letters",
        "advice",
    ] {
        assert!(screenshots.join(format!("{page}.png")).exists(), "{page}");
    }

    // What the clicks did, seen from outside: version 1 runs again after a
    // deploy of version 2; both of relay's deliveries reached the sink, and
    // only crash's dead letter is left.
    let versions = gateway
        .admin(Method::GET, "/v1/campaigns/greet/versions")
        .await;
    assert_eq!(versions["active"], 1, "{versions}");
    assert_eq!(versions["versions"].as_array().map(Vec::len), Some(2));
    assert_eq!(who_answers(&gateway).await, Answered::Trivial);
    let mut replayed = vec![sink.next().await.json(), sink.next().await.json()];
    replayed.sort_by_key(|order| order["order"].to_string());
    assert_eq!(replayed, orders);
    let dead = gateway.admin(Method::GET, "/v1/dead-letters").await;
    let left: Vec<&Value> = dead["dead_letters"].as_array().unwrap().iter().collect();
    assert_eq!(left.len(), 1, "{dead}");
    assert_eq!(left[0]["campaign"], "crash");
}
