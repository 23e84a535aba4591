//! Helpers for the schemes' tests, and the properties every scheme shares:
//! what is signed verifies, any one-byte change does not, and no refusal
//! gives a secret away.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signer, SigningKey};
use proptest::prelude::*;

use super::mac::{Algorithm, Encoding};
use super::*;

/// The verifier of a `[verify]` table, whose `{ env = "NAME" }` secrets are
/// looked up in `env` (not the process environment, which tests share).
pub(super) fn verifier(toml_text: &str, env: &[(&str, &str)]) -> Verifier {
    let config: VerifyConfig = toml::from_str(toml_text).expect("valid [verify] table");
    config
        .verifier_with_env(Path::new("/nonexistent"), &fake_env(env))
        .expect("resolvable secrets")
}

pub(super) fn fake_env(env: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    move |name| {
        env.iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value.into())
    }
}

pub(super) fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// `seconds` after the Unix epoch.
pub(super) fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SHARED: &str = "a shared secret for the properties";
const SEED: [u8; 32] = [7; 32];

/// Every way a sender can sign, with a verifier that accepts it.
#[derive(Debug, Clone, Copy)]
enum Case {
    StandardV1,
    StandardV1a,
    Github,
    Stripe,
    Shopify,
    HmacSha512Base64,
}

const CASES: [Case; 6] = [
    Case::StandardV1,
    Case::StandardV1a,
    Case::Github,
    Case::Stripe,
    Case::Shopify,
    Case::HmacSha512Base64,
];

impl Case {
    /// A verifier for this case that tolerates timestamps up to
    /// `tolerance_s` away (where the scheme has one).
    fn verifier_tolerating(self, tolerance_s: u64) -> Verifier {
        let whpk = format!(
            "whpk_{}",
            Encoding::Base64.encode(SigningKey::from_bytes(&SEED).verifying_key().as_bytes())
        );
        let env = [
            ("WHSEC", WHSEC),
            ("WHPK", whpk.as_str()),
            ("SHARED", SHARED),
        ];
        let table = match self {
            Case::StandardV1 => "scheme = 'standard-webhooks'\nsecrets = [{ env = 'WHSEC' }]",
            Case::StandardV1a => "scheme = 'standard-webhooks'\nsecrets = [{ env = 'WHPK' }]",
            Case::Github => "scheme = 'github'\nsecrets = [{ env = 'SHARED' }]",
            Case::Stripe => "scheme = 'stripe'\nsecrets = [{ env = 'SHARED' }]",
            Case::Shopify => "scheme = 'shopify'\nsecrets = [{ env = 'SHARED' }]",
            Case::HmacSha512Base64 => {
                "scheme = 'hmac'\nsecrets = [{ env = 'SHARED' }]\nheader = 'X-Signature'\n\
                 algorithm = 'sha512'\nencoding = 'base64'\nprefix = 'sig='"
            }
        };
        let tolerance = match self {
            Case::StandardV1 | Case::StandardV1a | Case::Stripe => {
                format!("\ntolerance_s = {tolerance_s}")
            }
            _ => String::new(),
        };
        verifier(&format!("{table}{tolerance}"), &env)
    }

    /// A verifier that tolerates any timestamp, so a changed timestamp must
    /// be caught by the signature, not by the clock.
    fn verifier(self) -> Verifier {
        self.verifier_tolerating(i64::MAX as u64)
    }

