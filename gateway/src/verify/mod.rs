//! Webhook signature verification: did this request come from the source it
//! claims to be, and is it fresh?
//!
//! Owns the schemes third-party sources already sign with (Standard
//! Webhooks, GitHub, Stripe, Shopify and a generic HMAC of the body), the
//! per-source config that picks one ([`VerifyConfig`]), reading that
//! config's secrets from the environment or files, and signing in the
//! Standard Webhooks format for outbound deliveries.
//!
//! Must never put a secret, a computed MAC or any part of an expected
//! signature into an error, a log line or a `Debug` output: a [`Rejection`]
//! tells an honest sender what to fix and an attacker nothing. Must never
//! read secrets per request (they are read once, when a config is resolved)
//! and must never do network I/O.
//!
//! Hostile input is cheap to refuse: header values over [`MAX_HEADER_BYTES`]
//! and signature lists over [`MAX_SIGNATURES`] are refused before any
//! cryptography, and so are stale or future timestamps. MACs are compared in
//! constant time.

mod body_mac;
mod config;
mod mac;
mod secret;
mod standard_webhooks;
mod stripe;
#[cfg(test)]
mod tests;

use std::time::{SystemTime, UNIX_EPOCH};

pub use config::VerifyConfig;
pub use mac::{Algorithm, Encoding};
pub use secret::{Secret, SecretError, SecretSource};
pub use standard_webhooks::{
    parse_webhook_signatures, parse_whsec, sign_standard_webhooks, WebhookSignature,
};
pub use stripe::{parse_stripe_signature, StripeSignature};

/// Longest header value read. Real signature headers are a few hundred bytes
/// even with several rotated keys; anything longer is refused unread.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// Most signatures one header may carry. Senders list one per active key
/// (two during a rotation); the cap bounds the MACs an attacker can make us
/// compare per request.
pub const MAX_SIGNATURES: usize = 16;

/// A source's verification, ready to use: its scheme with resolved secrets.
/// Built by [`VerifyConfig::verifier`]; its `Debug` output never shows a
/// secret.
#[derive(Debug)]
pub struct Verifier {
    scheme: Scheme,
}

/// The scheme a [`Verifier`] checks, with its keys.
#[derive(Debug)]
enum Scheme {
    StandardWebhooks(standard_webhooks::StandardWebhooks),
    Stripe(stripe::Stripe),
    /// GitHub, Shopify and the generic `hmac` scheme: one MAC of the body.
    BodyMac(body_mac::BodyMac),
}

impl Verifier {
    /// Check that `body` with `headers` was signed by the source, at a time
    /// within the scheme's tolerance of `now` (schemes with a timestamp).
    /// Header names are matched case-insensitively; a header that appears
    /// more than once is refused as malformed rather than guessed at.
    pub fn verify(
        &self,
        headers: &[(String, String)],
        body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, Rejection> {
        match &self.scheme {
            Scheme::StandardWebhooks(scheme) => scheme.verify(headers, body, now),
            Scheme::Stripe(scheme) => scheme.verify(headers, body, now),
            Scheme::BodyMac(scheme) => scheme.verify(headers, body),
        }
    }
}

/// A webhook whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The provider's id for this delivery, for deduplication, where the
    /// scheme has one: Standard Webhooks' `webhook-id` or `svix-id` (covered
    /// by the signature) or GitHub's `x-github-delivery` (not covered by it,
    /// so it only recognises honest redeliveries).
    pub delivery_id: Option<String>,
}

/// Why a webhook was refused. The `Display` text helps an honest sender fix
/// its request; it never contains a secret, a computed MAC or any part of
/// the expected signature, and never quotes the request's header values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the `{0}` header is missing")]
    MissingHeader(String),
    #[error("the `{header}` header is malformed: {problem}")]
    MalformedHeader {
        header: String,
        problem: &'static str,
    },
    #[error("the signed timestamp is {age_s} s old; at most {tolerance_s} s is accepted")]
    StaleTimestamp { age_s: u64, tolerance_s: u64 },
    #[error(
        "the signed timestamp is {ahead_s} s in the future; at most {tolerance_s} s is accepted"
    )]
    FutureTimestamp { ahead_s: u64, tolerance_s: u64 },
    #[error("no signature matches the body and the source's secrets")]
    BadSignature,
}

impl Rejection {
    /// A stable, low-cardinality code for metrics and the JSON `error`
    /// field.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::MissingHeader(_) => "missing_header",
            Rejection::MalformedHeader { .. } => "malformed_header",
            Rejection::StaleTimestamp { .. } => "stale_timestamp",
            Rejection::FutureTimestamp { .. } => "future_timestamp",
            Rejection::BadSignature => "bad_signature",
        }
    }

    fn malformed(header: &str, problem: &'static str) -> Self {
        Rejection::MalformedHeader {
            header: header.to_owned(),
            problem,
        }
    }
}

/// The value of header `name` (lower-case), if present once and not over
/// [`MAX_HEADER_BYTES`].
fn optional_header<'a>(
    headers: &'a [(String, String)],
    name: &str,
) -> Result<Option<&'a str>, Rejection> {
    let mut values = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str());
    let value = values.next();
    if values.next().is_some() {
        return Err(Rejection::malformed(name, "it appears more than once"));
    }
    match value {
        Some(value) if value.len() > MAX_HEADER_BYTES => {
            Err(Rejection::malformed(name, "it is longer than 8192 bytes"))
        }
        value => Ok(value),
    }
}

/// Like [`optional_header`], for a header the scheme cannot do without.
fn required_header<'a>(headers: &'a [(String, String)], name: &str) -> Result<&'a str, Rejection> {
    optional_header(headers, name)?.ok_or_else(|| Rejection::MissingHeader(name.to_owned()))
}

/// A signed Unix timestamp: its text exactly as sent (the text is what was
/// signed, so "0123" must not be re-rendered as "123") and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp<'a> {
    pub text: &'a str,
    pub seconds: i64,
}

impl<'a> Timestamp<'a> {
    /// Decimal seconds since the Unix epoch: ASCII digits only, no sign.
    fn parse(text: &'a str) -> Result<Self, &'static str> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err("expected a Unix timestamp in decimal seconds");
        }
        let seconds = text
            .parse()
            .map_err(|_| "the timestamp is too large to be a Unix time")?;
        Ok(Timestamp { text, seconds })
    }

    /// Refuse a timestamp more than `tolerance_s` before or after `now`:
    /// too old is a replay, too far ahead a sender clock that is wrong (or
    /// a signature made to be replayed later).
    fn check_fresh(&self, now: SystemTime, tolerance_s: u64) -> Result<(), Rejection> {
        let now_s = match now.duration_since(UNIX_EPOCH) {
            Ok(since) => i128::from(since.as_secs()),
            Err(before) => -i128::from(before.duration().as_secs()),
        };
        let age_s = now_s - i128::from(self.seconds);
        let saturate = |s: i128| u64::try_from(s).unwrap_or(u64::MAX);
        if age_s > i128::from(tolerance_s) {
            Err(Rejection::StaleTimestamp {
                age_s: saturate(age_s),
                tolerance_s,
            })
        } else if -age_s > i128::from(tolerance_s) {
            Err(Rejection::FutureTimestamp {
                ahead_s: saturate(-age_s),
                tolerance_s,
            })
        } else {
            Ok(())
        }
    }
}
