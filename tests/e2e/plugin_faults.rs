//! What a plugin's output may do to the gateway's log: its log messages
//! and prints are held to per-event budgets, and what is dropped is said.

use serde_json::json;

use crate::harness::{plugin, Gateway};

/// A sync speed campaign `name` (on source `name`) running the plugin
/// `plugin_name`, with time enough for a loaded machine; `extra` adds
/// config lines.
fn speed_campaign_toml(name: &str, plugin_name: &str, extra: &str) -> String {
    format!(
        r#"
[sources.{name}]
[campaigns.{name}]
source = "{name}"
lane = "speed"
plugin = "{plugin}"
deadline_ms = 30_000
{extra}
"#,
        plugin = plugin(plugin_name),
    )
}

/// A campaign `name` running the `abuse` plugin, with fuel enough for its
/// floods.
fn abuse_toml(name: &str) -> String {
    speed_campaign_toml(name, "abuse", "fuel = 10_000_000_000")
}

/// The log lines that contain every one of `parts`.
fn lines_with<'a>(log: &'a str, parts: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|line| parts.iter().all(|part| line.contains(part)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_and_stdout_floods_are_cut_at_their_budgets_and_the_drop_is_logged_once() {
    let gateway = Gateway::start(&abuse_toml("chatty")).await;
    // 1 MiB each way, in lines of 1023 characters (1024 bytes with the
    // newline on stdout).
    let reply = gateway
        .post_json(
            "chatty",
            json!({ "log_bytes": 1 << 20, "print_bytes": 1 << 20, "respond": {} }),
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let event = format!(
        "event={}",
        reply.headers["hooklane-event-id"].to_str().unwrap()
    );
    let log = gateway.log();
    let line = "x".repeat(1023);
    let printed = lines_with(&log, &[&line, "stdout", &event]).len();
    let logged = lines_with(&log, &[&line, &event]).len() - printed;
    assert_eq!(logged, 64, "64 KiB of log messages: 64 whole lines");
    assert_eq!(printed, 16, "16 KiB of stdout: 16 lines");

    let dropped = lines_with(&log, &["Dropped plugin output", "campaign=chatty", &event]);
    assert_eq!(
        dropped.len(),
        2,
        "one line per stream over budget: {dropped:#?}"
    );
    for (stream, fields) in [
        (
            "log",
            // 960 messages of 1023 bytes did not fit in 65536.
            "dropped_bytes=982080 dropped_lines=960 budget_bytes=65536",
        ),
        (
            "stdout",
            "dropped_bytes=1032192 dropped_lines=1008 budget_bytes=16384",
        ),
    ] {
        let stream = format!("stream=\"{stream}\"");
        assert!(
            dropped.iter().any(|line| line.contains(&stream)
                && line.contains(fields)
                && line.contains("lane=speed")
                && line.contains("version=")),
            "no {stream} line with {fields}: {dropped:#?}"
        );
    }
}
