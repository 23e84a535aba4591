//! A short run of each bench suite proves the benchmark works end to end:
//! every scenario ran, and the report holds real figures. Speed, latency and
//! memory targets are judged by the full bench, never by a timed test.
//!
//! The bench drives the `hooklane` binary of the same build: `cargo test
//! --workspace` (what `.ci/run` runs) builds it beside this test's `deps/`
//! folder. A test fails, naming the path, when it is not there.

use std::process::{Command, Output};

use serde_json::Value;

/// The bench finds the `hooklane` binary of this build beside its own
/// executable, `target/<profile>/hooklane`, beside the `deps/` folder that
/// holds this test; a clear failure when it was not built.
fn assert_gateway_built() {
    let exe = std::env::current_exe().expect("the test's own path");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test runs from target/<profile>/deps")
        .join("hooklane");
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build --workspace`, or run the tests with `cargo test --workspace`",
        path.display()
    );
}

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hooklane-bench"))
        .args(args)
        .output()
        .expect("run hooklane-bench")
}

/// Run `hooklane-bench <suite> --smoke`; what it printed and its report.
fn smoke_run(suite: &str) -> (String, Value) {
    smoke_run_with(suite, &[])
}

/// [`smoke_run`] with more arguments.
fn smoke_run_with(suite: &str, extra: &[&str]) -> (String, Value) {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join(format!("{suite}.json"));
    let plugins = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../plugins/target/wasm32-wasip2/release");
    assert_gateway_built();
    let mut args = vec![
        suite,
        "--smoke",
        "--plugins",
        plugins.to_str().expect("a UTF-8 path"),
        "--out",
        out.to_str().expect("a UTF-8 path"),
    ];
    args.extend_from_slice(extra);
    let output = bench(&args);
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{printed}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report =
        serde_json::from_slice(&std::fs::read(&out).expect("report written")).expect("JSON");
    (printed, report)
}

#[test]
fn a_missing_gateway_binary_is_named_with_how_to_build_it() {
    let output = bench(&["lanes", "--smoke", "--gateway", "/nonexistent/hooklane"]);
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        said.trim(),
        "error: the gateway binary /nonexistent/hooklane is missing: build it with `cargo build --release --workspace` (or name another with --gateway PATH)"
    );
}

#[test]
fn the_load_bench_runs_end_to_end() {
    assert_lanes_ran(smoke_run("lanes"), "embedded");
}

#[test]
fn the_load_bench_runs_on_nats_end_to_end() {
    assert_lanes_ran(smoke_run_with("lanes", &["--store", "nats"]), "nats");
}

#[test]
fn the_load_bench_runs_only_the_scenarios_named_for_as_many_rounds() {
    let (printed, report) =
        smoke_run_with("lanes", &["--only", "flood,neighbour", "--rounds", "2"]);
    assert_eq!(report["rounds"], 2, "{report}");
    assert_eq!(
        report["flood_rounds"].as_array().unwrap().len(),
        2,
        "{report}"
    );
    for figure in ["speed_p99_flood_over_idle", "speed_p99_neighbour_over_idle"] {
        assert_eq!(
            report[figure]["all"].as_array().unwrap().len(),
            2,
            "{report}"
        );
    }
    // An idle and a loaded window per round on each gateway: three for the
    // flood (bulk ingress threads, none, no fsync), two for the neighbour.
    let steal = report["host_steal"]["percent_per_window"]
        .as_array()
        .unwrap();
    assert_eq!(steal.len(), 2 * 2 * (3 + 2), "{report}");
    for left_out in [
        "floor",
        "trivial_over_floor",
        "trivial_kept_over_floor",
        "hostile_mix",
        "speed_p99_mix_over_idle",
    ] {
        assert!(report.get(left_out).is_none(), "{left_out}: {report}");
    }
    assert!(!printed.contains("trivial / floor"), "{printed}");
    assert!(!printed.contains("hostile mix"), "{printed}");
    for line in [
        "speed p99, refused flood / idle:",
        "speed p99, slow neighbour / idle:",
    ] {
        assert!(printed.contains(line), "{printed}");
    }
}

fn assert_lanes_ran((printed, report): (String, Value), store: &str) {
    assert_eq!(report["store"], store, "{report}");
    assert_eq!(report["rounds"], 1, "{report}");
    // An idle and a loaded window per round on each of the gateways (six
    // on the embedded store, five on nats, which has no fsync to turn off).
    let steal = report["host_steal"]["percent_per_window"]
        .as_array()
        .unwrap();
    assert!(steal.len() >= 10, "{report}");
    assert!(
        printed.contains("quiet rounds (host steal <= 2%):"),
        "{printed}"
    );
    // The embedded store's durable commits under the flood; none on nats.
    match store {
        "embedded" => {
            assert!(
                report["flood_commits"]["count"].as_u64().unwrap() > 0,
                "{report}"
            );
            for line in [
                "store commits (durable, all rounds):",
                "rounds in order (ratio, slowest durable commit):",
                "without fsync:",
            ] {
                assert!(printed.contains(line), "{printed}");
            }
            let round = &report["flood_rounds"][0];
            assert!(round["commits"]["count"].as_u64().unwrap() > 0, "{report}");
        }
        _ => {
            assert!(report["flood_commits"].is_null(), "{report}");
            assert!(!printed.contains("without fsync:"), "{printed}");
        }
    }
    let mix = &report["speed_p99_mix_over_idle"];
    assert_eq!(mix["median"], mix["all"][0], "one round: {report}");
    assert!(
        printed.contains("host steal (CPU time the hypervisor took): median"),
        "{printed}"
    );
    for line in [
        "trivial / floor throughput:",
        "trivial kept / floor throughput:",
        "speed p99, hostile mix / idle:",
    ] {
        assert!(printed.contains(line), "{printed}");
    }
    for run in ["floor", "trivial", "trivial_kept"] {
        assert!(report[run]["ok"].as_u64().unwrap() > 0, "{run}: {report}");
    }
    let classes: Vec<&str> = report["hostile_mix"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        classes,
        [
            "speed",
            "segmentation-burn",
            "care-backlog",
            "segmentation-hang"
        ]
    );
    let idle = &report["speed_idle"][0];
    assert_eq!(idle["name"], "speed");
    assert!(idle["ok"].as_u64().unwrap() > 0, "{report}");
    assert!(idle["p99_us"].as_u64().unwrap() > 0, "{report}");
    for figure in ["trivial_over_floor", "trivial_kept_over_floor"] {
        assert_judged_beside_the_ceiling(&printed, &report, figure);
    }
    assert!(
        printed.contains("speed p99, refused flood / idle:"),
        "{printed}"
    );
    assert!(
        report["flood_speed"][0]["ok"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert!(
        printed.contains("without bulk ingress threads:"),
        "{printed}"
    );
    for flood in ["flood_segmentation", "flood_care"] {
        let answered =
            report[flood]["ok"].as_u64().unwrap() + report[flood]["refused"].as_u64().unwrap();
        assert!(answered > 0, "{flood}: {report}");
    }
    for printed_line in [
        "speed p99, slow neighbour / idle:",
        "without the lane's guard:",
    ] {
        assert!(printed.contains(printed_line), "{printed}");
    }
    assert!(
        report["neighbour_flood"]["ok"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert!(
        report["neighbour_speed"][0]["ok"].as_u64().unwrap() > 0,
        "{report}"
    );
}

/// The report carries the generator's ceiling, prints it, and `figure` is
/// either measured or withheld with the reason.
fn assert_judged_beside_the_ceiling(printed: &str, report: &Value, figure: &str) {
    assert!(printed.contains("generator ceiling"), "{printed}");
    assert!(
        report["ceiling"]["ok_per_s"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(
        report["ceiling"]["threads"].as_u64().unwrap() >= 1,
        "{report}"
    );
    let judged = &report[figure];
    let measured = judged["measured"].as_f64().is_some_and(|v| v > 0.0);
    let withheld = judged["withheld"]
        .as_str()
        .is_some_and(|why| why.contains("generator's ceiling") && printed.contains(why));
    assert!(measured ^ withheld, "{report}");
}

#[test]
fn the_ingest_bench_runs_end_to_end() {
    let (printed, report) = smoke_run("ingest");
    assert!(printed.contains("durable / fsync off:"), "{printed}");
    assert_judged_beside_the_ceiling(&printed, &report, "durable_over_unsynced");
    assert_judged_beside_the_ceiling(&printed, &report, "durable_per_s");
    for run in ["durable", "unsynced"] {
        assert!(report[run]["ok"].as_u64().unwrap() > 0, "{report}");
        assert_eq!(report[run]["errors"], 0, "{report}");
    }
}

#[test]
fn the_deploy_bench_runs_end_to_end() {
    let (printed, report) = smoke_run("deploy");
    assert!(printed.contains("restart, warm cache:"), "{printed}");
    assert_eq!(report["campaigns"], 20, "{report}");
    assert!(report["rss_mb"].as_f64().unwrap() > 0.0, "{report}");
    assert_eq!(report["deploy_ms"]["runs"], 3, "{report}");
    assert!(
        report["deploy_ms"]["median"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(
        printed.contains("speed p99, deploying / idle:"),
        "{printed}"
    );
    assert!(
        printed.contains("without the incremental cache:"),
        "{printed}"
    );
    for gateway in ["under_traffic", "under_traffic_uncached"] {
        let figures = &report[gateway];
        assert_eq!(figures["deploy_ms"]["runs"], 2, "{report}");
        assert!(
            figures["speed_p99_deploying_over_idle"].as_f64().unwrap() > 0.0,
            "{report}"
        );
    }
    // Real builds differ in code: the cache serves much, not all.
    let served = report["compile_cache_hit_share"].as_f64().unwrap();
    assert!(served > 0.5 && served < 1.0, "{report}");
    assert!(report["restart_s"].as_f64().unwrap() > 0.0, "{report}");
}

#[test]
fn the_backlog_bench_runs_end_to_end() {
    let (printed, report) = smoke_run("backlog");
    assert!(printed.contains("restart (kill -9) to ready:"), "{printed}");
    assert!(printed.contains("generator ceiling"), "{printed}");
    assert!(
        report["ceiling"]["ok_per_s"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    // The burst accepts up to its target while the slow campaign drains,
    // so what is queued at its end depends on the machine's speed: it is
    // above the small backlog, and the burst accepted what it was sent for.
    let small = report["small_backlog"].as_u64().unwrap();
    assert!(report["queued"].as_u64().unwrap() > small, "{report}");
    assert!(
        report["ingest"]["accepted"].as_u64().unwrap() >= 2_000 - 200,
        "{report}"
    );
    assert!(
        report["rss_full_backlog_mb"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(
        report["disk_bytes_per_event"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(
        report["restart_to_speed_answer_s"].as_f64().unwrap() > 0.0,
        "{report}"
    );
}

#[test]
fn the_soak_bench_loses_nothing_across_kills_and_outages() {
    let (printed, report) = smoke_run("soak");
    assert!(printed.contains("lost:"), "{printed}");
    assert_eq!(report["lost"], 0, "{report}");
    assert!(report["drained"].as_bool().unwrap(), "{report}");
    let restarts = report["restarts"].as_array().unwrap();
    assert!(restarts.len() >= 2, "{report}");
    assert!(
        restarts
            .iter()
            .all(|r| r["ready_s"].as_f64().unwrap() > 0.0),
        "{report}"
    );
    assert_eq!(
        report["lifetimes"].as_array().unwrap().len(),
        restarts.len() + 1,
        "{report}"
    );
    for lane in report["lanes"].as_array().unwrap() {
        assert!(lane["accepted"].as_u64().unwrap() > 0, "{report}");
    }
    assert!(report["outages"].as_u64().unwrap() > 0, "{report}");
    assert!(report["refused_by_sink"].as_u64().unwrap() > 0, "{report}");
    assert!(report["max_rss_mb"].as_f64().unwrap() > 0.0, "{report}");
}

#[test]
fn the_nodes_bench_runs_end_to_end() {
    let (printed, report) = smoke_run("nodes");
    assert!(printed.contains("3 nodes / 1 node, one nats:"), "{printed}");
    assert_judged_beside_the_ceiling(&printed, &report, "nats_over_embedded");
    assert_judged_beside_the_ceiling(&printed, &report, "three_nodes_over_one");
    let configurations = report["configurations"].as_array().unwrap();
    let shape: Vec<(&str, u64)> = configurations
        .iter()
        .map(|c| (c["store"].as_str().unwrap(), c["nodes"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        shape,
        [
            ("embedded", 1),
            ("nats", 1),
            ("nats", 2),
            ("nats", 3),
            ("nats_r3", 1)
        ]
    );
    let mut broker_cpu_s = 0.0;
    for c in configurations {
        assert!(c["load"]["ok"].as_u64().unwrap() > 0, "{c}");
        assert_eq!(c["load"]["errors"], 0, "{c}");
        assert!(c["gateway_cpu_s"].as_f64().unwrap() > 0.0, "{c}");
        assert!(c["events_per_gateway_cpu_s"].as_f64().unwrap() > 0.0, "{c}");
        match c["store"].as_str().unwrap() {
            "embedded" => assert!(c["broker_cpu_s"].is_null(), "{c}"),
            _ => broker_cpu_s += c["broker_cpu_s"].as_f64().unwrap(),
        }
    }
    assert!(broker_cpu_s > 0.0, "{report}");
    // A deploy and a rollback through one node reached all three.
    assert!(
        printed.contains("deploy through node 0, on all 3:"),
        "{printed}"
    );
    for change in ["deploy_ms", "rollback_ms"] {
        assert!(
            report["propagation"][change].as_f64().unwrap() > 0.0,
            "{report}"
        );
    }
}
