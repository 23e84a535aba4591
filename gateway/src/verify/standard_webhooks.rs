//! [Standard Webhooks](https://www.standardwebhooks.com/): headers
//! `webhook-id`, `webhook-timestamp` and `webhook-signature`, the signed
//! content `{id}.{timestamp}.{body}`, and space-separated signatures `v1,`
//! (base64 HMAC-SHA256 under a `whsec_` key) or `v1a,` (base64 ed25519 under
//! a `whpk_` public key). Senders that use Svix's own libraries name the
//! headers `svix-id`, `svix-timestamp` and `svix-signature`; those are the
//! same scheme under other names. Also the signing side, for outbound
//! deliveries.

use std::time::SystemTime;

use ed25519_dalek::{Signature, VerifyingKey};

use super::mac::{Algorithm, BadMac, Encoding};
use super::secret::{Secret, SecretError, SecretSource};
use super::{optional_header, required_header, Rejection, Timestamp, Verified, MAX_SIGNATURES};

/// The names of the scheme's three headers.
#[derive(Debug)]
struct Names {
    id: &'static str,
    timestamp: &'static str,
    signature: &'static str,
}

const STANDARD: Names = Names {
    id: "webhook-id",
    timestamp: "webhook-timestamp",
    signature: "webhook-signature",
};

const SVIX: Names = Names {
    id: "svix-id",
    timestamp: "svix-timestamp",
    signature: "svix-signature",
};

impl Names {
    /// The naming `headers` use: Svix's when they carry `svix-id` and no
    /// `webhook-id`, else the specification's. All three headers come from
    /// one naming, so refusals name the headers the sender uses.
    fn of(headers: &[(String, String)]) -> Result<&'static Names, Rejection> {
        let svix = optional_header(headers, STANDARD.id)?.is_none()
            && optional_header(headers, SVIX.id)?.is_some();
        Ok(if svix { &SVIX } else { &STANDARD })
    }
}

/// The scheme of `v1` signatures.
const ALGORITHM: Algorithm = Algorithm::Sha256;

/// One entry of a `webhook-signature` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookSignature {
    /// `v1,<base64>`: an HMAC-SHA256.
    V1(Vec<u8>),
    /// `v1a,<base64>`: an ed25519 signature.
    V1a(Signature),
}

/// The signatures of a `webhook-signature` header. Entries of versions other
/// than `v1` and `v1a` are skipped (a sender may add newer ones alongside);
/// at least one `v1` or `v1a` must remain. Returns what is wrong for the
/// sender otherwise, without quoting the value.
pub fn parse_webhook_signatures(value: &str) -> Result<Vec<WebhookSignature>, &'static str> {
    let mut signatures = Vec::new();
    for (i, entry) in value.split_ascii_whitespace().enumerate() {
        if i == MAX_SIGNATURES {
            return Err("it lists more than 16 signatures");
        }
        let (version, encoded) = entry
            .split_once(',')
            .ok_or("expected space-separated `v1,<base64>` or `v1a,<base64>` signatures")?;
        match version {
            "v1" => {
                let mac =
                    ALGORITHM
                        .decode_mac(Encoding::Base64, encoded)
                        .map_err(|bad| match bad {
                            BadMac::Encoding(_) => "a `v1` signature is not standard base64",
                            BadMac::Length => "a `v1` signature is not 32 bytes (HMAC-SHA256)",
                        })?;
                signatures.push(WebhookSignature::V1(mac));
            }
            "v1a" => {
                let bytes = Encoding::Base64
                    .decode(encoded)
                    .map_err(|_| "a `v1a` signature is not standard base64")?;
                let signature = Signature::from_slice(&bytes)
                    .map_err(|_| "a `v1a` signature is not 64 bytes (ed25519)")?;
                signatures.push(WebhookSignature::V1a(signature));
            }
            _ => {}
        }
    }
    if signatures.is_empty() {
        return Err("it has no `v1,` or `v1a,` signature");
    }
    Ok(signatures)
}

