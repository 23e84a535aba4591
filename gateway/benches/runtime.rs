//! Runtime micro-benchmark: the cost of running one event in a fresh
//! instance (new Store + instantiate + call + drop) of the trivial plugin,
//! with the pooling allocator beside the on-demand one and beside an
//! instance kept between events (`events_per_instance`), and calls per
//! second on 1 and 2 threads; then the `personal-offer` example
//! in Rust, JavaScript and Python side by side, a fresh instance per event
//! with its KV reads and write and a loopback call to a recommendation
//! service.
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
    println!("trivial plugin, one event ({LATENCY_RUNS} runs): fresh Store + instantiate + call + drop, or a call on a kept instance");
    println!(
        "{:<10} {:>9} {:>10} {:>10} {:>14} {:>14}",
        "allocator", "instances", "median", "p99", "calls/s 1thr", "calls/s 2thr"
    );
    for (allocator, events_per_instance) in [
        ("pooling", 1),
        ("on-demand", 1),
        ("pooling", KEPT_EVENTS_PER_INSTANCE),
    ] {
        let (_runtime, plugin) = load(&plugins, data.path(), allocator, events_per_instance);
        let (median, p99) = latency(&plugin);
        let one = throughput(&plugin, 1);
        let two = throughput(&plugin, 2);
        println!(
            "{allocator:<10} {:>9} {:>8.1}µs {:>8.1}µs {:>14.0} {:>14.0}",
            instances(events_per_instance),
            micros(median),
            micros(p99),
            one,
            two
        );
        results.push(json!({
            "allocator": allocator,
            "events_per_instance": events_per_instance,
            "median_us": micros(median),
            "p99_us": micros(p99),
            "calls_per_s_1_thread": one,
            "calls_per_s_2_threads": two,
        }));
    }
    let offers = offers(&plugins.join("../.."), data.path());
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out).expect("bench dir");
    let report = json!({
        "benchmark": "runtime",
        "runs": LATENCY_RUNS,
        "results": results,
        "personal_offer_runs": OFFER_RUNS,
        "personal_offer": offers,
    });
    std::fs::write(
        out.join("runtime.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .expect("write report");
    println!(
        "targets: median <= 20µs, p99 <= 60µs, >= 50,000 calls/s on 2 threads (pooling, fresh)"
    );
}

/// `events_per_instance` of the kept row.
const KEPT_EVENTS_PER_INSTANCE: u32 = 10_000;

/// The table's name for how a row's events got their instances.
fn instances(events_per_instance: u32) -> &'static str {
    if events_per_instance == 1 {
        "fresh"
    } else {
        "kept"
    }
}

/// The runtime (which owns the epoch ticker) and the trivial plugin on it.
fn load(
    plugins: &Path,
    data: &Path,
    allocator: &str,
    events_per_instance: u32,
) -> (Runtime, Arc<Plugin>) {
    let campaign = format!(
        "[runtime]\nallocator = \"{allocator}\"\n[campaigns.bench]\nlane = \"speed\"\nplugin = \"{}\"\nevents_per_instance = {events_per_instance}\n",
        plugins.join("trivial.wasm").display()
    );
    load_campaign(
        &campaign,
        &data.join(format!("{allocator}-{events_per_instance}")),
    )
}

/// The runtime and the plugin of campaign `bench` in `toml` (to which this
/// adds its source), its KV store in `data`.
fn load_campaign(toml: &str, data: &Path) -> (Runtime, Arc<Plugin>) {
    let toml = format!("[sources.bench]\n{toml}source = \"bench\"\n");
    let config =
        Config::parse(&toml, Path::new("bench.toml"), Path::new(".")).expect("bench config");
    let store = EmbeddedStore::open(data, true, StoreConfig::default().kv_quota()).expect("store");
    let services = HostServices::new(Arc::new(store)).expect("services");
    let runtime = Runtime::new(&config.runtime, 64, services, None).expect("runtime");
    let campaign = &config.campaigns["bench"];
    let limits = campaign.limits(&config.lanes);
    let plugin = runtime.load("bench", campaign, &limits).expect("plugin");
    (runtime, Arc::new(plugin))
}

