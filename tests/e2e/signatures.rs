//! Signed sources, end to end: each scheme's valid webhook is accepted, and
//! a tampered body, a wrong secret, a stale timestamp or a missing header
//! get 401 with a JSON reason; a rotated secret still verifies; an oversized
//! body gets 413.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::harness::{plugin, Gateway, Reply};
use base64::Engine;
use hmac::{Hmac, Mac};

const WHSEC_OLD: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WHSEC_NEW: &str = "whsec_dGhlIG5ldyBrZXkgYWZ0ZXIgcm90YXRpb24=";
const SHARED: &str = "It's a Secret to Everybody";

fn config() -> String {
    let trivial = plugin("trivial");
    let source = |name: &str, verify: &str| {
        format!(
            "[sources.{name}]\nverify = {verify}\n[campaigns.{name}]\nsource = \"{name}\"\nlane = \"speed\"\nplugin = \"{trivial}\"\n"
        )
    };
    let sources = [
        source(
            "standard",
            r#"{ scheme = "standard-webhooks", secrets = [{ env = "WHSEC_NEW" }, { env = "WHSEC_OLD" }] }"#,
        ),
        source("github", r#"{ scheme = "github", secrets = [{ env = "SHARED" }] }"#),
        source("stripe", r#"{ scheme = "stripe", secrets = [{ env = "SHARED" }] }"#),
        source("shopify", r#"{ scheme = "shopify", secrets = [{ env = "SHARED" }] }"#),
        source(
            "custom",
            r#"{ scheme = "hmac", secrets = [{ env = "SHARED" }], header = "x-signature", algorithm = "sha512", encoding = "hex", prefix = "sha512=" }"#,
        ),
    ]
    .join("\n");
    format!("max_body_kb = 1\n{sources}")
}

async fn gateway() -> Gateway {
    let dir = tempfile::tempdir().expect("temp dir");
    Gateway::start_in(
        dir,
        &config(),
        &[
            ("WHSEC_OLD", WHSEC_OLD),
            ("WHSEC_NEW", WHSEC_NEW),
            ("SHARED", SHARED),
        ],
    )
    .await
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn mac256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn whsec_key(secret: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap()
}

fn assert_refused(reply: &Reply, reason: &str) {
    let body = reply.json();
    assert_eq!(reply.status, 401, "{body}");
    assert_eq!(body["error"], reason, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        !detail.contains(SHARED) && !detail.contains("whsec_"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_webhooks_verify_with_rotation_and_refuse_the_rest() {
    let gateway = gateway().await;
    let body = r#"{"order": 1}"#;
    let signed = |secret: &str, id: &str, ts: i64, body: &str| {
        let signature = b64(&mac256(
            &whsec_key(secret),
            &[format!("{id}.{ts}.").as_bytes(), body.as_bytes()],
        ));
        (id.to_owned(), ts.to_string(), format!("v1,{signature}"))
    };
    let post = |(id, ts, sig): (String, String, String), body: &'static str| {
        let gateway = &gateway;
        async move {
            let headers = [
                ("webhook-id", id.as_str()),
                ("webhook-timestamp", ts.as_str()),
                ("webhook-signature", sig.as_str()),
            ];
            gateway.post_with("standard", &headers, body).await
        }
    };
    // Signed with the old (rotated-out, still listed) and the new secret.
    assert_eq!(
        post(signed(WHSEC_OLD, "msg_1", now(), body), body)
            .await
            .status,
        200
    );
    assert_eq!(
        post(signed(WHSEC_NEW, "msg_2", now(), body), body)
            .await
            .status,
        200
    );
    // Several signatures, one valid.
    let (id, ts, good) = signed(WHSEC_NEW, "msg_3", now(), body);
    let both = format!("v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= {good}");
    assert_eq!(post((id, ts, both), body).await.status, 200);

    let tampered = post(signed(WHSEC_NEW, "msg_4", now(), body), r#"{"order": 2}"#).await;
    assert_refused(&tampered, "bad_signature");
    let wrong = "whsec_d3Jvbmcgc2VjcmV0IGZvciB0aGlzIHNvdXJjZQ==";
    assert_refused(
        &post(signed(wrong, "msg_5", now(), body), body).await,
        "bad_signature",
    );
    let stale = post(signed(WHSEC_NEW, "msg_6", now() - 3600, body), body).await;
    assert_refused(&stale, "stale_timestamp");
    let future = post(signed(WHSEC_NEW, "msg_7", now() + 3600, body), body).await;
    assert_refused(&future, "future_timestamp");
    let unsigned = gateway.post("standard", body).await;
    assert_refused(&unsigned, "missing_header");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_stripe_shopify_and_generic_hmac_verify() {
    let gateway = gateway().await;
    let body = "Hello, World!";

    // GitHub's documented example: this secret and payload give this signature.
    let github = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    let reply = gateway
        .post_with("github", &[("x-hub-signature-256", github)], body)
        .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let tampered = gateway
        .post_with(
            "github",
            &[("x-hub-signature-256", github)],
            "Hello, World?",
        )
        .await;
    assert_refused(&tampered, "bad_signature");

    let ts = now().to_string();
    let v1 = hex::encode(mac256(
        SHARED.as_bytes(),
        &[format!("{ts}.").as_bytes(), body.as_bytes()],
    ));
    let stripe = format!("t={ts},v1={v1}");
    let reply = gateway
        .post_with("stripe", &[("stripe-signature", &stripe)], body)
        .await;
    assert_eq!(reply.status, 200);
    let old = (now() - 3600).to_string();
    let stale = format!("t={old},v1={v1}");
    let reply = gateway
        .post_with("stripe", &[("stripe-signature", &stale)], body)
        .await;
    assert_refused(&reply, "stale_timestamp");

    let shopify = b64(&mac256(SHARED.as_bytes(), &[body.as_bytes()]));
    let reply = gateway
        .post_with("shopify", &[("x-shopify-hmac-sha256", &shopify)], body)
        .await;
    assert_eq!(reply.status, 200);
    assert_refused(&gateway.post("shopify", body).await, "missing_header");

    let mut mac = Hmac::<sha2::Sha512>::new_from_slice(SHARED.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let custom = format!("sha512={}", hex::encode(mac.finalize().into_bytes()));
    let reply = gateway
        .post_with("custom", &[("x-signature", &custom)], body)
        .await;
    assert_eq!(reply.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_refused_with_413() {
    let gateway = gateway().await;
    let reply = gateway.post("github", vec![b'x'; 4096]).await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json()["error"], "body_too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ed25519_signed_webhooks_verify_with_the_public_key() {
    use ed25519_dalek::{Signer, SigningKey};
    let signing = SigningKey::from_bytes(&[7u8; 32]);
    let public = format!("whpk_{}", b64(signing.verifying_key().as_bytes()));
    let other = SigningKey::from_bytes(&[8u8; 32]);
    let trivial = plugin("trivial");
    let gateway = Gateway::start_in(
        tempfile::tempdir().expect("temp dir"),
        &format!(
            "[sources.asym]\nverify = {{ scheme = \"standard-webhooks\", secrets = [{{ env = \"WHPK\" }}] }}\n[campaigns.asym]\nsource = \"asym\"\nlane = \"speed\"\nplugin = \"{trivial}\"\n"
        ),
        &[("WHPK", public.as_str())],
    )
    .await;
    let body = r#"{"order": 3}"#;
    let ts = now().to_string();
    let content = format!("msg_ed.{ts}.{body}");
    for (key, status) in [(&signing, 200), (&other, 401)] {
        let signature = format!("v1a,{}", b64(&key.sign(content.as_bytes()).to_bytes()));
        let headers = [
            ("webhook-id", "msg_ed"),
            ("webhook-timestamp", ts.as_str()),
            ("webhook-signature", signature.as_str()),
        ];
        let reply = gateway.post_with("asym", &headers, body).await;
        assert_eq!(
            reply.status,
            status,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
    }
}
