//! `hooklane plugin test`: an author runs a plugin against recorded events
//! without a gateway and sees, per event, the actions, fuel and time.

use std::process::Command;

use crate::harness::plugin;

#[test]
fn plugin_test_prints_actions_fuel_and_failures_per_event() {
    let dir = tempfile::tempdir().expect("temp dir");
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        "{\"body\": {\"phone\": \"+4915112345678\"}}\n\n{\"body\": {\"phone\": \"12\"}}\n",
    )
    .expect("write events");
    let output = Command::new(env!("CARGO_BIN_EXE_hooklane"))
        .args([
            "plugin",
            "test",
            &plugin("login-code"),
            "--setting",
            "code_ttl_seconds=60",
            "--events",
        ])
        .arg(&events)
        .output()
        .expect("run hooklane plugin test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let reports: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON report per line"))
        .collect();
    assert_eq!(reports.len(), 2, "{stdout}");

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
