//! Arbitrary requests into a verifier of every scheme. Besides "no panic",
//! three oracles: a request the target did not sign is refused; a signed
//! request whose body was changed is refused; a signed request left alone,
//! on time, is accepted. No refusal may show a secret or the signature.

#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use arbitrary::Arbitrary;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey};
use hmac::{Hmac, Mac};
use hooklane::verify::{
    parse_whsec, sign_standard_webhooks, Verifier, VerifyConfig, MAX_HEADER_BYTES,
};
use libfuzzer_sys::fuzz_target;
use sha2::{Sha256, Sha512};

const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SHARED: &str = "a shared secret for fuzzing";
const SEED: [u8; 32] = [9; 32];
const TOLERANCE_S: u64 = 300;

/// Header names the verifiers read, so arbitrary extra headers hit them.
const KNOWN: [&str; 9] = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "stripe-signature",
    "x-hub-signature-256",
    "x-github-delivery",
    "x-shopify-hmac-sha256",
    "x-signature",
    "Webhook-Signature",
];

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Scheme {
    StandardV1,
    StandardV1a,
    Github,
    Stripe,
    Shopify,
    Hmac,
}

#[derive(Arbitrary, Debug)]
enum Name<'a> {
    Known(u8),
    Other(&'a str),
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    scheme: Scheme,
    /// Start from a correctly signed request.
    sign: bool,
    id: &'a str,
    timestamp: u32,
    /// `now` minus the signed timestamp.
    clock_skew: i16,
    extra_headers: Vec<(Name<'a>, &'a str)>,
    body: &'a [u8],
    /// Change one byte of the body after signing.
    flip: Option<(u16, u8)>,
}

struct Verifiers {
    standard: Verifier,
    github: Verifier,
    stripe: Verifier,
    shopify: Verifier,
    hmac: Verifier,
}

fn whpk() -> String {
    let public = SigningKey::from_bytes(&SEED).verifying_key();
    format!("whpk_{}", BASE64.encode(public.as_bytes()))
}

/// The verifiers, built once through the public config path, with secrets
/// in files of a temporary directory.
fn verifiers() -> &'static Verifiers {
    static VERIFIERS: OnceLock<Verifiers> = OnceLock::new();
    VERIFIERS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::write(dir.path().join("whsec"), format!("{WHSEC}\n")).unwrap();
        std::fs::write(dir.path().join("whpk"), whpk()).unwrap();
        std::fs::write(dir.path().join("shared"), SHARED).unwrap();
        let build = |table: &str| {
            toml::from_str::<VerifyConfig>(table)
                .expect("valid table")
                .verifier(dir.path())
                .expect("readable secrets")
        };
        Verifiers {
            standard: build(
                "scheme = 'standard-webhooks'\nsecrets = [{ file = 'whsec' }, { file = 'whpk' }]",
            ),
            github: build("scheme = 'github'\nsecrets = [{ file = 'shared' }]"),
            stripe: build("scheme = 'stripe'\nsecrets = [{ file = 'shared' }]"),
            shopify: build("scheme = 'shopify'\nsecrets = [{ file = 'shared' }]"),
            hmac: build(
                "scheme = 'hmac'\nsecrets = [{ file = 'shared' }]\nheader = 'X-Signature'\n\
                 algorithm = 'sha512'\nencoding = 'base64'\nprefix = 'sig='",
            ),
        }
    })
}

fn hmac256(parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(SHARED.as_bytes()).unwrap();
    parts.iter().for_each(|part| mac.update(part));
    mac.finalize().into_bytes().to_vec()
}