    /// The headers a sender of this scheme sends for `body`; all of them
    /// are covered by the signature.
    fn sign(self, id: &str, timestamp: i64, body: &[u8]) -> Vec<(String, String)> {
        let shared = SHARED.as_bytes();
        let ts = timestamp.to_string();
        let standard = |signature: String| {
            headers(&[
                ("webhook-id", id),
                ("webhook-timestamp", &ts),
                ("webhook-signature", &signature),
            ])
        };
        match self {
            Case::StandardV1 => {
                let key = parse_whsec(WHSEC).unwrap();
                standard(sign_standard_webhooks(key.as_bytes(), id, timestamp, body))
            }
            Case::StandardV1a => {
                let content = [id.as_bytes(), b".", ts.as_bytes(), b".", body].concat();
                let signature = SigningKey::from_bytes(&SEED).sign(&content);
                standard(format!(
                    "v1a,{}",
                    Encoding::Base64.encode(&signature.to_bytes())
                ))
            }
            Case::Github => {
                let mac = Algorithm::Sha256.mac(shared, &[body]);
                headers(&[(
                    "x-hub-signature-256",
                    &format!("sha256={}", Encoding::Hex.encode(&mac)),
                )])
            }
            Case::Stripe => {
                let mac = Algorithm::Sha256.mac(shared, &[ts.as_bytes(), b".", body]);
                headers(&[(
                    "stripe-signature",
                    &format!("t={ts},v1={}", Encoding::Hex.encode(&mac)),
                )])
            }
            Case::Shopify => {
                let mac = Algorithm::Sha256.mac(shared, &[body]);
                headers(&[("x-shopify-hmac-sha256", &Encoding::Base64.encode(&mac))])
            }
            Case::HmacSha512Base64 => {
                let mac = Algorithm::Sha512.mac(shared, &[body]);
                headers(&[(
                    "x-signature",
                    &format!("sig={}", Encoding::Base64.encode(&mac)),
                )])
            }
        }
    }

    /// Whether a MAC in this scheme's headers is hex, which is read in
    /// either case: changing a digit's case changes nothing.
    fn hex(self) -> bool {
        matches!(self, Case::Github | Case::Stripe)
    }
}

