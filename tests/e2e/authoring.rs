//! `hooklane plugin test`: an author runs a plugin against recorded events
//! without a gateway and sees, per event, the actions, what the gateway
//! would make of them, fuel and time.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use crate::harness::plugin;

#[test]
fn plugin_test_prints_actions_fuel_and_failures_per_event() {
    let dir = tempfile::tempdir().expect("temp dir");
    let events = "{\"body\": {\"phone\": \"+4915112345678\"}}\n\n{\"body\": {\"phone\": \"12\"}}\n";
    let login_code = plugin("login-code");
    let args = [login_code.as_str(), "--setting", "code_ttl_seconds=60"];
    let (reports, output) = plugin_test(dir.path(), &args, events);
    assert_eq!(reports.len(), 2, "{output:?}");

    let sent = &reports[0];
    assert_eq!(sent["event"], 1);
    assert!(sent["fuel"].as_u64().unwrap() > 0);
    assert!(sent["ms"].as_f64().unwrap() > 0.0);
    let actions = sent["actions"].as_array().unwrap();
    assert_eq!(actions[0]["kv_set"]["ttl_seconds"], 60);
    assert_eq!(actions[1]["deliver"]["destination"], "sms");
    assert_eq!(actions[2]["respond"]["status"], 200);

    assert_eq!(reports[1]["event"], 3, "numbered by line");
    assert_eq!(reports[1]["failed"]["cause"], "invalid_input");
    // A failed event makes the command fail, for scripts and CI.
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("1 event(s) failed"));
}

#[test]
fn plugin_test_runs_events_on_kept_instances_when_asked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let events = "{\"body\": \"a\"}\n{\"body\": \"b\"}\n{\"body\": \"c\"}\n";
    let leak = plugin("leak");
    let seen = |extra: &[&str]| {
        let (reports, output) =
            plugin_test(dir.path(), &[&[leak.as_str()], extra].concat(), events);
        assert!(output.status.success(), "{output:?}");
        reports
            .iter()
            .map(|report| {
                let body = report["actions"][0]["respond"]["body"]
                    .as_str()
                    .expect("answer");
                let answer: Value = serde_json::from_str(body).expect("JSON answer");
                (
                    answer["events"].as_u64().expect("events"),
                    answer["previous"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        seen(&[]),
        [(1, Value::Null), (1, Value::Null), (1, Value::Null)]
    );
    assert_eq!(
        seen(&["--events-per-instance", "2"]),
        [(1, Value::Null), (2, Value::from("a")), (1, Value::Null)]
    );
}

/// Run `hooklane plugin test` with `args` on `events` (JSON lines); its
/// reports, one per event, and how it ended.
fn plugin_test(dir: &Path, args: &[&str], events: &str) -> (Vec<Value>, Output) {
    let file = dir.join("events.jsonl");
    std::fs::write(&file, events).expect("write events");
    let output = Command::new(env!("CARGO_BIN_EXE_hooklane"))
        .args(["plugin", "test"])
        .args(args)
        .arg("--events")
        .arg(&file)
        .output()
        .expect("run hooklane plugin test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let reports = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON report per line"))
        .collect();
    (reports, output)
}

#[test]
fn plugin_test_with_a_config_checks_actions_and_keeps_kv_like_the_gateway() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("hooklane.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[sources.shop]
[campaigns.scripted]
source = "shop"
lane = "care"
plugin = "{}"
destinations = ["sms"]
[destinations.sms]
url = "http://127.0.0.1:9/"
[store]
kv_quota_keys = 1
"#,
            plugin("abuse")
        ),
    )
    .expect("write config");
    let config = config.to_str().unwrap();
    let events = [
        serde_json::json!({ "body": { "kv_writes": { "prefix": "k", "count": 1, "bytes": 5 } } }),
        serde_json::json!({ "body": { "kv_read": "k0", "respond": { "status": 201 } } }),
        serde_json::json!({ "body": { "deliver_to": "crm" } }),
        serde_json::json!({ "body": { "deliver_to": "sms" } }),
        serde_json::json!({ "body": { "kv_writes": { "prefix": "q" }, "respond": { "status": 200 } } }),
    ];
    let events: Vec<String> = events.iter().map(Value::to_string).collect();
    let args = ["--config", config, "--campaign", "scripted"];
    let (reports, output) = plugin_test(dir.path(), &args, &events.join("\n"));
    assert_eq!(reports.len(), 5, "{output:?}");

    // A write through the kv import is committed, and the next event reads it.
    assert_eq!(reports[0]["planned"]["kv"], serde_json::json!(["k0"]));
    let answer = &reports[1]["actions"][0]["respond"];
    assert_eq!(answer["status"], 201);
    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["kv_read_bytes"], 5, "{body}");
    assert_eq!(reports[1]["planned"]["reply"], 201);

    // A destination the campaign does not list fails the event, as live.
    assert_eq!(reports[2]["failed"]["cause"], "bad_output");
    let detail = reports[2]["failed"]["detail"].as_str().unwrap();
    assert!(
        detail.contains("deliver to `crm`, which is not in campaigns.scripted.destinations"),
        "{detail}"
    );

    let [delivery] = reports[3]["planned"]["deliveries"]
        .as_array()
        .unwrap()
        .as_slice()
    else {
        panic!("one delivery: {}", reports[3]);
    };
    assert_eq!(delivery["destination"], "sms");
    assert!(delivery["id"].as_str().unwrap().starts_with("msg_"));

    // The key kept from the first event fills the namespace's quota.
    let answer = reports[4]["actions"][0]["respond"]["body"]
        .as_str()
        .unwrap();
    let body: Value = serde_json::from_str(answer).unwrap();
    assert_eq!(body["kv_written"], 0, "{body}");
    assert!(
        body["kv_error"].as_str().unwrap().contains("quota"),
        "{body}"
    );
    assert!(!output.status.success(), "one event failed");
    assert!(String::from_utf8_lossy(&output.stderr).contains("1 event(s) failed"));
}

