//! Stripe's `Stripe-Signature: t=<unix seconds>,v1=<hex>`: the `v1` entries
//! are hex HMAC-SHA256s of `{t}.{body}`, one per active endpoint secret;
//! other entries (`v0`, test mode) are ignored.

use std::time::SystemTime;

use super::mac::{Algorithm, BadMac, Encoding};
use super::secret::Secret;
use super::{required_header, Rejection, Timestamp, Verified, MAX_SIGNATURES};

const SIGNATURE: &str = "stripe-signature";

const ALGORITHM: Algorithm = Algorithm::Sha256;

/// A parsed `Stripe-Signature` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeSignature<'a> {
    /// `t=`: when Stripe signed.
    pub timestamp: Timestamp<'a>,
    /// The `v1=` MACs, decoded.
    pub signatures: Vec<Vec<u8>>,
}

/// Parse a `Stripe-Signature` value: exactly one `t=`, at least one `v1=`,
/// other keys skipped, at most [`MAX_SIGNATURES`] entries besides `t=`.
/// Returns what is wrong for the sender otherwise, without quoting the value.
pub fn parse_stripe_signature(value: &str) -> Result<StripeSignature<'_>, &'static str> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for (i, entry) in value.split(',').enumerate() {
        if i > MAX_SIGNATURES {
            return Err("it lists more than 16 signatures");
        }
        let (key, value) = entry
            .trim()
            .split_once('=')
            .ok_or("expected `t=<unix seconds>,v1=<hex>`")?;
        match key {
            "t" if timestamp.is_some() => return Err("it has more than one `t=`"),
            "t" => timestamp = Some(Timestamp::parse(value)?),
            "v1" => {
                let mac = ALGORITHM
                    .decode_mac(Encoding::Hex, value)
                    .map_err(|bad| match bad {
                        BadMac::Encoding(_) => "a `v1=` signature is not hexadecimal",
                        BadMac::Length => "a `v1=` signature is not 32 bytes (HMAC-SHA256)",
                    })?;
                signatures.push(mac);
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or("it has no `t=` timestamp")?;
    if signatures.is_empty() {
        return Err("it has no `v1=` signature");
    }
    Ok(StripeSignature {
        timestamp,
        signatures,
    })
}

/// Stripe verification with its endpoint secrets (`whsec_...` as Stripe
/// shows them, used as they are: Stripe's key is the whole text).
#[derive(Debug)]
pub(super) struct Stripe {
    pub(super) keys: Vec<Secret>,
    pub(super) tolerance_s: u64,
}

impl Stripe {
    pub(super) fn verify(
        &self,
        headers: &[(String, String)],
        body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, Rejection> {
        let header = parse_stripe_signature(required_header(headers, SIGNATURE)?)
            .map_err(|problem| Rejection::malformed(SIGNATURE, problem))?;
        header.timestamp.check_fresh(now, self.tolerance_s)?;
        let macs: Vec<&[u8]> = header.signatures.iter().map(Vec::as_slice).collect();
        let content = [header.timestamp.text.as_bytes(), b".", body];
        if ALGORITHM.any_key_signed(&self.keys, &content, &macs) {
            Ok(Verified { delivery_id: None })
        } else {
            Err(Rejection::BadSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::tests::{at, headers, verifier};
    use crate::verify::Verifier;

    // Not a published vector: computed independently with Python,
    // hmac.new(b"whsec_hooklane_stripe_test",
    //          b'1700000000.{"id":"evt_1","object":"event"}',
    //          hashlib.sha256).hexdigest()
    const SECRET: &str = "whsec_hooklane_stripe_test";
    const BODY: &[u8] = br#"{"id":"evt_1","object":"event"}"#;
    const MAC: &str = "aba4a29dc9f16dd7a43a14f2928f2527a78dc21efd668f027daf58c4ef7bf261";
    const SIGNED_AT: u64 = 1_700_000_000;
    const CONFIG: &str = "scheme = 'stripe'\nsecrets = [{ env = 'KEY' }]";

    fn stripe() -> Verifier {
        verifier(CONFIG, &[("KEY", SECRET)])
    }

    fn check(value: &str, body: &[u8], now: u64) -> Result<Verified, Rejection> {
        stripe().verify(&headers(&[("stripe-signature", value)]), body, at(now))
    }

    #[test]
    fn an_independently_computed_signature_verifies() {
        let value = format!("t=1700000000,v1={MAC}");
        assert_eq!(
            check(&value, BODY, SIGNED_AT),
            Ok(Verified { delivery_id: None })
        );
        let upper = format!("t=1700000000,v1={}", MAC.to_uppercase());
        assert!(check(&upper, BODY, SIGNED_AT).is_ok());
    }

    #[test]
    fn tampered_bodies_and_other_secrets_are_refused() {
        let value = format!("t=1700000000,v1={MAC}");
        assert_eq!(
            check(&value, br#"{"id":"evt_2","object":"event"}"#, SIGNED_AT),
            Err(Rejection::BadSignature)
        );
        let other = verifier(CONFIG, &[("KEY", "whsec_another")]);
        assert_eq!(
            other.verify(
                &headers(&[("stripe-signature", &value)]),
                BODY,
                at(SIGNED_AT)
            ),
            Err(Rejection::BadSignature)
        );
        // The timestamp is signed: moving it breaks the signature.
        assert_eq!(
            check(&format!("t=1700000001,v1={MAC}"), BODY, SIGNED_AT),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn timestamps_outside_the_tolerance_are_refused_both_ways() {
        let value = format!("t=1700000000,v1={MAC}");
        assert!(check(&value, BODY, SIGNED_AT + 300).is_ok());
        assert_eq!(
            check(&value, BODY, SIGNED_AT + 3600),
            Err(Rejection::StaleTimestamp {
                age_s: 3600,
                tolerance_s: 300
            })
        );
        assert_eq!(
            check(&value, BODY, SIGNED_AT - 301),
            Err(Rejection::FutureTimestamp {
                ahead_s: 301,
                tolerance_s: 300
            })
        );
    }

    #[test]
    fn the_missing_header_is_named() {
        assert_eq!(
            stripe().verify(&[], BODY, at(SIGNED_AT)),
            Err(Rejection::MissingHeader("stripe-signature".into()))
        );
    }

    #[test]
    fn malformed_headers_say_what_is_wrong() {
        let v1 = format!("v1={MAC}");
        for (value, problem) in [
            (v1.clone(), "it has no `t=` timestamp"),
            ("t=1700000000,v0=abc".into(), "it has no `v1=` signature"),
            (
                format!("t=1700000000,{MAC}"),
                "expected `t=<unix seconds>,v1=<hex>`",
            ),
            (
                format!("t=17e8,{v1}"),
                "expected a Unix timestamp in decimal seconds",
            ),
            (
                format!("t=1,t=1700000000,{v1}"),
                "it has more than one `t=`",
            ),
            (
                "t=1700000000,v1=xyz".into(),
                "a `v1=` signature is not hexadecimal",
            ),
            (
                "t=1700000000,v1=abcd".into(),
                "a `v1=` signature is not 32 bytes (HMAC-SHA256)",
            ),
            (
                format!("t=1700000000{}", format!(",{v1}").repeat(17)),
                "it lists more than 16 signatures",
            ),
        ] {
            assert_eq!(
                check(&value, BODY, SIGNED_AT),
                Err(Rejection::malformed(SIGNATURE, problem)),
                "{value}"
            );
        }
    }

    #[test]
    fn one_valid_signature_among_several_and_a_rotated_secret_are_accepted() {
        let wrong = "0".repeat(64);
        let value = format!("t=1700000000,v1={wrong},v0={wrong}, v1={MAC},scheme=future");
        assert!(check(&value, BODY, SIGNED_AT).is_ok());
        let sixteen = format!("t=1700000000{},v1={MAC}", format!(",v1={wrong}").repeat(15));
        assert!(check(&sixteen, BODY, SIGNED_AT).is_ok());

        let rotated = verifier(
            "scheme = 'stripe'\nsecrets = [{ env = 'OLD' }, { env = 'NEW' }]",
            &[("OLD", "whsec_old"), ("NEW", SECRET)],
        );
        let sent = headers(&[("stripe-signature", &format!("t=1700000000,v1={MAC}"))]);
        assert!(rotated.verify(&sent, BODY, at(SIGNED_AT)).is_ok());
    }

    #[test]
    fn the_parser_keeps_the_timestamp_as_signed() {
        let value = format!("t=0001700000000,v1={MAC}");
        let parsed = parse_stripe_signature(&value).unwrap();
        assert_eq!(parsed.timestamp.text, "0001700000000");
        assert_eq!(parsed.timestamp.seconds, 1_700_000_000);
        assert_eq!(parsed.signatures, vec![hex::decode(MAC).unwrap()]);
    }
}
