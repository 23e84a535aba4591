//! Bad input and hostile clients get clear, early answers: wrong method 405,
//! malformed JSON 400, a slow client's connection closed, too many headers
//! refused, and the admin API closed without its token.

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::harness::{plugin, until_closed, Gateway, ADMIN_TOKEN};

async fn gateway() -> Gateway {
    Gateway::start(&format!(
        r#"
header_read_timeout_ms = 300
body_read_timeout_ms = 300
[sources.orders]
[campaigns.orders]
source = "orders"
lane = "speed"
plugin = "{}"
json_input = true
"#,
        plugin("trivial")
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_method_and_malformed_json_get_json_errors() {
    let gateway = gateway().await;
    let get = gateway
        .http
        .get(format!("http://{}/hooks/orders", gateway.ingress))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 405);
    assert_eq!(get.headers()["allow"], "POST");
    let body: serde_json::Value = serde_json::from_slice(&get.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"], "method_not_allowed");

    let malformed = gateway.post("orders", "{not json").await;
    assert_eq!(malformed.status, 400);
    assert_eq!(malformed.json()["error"], "malformed_json");
    assert_eq!(gateway.post("orders", "{}").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    let gateway = gateway().await;
    // Slowloris: a request head that never ends.
    let mut stream = TcpStream::connect(gateway.ingress).await.unwrap();
    stream
        .write_all(b"POST /hooks/orders HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .unwrap();
    until_closed(&mut stream).await;

    // A body that never arrives in full.
    let mut stream = TcpStream::connect(gateway.ingress).await.unwrap();
    stream
        .write_all(b"POST /hooks/orders HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"a\":")
        .await
        .unwrap();
    let answer = until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_headers_are_refused() {
    let gateway = gateway().await;
    let mut request = gateway
        .http
        .post(format!("http://{}/hooks/orders", gateway.ingress))
        .body("{}");
    for i in 0..200 {
        request = request.header(format!("x-filler-{i}"), "x");
    }
    let status = request.send().await.map(|r| r.status().as_u16());
    // 431, or a hang-up while the client still writes (`edge_faults` checks
    // the answer's body).
    assert!(matches!(status, Ok(431) | Err(_)), "{status:?}");
    assert_eq!(gateway.post("orders", "{}").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_its_token() {
    let gateway = gateway().await;
    let url = format!("http://{}/v1/campaigns", gateway.admin);
    let none = gateway.http.get(&url).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let wrong = gateway
        .http
        .get(&url)
        .bearer_auth("guess")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let body: serde_json::Value = serde_json::from_slice(&wrong.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"], "unauthorized");
    assert!(!body.to_string().contains(ADMIN_TOKEN));
    let right = gateway
        .http
        .get(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    // Health stays open for probes.
    let health = gateway
        .http
        .get(format!("http://{}/healthz", gateway.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}