/// The headers an honest sender of `scheme` sends.
fn sign(scheme: Scheme, id: &str, timestamp: i64, body: &[u8]) -> Vec<(String, String)> {
    let ts = timestamp.to_string();
    let standard = |signature: String| {
        vec![
            ("webhook-id".to_owned(), id.to_owned()),
            ("webhook-timestamp".to_owned(), ts.clone()),
            ("webhook-signature".to_owned(), signature),
        ]
    };
    match scheme {
        Scheme::StandardV1 => {
            let key = parse_whsec(WHSEC).unwrap();
            standard(sign_standard_webhooks(key.as_bytes(), id, timestamp, body))
        }
        Scheme::StandardV1a => {
            let content = [id.as_bytes(), b".", ts.as_bytes(), b".", body].concat();
            let signature = SigningKey::from_bytes(&SEED).sign(&content);
            standard(format!("v1a,{}", BASE64.encode(signature.to_bytes())))
        }
        Scheme::Github => vec![(
            "x-hub-signature-256".to_owned(),
            format!("sha256={}", hex::encode(hmac256(&[body]))),
        )],
        Scheme::Stripe => vec![(
            "stripe-signature".to_owned(),
            format!(
                "t={ts},v1={}",
                hex::encode(hmac256(&[ts.as_bytes(), b".", body]))
            ),
        )],
        Scheme::Shopify => vec![(
            "x-shopify-hmac-sha256".to_owned(),
            BASE64.encode(hmac256(&[body])),
        )],
        Scheme::Hmac => {
            let mut mac = Hmac::<Sha512>::new_from_slice(SHARED.as_bytes()).unwrap();
            mac.update(body);
            vec![(
                "x-signature".to_owned(),
                format!("sig={}", BASE64.encode(mac.finalize().into_bytes())),
            )]
        }
    }
}

fuzz_target!(|input: Input| {
    let verifiers = verifiers();
    let verifier = match input.scheme {
        Scheme::StandardV1 | Scheme::StandardV1a => &verifiers.standard,
        Scheme::Github => &verifiers.github,
        Scheme::Stripe => &verifiers.stripe,
        Scheme::Shopify => &verifiers.shopify,
        Scheme::Hmac => &verifiers.hmac,
    };
    let timestamp = i64::from(input.timestamp);
    let mut body = input.body.to_vec();
    let mut headers = if input.sign {
        sign(input.scheme, input.id, timestamp, &body)
    } else {
        Vec::new()
    };
    // The signature this target computed (always the last signed header):
    // no refusal may show it. Header values the fuzzer wrote are not
    // checked, since it copies text out of the refusals themselves.
    let signature = headers.last().map(|(_, value)| value.clone());
    let tampered = match input.flip {
        Some((position, flip)) if flip != 0 && !body.is_empty() => {
            let position = usize::from(position) % body.len();
            body[position] ^= flip;
            true
        }
        _ => false,
    };
    for (name, value) in &input.extra_headers {
        let name = match name {
            Name::Known(i) => KNOWN[usize::from(*i) % KNOWN.len()],
            Name::Other(name) => name,
        };
        headers.push((name.to_owned(), (*value).to_owned()));
    }
    let now_s = timestamp + i64::from(input.clock_skew);
    let now = if now_s >= 0 {
        UNIX_EPOCH + Duration::from_secs(now_s as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(now_s.unsigned_abs())
    };

    let result = verifier.verify(&headers, &body, now);

    if let Err(rejection) = &result {
        let shown = rejection.to_string();
        for secret in [WHSEC, &WHSEC[6..], SHARED] {
            assert!(!shown.contains(secret), "{shown}");
        }
        if let Some(signature) = &signature {
            for part in signature
                .split([' ', ',', '='])
                .filter(|part| part.len() >= 16)
            {
                assert!(!shown.contains(part), "{shown}");
            }
        }
    }
    if !input.sign || tampered {
        assert!(result.is_err(), "accepted a request not signed as sent");
    } else {
        let on_time = u64::from(input.clock_skew.unsigned_abs()) <= TOLERANCE_S
            || matches!(
                input.scheme,
                Scheme::Github | Scheme::Shopify | Scheme::Hmac
            );
        if on_time && input.extra_headers.is_empty() && input.id.len() <= MAX_HEADER_BYTES {
            assert!(result.is_ok(), "refused an honest request: {result:?}");
        }
    }
});