fn case() -> impl Strategy<Value = Case> {
    proptest::sample::select(CASES.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn whatever_is_signed_verifies(
        case in case(),
        id in "[a-zA-Z0-9_]{1,40}",
        timestamp in 0..4_000_000_000i64,
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let verified = case
            .verifier()
            .verify(&case.sign(&id, timestamp, &body), &body, at(timestamp as u64));
        prop_assert!(verified.is_ok(), "{case:?}: {verified:?}");
    }

    /// `target` picks the body (0) or one of the signed headers; `position`
    /// the byte in it; `flip` keeps header values ASCII, so still strings.
    #[test]
    fn any_one_byte_change_is_refused(
        case in case(),
        id in "[a-zA-Z0-9_]{1,40}",
        timestamp in 0..4_000_000_000i64,
        mut body in proptest::collection::vec(any::<u8>(), 1..256),
        target in any::<prop::sample::Index>(),
        position in any::<prop::sample::Index>(),
        flip in 1..128u8,
    ) {
        let mut sent = case.sign(&id, timestamp, &body);
        let target = target.index(sent.len() + 1);
        if target == 0 {
            let position = position.index(body.len());
            body[position] ^= flip;
        } else {
            let original = sent[target - 1].1.clone();
            let mut bytes = original.clone().into_bytes();
            let position = position.index(bytes.len());
            bytes[position] ^= flip;
            let changed = String::from_utf8(bytes).expect("ASCII stays ASCII");
            prop_assume!(!(case.hex() && changed.eq_ignore_ascii_case(&original)));
            sent[target - 1].1 = changed;
        }
        let verified = case.verifier().verify(&sent, &body, at(timestamp as u64));
        prop_assert!(verified.is_err(), "{case:?}: {verified:?}");
    }
}

/// No refusal, and no verifier's `Debug`, contains a secret or anything an
/// attacker could use to forge: the expected signature, a computed MAC, or
/// their encodings.
#[test]
fn refusals_give_nothing_away() {
    let body = b"{\"amount\": 100}";
    let timestamp = 1_700_000_000;
    let key = parse_whsec(WHSEC).unwrap();
    let secrets = [
        WHSEC.to_owned(),
        WHSEC["whsec_".len()..].to_owned(),
        SHARED.to_owned(),
        Encoding::Hex.encode(key.as_bytes()),
        format!("{:?}", key.as_bytes()),
        format!("{:?}", SHARED.as_bytes()),
    ];
    for case in CASES {
        let signed = case.sign("msg_1", timestamp, body);
        let mut forbidden = secrets.to_vec();
        for (_, value) in &signed {
            forbidden.extend(
                value
                    .split([' ', ',', '='])
                    .chain([value.as_str()])
                    .filter(|part| part.len() >= 16)
                    .map(str::to_owned),
            );
        }

        let verifier = case.verifier_tolerating(300);
        let now = at(timestamp as u64);
        let mut garbled = signed.clone();
        for (_, value) in &mut garbled {
            value.push('!');
        }
        let refusals = [
            verifier.verify(&signed, b"{\"amount\": 999}", now),
            verifier.verify(&[], body, now),
            verifier.verify(&garbled, body, now),
            verifier.verify(&signed, body, at(timestamp as u64 + 10_000)),
            verifier.verify(&signed, body, at(timestamp as u64 - 10_000)),
        ];
        for refusal in refusals.into_iter().filter_map(Result::err) {
            let shown = refusal.to_string();
            for secret in &forbidden {
                assert!(
                    !shown.contains(secret.as_str()),
                    "{case:?}: `{shown}` shows `{secret}`"
                );
            }
        }
        let debug = format!("{verifier:?}");
        for secret in &secrets {
            assert!(
                !debug.contains(secret.as_str()),
                "{case:?}: Debug shows `{secret}`"
            );
        }
    }
}

#[test]
fn reasons_are_stable_codes() {
    let reasons = [
        Rejection::MissingHeader("x".into()),
        Rejection::malformed("x", "y"),
        Rejection::StaleTimestamp {
            age_s: 1,
            tolerance_s: 0,
        },
        Rejection::FutureTimestamp {
            ahead_s: 1,
            tolerance_s: 0,
        },
        Rejection::BadSignature,
    ]
    .map(|rejection| rejection.reason());
    assert_eq!(
        reasons,
        [
            "missing_header",
            "malformed_header",
            "stale_timestamp",
            "future_timestamp",
            "bad_signature"
        ]
    );
}

#[test]
fn oversized_and_repeated_headers_are_refused_before_crypto() {
    let verifier = Case::Github.verifier();
    let long = format!("sha256={}", "0".repeat(MAX_HEADER_BYTES));
    let refused = verifier
        .verify(&headers(&[("x-hub-signature-256", &long)]), b"", at(0))
        .unwrap_err();
    assert_eq!(
        refused,
        Rejection::malformed("x-hub-signature-256", "it is longer than 8192 bytes")
    );
    assert!(refused.to_string().contains(&MAX_HEADER_BYTES.to_string()));

    let signed = Case::Github.sign("", 0, b"body");
    let twice = [signed.clone(), signed].concat();
    assert_eq!(
        verifier
            .verify(&twice, b"body", at(0))
            .unwrap_err()
            .reason(),
        "malformed_header"
    );
}

#[test]
fn header_names_match_in_any_case() {
    for case in CASES {
        let mut signed = case.sign("msg_1", 1_700_000_000, b"body");
        for (name, _) in &mut signed {
            *name = name.to_ascii_uppercase();
        }
        let verified = case.verifier().verify(&signed, b"body", at(1_700_000_000));
        assert!(verified.is_ok(), "{case:?}: {verified:?}");
    }
}

#[test]
fn timestamps_before_the_epoch_or_beyond_i64_do_not_overflow() {
    let stamp = Timestamp::parse("9223372036854775807").unwrap();
    assert_eq!(
        stamp.check_fresh(UNIX_EPOCH - Duration::from_secs(5), 300),
        Err(Rejection::FutureTimestamp {
            ahead_s: 9_223_372_036_854_775_812u64,
            tolerance_s: 300
        })
    );
    assert_eq!(
        Timestamp::parse("9223372036854775808"),
        Err("the timestamp is too large to be a Unix time")
    );
    for bad in ["", "-5", "+5", "1.5", " 5", "١٢"] {
        assert!(Timestamp::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn a_signing_secret_is_read_from_a_file_or_named_when_missing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sink.whsec"), format!("{WHSEC}\n")).unwrap();
    let from_file = SecretSource::File("sink.whsec".into())
        .whsec(dir.path())
        .unwrap();
    assert_eq!(from_file, parse_whsec(WHSEC).unwrap());

    let missing = SecretSource::Env("HOOKLANE_TEST_NO_SUCH_SECRET".into())
        .whsec(dir.path())
        .unwrap_err();
    assert_eq!(
        missing.to_string(),
        "secret env var `HOOKLANE_TEST_NO_SUCH_SECRET` is missing"
    );
    std::fs::write(dir.path().join("bad.whsec"), "not-a-whsec").unwrap();
    let malformed = SecretSource::File("bad.whsec".into())
        .whsec(dir.path())
        .unwrap_err();
    assert!(
        malformed.to_string().contains("expected `whsec_`"),
        "{malformed}"
    );
}
