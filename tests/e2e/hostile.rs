//! Hostile plugins are each stopped with their own cause, and the gateway
//! keeps serving the speed lane right after every one of them.

use serde_json::json;

use crate::harness::{
    assert_speed_lane_answers, black_hole, login_code_toml, plugin, Gateway, Recorder,
};

async fn hostile_gateway(sms: &Recorder) -> Gateway {
    let hang_target = black_hole().await;
    let mut config = format!(
        r#"
{login}

# Fuel runs out long before the deadline.
[sources.spin-fuel]
[campaigns.spin-fuel]
source = "spin-fuel"
lane = "speed"
plugin = "{spin}"
fuel = 10_000_000
deadline_ms = 30_000

# The deadline comes long before the fuel runs out.
[sources.spin-deadline]
[campaigns.spin-deadline]
source = "spin-deadline"
lane = "speed"
plugin = "{spin}"
fuel = 1_000_000_000_000
deadline_ms = 100

[sources.hang]
[campaigns.hang]
source = "hang"
lane = "speed"
plugin = "{hang}"
deadline_ms = 30_000
fetch_timeout_ms = 200
allowed_hosts = ["127.0.0.1:{hang_port}"]
settings = {{ url = "http://127.0.0.1:{hang_port}/" }}

[sources.bloat]
[campaigns.bloat]
source = "bloat"
lane = "speed"
plugin = "{bloat}"
memory_mb = 256
fuel = 1_000_000_000
deadline_ms = 30_000
"#,
        login = login_code_toml(sms),
        spin = plugin("spin"),
        hang = plugin("hang"),
        bloat = plugin("bloat"),
        hang_port = hang_target.port(),
    );
    for name in ["hog", "panic", "trap"] {
        config.push_str(&format!(
            "\n[sources.{name}]\n[campaigns.{name}]\nsource = \"{name}\"\nlane = \"speed\"\nplugin = \"{}\"\nmemory_mb = 64\n",
            plugin(name)
        ));
    }
    Gateway::start(&config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_hostile_plugin_is_stopped_with_its_own_cause() {
    let mut sms = Recorder::start(json!({})).await;
    let mut gateway = hostile_gateway(&sms).await;
    let cases = [
        ("spin-fuel", 502, "out_of_fuel", "ran out of fuel"),
        ("spin-deadline", 504, "deadline", "deadline of 100 ms"),
        ("hog", 502, "memory_limit", "memory limit of 64 MiB"),
        ("panic", 502, "panic", "panicked on purpose"),
        ("trap", 502, "trap", "unreachable"),
        (
            "bloat",
            502,
            "output_too_large",
            "more than the limit of 1048576",
        ),
        ("hang", 502, "fetch_timeout", "timed out"),
    ];
    for (source, status, cause, detail) in cases {
        let reply = gateway.post_json(source, json!({})).await;
        let body = reply.json();
        assert_eq!(reply.status, status, "{source}: {body}");
        assert_eq!(body["error"], "plugin_failed", "{source}: {body}");
        assert_eq!(body["campaign"], source, "{body}");
        assert_eq!(body["cause"], cause, "{source}: {body}");
        let text = body["detail"].as_str().unwrap();
        assert!(text.starts_with(&format!("campaign `{source}` ")), "{text}");
        assert!(text.contains(detail), "{source}: {text}");

        // The speed lane still answers right after.
        assert_speed_lane_answers(&gateway, &mut sms, source).await;
        assert!(gateway.is_running(), "gateway died after {source}");
    }
    let log = gateway.log();
    assert!(
        log.contains("campaign=panic"),
        "failures are logged with their campaign"
    );
}
