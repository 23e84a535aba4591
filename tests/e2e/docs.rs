//! Each tutorial shows its plugin verbatim, so what authors read is code
//! that builds: the SDK tutorial the `welcome` plugin, the JavaScript and
//! Python tutorials their `personal-offer` example.

/// The first `language` code block of tutorial `readme` equals `source`
/// (both relative to the repository root).
fn assert_shows_verbatim(readme: &str, language: &str, source: &str) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let read = |path: &str| {
        std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let text = read(readme);
    let shown = text
        .split(&format!("```{language}\n"))
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap_or_else(|| panic!("no {language} code block in {readme}"));
    assert_eq!(shown, read(source), "{readme} and {source} differ");
}

#[test]
fn the_sdk_tutorial_shows_the_welcome_plugin_verbatim() {
    assert_shows_verbatim("plugin-sdk/README.md", "rust", "plugins/welcome/src/lib.rs");
}

#[test]
fn the_javascript_tutorial_shows_its_example_verbatim() {
    assert_shows_verbatim("plugins/js/README.md", "js", "plugins/js/personal-offer.js");
}

#[test]
fn the_python_tutorial_shows_its_example_verbatim() {
    assert_shows_verbatim(
        "plugins/py/README.md",
        "python",
        "plugins/py/personal_offer.py",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tutorial_plugin_welcomes_once() {
    use crate::harness::{plugin, Gateway, Recorder};
    use serde_json::json;

    let mut mailer = Recorder::start(json!({})).await;
    let gateway = Gateway::start(&format!(
        r#"
[sources.signups]
[campaigns.welcome]
source = "signups"
lane = "speed"
plugin = "{}"
destinations = ["mailer"]
settings = {{ discount_pct = "15" }}
[destinations.mailer]
url = "{}"
"#,
        plugin("welcome"),
        mailer.url()
    ))
    .await;
    let signup = json!({ "email": "ada@example.com", "name": "Ada" });
    let first = gateway.post_json("signups", signup.clone()).await;
    assert_eq!(first.status, 201);
    assert_eq!(
        first.json(),
        json!({ "status": "welcomed", "discount_pct": "15" })
    );
    assert_eq!(
        mailer.next().await.json(),
        json!({ "to": "ada@example.com", "subject": "Welcome, Ada! Here is 15% off" })
    );
    let again = gateway.post_json("signups", signup).await;
    assert_eq!(again.json(), json!({ "status": "already-welcomed" }));
}
