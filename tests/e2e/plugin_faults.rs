//! What a plugin's output may do to the gateway's log and to the caller:
//! its log and prints are held to per-event budgets, an answer hyper could
//! not send as it is gets `bad_output`, and the secrets in its fetch URLs
//! reach neither the caller nor the log.

use serde_json::{json, Value};

use crate::harness::{black_hole, plugin, Gateway, PATIENCE};

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

/// POST `script` to `source`; the status and body, or why there is none
/// (a plugin's answer that breaks the connection must fail the test, not
/// the harness).
async fn answer(gateway: &Gateway, source: &str, script: &Value) -> Result<(u16, Value), String> {
    let response = gateway
        .http
        .post(format!("http://{}/hooks/{source}", gateway.ingress))
        .header("content-type", "application/json")
        .body(script.to_string())
        .timeout(PATIENCE)
        .send()
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("no body: {e}"))?;
    let body = serde_json::from_slice(&body)
        .map_err(|_| format!("{status} with a body that is not JSON: {body:?}"))?;
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_hyper_cannot_send_as_they_are_are_refused_as_bad_output() {
    let gateway = Gateway::start(&abuse_toml("rude")).await;
    let header = |name: &str, value: &str| json!({ "headers": [[name, value]] });
    let status = |status: u16| json!({ "status": status });
    let gateway_only = [
        ("connection", "close"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("transfer-encoding", "chunked"),
        ("Transfer-Encoding", "gzip"),
        ("te", "trailers"),
        ("trailer", "x-checksum"),
        ("upgrade", "websocket"),
        ("content-length", "1"),
        ("Content-Length", "100000"),
        ("hooklane-event-id", "forged"),
    ];
    let not_http = [
        (
            header("bad name", "1"),
            "header name \"bad name\"".to_owned(),
        ),
        (
            header("x-note", "a\r\nset-cookie: b=2"),
            "header `x-note` whose value".to_owned(),
        ),
    ];
    let cases = gateway_only
        .map(|(name, value)| (header(name, value), format!("header `{name}`")))
        .into_iter()
        .chain(not_http)
        .chain([100, 101, 103, 600].map(|s| (status(s), format!("status {s}"))));
    // Every case is tried, so a failure lists all that are not refused.
    let mut wrong = Vec::new();
    for (respond, named) in cases {
        let script = json!({ "respond": respond });
        match answer(&gateway, "rude", &script).await {
            Ok((502, body))
                if body["cause"] == "bad_output"
                    && body["campaign"] == "rude"
                    && body["detail"].as_str().is_some_and(|d| {
                        d.starts_with("campaign `rude` returned an action it may not take")
                            && d.contains(&named)
                    }) => {}
            other => wrong.push(format!("{script}: {other:?}")),
        }
    }
    assert!(
        wrong.is_empty(),
        "not refused as bad_output:\n{}",
        wrong.join("\n")
    );

    // The caller's connections are fine: an ordinary answer still arrives.
    let ordinary = json!({ "respond": header("x-note", "fine") });
    let (status, _) = answer(&gateway, "rude", &ordinary).await.unwrap();
    assert_eq!(status, 200);
}

const PASSWORD: &str = "pa55w0rd";
const API_KEY: &str = "SECRET-key-123";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_fetch_urls_reach_neither_the_caller_nor_the_log() {
    let silent = black_hole().await;
    // A port that was free a moment ago: connections to it are refused.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let url = |addr: &str| format!("http://shop:{PASSWORD}@{addr}/x?api_key={API_KEY}#{API_KEY}");
    // `hang` fetches its `url` setting and fails with the fetch's error.
    let campaign = |name: &str, url: String| {
        let extra = format!(
            "fetch_timeout_ms = 200\nallowed_hosts = [\"{silent}\", \"{closed}\"]\nsettings = {{ url = \"{url}\" }}"
        );
        speed_campaign_toml(name, "hang", &extra)
    };
    let config = [
        campaign("times-out", url(&silent.to_string())),
        campaign("refused", url(&closed.to_string())),
        // Port out of range: the URL does not even parse.
        campaign("unparseable", url("127.0.0.1:99999")),
    ]
    .concat();
    let gateway = Gateway::start(&config).await;

    let cases = [
        (
            "times-out",
            "fetch_timeout",
            format!("http://{silent}/x?<redacted> timed out"),
        ),
        (
            "refused",
            "unavailable",
            format!("connection failed: http://{closed}/x?<redacted>: "),
        ),
        (
            "unparseable",
            "unavailable",
            "not a valid URL: invalid port number".into(),
        ),
    ];
    for (source, cause, detail) in cases {
        let reply = gateway.post_json(source, json!({})).await;
        let text = String::from_utf8_lossy(&reply.body);
        assert_eq!(reply.status, 502, "{text}");
        assert_eq!(reply.json()["cause"], cause, "{text}");
        assert!(text.contains(&detail), "{source}: no `{detail}` in {text}");
        assert!(
            !text.contains(PASSWORD) && !text.contains(API_KEY),
            "{text}"
        );
    }
    let log = gateway.log();
    for source in ["times-out", "refused", "unparseable"] {
        assert!(
            lines_with(&log, &["Campaign failed", &format!("campaign={source}")]).len() == 1,
            "the failure of {source} is logged"
        );
    }
    let leaks = lines_with(&log, &[PASSWORD])
        .into_iter()
        .chain(lines_with(&log, &[API_KEY]))
        .collect::<Vec<_>>();
    assert!(leaks.is_empty(), "secrets in the log: {leaks:#?}");
}
