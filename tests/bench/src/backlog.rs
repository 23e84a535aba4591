//! `hooklane-bench backlog`: the queue lives on disk. A care campaign whose
//! plugin is far slower than ingest takes a burst of webhooks until a
//! million are queued; the gateway's resident memory is measured with 1,000
//! queued and with all of them (it must not grow with the backlog), beside
//! the disk the backlog takes. Then the gateway is killed (`kill -9`) and
//! started again on the same data: the report has the time until `/readyz`
//! answers and a speed-lane request is served, whatever the backlog, and
//! the rate at which the backlog drains after the restart.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use crate::ceiling::Ceiling;
use crate::loadgen;
use crate::{toml_path, BenchError, BenchOptions, ADMIN_TOKEN, REQUEST_TIMEOUT};

/// Connections of the burst.
const BURST_CONNECTIONS: usize = 64;

/// Targets.
const TARGET_RSS_RATIO: f64 = 1.5;
const TARGET_RESTART_S: f64 = 1.0;

#[derive(Debug, Serialize)]
pub struct BacklogReport {
    pub smoke: bool,
    /// Events queued at the end of the burst.
    pub queued: u64,
    /// The burst, closed loop.
    pub ingest: Burst,
    /// What the generator drove bare hyper to, with the burst's connections.
    pub ceiling: Ceiling,
    pub rss_small_backlog_mb: f64,
    /// How many were queued when the small figure was taken.
    pub small_backlog: u64,
    pub rss_full_backlog_mb: f64,
    pub rss_ratio: f64,
    /// The store file's size over the events queued.
    pub disk_bytes_per_event: f64,
    /// From spawning the restarted process to `/readyz` answering 200.
    pub restart_to_ready_s: f64,
    /// From spawning it to the first answer of a speed-lane campaign.
    pub restart_to_speed_answer_s: f64,
    /// Events run per second after the restart, from the backlog.
    pub drain_per_s: f64,
}

impl BacklogReport {
    pub fn render(&self) -> String {
        let verdict = |met: bool| if met { "met" } else { "MISSED" };
        let mut out = String::from("== backlog on disk (care campaign slower than ingest)\n");
        out += &format!(
            "burst:                    {} accepted at {:.0}/s ({} refused, {} errors; {})\n",
            self.ingest.accepted,
            self.ingest.accepted_per_s,
            self.ingest.refused,
            self.ingest.errors,
            self.ceiling.beside(self.ingest.accepted_per_s)
        );
        out += &format!(
            "resident memory:          {:.0} MiB with {} queued, {:.0} MiB with {} queued: ratio {:.2} (target <= {TARGET_RSS_RATIO}: {})\n",
            self.rss_small_backlog_mb,
            self.small_backlog,
            self.rss_full_backlog_mb,
            self.queued,
            self.rss_ratio,
            verdict(self.rss_ratio <= TARGET_RSS_RATIO)
        );
        out += &format!(
            "disk per queued event:    {:.0} bytes\n",
            self.disk_bytes_per_event
        );
        out += &format!(
            "restart (kill -9) to ready: {:.3} s; to a speed answer: {:.3} s (target <= {TARGET_RESTART_S} s: {})\n",
            self.restart_to_ready_s,
            self.restart_to_speed_answer_s,
            verdict(self.restart_to_speed_answer_s <= TARGET_RESTART_S)
        );
        out += &format!(
            "drain after the restart:  {:.0} events/s\n",
            self.drain_per_s
        );
        out
    }
}

