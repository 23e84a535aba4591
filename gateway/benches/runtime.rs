//! Runtime micro-benchmark: the cost of running one event in a fresh
//! instance (new Store + instantiate + call + drop) of the trivial plugin,
//! with the pooling allocator beside the on-demand one, and fresh-instance
//! calls per second on 1 and 2 threads.
//!
//! Run: `cargo bench --bench runtime` (after `scripts/setup.sh`). Prints a
//! table and writes `target/bench/runtime.json`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hooklane::config::{Config, StoreConfig};
use hooklane::event::Event;
use hooklane::runtime::{HostServices, Plugin, Runtime};
use hooklane::store::embedded::EmbeddedStore;
use serde_json::json;

const LATENCY_RUNS: usize = 10_000;
const WARMUP_RUNS: usize = 1_000;
const THROUGHPUT_WINDOW: Duration = Duration::from_secs(2);
const DEADLINE: Duration = Duration::from_secs(1);

fn main() {
    let plugins =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/target/wasm32-wasip2/release");
    assert!(
        plugins.join("trivial.wasm").exists(),
        "run scripts/setup.sh first: the trivial plugin is not built"
    );
    let data = tempfile::tempdir().expect("temp dir");
    let mut results = Vec::new();
    println!("fresh Store + instantiate + call + drop, trivial plugin ({LATENCY_RUNS} runs)");
    println!(
        "{:<10} {:>10} {:>10} {:>14} {:>14}",
        "allocator", "median", "p99", "calls/s 1thr", "calls/s 2thr"
    );
    for allocator in ["pooling", "on-demand"] {
        let (_runtime, plugin) = load(&plugins, data.path(), allocator);
        let (median, p99) = latency(&plugin);
        let one = throughput(&plugin, 1);
        let two = throughput(&plugin, 2);
        println!(
            "{allocator:<10} {:>8.1}µs {:>8.1}µs {:>14.0} {:>14.0}",
            micros(median),
            micros(p99),
            one,
            two
        );
        results.push(json!({
            "allocator": allocator,
            "median_us": micros(median),
            "p99_us": micros(p99),
            "calls_per_s_1_thread": one,
            "calls_per_s_2_threads": two,
        }));
    }
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out).expect("bench dir");
    let report = json!({ "benchmark": "runtime", "runs": LATENCY_RUNS, "results": results });
    std::fs::write(
        out.join("runtime.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .expect("write report");
    println!("targets: median <= 20µs, p99 <= 60µs, >= 50,000 calls/s on 2 threads (pooling)");
}

/// The runtime (which owns the epoch ticker) and the trivial plugin on it.
fn load(plugins: &Path, data: &Path, allocator: &str) -> (Runtime, Arc<Plugin>) {
    let toml = format!(
        r#"
[runtime]
allocator = "{allocator}"
[sources.bench]
[campaigns.trivial]
source = "bench"
lane = "speed"
plugin = "{}"
"#,
        plugins.join("trivial.wasm").display()
    );
    let config =
        Config::parse(&toml, Path::new("bench.toml"), Path::new(".")).expect("bench config");
    let store = EmbeddedStore::open(
        &data.join(allocator),
        true,
        StoreConfig::default().kv_quota(),
    )
    .expect("store");
    let services = HostServices::new(Arc::new(store)).expect("services");
    let runtime = Runtime::new(&config.runtime, 64, services, None).expect("runtime");
    let campaign = &config.campaigns["trivial"];
    let limits = campaign.limits(&config.lanes);
    let plugin = runtime.load("trivial", campaign, &limits).expect("plugin");
    (runtime, Arc::new(plugin))
}

fn event() -> Event {
    Event::new(
        "bench".into(),
        vec![],
        bytes::Bytes::from_static(b"{}"),
        None,
    )
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn latency(plugin: &Plugin) -> (Duration, Duration) {
    let rt = current_thread();
    let event = event();
    rt.block_on(async {
        for _ in 0..WARMUP_RUNS {
            plugin
                .handle(&event, DEADLINE)
                .await
                .expect("trivial plugin runs");
        }
        let mut samples = Vec::with_capacity(LATENCY_RUNS);
        for _ in 0..LATENCY_RUNS {
            let started = Instant::now();
            plugin
                .handle(&event, DEADLINE)
                .await
                .expect("trivial plugin runs");
            samples.push(started.elapsed());
        }
        samples.sort();
        (
            samples[samples.len() / 2],
            samples[samples.len() * 99 / 100],
        )
    })
}

/// Fresh-instance calls per second with `threads` OS threads calling in a
/// loop for the window.
fn throughput(plugin: &Arc<Plugin>, threads: usize) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (plugin, stop, calls) = (plugin.clone(), stop.clone(), calls.clone());
            std::thread::spawn(move || {
                let event = event();
                current_thread().block_on(async {
                    let mut done = 0;
                    while !stop.load(Ordering::Relaxed) {
                        plugin
                            .handle(&event, DEADLINE)
                            .await
                            .expect("trivial plugin runs");
                        done += 1;
                    }
                    calls.fetch_add(done, Ordering::Relaxed);
                })
            })
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(THROUGHPUT_WINDOW);
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().expect("worker");
    }
    calls.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
