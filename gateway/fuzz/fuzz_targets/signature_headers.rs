//! Arbitrary text into the signature-list parsers (`webhook-signature`,
//! `Stripe-Signature`): no panic, and whatever they accept is within the
//! bounds the verifiers rely on.

#![no_main]

use hooklane::verify::{
    parse_stripe_signature, parse_webhook_signatures, WebhookSignature, MAX_SIGNATURES,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|value: &str| {
    if let Ok(signatures) = parse_webhook_signatures(value) {
        assert!(!signatures.is_empty() && signatures.len() <= MAX_SIGNATURES);
        for signature in &signatures {
            if let WebhookSignature::V1(mac) = signature {
                assert_eq!(mac.len(), 32);
            }
        }
    }
    if let Ok(parsed) = parse_stripe_signature(value) {
        assert!(!parsed.signatures.is_empty() && parsed.signatures.len() <= MAX_SIGNATURES);
        assert!(parsed.signatures.iter().all(|mac| mac.len() == 32));
        let text = parsed.timestamp.text;
        assert!(!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(text.parse::<i64>().ok(), Some(parsed.timestamp.seconds));
    }
});
