//! The admin API's OpenAPI document matches the real routes: every
//! documented operation exists, answers with a documented status, and
//! refusals are JSON.

use reqwest::Method;
use serde_json::Value;

use crate::harness::{Gateway, ADMIN_TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_exists_and_answers_as_documented() {
    let gateway = Gateway::start("").await;
    let document = gateway.open_admin_text("/openapi.json").await;
    let spec: Value = serde_json::from_str(&document).expect("the document is JSON");
    assert_eq!(spec["openapi"], "3.1.0");
    let paths = spec["paths"].as_object().expect("paths");
    assert!(paths.len() >= 10, "{paths:?}");
    for (path, operations) in paths {
        for (method, operation) in operations.as_object().expect("operations") {
            let url = format!(
                "http://{}{}",
                gateway.admin,
                path.replace("{namespace}", "ns")
                    .replace("{key}", "absent")
                    .replace("{id}", "424242")
                    .replace("{campaign}", "absent")
                    .replace("{version}", "1")
                    .replace("{name}", "absent")
            );
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let response = gateway
                .http
                .request(method.clone(), &url)
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .expect("admin reachable");
            let status = response.status().as_u16();
            let body = response.bytes().await.expect("body");
            let documented = operation["responses"].as_object().expect("responses");
            assert!(
                documented.contains_key(&status.to_string()),
                "{method} {path} answered {status}, not documented: {}",
                String::from_utf8_lossy(&body)
            );
            if status >= 400 {
                // A handler's refusal, not the router's empty 404/405.
                let error: Value = serde_json::from_slice(&body)
                    .unwrap_or_else(|_| panic!("{method} {path}: {status} without a JSON body"));
                assert!(
                    error["error"].is_string() && error["detail"].is_string(),
                    "{error}"
                );
            }
        }
    }
}
