//! Faults at the edge of the gateway (issue #12): running out of file
//! descriptors, control characters meant to forge log lines, a slow client
//! on the admin listener, a rotated admin token file, Svix's header names,
//! and request heads over the limits.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::harness::{
    one_campaign_toml, plugin, serve_command, until_closed, within, Gateway, Launch, Reply,
    ADMIN_TOKEN,
};

/// A sync campaign on source `orders` that answers every webhook.
fn orders_toml() -> String {
    one_campaign_toml("orders", "orders", "speed", &plugin("trivial"))
}

/// The value of a counter `series` (name and labels) in `/metrics`.
async fn counter(gateway: &Gateway, series: &str) -> f64 {
    let metrics = gateway.open_admin_text("/metrics").await;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_accept_loop_backs_off() {
    const FD_LIMIT: u32 = 128;
    let launch = Launch {
        fd_limit: Some(FD_LIMIT),
        ..Launch::default()
    };
    // Connections that never send a head must hold their descriptor for the
    // whole test.
    let config = format!("header_read_timeout_ms = 600000\n{}", orders_toml());
    let gateway = Gateway::launch(tempfile::tempdir().unwrap(), &config, launch).await;
    // Each accepted connection takes a descriptor: this many exhaust them,
    // whatever the gateway holds already; the rest wait in the backlog.
    let mut held = Vec::new();
    for _ in 0..FD_LIMIT {
        held.push(TcpStream::connect(gateway.ingress).await.expect("connect"));
    }
    let warnings = || {
        gateway
            .log()
            .lines()
            .filter(|line| line.contains("Could not accept a connection"))
            .count()
    };
    within("the first accept error", async {
        while warnings() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Hold the fault: a loop that retries at once logs thousands of
    // warnings in this time; one a second is the most allowed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logged = warnings();
    assert!(logged <= 5, "{logged} accept warnings in about 2 s");

    drop(held);
    let reply = gateway.post("orders", "{}").await;
    assert_eq!(reply.status, 200, "serves again once descriptors are free");
    let errors = counter(
        &gateway,
        r#"hooklane_accept_errors_total{listener="ingress"}"#,
    )
    .await;
    assert!(errors >= logged as f64, "{errors} errors counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_cannot_forge_log_lines() {
    let gateway = Gateway::start("").await;
    let reply = gateway.post("a%0Aforged%0D%09line", "{}").await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json()["error"], "unknown_source");
    // The refusal is logged before it is answered.
    let log = gateway.log();
    assert!(
        log.contains(r"no source named `a\nforged\r\tline` is configured"),
        "{log}"
    );
    assert!(!log.lines().any(|line| line.starts_with("forged")), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_cuts_off_slow_request_heads() {
    let gateway = Gateway::start("header_read_timeout_ms = 300\n").await;
    let mut stream = TcpStream::connect(gateway.admin).await.expect("connect");
    stream
        .write_all(b"GET /v1/campaigns HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .expect("write");
    until_closed(&mut stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_admin_token_file_takes_effect_and_the_env_token_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "first-file-token\n").unwrap();
    let launch = Launch {
        admin_toml: "token_file = \"admin.token\"",
        ..Launch::default()
    };
    // The harness also sets HOOKLANE_ADMIN_TOKEN, which the file overrides.
    let gateway = Gateway::launch(dir, "", launch).await;
    let status = |token: &'static str| {
        let request = gateway
            .http
            .get(format!("http://{}/v1/campaigns", gateway.admin))
            .bearer_auth(token);
        async move { request.send().await.expect("admin reachable").status() }
    };
    assert_eq!(status("first-file-token").await, 200);
    assert_eq!(status(ADMIN_TOKEN).await, 401);

    // Rotate the way tools do: write a new file, rename it over the old.
    let next = token_file.with_extension("next");
    std::fs::write(&next, "second-file-token\n").unwrap();
    std::fs::rename(&next, &token_file).unwrap();
    assert_eq!(status("second-file-token").await, 200);
    assert_eq!(status("first-file-token").await, 401);

    // The CLI reads the same file (its HOOKLANE_ADMIN_TOKEN is refused).
    let file = token_file.to_str().expect("a UTF-8 path");
    let lanes = gateway.cli(&["lanes", "--token-file", file]).await;
    assert!(lanes.contains("speed"), "{lanes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_admin_token_file_stops_the_start_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let launch = Launch {
        admin_toml: "token_file = \"missing.token\"",
        ..Launch::default()
    };
    let status = within(
        "the gateway to refuse its config",
        serve_command(dir.path(), "", &launch).status(),
    )
    .await
    .expect("run hooklane");
    assert!(!status.success());
    let log = std::fs::read_to_string(dir.path().join("gateway.log")).unwrap();
    let expected = format!(
        "{}: key `admin.token_file`: a readable file holding the admin token; cannot read {}: No such file or directory",
        dir.path().join("hooklane.toml").display(),
        dir.path().join("missing.token").display()
    );
    assert!(log.contains(&expected), "{log}");
}

const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// `svix-id`, `svix-timestamp` and `svix-signature` for `body`, signed as
/// the Standard Webhooks specification says: base64 HMAC-SHA256 of
/// `{id}.{timestamp}.{body}` under the `whsec_` key.
fn svix_headers(id: &str, body: &str) -> Vec<(&'static str, String)> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(WHSEC.strip_prefix("whsec_").unwrap())
        .unwrap();
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    vec![
        ("svix-id", id.to_owned()),
        ("svix-timestamp", timestamp.to_string()),
        ("svix-signature", format!("v1,{signature}")),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svix_header_names_verify_and_deduplicate() {
    let config = format!(
        r#"
[sources.svix]
verify = {{ scheme = "standard-webhooks", secrets = [{{ env = "SVIX_WHSEC" }}] }}
[campaigns.svix]
source = "svix"
lane = "care"
plugin = "{trivial}"
[sources.unsigned]
[campaigns.unsigned]
source = "unsigned"
lane = "care"
plugin = "{trivial}"
"#,
        trivial = plugin("trivial")
    );
    let gateway = Gateway::start_in(
        tempfile::tempdir().unwrap(),
        &config,
        &[("SVIX_WHSEC", WHSEC)],
    )
    .await;
    let post = |headers: Vec<(&'static str, String)>, body: &'static str| {
        let gateway = &gateway;
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            gateway.post_with("svix", &headers, body).await
        }
    };
    let body = r#"{"order": 1}"#;
    let first = post(svix_headers("msg_svix_1", body), body).await;
    assert_eq!(
        first.status,
        202,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    // A redelivery, signed again: the same svix-id is a duplicate.
    let again = post(svix_headers("msg_svix_1", body), body).await;
    assert_eq!(again.status, 202);
    assert_eq!(again.json()["duplicate"], true);
    assert_eq!(again.json()["event_id"], first.json()["event_id"]);

    // Unsigned sources read `svix-id` for deduplication too.
    let id = [("svix-id", "msg_svix_unsigned")];
    let first = gateway.post_with("unsigned", &id, body).await;
    let again = gateway.post_with("unsigned", &id, body).await;
    assert_eq!(again.json()["duplicate"], true, "{}", again.json());
    assert_eq!(again.json()["event_id"], first.json()["event_id"]);

    let tampered = post(svix_headers("msg_svix_2", body), r#"{"order": 2}"#).await;
    assert_eq!(tampered.status, 401);
    assert_eq!(tampered.json()["error"], "bad_signature");
    let mut unsigned = svix_headers("msg_svix_3", body);
    unsigned.retain(|(name, _)| *name != "svix-signature");
    let missing = post(unsigned, body).await;
    assert_eq!(missing.status, 401);
    assert_eq!(
        missing.json()["detail"],
        "the `svix-signature` header is missing"
    );
}

/// Send `head` (a request head without its blank line) and read the answer.
async fn raw(addr: std::net::SocketAddr, head: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("{head}\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    until_closed(&mut stream).await
}

fn assert_headers_too_large(reply: &Reply) {
    assert_eq!(reply.status, 431);
    let body = reply.json();
    assert_eq!(body["error"], "headers_too_large", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .ends_with("at most 64 headers and 16384 bytes are accepted"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_over_the_limits_get_a_json_431_on_both_listeners() {
    let gateway = Gateway::start(&orders_toml()).await;
    let fillers: Vec<(String, &str)> = (0..100).map(|i| (format!("x-filler-{i}"), "x")).collect();
    let fillers: Vec<(&str, &str)> = fillers.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    assert_headers_too_large(&gateway.post_with("orders", &fillers, "{}").await);
    let long = "x".repeat(20 * 1024);
    assert_headers_too_large(
        &gateway
            .post_with("orders", &[("x-long", &long)], "{}")
            .await,
    );
    let mut admin = gateway
        .http
        .get(format!("http://{}/healthz", gateway.admin));
    for (name, value) in &fillers {
        admin = admin.header(*name, *value);
    }
    let admin = admin.send().await.expect("admin reachable");
    assert_headers_too_large(&Reply {
        status: admin.status(),
        headers: admin.headers().clone(),
        body: admin.bytes().await.expect("body"),
    });
    assert_eq!(gateway.post("orders", "{}").await.status, 200);

    // What remains hyper's: beyond its own limits (256 headers, 64 KiB),
    // and a head it cannot parse, a bare answer without a body.
    let many: String = (0..300).map(|i| format!("\r\nx-filler-{i}: x")).collect();
    let answer = raw(
        gateway.ingress,
        &format!("POST /hooks/orders HTTP/1.1\r\nhost: x{many}"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    assert!(answer.ends_with("\r\n\r\n"), "{answer}");
    let huge = "x".repeat(70 * 1024);
    let beyond = gateway
        .http
        .post(format!("http://{}/hooks/orders", gateway.ingress))
        .header("x-huge", &huge)
        .send()
        .await;
    // Or a hang-up while the client still writes its head.
    if let Ok(reply) = beyond {
        assert_eq!(reply.status(), 431);
        assert!(reply.bytes().await.expect("body").is_empty());
    }
    let answer = raw(gateway.ingress, "NOT A REQUEST").await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.ends_with("\r\n\r\n"), "{answer}");
}
