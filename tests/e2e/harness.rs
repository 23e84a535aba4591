//! Starting the gateway binary and the loopback services tests need.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use hooklane_bench::process::Server;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::sync::mpsc;

/// How long any single wait in a test may take before the test fails: long
/// enough for a loaded 2-core CI machine, short enough to fail clearly.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// How long a gateway may take to start: it compiles its campaigns' plugins
/// first, and a JavaScript or Python component (a JS engine or CPython
/// inside, 12–18 MB) takes 10 s to minutes at the compile threads' low
/// priority on a busy 2-core machine.
const STARTUP_PATIENCE: Duration = Duration::from_secs(300);

pub const ADMIN_TOKEN: &str = "e2e-admin-token";

/// Where `scripts/setup.sh` puts the plugins: `name` is a Rust plugin's
/// crate, or `js/NAME` or `py/NAME` for an example in `plugins/js` or
/// `plugins/py`.
pub fn plugin(name: &str) -> String {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/target");
    let (dir, name) = match name.split_once('/') {
        Some((language, name)) => (built.join(language), name),
        None => (built.join("wasm32-wasip2/release"), name),
    };
    let path = dir.join(format!("{}.wasm", name.replace('-', "_")));
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup.sh to build the plugins",
        path.display()
    );
    path.display().to_string()
}

/// Fail the test if `future` does not finish within [`PATIENCE`].
pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Write `dir/hooklane.toml`: loopback listeners on free ports, data in
/// `dir/data`, the caller's sources, campaigns and destinations, and
/// `admin_toml` in the `[admin]` table.
fn write_config(dir: &std::path::Path, campaigns_toml: &str, admin_toml: &str) -> PathBuf {
    // The caller's top-level keys come before any table; `[admin]` last.
    let config = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n{campaigns_toml}\n[admin]\nlisten = \"127.0.0.1:0\"\n{admin_toml}\n"
    );
    let path = dir.join("hooklane.toml");
    std::fs::write(&path, config).expect("write config");
    path
}

/// How to start a gateway beyond its sources and campaigns.
#[derive(Default)]
pub struct Launch<'a> {
    /// Extra environment.
    pub env: &'a [(&'a str, &'a str)],
    /// Lines of the `[admin]` table.
    pub admin_toml: &'a str,
    /// The process's `ulimit -n`: it runs out of file descriptors sooner.
    pub fd_limit: Option<u32>,
}

/// `hooklane serve` in `dir` (config written there, log to
/// `dir/gateway.log`) as `launch` says.
pub fn serve_command(dir: &std::path::Path, campaigns_toml: &str, launch: &Launch) -> Command {
    let config_path = write_config(dir, campaigns_toml, launch.admin_toml);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("gateway.log"))
        .expect("log file");
    let binary = env!("CARGO_BIN_EXE_hooklane");
    let mut command = match launch.fd_limit {
        Some(limit) => {
            let mut shell = Command::new("sh");
            shell
                .arg("-c")
                .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                .arg(binary);
            shell
        }
        None => Command::new(binary),
    };
    command
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("HOOKLANE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("HOOKLANE_LOG", "info,hooklane=debug")
        .envs(launch.env.iter().copied())
        .stderr(log)
        .kill_on_drop(true);
    command
}

/// A running `hooklane serve`, killed on drop.
pub struct Gateway {
    server: Server,
    pub ingress: SocketAddr,
    pub admin: SocketAddr,
    dir: tempfile::TempDir,
    /// The `[admin]` lines it started with, kept when the config is rewritten.
    admin_toml: String,
    pub http: reqwest::Client,
}

/// A reply from the gateway.
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

impl Gateway {
    /// Start the gateway with `campaigns_toml` (sources, campaigns,
    /// destinations) on ephemeral loopback ports and a fresh data directory.
    pub async fn start(campaigns_toml: &str) -> Gateway {
        Gateway::start_in(tempfile::tempdir().expect("temp dir"), campaigns_toml, &[]).await
    }

