//! Faults the gateway recovers from by itself and limits a hostile plugin
//! cannot break: a destination that comes back after its breaker opened, a
//! full disk that is freed again, emit cycles, KV quotas and KV writes of
//! failed runs, and stored plugin blobs that were tampered with.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{black_hole, care_forwarder_toml, plugin, within, Gateway, Recorder};

/// The `sink` destination's breaker state, as operators see it.
async fn breaker(gateway: &Gateway) -> String {
    let destinations = gateway.admin(Method::GET, "/v1/destinations").await;
    destinations["destinations"][0]["breaker"]
        .as_str()
        .expect("state")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_closes_again_when_its_destination_comes_back() {
    // Down for the first 12 attempts, then up: the breaker opens on the way.
    let mut sink = Recorder::failing_first(&[503; 12], json!({})).await;
    let gateway = Gateway::start(&care_forwarder_toml(
        "relay",
        &sink,
        "breaker_cooldown_ms = 200\nretry_schedule_ms = [50, 50, 50, 50, 50, 50, 50, 50, 50, 50]",
        "",
    ))
    .await;
    for n in 0..10 {
        let reply = gateway.post_json("orders", json!({ "n": n })).await;
        assert_eq!(reply.status, 202);
    }
    let mut delivered = BTreeSet::new();
    let mut attempts = 0;
    while delivered.len() < 10 {
        let request = sink.next().await;
        attempts += 1;
        if attempts > 12 {
            delivered.insert(request.json()["n"].as_u64().expect("n"));
        }
    }
    assert!(attempts >= 22, "12 failed attempts, then 10 delivered");
    within("the breaker to close", async {
        while breaker(&gateway).await != "closed" {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let opened = gateway.log().matches("Circuit breaker opened").count();
    assert!(
        opened >= 1,
        "the breaker opened on the way:\n{}",
        gateway.log()
    );
}

/// A small tmpfs mounted for one test, unmounted (lazily) on drop: a disk
/// that can really fill up and be freed again.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mount `size_mb` MiB at `at`; `None` where mounting is not allowed
    /// (not root).
    fn mount(at: &std::path::Path, size_mb: u32) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).expect("mount point");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|status| status.success());
        mounted.then(|| Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Write `path` until the disk is full.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("filler");
    let chunk = vec![0u8; 256 << 10];
    while file
        .write_all(&chunk)
        .and_then(|()| file.sync_all())
        .is_ok()
    {}
}

/// `/readyz`'s status and body.
pub(crate) async fn readyz(gateway: &Gateway) -> (u16, String) {
    let response = gateway
        .http
        .get(format!("http://{}/readyz", gateway.admin))
        .send()
        .await
        .expect("admin reachable");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_webhooks_until_space_is_freed_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(_disk) = Tmpfs::mount(&dir.path().join("data"), 16) else {
        assert_ne!(
            rustix::process::geteuid().as_raw(),
            0,
            "root could not mount a tmpfs"
        );
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    // Runs wait on `upstream` while the disk fills, then deliver to `sink`.
    let mut upstream = Recorder::holding(json!({})).await;
    let mut sink = Recorder::start(json!({})).await;
    let hosts = format!("allowed_hosts = [\"{}\"]", upstream.addr);
    let waits = format!("deadline_ms = 60_000\nfetch_timeout_ms = 60_000\n{hosts}");
    let config = care_forwarder_toml("abuse", &sink, "", &waits);
    let gateway = Gateway::start_in(dir, &config, &[]).await;
    let (padding, upstream_url) = ("x".repeat(32 << 10), upstream.url());
    let script =
        |n: u64| json!({ "n": n, "fetch": upstream_url, "deliver_to": "sink", "pad": padding });
    let mut accepted = BTreeSet::new();
    for n in 0..3 {
        assert_eq!(gateway.post_json("orders", script(n)).await.status, 202);
        accepted.insert(n);
    }
    for _ in 0..3 {
        upstream.next().await;
    }

    fill(&gateway.data_file("filler"));
    let refused = async {
        for n in 3..2000 {
            let reply = gateway.post_json("orders", script(n)).await;
            match reply.status.as_u16() {
                202 => accepted.insert(n),
                503 => return reply.json(),
                other => panic!("webhook {n} answered {other}"),
            };
        }
        panic!("a full disk never refused a webhook");
    };
    let refusal = within("a refusal", refused).await;
    assert_eq!(refusal["error"], "store_unavailable", "{refusal}");
    let (status, body) = readyz(&gateway).await;
    assert_eq!(
        status, 503,
        "not ready while the store cannot write: {body}"
    );
    assert!(body.contains("cannot write"), "{body}");

    // The runs in flight finish while the disk is still full, then space
    // comes back: the store reopens by itself and nothing is lost.
    upstream.release();
    std::fs::remove_file(gateway.data_file("filler")).expect("free space");
    within("readiness after space was freed", async {
        while readyz(&gateway).await.0 != 200 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    let after = json!({ "n": 9999, "deliver_to": "sink" });
    assert_eq!(gateway.post_json("orders", after).await.status, 202);
    accepted.insert(9999);
    let mut delivered = BTreeSet::new();
    while delivered != accepted {
        let request = sink.next().await;
        delivered.insert(request.json()["n"].as_u64().expect("n"));
        assert!(delivered.is_subset(&accepted), "only accepted events");
    }
    assert!(gateway.log().contains("Store recovered"));
}

/// Two `abuse` campaigns that emit each event on to the other, twice.
fn emit_cycle_toml(extra: &str) -> String {
    let campaign = |name: &str, source: &str, target: &str| {
        format!(
            "[campaigns.{name}]\nsource = \"{source}\"\nlane = \"care\"\nplugin = \"{}\"\nemits = [\"{target}\"]\nsettings = {{ emit_to = \"{target}\", fanout = \"2\" }}\n",
            plugin("abuse")
        )
    };
    format!(
        "max_emit_depth = 4\n{extra}\n[sources.ping]\n[sources.unused]\n{}{}",
        campaign("ping", "ping", "pong"),
        campaign("pong", "unused", "ping")
    )
}

/// Dead letters, once there are `count` of them.
pub(crate) async fn dead_letters_eventually(gateway: &Gateway, count: usize) -> Vec<Value> {
    within(&format!("{count} dead letters"), async {
        loop {
            let dead = gateway.admin(Method::GET, "/v1/dead-letters").await;
            let dead = dead["dead_letters"].as_array().expect("list").clone();
            if dead.len() >= count {
                return dead;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
}

fn last_cause(letter: &Value) -> (&str, &str) {
    let last = letter["attempts"].as_array().and_then(|a| a.last());
    let last = last.expect("an attempt");
    (
        last["cause"].as_str().unwrap(),
        last["detail"].as_str().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emit_cycle_ends_in_dead_letters() {
    let gateway = Gateway::start(&emit_cycle_toml("[lanes.care]\nmax_in_flight = 2")).await;
    assert_eq!(gateway.post_json("ping", json!({})).await.status, 202);
    // Depth 0 emits 2, … depth 4 holds 16 events, whose emits go too deep.
    let dead = dead_letters_eventually(&gateway, 16).await;
    for letter in &dead {
        let (cause, detail) = last_cause(letter);
        assert_eq!(cause, "emit_depth", "{letter}");
        assert!(detail.contains("max_emit_depth (4)"), "{letter}");
    }
    within("the care lane to settle", async {
        loop {
            let lanes = gateway.admin(Method::GET, "/v1/lanes").await;
            if lanes["lanes"]["care"] == json!({ "queued": 0, "running": 0, "backlog": 0 }) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let dead = gateway.admin(Method::GET, "/v1/dead-letters").await;
    assert_eq!(
        dead["dead_letters"].as_array().map(Vec::len),
        Some(16),
        "no more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emitted_events_count_against_their_lanes_bound() {
    // The care lane's backlog is full of events that wait on a host that
    // never answers; an emit into it is refused like a webhook would be.
    let never = black_hole().await;
    let config = format!(
        r#"
[lanes.care]
queue = 2
[lanes.segmentation]
max_attempts = 1
[sources.waiting]
[campaigns.waiting]
source = "waiting"
lane = "care"
plugin = "{hang}"
deadline_ms = 60_000
fetch_timeout_ms = 60_000
allowed_hosts = ["{never}"]
settings = {{ url = "http://{never}/" }}
[sources.fan]
[campaigns.fan]
source = "fan"
lane = "segmentation"
plugin = "{abuse}"
emits = ["waiting"]
settings = {{ emit_to = "waiting" }}
"#,
        hang = plugin("hang"),
        abuse = plugin("abuse"),
    );
    let gateway = Gateway::start(&config).await;
    for _ in 0..2 {
        assert_eq!(gateway.post_json("waiting", json!({})).await.status, 202);
    }
    assert_eq!(gateway.post_json("waiting", json!({})).await.status, 429);
    assert_eq!(gateway.post_json("fan", json!({})).await.status, 202);
    let dead = dead_letters_eventually(&gateway, 1).await;
    let (cause, detail) = last_cause(&dead[0]);
    assert_eq!(cause, "overloaded", "{}", dead[0]);
    assert!(detail.contains("care lane is full"), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_warns_about_emit_cycles() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("hooklane.toml");
    std::fs::write(&path, emit_cycle_toml("")).expect("config");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_hooklane"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .await
        .expect("run check-config");
    assert!(
        output.status.success(),
        "a cycle is a warning, not an error"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("campaigns `ping`, `pong` emit to each other in a cycle")
            && stderr.contains("max_emit_depth (4)"),
        "{stderr}"
    );
}

/// A sync `abuse` campaign on source `kv`, with a small KV quota.
fn kv_toml() -> String {
    format!(
        r#"
[store]
kv_quota_mb = 1
kv_quota_keys = 50
[sources.kv]
[campaigns.kv]
source = "kv"
lane = "speed"
plugin = "{}"
deadline_ms = 2000
"#,
        plugin("abuse")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_writes_of_a_failed_run_are_not_kept_and_a_namespace_keeps_its_quota() {
    let gateway = Gateway::start(&kv_toml()).await;
    let respond = json!({ "status": 200 });

    // Writes through the import are read back within the run…
    let script = json!({
        "kv_writes": { "prefix": "a", "count": 3, "bytes": 10 },
        "kv_read": "a2",
        "respond": respond,
    });
    let reply = gateway.post_json("kv", script).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json(),
        json!({ "kv_written": 3, "kv_read_bytes": 10 })
    );
    // …kept when it succeeds…
    let stored = gateway
        .admin_with(Method::GET, "/v1/kv/kv/a2", Vec::new())
        .await;
    assert_eq!(stored.status, 200);
    // …and dropped when it fails, whether by error or by deadline.
    for fail in ["error", "deadline"] {
        let script =
            json!({ "kv_writes": { "prefix": fail, "count": 3, "bytes": 10 }, "fail": fail });
        let reply = gateway.post_json("kv", script).await;
        assert!(reply.status.is_server_error(), "{fail}: {}", reply.status);
        let kept = gateway
            .admin_with(Method::GET, &format!("/v1/kv/kv/{fail}0"), Vec::new())
            .await;
        assert_eq!(kept.status, 404, "a failed run ({fail}) kept its kv writes");
    }

    // The quota: 1 MiB. The import refuses the write that would cross it,
    // and the plugin hears why.
    let script = json!({
        "kv_writes": { "prefix": "big", "count": 20, "bytes": 100_000 },
        "respond": respond,
    });
    let reply = gateway.post_json("kv", script).await;
    assert_eq!(reply.status, 200);
    let report = reply.json();
    assert_eq!(report["kv_written"], 10, "{report}");
    assert!(
        report["kv_error"]
            .as_str()
            .unwrap()
            .contains("over its quota"),
        "{report}"
    );
    // Keys: 50 at most; 3 + 10 are stored.
    let script = json!({
        "kv_writes": { "prefix": "many", "count": 100, "bytes": 1 },
        "respond": respond,
    });
    let report = gateway.post_json("kv", script).await.json();
    assert_eq!(report["kv_written"], 37, "{report}");
}

/// A sync `trivial` campaign `greet`, a `relay` campaign `relay` on
/// `orders` to `sink`, and a sync `trivial` campaign `other`.
fn blob_toml(sink: &Recorder) -> String {
    let trivial = plugin("trivial");
    format!(
        r#"
[sources.greet]
[campaigns.greet]
source = "greet"
lane = "speed"
plugin = "{trivial}"
[sources.other]
[campaigns.other]
source = "other"
lane = "speed"
plugin = "{trivial}"
{}"#,
        care_forwarder_toml("relay", sink, "", "")
    )
}

/// Deploy `plugin_name` as the next version of `campaign`; its digest.
pub(crate) async fn deploy(gateway: &Gateway, campaign: &str, plugin_name: &str) -> String {
    deploy_file(gateway, campaign, plugin(plugin_name)).await
}

/// Deploy the component at `file` to `campaign` (it must be taken: 201);
/// its digest.
pub(crate) async fn deploy_file(
    gateway: &Gateway,
    campaign: &str,
    file: impl AsRef<std::path::Path>,
) -> String {
    let bytes = std::fs::read(file).expect("plugin");
    let path = format!("/v1/campaigns/{campaign}/versions");
    let deployed = gateway.admin_with(Method::POST, &path, bytes).await;
    assert_eq!(deployed.status, 201, "{:?}", deployed.body);
    deployed.json()["digest"]
        .as_str()
        .expect("digest")
        .to_owned()
}

async fn roll_back(gateway: &Gateway, campaign: &str, version: u32) {
    let path = format!("/v1/campaigns/{campaign}/rollback");
    let body = json!({ "version": version }).to_string();
    let reply = gateway.admin_with(Method::POST, &path, body).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_or_missing_stored_component_stops_only_its_own_campaign() {
    let mut sink = Recorder::start(json!({})).await;
    let config = blob_toml(&sink);
    let gateway = Gateway::start(&config).await;
    // Deployed versions have no copy but their stored blob.
    let welcome = deploy(&gateway, "greet", "welcome").await;
    let abuse = deploy(&gateway, "relay", "abuse").await;
    let blob = |digest: &str| gateway.data_file(&format!("plugins/blobs/{digest}.wasm"));
    let (welcome_blob, abuse_blob) = (blob(&welcome), blob(&abuse));
    let dir = gateway.stop().await;
    // Another valid component under welcome's name; abuse's blob gone.
    std::fs::copy(plugin("burn"), &welcome_blob).expect("replace a blob");
    std::fs::remove_file(&abuse_blob).expect("remove a blob");

    let gateway = Gateway::start_in(dir, &config, &[]).await;
    let (status, body) = readyz(&gateway).await;
    assert_eq!(status, 200, "the other campaigns run: {body}");
    let ready: Value = serde_json::from_str(&body).expect("JSON");
    let unavailable = &ready["unavailable_campaigns"];
    assert!(
        unavailable["greet"]
            .as_str()
            .unwrap()
            .contains("does not match its SHA-256"),
        "{ready}"
    );
    assert!(
        unavailable["relay"].as_str().unwrap().contains("missing"),
        "{ready}"
    );
    let campaigns = gateway.admin(Method::GET, "/v1/campaigns").await;
    let status_of = |name: &str| {
        campaigns["campaigns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["status"].clone())
    };
    assert_eq!(status_of("greet"), Some(json!("unavailable")));
    assert_eq!(status_of("relay"), Some(json!("unavailable")));
    assert_eq!(status_of("other"), Some(json!("running")));

    let refused = gateway.post("greet", "{}").await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["error"], "campaign_unavailable");
    assert_eq!(gateway.post("other", "{}").await.status, 200);
    // An event for the unavailable async campaign is kept, and runs once a
    // rollback brings a good version back.
    let held = json!({ "n": 1, "deliver_to": "sink" });
    assert_eq!(gateway.post_json("orders", held.clone()).await.status, 202);
    roll_back(&gateway, "relay", 1).await;
    assert_eq!(sink.next().await.json(), held);
    roll_back(&gateway, "greet", 1).await;
    assert_eq!(gateway.post("greet", "{}").await.status, 200);
    let ready = readyz(&gateway).await.1;
    assert!(ready.contains("\"unavailable_campaigns\":{}"), "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_over_its_size_limit_refuses_async_webhooks() {
    let sink = Recorder::start(json!({})).await;
    let config = format!(
        "[store]\nmax_disk_mb = 1\n{}",
        care_forwarder_toml("relay", &sink, "", "")
    );
    let gateway = Gateway::start(&config).await;
    let padding = "x".repeat(64 << 10);
    let refusal = within("a refusal", async {
        for n in 0..200 {
            let reply = gateway
                .post_json("orders", json!({ "n": n, "pad": padding }))
                .await;
            if reply.status == 503 {
                return reply.json();
            }
            assert_eq!(reply.status, 202);
        }
        panic!("a store over 1 MiB still accepted webhooks");
    })
    .await;
    assert_eq!(refusal["error"], "store_full", "{refusal}");
}
