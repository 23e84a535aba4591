//! The console in a real headless Chromium (`tests/console/console.mjs`,
//! puppeteer-core on Debian's chromium, both installed by
//! `scripts/setup.sh`): an operator logs in, watches the lanes, deploys a
//! version and rolls it back, enables a destination and replays a dead
//! letter through the pages; the gateway shows the effects.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use tokio::process::Command;

use crate::deploy::{greet_toml, who_answers, Answered};
use crate::harness::{care_forwarder_toml, plugin, Gateway, Recorder, ADMIN_TOKEN};

/// The browser run bounds itself at 120 s; this is the last resort.
const BROWSER_PATIENCE: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_deploys_rolls_back_and_replays_a_dead_letter_in_the_console() {
    let console = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/console");
    assert!(
        console.join("node_modules/puppeteer-core").exists(),
        "puppeteer-core is missing: run scripts/setup.sh"
    );
    // The sink answers 410 Gone once: the delivery becomes a dead letter
    // and the destination is disabled until enabled again.
    let mut sink = Recorder::failing_first(&[410], json!({})).await;
    let gateway = Gateway::start(&format!(
        "{}\n{}",
        greet_toml(),
        care_forwarder_toml("relay", &sink, "", "")
    ))
    .await;
    // Its body would run as script if the console put it into the page as HTML.
    let order = json!({ "order": "o-1", "note": "<b id=\"xss\">bold</b>" });
    assert_eq!(gateway.post_json("orders", order.clone()).await.status, 202);
    assert_eq!(sink.next().await.json(), order);
    crate::harness::within("the dead letter", async {
        while gateway.admin(Method::GET, "/v1/dead-letters").await["dead_letters"]
            .as_array()
            .is_none_or(Vec::is_empty)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(who_answers(&gateway).await, Answered::Trivial);

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
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the console run failed (screenshots in {}):\n{stdout}{}",
        screenshots.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("console: all steps passed"), "{stdout}");
    for page in ["lanes", "campaigns", "destinations", "dead-letters"] {
        assert!(screenshots.join(format!("{page}.png")).exists(), "{page}");
    }

    // What the clicks did, seen from outside: version 1 runs again after a
    // deploy of version 2, and the replayed delivery reached the sink.
    let versions = gateway
        .admin(Method::GET, "/v1/campaigns/greet/versions")
        .await;
    assert_eq!(versions["active"], 1, "{versions}");
    assert_eq!(versions["versions"].as_array().map(Vec::len), Some(2));
    assert_eq!(who_answers(&gateway).await, Answered::Trivial);
    assert_eq!(sink.next().await.json(), order);
}