/// The `webhook-signature` value (`v1,<base64>`) for a delivery: what
/// outbound deliveries send, and exactly what [`StandardWebhooks`] accepts.
/// `secret` is the key itself (see [`parse_whsec`]).
pub fn sign_standard_webhooks(secret: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let timestamp = timestamp.to_string();
    let mac = ALGORITHM.mac(secret, &signed_content(id, &timestamp, body));
    format!("v1,{}", Encoding::Base64.encode(&mac))
}

/// The key of a `whsec_<base64>` secret, as Standard Webhooks senders hand
/// them out.
pub fn parse_whsec(text: &str) -> Result<Secret, &'static str> {
    let encoded = text
        .strip_prefix("whsec_")
        .ok_or("expected `whsec_` followed by base64")?;
    let key = Encoding::Base64
        .decode(encoded)
        .map_err(|_| "expected standard base64 after `whsec_`")?;
    Secret::new(key)
}

impl SecretSource {
    /// Read a `whsec_` signing secret (surrounding whitespace ignored), for
    /// signing deliveries; relative files are resolved against `base`.
    pub fn whsec(&self, base: &std::path::Path) -> Result<Secret, SecretError> {
        self.read(base, &|name| std::env::var_os(name), |bytes| {
            let text = String::from_utf8(bytes).map_err(|_| "it is not valid UTF-8")?;
            parse_whsec(text.trim())
        })
    }
}

/// The ed25519 public key of a `whpk_<base64>` key.
fn parse_whpk(text: &str) -> Result<VerifyingKey, &'static str> {
    let encoded = text
        .strip_prefix("whpk_")
        .ok_or("expected `whpk_` followed by base64")?;
    let bytes: [u8; 32] = Encoding::Base64
        .decode(encoded)
        .map_err(|_| "expected standard base64 after `whpk_`")?
        .try_into()
        .map_err(|_| "a `whpk_` key is 32 bytes")?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| "not an ed25519 public key")?;
    if key.is_weak() {
        return Err("a weak ed25519 public key, which signs anything");
    }
    Ok(key)
}

/// `{id}.{timestamp}.{body}`, in pieces.
fn signed_content<'a>(id: &'a str, timestamp: &'a str, body: &'a [u8]) -> [&'a [u8]; 5] {
    [id.as_bytes(), b".", timestamp.as_bytes(), b".", body]
}

/// A configured key, told apart by its prefix.
#[derive(Debug)]
pub(super) enum Key {
    /// `whsec_`: a key shared with the sender, for `v1` signatures.
    Hmac(Secret),
    /// `whpk_`: the sender's public key, for `v1a` signatures.
    Ed25519(VerifyingKey),
}

impl Key {
    /// A key as written in an env var or file.
    pub(super) fn parse(bytes: Vec<u8>) -> Result<Key, &'static str> {
        let text = std::str::from_utf8(&bytes).map_err(|_| "it is not valid UTF-8")?;
        if text.starts_with("whsec_") {
            parse_whsec(text).map(Key::Hmac)
        } else if text.starts_with("whpk_") {
            parse_whpk(text).map(Key::Ed25519)
        } else if text.starts_with("whsk_") {
            Err("it is the sender's ed25519 signing key (`whsk_`); configure its public key (`whpk_`)")
        } else {
            Err("expected a `whsec_` or `whpk_` key")
        }
    }
}

/// Standard Webhooks verification with its keys.
#[derive(Debug)]
pub(super) struct StandardWebhooks {
    hmac_keys: Vec<Secret>,
    public_keys: Vec<VerifyingKey>,
    tolerance_s: u64,
}

impl StandardWebhooks {
    pub(super) fn new(keys: Vec<Key>, tolerance_s: u64) -> Self {
        let mut hmac_keys = Vec::new();
        let mut public_keys = Vec::new();
        for key in keys {
            match key {
                Key::Hmac(secret) => hmac_keys.push(secret),
                Key::Ed25519(public) => public_keys.push(public),
            }
        }
        StandardWebhooks {
            hmac_keys,
            public_keys,
            tolerance_s,
        }
    }

