//! The SDK tutorial shows the `welcome` plugin verbatim, so what authors
//! read is code that builds.

#[test]
fn the_sdk_tutorial_shows_the_welcome_plugin_verbatim() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("plugin-sdk/README.md")).expect("sdk README");
    let code =
        std::fs::read_to_string(root.join("plugins/welcome/src/lib.rs")).expect("welcome plugin");
    let shown = readme
        .split("```rust\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a rust code block in the README");
    assert_eq!(
        shown, code,
        "plugin-sdk/README.md and plugins/welcome/src/lib.rs differ"
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