fn event() -> Event {
    event_with(b"{}")
}

fn event_with(body: &'static [u8]) -> Event {
    Event::new(
        "bench".into(),
        vec![],
        bytes::Bytes::from_static(body),
        None,
    )
}

/// Events per language for the personal-offer rows.
const OFFER_RUNS: usize = 300;

/// `personal-offer` in each language the project builds it in: median and
/// p99 of a fresh instance per event and of kept instances, beside each
/// other in one run.
fn offers(plugins: &Path, data: &Path) -> Vec<serde_json::Value> {
    let service = recommendation_service();
    println!(
        "\npersonal-offer ({OFFER_RUNS} runs, one loopback call each): a fresh instance per event, or kept ones"
    );
    println!(
        "{:<12} {:>9} {:>10} {:>10}",
        "language", "instances", "median", "p99"
    );
    let mut rows = Vec::new();
    for (language, component) in [
        ("rust", "wasm32-wasip2/release/personal_offer.wasm"),
        ("javascript", "js/personal_offer.wasm"),
        ("python", "py/personal_offer.wasm"),
    ] {
        let component = plugins.join(component);
        if !component.exists() {
            println!(
                "{language:<12} skipped: {} is not built (scripts/setup.sh)",
                component.display()
            );
            continue;
        }
        for events_per_instance in [1, KEPT_EVENTS_PER_INSTANCE] {
            let campaign = format!(
                "[campaigns.bench]\nlane = \"segmentation\"\nmode = \"sync\"\nplugin = \"{}\"\nmemory_mb = 32\ndeadline_ms = 5000\nallowed_hosts = [\"{}\"]\nsettings = {{ recommendation_url = \"http://{}/\" }}\nevents_per_instance = {events_per_instance}\n",
                component.display(),
                service,
                service
            );
            let (_runtime, plugin) = load_campaign(
                &campaign,
                &data.join(format!("{language}-{events_per_instance}")),
            );
            let (median, p99) = measure(
                &plugin,
                &event_with(br#"{"customer_id": "c-1"}"#),
                20,
                OFFER_RUNS,
            );
            println!(
                "{language:<12} {:>9} {:>8.2}ms {:>8.2}ms",
                instances(events_per_instance),
                millis(median),
                millis(p99)
            );
            rows.push(json!({
                "language": language,
                "events_per_instance": events_per_instance,
                "median_ms": millis(median),
                "p99_ms": millis(p99),
            }));
        }
    }
    rows
}

/// A recommendation service on loopback, answering every POST with the
/// same candidates; its address.
fn recommendation_service() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        current_thread().block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            let candidates = json!({ "candidates": [
                { "id": "espresso-kit", "title": "Espresso starter kit", "category": "coffee", "price": 49.0, "base_score": 1.0 },
                { "id": "tea-sampler", "title": "Tea sampler", "category": "tea", "price": 19.0, "base_score": 0.8 }
            ]});
            let app = axum::Router::new().fallback(move || async move { axum::Json(candidates) });
            axum::serve(listener, app).await.expect("serve");
        });
    });
    addr
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn latency(plugin: &Plugin) -> (Duration, Duration) {
    measure(plugin, &event(), WARMUP_RUNS, LATENCY_RUNS)
}

/// Median and p99 of `runs` runs of `event`, after `warmup` runs.
fn measure(plugin: &Plugin, event: &Event, warmup: usize, runs: usize) -> (Duration, Duration) {
    let rt = current_thread();
    rt.block_on(async {
        for _ in 0..warmup {
            plugin
                .handle(event, DEADLINE)
                .await
                .expect("the plugin runs");
        }
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs {
            let started = Instant::now();
            plugin
                .handle(event, DEADLINE)
                .await
                .expect("the plugin runs");
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

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
