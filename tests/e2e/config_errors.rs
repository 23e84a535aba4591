//! A bad config is refused at load time with the file, key and expectation.

use std::process::Command;

use crate::harness::{one_campaign_toml, plugin};

fn check_config(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, text).expect("write config");
    let output = Command::new(env!("CARGO_BIN_EXE_hooklane"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run hooklane");
    let text = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    (
        output.status.success(),
        text.replace(&path.display().to_string(), "FILE"),
    )
}

#[test]
fn emit_to_an_unknown_campaign_is_a_config_error() {
    let (ok, output) = check_config(&format!(
        "[sources.s]\n[campaigns.a]\nsource = \"s\"\nlane = \"speed\"\nplugin = \"{}\"\nemits = [\"missing\"]\n",
        plugin("login-code")
    ));
    assert!(!ok, "{output}");
    assert!(
        output.contains("FILE: key `campaigns.a.emits[0]`: expected the name of a campaign in [campaigns], found `missing`"),
        "{output}"
    );
}

#[test]
fn a_valid_config_with_real_plugins_checks_out() {
    let (ok, output) = check_config(&one_campaign_toml("s", "a", "speed", &plugin("login-code")));
    assert!(ok, "{output}");
    assert!(
        output.contains("FILE: ok (1 sources, 1 campaigns, 0 destinations)"),
        "{output}"
    );
}

#[test]
fn a_file_that_is_not_a_component_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fake = dir.path().join("fake.wasm");
    std::fs::write(&fake, b"not wasm at all").expect("write");
    let (ok, output) = check_config(&one_campaign_toml(
        "s",
        "a",
        "speed",
        &fake.display().to_string(),
    ));
    assert!(!ok, "{output}");
    assert!(output.contains("campaign `a`"), "{output}");
    assert!(
        output.contains("is not a valid `hooklane:plugin/campaign` component"),
        "{output}"
    );
}

#[test]
fn syntax_errors_name_file_and_line() {
    let (ok, output) = check_config("[sources.s]\nlisten = 12\n");
    assert!(!ok, "{output}");
    assert!(
        output.contains("FILE:2: key `sources.s.listen`: unknown field `listen`"),
        "{output}"
    );
}

#[test]
fn a_setting_the_plugin_declares_it_does_not_read_is_refused() {
    let config = |key: &str| {
        format!(
            "[sources.s]\n[campaigns.cart]\nsource = \"s\"\nlane = \"care\"\nplugin = \"{}\"\nemits = [\"cart\"]\nsettings = {{ {key} = \"2\" }}\n",
            plugin("abandoned-cart")
        )
    };
    let (ok, output) = check_config(&config("remind_after"));
    assert!(!ok, "{output}");
    assert!(
        output.contains("campaign `cart`: settings.remind_after is not read by its plugin, which declares only: self, remind_after_s, destination (a typo?)"),
        "{output}"
    );
    let (ok, output) = check_config(&config("remind_after_s"));
    assert!(ok, "{output}");
}

/// A deploy of a version that declares its settings, to a campaign whose
/// config sets another, is refused; the running version stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_whose_plugin_does_not_read_a_configured_setting_is_refused() {
    let sink = crate::harness::Recorder::start(serde_json::json!({})).await;
    let config = crate::harness::care_forwarder_toml(
        "relay",
        &sink,
        "",
        "settings = { destination = \"sink\", remind_after = \"2\" }",
    );
    let gateway = crate::harness::Gateway::start(&config).await;
    let cart = std::fs::read(plugin("abandoned-cart")).expect("component");
    let refused = gateway
        .admin_with(reqwest::Method::POST, "/v1/campaigns/relay/versions", cart)
        .await;
    assert_eq!(refused.status, 422);
    let answer = refused.json();
    assert_eq!(answer["error"], "invalid_plugin", "{answer}");
    let detail = answer["detail"].as_str().unwrap();
    assert!(
        detail.contains("settings.remind_after is not read by its plugin"),
        "{detail}"
    );
    let versions = gateway
        .admin(reqwest::Method::GET, "/v1/campaigns/relay/versions")
        .await;
    assert_eq!(
        versions["versions"].as_array().unwrap().len(),
        1,
        "nothing stored: {versions}"
    );
}