pub async fn run(options: &BenchOptions) -> Result<BacklogReport, BenchError> {
    let (target, small, drain_window, ceiling_window) = if options.smoke {
        (
            2_000,
            200,
            Duration::from_secs(1),
            Duration::from_millis(300),
        )
    } else {
        (
            1_000_000,
            1_000,
            Duration::from_secs(10),
            Duration::from_secs(2),
        )
    };
    let config = format!(
        r#"
listen = "127.0.0.1:0"
data_dir = "data"
[admin]
listen = "127.0.0.1:0"
[lanes.care]
max_in_flight = 4
[sources.burst]
[campaigns.slow]
source = "burst"
lane = "care"
plugin = {burn}
settings = {{ iterations = "2000000" }}
[sources.login]
[campaigns.login]
source = "login"
lane = "speed"
plugin = {trivial}
"#,
        burn = toml_path(&options.plugin("burn")?),
        trivial = toml_path(&options.plugin("trivial")?),
    );
    let dir = options.out.with_extension("backlog");
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "bench: backlog (log: {})",
        dir.join("gateway.log").display()
    );
    let env = [("HOOKLANE_ADMIN_TOKEN", ADMIN_TOKEN)];
    let gateway = options.serve_in(&dir, &config, &env).await?;
    let url = format!("http://{}/hooks/burst", gateway.addr("ingress"));
    let admin = format!("http://{}", gateway.addr("admin"));
    let body = Bytes::from_static(br#"{"customer_id": "c-1", "event": "page_view"}"#);
    let client = reqwest::Client::new();
    let ceiling = Ceiling::measure(body.clone(), BURST_CONNECTIONS, ceiling_window).await?;

    for _ in 0..small {
        let sent = client.post(&url).body(body.clone()).send().await;
        sent.and_then(reqwest::Response::error_for_status)
            .map_err(std::io::Error::other)?;
    }
    let small_backlog = backlog(&client, &admin).await?;
    let rss_small_backlog_mb = gateway.rss_mb()?;
    eprintln!("bench: {small_backlog} queued, bursting to {target}");
    let ingest = burst(&url, &body, target - small).await?;
    let queued = backlog(&client, &admin).await?;
    let rss_full_backlog_mb = gateway.rss_mb()?;
    let disk = std::fs::metadata(dir.join("data/hooklane.redb"))?.len();

    let mut gateway = gateway;
    gateway.child.kill().await?; // kill -9, and wait until it is gone
    let started = Instant::now();
    let restarted = options.serve_in(&dir, &config, &env).await?;
    let admin = format!("http://{}", restarted.addr("admin"));
    let ready = wait_for(&client, &format!("{admin}/readyz"), &Bytes::new(), false).await;
    let restart_to_ready_s = ready.map(|()| started.elapsed().as_secs_f64())?;
    let login = format!("http://{}/hooks/login", restarted.addr("ingress"));
    wait_for(&client, &login, &body, true).await?;
    let restart_to_speed_answer_s = started.elapsed().as_secs_f64();

    let before = backlog(&client, &admin).await?;
    tokio::time::sleep(drain_window).await;
    let after = backlog(&client, &admin).await?;
    let drain_per_s = before.saturating_sub(after) as f64 / drain_window.as_secs_f64();
    drop(restarted);

    let report = BacklogReport {
        smoke: options.smoke,
        queued,
        ingest,
        ceiling,
        rss_small_backlog_mb,
        small_backlog,
        rss_full_backlog_mb,
        rss_ratio: rss_full_backlog_mb / rss_small_backlog_mb.max(f64::MIN_POSITIVE),
        disk_bytes_per_event: disk as f64 / queued.max(1) as f64,
        restart_to_ready_s,
        restart_to_speed_answer_s,
        drain_per_s,
    };
    crate::write_report(&options.out, &report)?;
    Ok(report)
}

/// A burst of webhooks.
#[derive(Debug, Default, Serialize)]
pub struct Burst {
    pub accepted: u64,
    pub refused: u64,
    pub errors: u64,
    pub accepted_per_s: f64,
}

/// Send webhooks (closed loop, in half-second rounds) until `count` more
/// were accepted.
async fn burst(url: &str, body: &Bytes, count: u64) -> Result<Burst, BenchError> {
    let (mut burst, started) = (Burst::default(), Instant::now());
    while burst.accepted < count {
        let window = Duration::from_millis(500);
        let round = loadgen::run_closed_loop(
            url,
            body.clone(),
            BURST_CONNECTIONS,
            window,
            REQUEST_TIMEOUT,
        )
        .await?;
        burst.accepted += round.ok;
        burst.refused += round.refused;
        burst.errors += round.errors;
    }
    burst.accepted_per_s = burst.accepted as f64 / started.elapsed().as_secs_f64();
    Ok(burst)
}

/// The care lane's backlog, from `/v1/lanes`.
async fn backlog(client: &reqwest::Client, admin: &str) -> Result<u64, BenchError> {
    let answer = client
        .get(format!("{admin}/v1/lanes"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(std::io::Error::other)?
        .bytes()
        .await
        .map_err(std::io::Error::other)?;
    let lanes: serde_json::Value =
        serde_json::from_slice(&answer).map_err(std::io::Error::other)?;
    Ok(lanes["lanes"]["care"]["backlog"].as_u64().unwrap_or(0))
}

/// Ask `url` (POST with `body` if `post`, else GET) until it answers 2xx.
async fn wait_for(
    client: &reqwest::Client,
    url: &str,
    body: &Bytes,
    post: bool,
) -> Result<(), BenchError> {
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let request = if post {
            client.post(url).body(body.clone())
        } else {
            client.get(url)
        };
        if let Ok(response) = request.send().await {
            if response.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > give_up {
            return Err(std::io::Error::other(format!("{url} did not answer within 60 s")).into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