    pub(super) fn verify(
        &self,
        headers: &[(String, String)],
        body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, Rejection> {
        let names = Names::of(headers)?;
        let id = required_header(headers, names.id)?;
        let timestamp = required_header(headers, names.timestamp)?;
        let signatures = required_header(headers, names.signature)?;
        let timestamp = Timestamp::parse(timestamp)
            .map_err(|problem| Rejection::malformed(names.timestamp, problem))?;
        let signatures = parse_webhook_signatures(signatures)
            .map_err(|problem| Rejection::malformed(names.signature, problem))?;
        timestamp.check_fresh(now, self.tolerance_s)?;

        let content = signed_content(id, timestamp.text, body);
        let macs: Vec<&[u8]> = signatures
            .iter()
            .filter_map(|signature| match signature {
                WebhookSignature::V1(mac) => Some(mac.as_slice()),
                WebhookSignature::V1a(_) => None,
            })
            .collect();
        let signed = ALGORITHM.any_key_signed(&self.hmac_keys, &content, &macs)
            || self.ed25519_signed(&content, &signatures);
        if signed {
            Ok(Verified {
                delivery_id: Some(id.to_owned()),
            })
        } else {
            Err(Rejection::BadSignature)
        }
    }

    /// Whether a `v1a` signature verifies under one of the public keys.
    /// Strict verification: no malleable signatures, no small-order keys.
    fn ed25519_signed(&self, content: &[&[u8]], signatures: &[WebhookSignature]) -> bool {
        let signatures: Vec<&Signature> = signatures
            .iter()
            .filter_map(|signature| match signature {
                WebhookSignature::V1a(signature) => Some(signature),
                WebhookSignature::V1(_) => None,
            })
            .collect();
        if signatures.is_empty() || self.public_keys.is_empty() {
            return false;
        }
        let message = content.concat();
        self.public_keys.iter().any(|key| {
            signatures
                .iter()
                .any(|signature| key.verify_strict(&message, signature).is_ok())
        })
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};

    use super::*;
    use crate::verify::tests::{at, headers, verifier};
    use crate::verify::Verifier;

    // The example of the Standard Webhooks specification.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TIMESTAMP: i64 = 1614265330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    // Another key, for rotation and wrong-secret cases.
    const OTHER_SECRET: &str = "whsec_c2Vjb25kIGtleSBmb3Igcm90YXRpb24=";

    const CONFIG: &str = "scheme = 'standard-webhooks'\nsecrets = [{ env = 'KEY' }]";

    fn spec_verifier() -> Verifier {
        verifier(CONFIG, &[("KEY", SPEC_SECRET)])
    }

    fn sent(signature: &str) -> Vec<(String, String)> {
        headers(&[
            ("webhook-id", SPEC_ID),
            ("webhook-timestamp", "1614265330"),
            ("webhook-signature", signature),
        ])
    }

    fn spec_now() -> SystemTime {
        at(SPEC_TIMESTAMP as u64)
    }

    fn whpk(key: &SigningKey) -> String {
        format!(
            "whpk_{}",
            Encoding::Base64.encode(key.verifying_key().as_bytes())
        )
    }

    fn v1a(key: &SigningKey, body: &[u8]) -> String {
        let content = signed_content(SPEC_ID, "1614265330", body).concat();
        format!(
            "v1a,{}",
            Encoding::Base64.encode(&key.sign(&content).to_bytes())
        )
    }

    #[test]
    fn the_specification_example_signs_and_verifies() {
        let key = parse_whsec(SPEC_SECRET).unwrap();
        assert_eq!(
            sign_standard_webhooks(key.as_bytes(), SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY),
            SPEC_SIGNATURE
        );
        let verified = spec_verifier()
            .verify(&sent(SPEC_SIGNATURE), SPEC_BODY, spec_now())
            .unwrap();
        assert_eq!(verified.delivery_id.as_deref(), Some(SPEC_ID));
    }

    #[test]
    fn ed25519_signatures_verify_under_the_public_key_only() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let other = SigningKey::from_bytes(&[2; 32]);
        let signature = v1a(&key, SPEC_BODY);

        let right = verifier(CONFIG, &[("KEY", &whpk(&key))]);
        assert!(right
            .verify(&sent(&signature), SPEC_BODY, spec_now())
            .is_ok());
        assert_eq!(
            right.verify(&sent(&signature), b"{}", spec_now()),
            Err(Rejection::BadSignature)
        );
        let wrong = verifier(CONFIG, &[("KEY", &whpk(&other))]);
        assert_eq!(
            wrong.verify(&sent(&signature), SPEC_BODY, spec_now()),
            Err(Rejection::BadSignature)
        );
        // An HMAC key does not accept an ed25519 signature, nor the reverse.
        assert_eq!(
            spec_verifier().verify(&sent(&signature), SPEC_BODY, spec_now()),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            right.verify(&sent(SPEC_SIGNATURE), SPEC_BODY, spec_now()),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn tampered_bodies_and_other_secrets_are_refused() {
        assert_eq!(
            spec_verifier().verify(
                &sent(SPEC_SIGNATURE),
                br#"{"test": 2432232315}"#,
                spec_now()
            ),
            Err(Rejection::BadSignature)
        );
        let other = verifier(CONFIG, &[("KEY", OTHER_SECRET)]);
        assert_eq!(
            other.verify(&sent(SPEC_SIGNATURE), SPEC_BODY, spec_now()),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn timestamps_outside_the_tolerance_are_refused_both_ways() {
        let spec = spec_verifier();
        let check = |now: u64| spec.verify(&sent(SPEC_SIGNATURE), SPEC_BODY, at(now));
        let signed = SPEC_TIMESTAMP as u64;
        assert!(check(signed + 300).is_ok());
        assert!(check(signed - 300).is_ok());
        assert_eq!(
            check(signed + 301),
            Err(Rejection::StaleTimestamp {
                age_s: 301,
                tolerance_s: 300
            })
        );
        assert_eq!(
            check(signed - 301),
            Err(Rejection::FutureTimestamp {
                ahead_s: 301,
                tolerance_s: 300
            })
        );
        let strict = verifier(
            &format!("{CONFIG}\ntolerance_s = 0"),
            &[("KEY", SPEC_SECRET)],
        );
        assert!(strict
            .verify(&sent(SPEC_SIGNATURE), SPEC_BODY, spec_now())
            .is_ok());
        assert_eq!(
            strict
                .verify(&sent(SPEC_SIGNATURE), SPEC_BODY, at(signed + 1))
                .unwrap_err()
                .reason(),
            "stale_timestamp"
        );
    }

    #[test]
    fn missing_headers_are_named() {
        for missing in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            let mut sent = sent(SPEC_SIGNATURE);
            sent.retain(|(name, _)| name != missing);
            assert_eq!(
                spec_verifier().verify(&sent, SPEC_BODY, spec_now()),
                Err(Rejection::MissingHeader(missing.into()))
            );
        }
    }

    #[test]
    fn malformed_headers_are_named_with_the_problem() {
        let signature = |value: &str| {
            spec_verifier()
                .verify(&sent(value), SPEC_BODY, spec_now())
                .unwrap_err()
        };
        let malformed = |problem| Rejection::malformed(STANDARD.signature, problem);
        assert_eq!(
            signature("g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
            malformed("expected space-separated `v1,<base64>` or `v1a,<base64>` signatures")
        );
        assert_eq!(
            signature("v1,not base64!"),
            malformed("a `v1` signature is not standard base64")
        );
        assert_eq!(
            signature("v1,bm90IGJhc2U2NA"),
            malformed("a `v1` signature is not standard base64")
        );
        assert_eq!(
            signature("v1,c2hvcnQ="),
            malformed("a `v1` signature is not 32 bytes (HMAC-SHA256)")
        );
        assert_eq!(
            signature("v1a,c2hvcnQ="),
            malformed("a `v1a` signature is not 64 bytes (ed25519)")
        );
        assert_eq!(
            signature("v2,abc"),
            malformed("it has no `v1,` or `v1a,` signature")
        );
        assert_eq!(
            signature(""),
            malformed("it has no `v1,` or `v1a,` signature")
        );
        let seventeen = vec![SPEC_SIGNATURE; 17].join(" ");
        assert_eq!(
            signature(&seventeen),
            malformed("it lists more than 16 signatures")
        );

        let mut sent = sent(SPEC_SIGNATURE);
        sent[1].1 = "2021-02-26T00:00:00Z".into();
        assert_eq!(
            spec_verifier().verify(&sent, SPEC_BODY, spec_now()),
            Err(Rejection::malformed(
                STANDARD.timestamp,
                "expected a Unix timestamp in decimal seconds"
            ))
        );
    }

    #[test]
    fn svix_header_names_are_the_same_scheme() {
        let svix = |sent: Vec<(String, String)>| -> Vec<(String, String)> {
            sent.into_iter()
                .map(|(name, value)| (name.replace("webhook-", "svix-"), value))
                .collect()
        };
        let verified = spec_verifier()
            .verify(&svix(sent(SPEC_SIGNATURE)), SPEC_BODY, spec_now())
            .unwrap();
        assert_eq!(verified.delivery_id.as_deref(), Some(SPEC_ID));
        assert_eq!(
            spec_verifier().verify(&svix(sent(SPEC_SIGNATURE)), b"{}", spec_now()),
            Err(Rejection::BadSignature)
        );
        // Refusals name the headers of the sender's naming, and one
        // request's three headers come from one naming.
        let mut partial = svix(sent(SPEC_SIGNATURE));
        partial.retain(|(name, _)| name != "svix-timestamp");
        assert_eq!(
            spec_verifier().verify(&partial, SPEC_BODY, spec_now()),
            Err(Rejection::MissingHeader("svix-timestamp".into()))
        );
        partial.push(("webhook-timestamp".into(), SPEC_TIMESTAMP.to_string()));
        assert_eq!(
            spec_verifier().verify(&partial, SPEC_BODY, spec_now()),
            Err(Rejection::MissingHeader("svix-timestamp".into()))
        );
        let mut both = sent(SPEC_SIGNATURE);
        both.push(("svix-id".into(), "msg_other".into()));
        let verified = spec_verifier()
            .verify(&both, SPEC_BODY, spec_now())
            .unwrap();
        assert_eq!(verified.delivery_id.as_deref(), Some(SPEC_ID));
    }

    #[test]
    fn a_rotated_key_and_one_valid_signature_among_several_are_accepted() {
        let both = verifier(
            "scheme = 'standard-webhooks'\nsecrets = [{ env = 'OLD' }, { env = 'NEW' }]",
            &[("OLD", OTHER_SECRET), ("NEW", SPEC_SECRET)],
        );
        assert!(both
            .verify(&sent(SPEC_SIGNATURE), SPEC_BODY, spec_now())
            .is_ok());

        let other = parse_whsec(OTHER_SECRET).unwrap();
        let stale = sign_standard_webhooks(other.as_bytes(), SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY);
        let ed25519 = v1a(&SigningKey::from_bytes(&[3; 32]), SPEC_BODY);
        let several = format!("v2,future-scheme {stale} {ed25519}  {SPEC_SIGNATURE}");
        assert!(spec_verifier()
            .verify(&sent(&several), SPEC_BODY, spec_now())
            .is_ok());
        let sixteen = [vec![stale.as_str(); 15], vec![SPEC_SIGNATURE]]
            .concat()
            .join(" ");
        assert!(spec_verifier()
            .verify(&sent(&sixteen), SPEC_BODY, spec_now())
            .is_ok());
    }

    #[test]
    fn keys_are_told_apart_by_prefix_and_checked() {
        assert!(matches!(Key::parse(SPEC_SECRET.into()), Ok(Key::Hmac(_))));
        let public = whpk(&SigningKey::from_bytes(&[1; 32]));
        assert!(matches!(Key::parse(public.into()), Ok(Key::Ed25519(_))));
        for (written, problem) in [
            ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "expected a `whsec_` or `whpk_` key"),
            ("whsec_", "it is empty"),
            ("whsec_not base64", "expected standard base64 after `whsec_`"),
            ("whpk_c2hvcnQ=", "a `whpk_` key is 32 bytes"),
            (
                "whsk_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "it is the sender's ed25519 signing key (`whsk_`); configure its public key (`whpk_`)",
            ),
            // The identity point: small order, so it would verify anything.
            (
                "whpk_AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                "a weak ed25519 public key, which signs anything",
            ),
        ] {
            assert_eq!(Key::parse(written.into()).unwrap_err(), problem, "{written}");
        }
    }
}