#[test]
fn plugin_test_names_the_campaigns_of_a_config_when_it_cannot_tell_which() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("hooklane.toml");
    let campaign = |name: &str| {
        format!(
            "[campaigns.{name}]\nsource = \"shop\"\nlane = \"care\"\nplugin = \"{}\"\n",
            plugin("relay")
        )
    };
    let text = format!("[sources.shop]\n{}{}", campaign("one"), campaign("two"));
    std::fs::write(&config, text).expect("write config");
    let config = config.to_str().unwrap();
    let event = r#"{"body": {}}"#;
    for (args, expected) in [
        (
            vec!["--config", config],
            "has 2 campaigns: name one with --campaign (one of: one, two)",
        ),
        (
            vec!["--config", config, "--campaign", "three"],
            "has no campaign `three` (it has: one, two)",
        ),
    ] {
        let (reports, output) = plugin_test(dir.path(), &args, event);
        assert!(reports.is_empty());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains(expected),
            "{stderr}"
        );
    }
}

#[test]
fn check_config_and_plugin_test_compile_each_component_once_through_the_cache() {
    let dir = tempfile::tempdir().expect("temp dir");
    let relay = plugin("relay");
    let config = dir.path().join("hooklane.toml");
    let campaign = |name: &str| {
        format!("[campaigns.{name}]\nsource = \"shop\"\nlane = \"care\"\nplugin = \"{relay}\"\n")
    };
    let text = format!("[sources.shop]\n{}{}", campaign("one"), campaign("two"));
    std::fs::write(&config, text).expect("write config");
    let config = config.to_str().unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, "{\"body\": {}}\n").expect("write events");
    let compiles = |args: &[&str]| -> Vec<String> {
        let output = Command::new(env!("CARGO_BIN_EXE_hooklane"))
            .args(args)
            .env("HOOKLANE_CACHE_DIR", dir.path().join("cache"))
            .env("HOOKLANE_LOG", "hooklane::runtime=debug")
            .output()
            .expect("run hooklane");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{args:?}: {stderr}");
        stderr
            .lines()
            .filter(|line| line.contains("Compiled plugin ready"))
            .map(|line| line.split("cached=").nth(1).unwrap_or("").to_owned())
            .collect()
    };
    let compiled = |loads: &[String]| loads.iter().filter(|l| l.starts_with("false")).count();
    let check = ["check-config", "--config", config];
    let first = compiles(&check);
    assert_eq!(
        compiled(&first),
        1,
        "two campaigns, one component: {first:?}"
    );
    let again = compiles(&check);
    assert!(!again.is_empty() && compiled(&again) == 0, "{again:?}");
    let test = [
        "plugin",
        "test",
        &relay,
        "--events",
        events.to_str().unwrap(),
    ];
    let tested = compiles(&test);
    assert!(!tested.is_empty() && compiled(&tested) == 0, "{tested:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_test_watch_rebuilds_and_reruns_when_the_events_change() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let dir = tempfile::tempdir().expect("temp dir");
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, "{\"body\": {\"n\": 1}}\n").expect("write events");
    let builds = dir.path().join("builds");
    let build = format!("echo built >> {}", builds.display());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hooklane"))
        .args([
            "plugin",
            "test",
            &plugin("relay"),
            "--watch",
            "--build",
            &build,
        ])
        .arg("--events")
        .arg(&events)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run hooklane plugin test --watch");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    // The delivered bodies of one run, until its closing line.
    let mut next_run = async || -> (Value, Vec<String>) {
        let mut bodies = Vec::new();
        loop {
            let line = lines.next_line().await.expect("read").expect("a line");
            let report: Value = serde_json::from_str(&line).expect("JSON");
            if report.get("run").is_some() {
                return (report, bodies);
            }
            let body = &report["actions"][0]["deliver"]["body"];
            bodies.push(body.as_str().expect("body").to_owned());
        }
    };
    let (first, bodies) = crate::harness::within("the first run", next_run()).await;
    assert_eq!(first, serde_json::json!({ "run": 1, "failed": 0 }));
    assert_eq!(bodies, [r#"{"n":1}"#]);

    std::fs::write(&events, "{\"body\": {\"n\": 2}}\n").expect("rewrite events");
    let (second, bodies) = crate::harness::within("a rerun", next_run()).await;
    assert_eq!(second["run"], 2);
    assert_eq!(bodies, [r#"{"n":2}"#]);
    let built = std::fs::read_to_string(&builds).expect("builds");
    assert_eq!(built.lines().count(), 2, "built before each run");
}