    /// Kill the process at once (SIGKILL: no shutdown of any kind) and hand
    /// back its data directory.
    pub async fn kill(mut self) -> tempfile::TempDir {
        self.server.child.kill().await.expect("kill -9");
        let dir = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self.dir, dir)
    }

    /// Ask the process to shut down (SIGTERM) and wait for it to exit.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        self.signal("TERM").await;
        within("the gateway to exit", self.server.child.wait())
            .await
            .expect("wait")
    }

    /// Shut the process down cleanly and hand back its data directory.
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.signal("TERM").await;
        let status = within("the gateway to exit", self.server.child.wait()).await;
        assert!(
            status.expect("wait").success(),
            "the gateway failed to stop"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self.dir, dir)
    }

    /// Replace the config file (read again on reload) with `campaigns_toml`.
    pub fn rewrite_config(&self, campaigns_toml: &str) {
        write_config(self.dir.path(), campaigns_toml, &self.admin_toml);
    }

    /// The `/proc` entries of the gateway's threads whose name starts with
    /// `prefix` (thread names are cut at 15 bytes).
    fn threads(&self, prefix: &str) -> Vec<PathBuf> {
        let pid = self.server.child.id().expect("running");
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the gateway's threads");
        tasks
            .filter_map(|task| {
                let task = task.ok()?.path();
                let name = std::fs::read_to_string(task.join("comm")).ok()?;
                name.starts_with(prefix).then_some(task)
            })
            .collect()
    }

    /// CPU time so far, in ns, of the gateway's threads whose name starts
    /// with `prefix`, from the kernel's per-thread accounting
    /// (`/proc/<pid>/task/<tid>/schedstat`).
    pub fn threads_cpu_ns(&self, prefix: &str) -> u64 {
        self.threads(prefix)
            .iter()
            .filter_map(|task| {
                let schedstat = std::fs::read_to_string(task.join("schedstat")).ok()?;
                schedstat.split_whitespace().next()?.parse::<u64>().ok()
            })
            .sum()
    }

    /// The time slice, in ns, of each of the gateway's threads whose name
    /// starts with `prefix` (`se.slice` in `/proc/<pid>/task/<tid>/sched`).
    pub fn threads_slice_ns(&self, prefix: &str) -> Vec<u64> {
        self.threads(prefix)
            .iter()
            .map(|task| {
                let sched =
                    std::fs::read_to_string(task.join("sched")).expect("the thread's sched");
                sched
                    .lines()
                    .find_map(|line| line.strip_prefix("se.slice"))
                    .and_then(|rest| rest.trim_start_matches([' ', ':']).trim().parse().ok())
                    .unwrap_or_else(|| panic!("no se.slice in {sched}"))
            })
            .collect()
    }

    /// Send the process a signal (`TERM`, `HUP`, …).
    pub async fn signal(&self, name: &str) {
        let pid = self.server.child.id().expect("running").to_string();
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .await;
        assert!(sent.expect("run kill").success());
    }

    /// Start the gateway in `dir` (reusing its data), with extra environment.
    pub async fn start_in(
        dir: tempfile::TempDir,
        campaigns_toml: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        let launch = Launch {
            env,
            ..Launch::default()
        };
        Gateway::launch(dir, campaigns_toml, launch).await
    }

    /// Start the gateway in `dir` as `launch` says.
    pub async fn launch(
        dir: tempfile::TempDir,
        campaigns_toml: &str,
        launch: Launch<'_>,
    ) -> Gateway {
        let command = serve_command(dir.path(), campaigns_toml, &launch);
        let server = match Server::spawn(command, &["ingress", "admin"], STARTUP_PATIENCE).await {
            Ok(server) => server,
            Err(e) => {
                let log =
                    std::fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default();
                panic!("gateway did not start: {e}\n{log}");
            }
        };
        Gateway {
            ingress: server.addr("ingress"),
            admin: server.addr("admin"),
            server,
            dir,
            admin_toml: launch.admin_toml.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// POST `body` to `/hooks/{source}`.
    pub async fn post(&self, source: &str, body: impl Into<reqwest::Body>) -> Reply {
        self.post_with(source, &[], body).await
    }

    /// POST `body` with extra `headers` to `/hooks/{source}`.
    pub async fn post_with(
        &self,
        source: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> Reply {
        let mut request = self
            .http
            .post(format!("http://{}/hooks/{source}", self.ingress))
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = within("a webhook answer", request.body(body).send())
            .await
            .expect("gateway reachable");
        Reply {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.bytes().await.expect("body"),
        }
    }

    /// POST a JSON value to `/hooks/{source}`.
    pub async fn post_json(&self, source: &str, body: Value) -> Reply {
        self.post(source, body.to_string()).await
    }

    /// Call the admin API (`GET` or `POST`) and return its JSON answer.
    pub async fn admin(&self, method: reqwest::Method, path: &str) -> Value {
        let reply = self.admin_with(method, path, Vec::new()).await;
        assert!(reply.status.is_success(), "admin {path}: {}", reply.status);
        reply.json()
    }

    /// Call the admin API with `body`, whatever the answer.
    pub async fn admin_with(
        &self,
        method: reqwest::Method,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> Reply {
        let response = self
            .http
            .request(method, format!("http://{}{path}", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .body(body)
            .send()
            .await
            .expect("admin reachable");
        Reply {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.bytes().await.expect("body"),
        }
    }

    /// Run the `hooklane` CLI against this gateway's admin API; its stdout.
    pub async fn cli(&self, args: &[&str]) -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_hooklane"))
            .args(args)
            .env("HOOKLANE_ADMIN_URL", format!("http://{}", self.admin))
            .env("HOOKLANE_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
            .await
            .expect("run hooklane");
        assert!(
            output.status.success(),
            "hooklane {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("UTF-8 output")
    }

    /// A key of the plugin store, read through the admin API.
    pub async fn kv(&self, namespace: &str, key: &str) -> Option<Value> {
        let response = self
            .http
            .get(format!("http://{}/v1/kv/{namespace}/{key}", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("admin reachable");
        match response.status() {
            StatusCode::NOT_FOUND => None,
            StatusCode::OK => Some(
                serde_json::from_slice(&response.bytes().await.expect("kv body"))
                    .expect("kv value is JSON"),
            ),
            other => panic!("admin kv answered {other}"),
        }
    }

    /// Wait until the key exists and `accept` holds for its value.
    pub async fn kv_eventually(
        &self,
        namespace: &str,
        key: &str,
        accept: impl Fn(&Value) -> bool,
    ) -> Value {
        within(&format!("kv {namespace}/{key}"), async {
            let mut backoff = Duration::from_millis(5);
            loop {
                if let Some(value) = self.kv(namespace, key).await {
                    if accept(&value) {
                        return value;
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
        })
        .await
    }

    /// GET an open admin path (no token: probes, metrics, the document).
    pub async fn open_admin_text(&self, path: &str) -> String {
        self.http
            .get(format!("http://{}{path}", self.admin))
            .send()
            .await
            .expect("admin reachable")
            .text()
            .await
            .expect("text")
    }

    /// Wait until `/metrics` shows every one of `series` as a whole line
    /// (name, labels and value, as Prometheus prints them); the whole text.
    pub async fn metrics_eventually(&self, series: &[&str]) -> String {
        within(&format!("metrics {series:?}"), async {
            loop {
                let text = self.open_admin_text("/metrics").await;
                if series.iter().all(|s| text.lines().any(|line| line == *s)) {
                    return text;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// A file under the gateway's data directory.
    pub fn data_file(&self, relative: &str) -> PathBuf {
        self.dir.path().join("data").join(relative)
    }

    /// The gateway's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.server.child.try_wait().expect("wait").is_none()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- gateway log ---\n{}", self.log());
        }
    }
}

/// A request a [`Recorder`] received.
#[derive(Debug)]
pub struct Recorded {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("recorded body is JSON")
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .expect("ASCII header")
    }
}

/// A loopback HTTP service that records every request and answers each with
/// the same JSON body — after answering the first requests with the given
/// statuses, for destinations that fail before they work.
pub struct Recorder {
    pub addr: SocketAddr,
    received: mpsc::UnboundedReceiver<Recorded>,
    /// Answers wait while this is false (see [`Recorder::holding`]).
    answering: tokio::sync::watch::Sender<bool>,
}

impl Recorder {
    pub async fn start(answer: Value) -> Recorder {
        Recorder::failing_first(&[], answer).await
    }

    /// Record requests at once but hold every answer until
    /// [`Recorder::release`]: a service that keeps its callers waiting.
    pub async fn holding(answer: Value) -> Recorder {
        let recorder = Recorder::failing_first(&[], answer).await;
        recorder.answering.send_replace(false);
        recorder
    }

    /// Let held answers, and all later ones, go.
    pub fn release(&self) {
        self.answering.send_replace(true);
    }

    /// Hold every answer from now on, until [`Recorder::release`].
    pub fn hold(&self) {
        self.answering.send_replace(false);
    }

    /// Answer the first requests with `statuses`, then 200 with `answer`.
    pub async fn failing_first(statuses: &[u16], answer: Value) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, received) = mpsc::unbounded_channel();
        let answer = Arc::new(answer.to_string());
        let statuses = Arc::new(std::sync::Mutex::new(VecDeque::from(statuses.to_vec())));
        let (answering, gate) = tokio::sync::watch::channel(true);
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            let answer = answer.clone();
            let mut gate = gate.clone();
            let status = statuses
                .lock()
                .expect("statuses")
                .pop_front()
                .unwrap_or(200);
            async move {
                let _ = tx.send(Recorded { headers, body });
                let _ = gate.wait_for(|open| *open).await;
                (
                    StatusCode::from_u16(status).expect("status"),
                    [("content-type", "application/json")],
                    answer.to_string(),
                )
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        Recorder {
            addr,
            received,
            answering,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The next request, waiting for it.
    pub async fn next(&mut self) -> Recorded {
        within("a request at the recorder", self.received.recv())
            .await
            .expect("recorder running")
    }

    /// Requests received so far, without waiting.
    pub fn drain(&mut self) -> Vec<Recorded> {
        std::iter::from_fn(|| self.received.try_recv().ok()).collect()
    }
}

/// Wait until `sink` has received every `{"n": …}` body numbered in
/// `acknowledged`, for at most [`PATIENCE`]; how many extra copies came
/// (allowed: at-least-once), each under its event's one `webhook-id`.
pub async fn until_all_delivered(sink: &mut Recorder, acknowledged: &BTreeSet<u64>) -> usize {
    until_all_delivered_within(sink, acknowledged, PATIENCE).await
}

/// [`until_all_delivered`], for at most `patience`.
pub async fn until_all_delivered_within(
    sink: &mut Recorder,
    acknowledged: &BTreeSet<u64>,
    patience: Duration,
) -> usize {
    let mut delivered = std::collections::BTreeMap::new();
    let mut duplicates = 0;
    let all = async {
        while !acknowledged.iter().all(|n| delivered.contains_key(n)) {
            let request = sink.received.recv().await.expect("recorder running");
            let n = request.json()["n"].as_u64().expect("n");
            let id = request.header("webhook-id").to_owned();
            if let Some(first) = delivered.insert(n, id.clone()) {
                assert_eq!(first, id, "event {n} delivered under two webhook-ids");
                duplicates += 1;
            }
        }
    };
    if tokio::time::timeout(patience, all).await.is_err() {
        let missing = acknowledged
            .iter()
            .filter(|n| !delivered.contains_key(n))
            .count();
        panic!("{missing} acknowledged events not delivered within {patience:?}");
    }
    duplicates
}

/// Read until the server closes the connection; what it said before.
pub async fn until_closed(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    within(
        "the server to close the connection",
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

/// A loopback host that accepts connections and never answers.
pub async fn black_hole() -> SocketAddr {
    hooklane_bench::black_hole()
        .await
        .expect("bind a black hole")
}

/// The `login-code` speed campaign on source `login-form`, delivering to the
/// `sms` recorder, as config TOML.
/// Source `source` with one campaign, `campaign` in `lane`, running the
/// component at `plugin_path` (as [`plugin`] gives it).
pub fn one_campaign_toml(source: &str, campaign: &str, lane: &str, plugin_path: &str) -> String {
    format!(
        "[sources.{source}]\n[campaigns.{campaign}]\nsource = \"{source}\"\nlane = \"{lane}\"\nplugin = \"{plugin_path}\"\n"
    )
}

pub fn login_code_toml(sms: &Recorder) -> String {
    format!(
        r#"
[sources.login-form]
[campaigns.login-code]
source = "login-form"
lane = "speed"
plugin = "{}"
destinations = ["sms"]
[destinations.sms]
url = "{}"
"#,
        plugin("login-code"),
        sms.url()
    )
}

/// A care campaign `relay` on source `orders` running plugin `plugin_name`
/// (`relay` forwards every body to `sink`), with `campaign_extra` in its
/// table and `destination_extra` in the `sink` destination's.
pub fn care_forwarder_toml(
    plugin_name: &str,
    sink: &Recorder,
    destination_extra: &str,
    campaign_extra: &str,
) -> String {
    format!(
        r#"
[sources.orders]
[campaigns.relay]
source = "orders"
lane = "care"
plugin = "{}"
destinations = ["sink"]
{campaign_extra}
[destinations.sink]
url = "{}"
rate_per_s = 10000
{destination_extra}
"#,
        plugin(plugin_name),
        sink.url()
    )
}

/// A login is answered `sent` and its code delivered: the speed lane works.
pub async fn assert_speed_lane_answers(gateway: &Gateway, sms: &mut Recorder, after: &str) {
    let login = gateway
        .post_json("login-form", json!({ "phone": "+4915112345678" }))
        .await;
    assert_eq!(
        login.status,
        200,
        "login after {after}: {}",
        String::from_utf8_lossy(&login.body)
    );
    assert_eq!(login.json()["status"], "sent");
    sms.next().await;
}

/// A segmentation campaign `name` (on source `name`) running the `hang`
/// plugin against `never`, so each of its events holds a run slot until
/// its deadline (`deadline_ms`); `extra` adds config lines.
pub fn hanging_campaign_toml(
    name: &str,
    never: SocketAddr,
    deadline_ms: u64,
    extra: &str,
) -> String {
    format!(
        r#"
[sources.{name}]
[campaigns.{name}]
source = "{name}"
lane = "segmentation"
plugin = "{hang}"
deadline_ms = {deadline_ms}
fetch_timeout_ms = 60_000
allowed_hosts = ["{never}"]
settings = {{ url = "http://{never}/" }}
{extra}
"#,
        hang = plugin("hang"),
    )
}

/// The `personal-offer` campaign (plugin `offer_plugin`, a name for
/// [`plugin`]) on source `offers`, asking `recommendations`; the same plugin
/// as `offer-elsewhere` on source `offers-elsewhere`, pointed at `elsewhere`,
/// which is not on its allowlist; and `daily-enrich` on source `crm` writing
/// the profiles both read, all in KV namespace `customers`.
pub fn offer_toml(offer_plugin: &str, recommendations: &Recorder, elsewhere: &Recorder) -> String {
    format!(
        r#"
[sources.offers]
[sources.offers-elsewhere]
[sources.crm]

[campaigns.personal-offer]
source = "offers"
lane = "segmentation"
mode = "sync"
plugin = "{offer}"
allowed_hosts = ["127.0.0.1:{allowed_port}"]
kv_namespace = "customers"
settings = {{ recommendation_url = "{allowed}" }}

# Same plugin, pointed at a host that is not on its allowlist.
[campaigns.offer-elsewhere]
source = "offers-elsewhere"
lane = "segmentation"
mode = "sync"
plugin = "{offer}"
allowed_hosts = ["127.0.0.1:{allowed_port}"]
kv_namespace = "customers"
settings = {{ recommendation_url = "{elsewhere}" }}

[campaigns.daily-enrich]
source = "crm"
lane = "care"
plugin = "{enrich}"
kv_namespace = "customers"
"#,
        offer = plugin(offer_plugin),
        enrich = plugin("daily-enrich"),
        allowed_port = recommendations.addr.port(),
        allowed = recommendations.url(),
        elsewhere = elsewhere.url(),
    )
}

/// What the recommendation service answers `offer_toml`'s campaigns.
pub fn offer_catalog() -> Value {
    json!({ "candidates": [
        { "id": "espresso-kit", "title": "Espresso starter kit", "category": "coffee", "price": 49.0, "base_score": 1.0 },
        { "id": "grinder-pro", "title": "Pro burr grinder", "category": "coffee", "price": 249.0, "base_score": 0.5 },
        { "id": "tea-sampler", "title": "Tea sampler", "category": "tea", "price": 19.0, "discount_pct": 20.0, "base_score": 0.8 },
        { "id": "whisky-tasting", "title": "Whisky tasting", "category": "spirits", "price": 89.0, "min_age": 18, "countries": ["DE"], "base_score": 0.7 }
    ]})
}
