//! Schemes that sign the body alone and send one MAC in one header: GitHub
//! (`X-Hub-Signature-256: sha256=<hex>`), Shopify
//! (`X-Shopify-Hmac-Sha256: <base64>`) and the generic `hmac` scheme are the
//! same check with different settings. None has a timestamp, so none can
//! tell a replay from a redelivery.

use super::mac::{Algorithm, BadMac, Encoding};
use super::secret::Secret;
use super::{optional_header, required_header, Rejection, Verified};

/// A MAC of the body in one header.
#[derive(Debug)]
pub(super) struct BodyMac {
    /// Lower-case header name.
    pub(super) header: String,
    pub(super) algorithm: Algorithm,
    pub(super) encoding: Encoding,
    /// Text before the encoded MAC, such as GitHub's `sha256=`.
    pub(super) prefix: String,
    /// The unsigned header carrying the provider's delivery id, if any.
    pub(super) id_header: Option<&'static str>,
    pub(super) keys: Vec<Secret>,
}

impl BodyMac {
    pub(super) fn github(keys: Vec<Secret>) -> Self {
        BodyMac {
            header: "x-hub-signature-256".into(),
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Hex,
            prefix: "sha256=".into(),
            id_header: Some("x-github-delivery"),
            keys,
        }
    }

    pub(super) fn shopify(keys: Vec<Secret>) -> Self {
        BodyMac {
            header: "x-shopify-hmac-sha256".into(),
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Base64,
            prefix: String::new(),
            id_header: None,
            keys,
        }
    }

    pub(super) fn verify(
        &self,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Verified, Rejection> {
        let malformed = |problem| Rejection::malformed(&self.header, problem);
        let value = required_header(headers, &self.header)?;
        let delivery_id = match self.id_header {
            Some(name) => optional_header(headers, name)?.map(str::to_owned),
            None => None,
        };
        let encoded = value
            .strip_prefix(self.prefix.as_str())
            .ok_or_else(|| malformed("it does not start with the scheme's prefix"))?;
        let mac = self
            .algorithm
            .decode_mac(self.encoding, encoded)
            .map_err(|bad| match bad {
                BadMac::Encoding(problem) => malformed(problem),
                BadMac::Length => malformed("the MAC has the wrong length for the algorithm"),
            })?;
        if self.algorithm.any_key_signed(&self.keys, &[body], &[&mac]) {
            Ok(Verified { delivery_id })
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

    // GitHub's documented example ("Validating webhook deliveries").
    const GITHUB_SECRET: &str = "It's a Secret to Everybody";
    const GITHUB_BODY: &[u8] = b"Hello, World!";
    const GITHUB_SIGNATURE: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    // Not a published vector: computed independently with Python,
    // base64.b64encode(hmac.new(b"hooklane_shopify_secret",
    //     b'{"id":820982911946154508}', hashlib.sha256).digest())
    const SHOPIFY_SECRET: &str = "hooklane_shopify_secret";
    const SHOPIFY_BODY: &[u8] = br#"{"id":820982911946154508}"#;
    const SHOPIFY_SIGNATURE: &str = "OYXwv/89W/FPBfWhdXJkMJJr265EXU8QZogR1ArHvNY=";

    // Not a published vector: computed independently with Python,
    // base64.b64encode(hmac.new(b"hooklane_hmac_secret", b"hello",
    //     hashlib.sha512).digest())
    const SHA512_SIGNATURE: &str =
        "LEP5XNxhQDkmnVegkRHRtkaUs203mCDkfp4r8nLzlvJXkscRk+qV8jEN3UHykEi90sxEsibPTse0FTFYQd21iQ==";

    fn github() -> Verifier {
        verifier(
            "scheme = 'github'\nsecrets = [{ env = 'KEY' }]",
            &[("KEY", GITHUB_SECRET)],
        )
    }

    fn shopify() -> Verifier {
        verifier(
            "scheme = 'shopify'\nsecrets = [{ env = 'KEY' }]",
            &[("KEY", SHOPIFY_SECRET)],
        )
    }

    fn generic() -> Verifier {
        verifier(
            "scheme = 'hmac'\nsecrets = [{ env = 'KEY' }]\nheader = 'X-Acme-Signature'\n\
             algorithm = 'sha512'\nencoding = 'base64'\nprefix = 'sha512='",
            &[("KEY", "hooklane_hmac_secret")],
        )
    }

    fn github_sent(signature: &str) -> Vec<(String, String)> {
        headers(&[
            ("x-hub-signature-256", signature),
            ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ])
    }

    #[test]
    fn githubs_documented_example_verifies_and_carries_the_delivery_id() {
        let verified = github()
            .verify(&github_sent(GITHUB_SIGNATURE), GITHUB_BODY, at(0))
            .unwrap();
        assert_eq!(
            verified.delivery_id.as_deref(),
            Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
        );
        let without_id = headers(&[("x-hub-signature-256", GITHUB_SIGNATURE)]);
        assert_eq!(
            github().verify(&without_id, GITHUB_BODY, at(0)),
            Ok(Verified { delivery_id: None })
        );
    }

    #[test]
    fn shopify_and_generic_vectors_verify() {
        let sent = headers(&[("x-shopify-hmac-sha256", SHOPIFY_SIGNATURE)]);
        assert_eq!(
            shopify().verify(&sent, SHOPIFY_BODY, at(0)),
            Ok(Verified { delivery_id: None })
        );
        let sent = headers(&[("x-acme-signature", &format!("sha512={SHA512_SIGNATURE}"))]);
        assert!(generic().verify(&sent, b"hello", at(0)).is_ok());
    }

    #[test]
    fn tampered_bodies_and_other_secrets_are_refused() {
        let sent = github_sent(GITHUB_SIGNATURE);
        assert_eq!(
            github().verify(&sent, b"Hello, World?", at(0)),
            Err(Rejection::BadSignature)
        );
        let other = verifier(
            "scheme = 'github'\nsecrets = [{ env = 'KEY' }]",
            &[("KEY", "It's a Secret to Nobody")],
        );
        assert_eq!(
            other.verify(&sent, GITHUB_BODY, at(0)),
            Err(Rejection::BadSignature)
        );
        let sent = headers(&[("x-shopify-hmac-sha256", SHOPIFY_SIGNATURE)]);
        assert_eq!(
            shopify().verify(&sent, b"{}", at(0)),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn a_rotated_secret_is_accepted() {
        let rotated = verifier(
            "scheme = 'github'\nsecrets = [{ env = 'OLD' }, { env = 'NEW' }]",
            &[("OLD", "the old secret"), ("NEW", GITHUB_SECRET)],
        );
        assert!(rotated
            .verify(&github_sent(GITHUB_SIGNATURE), GITHUB_BODY, at(0))
            .is_ok());
    }

    #[test]
    fn missing_and_malformed_headers_are_named() {
        assert_eq!(
            github().verify(&[], GITHUB_BODY, at(0)),
            Err(Rejection::MissingHeader("x-hub-signature-256".into()))
        );
        assert_eq!(
            shopify().verify(&[], SHOPIFY_BODY, at(0)),
            Err(Rejection::MissingHeader("x-shopify-hmac-sha256".into()))
        );
        assert_eq!(
            generic().verify(&[], b"hello", at(0)),
            Err(Rejection::MissingHeader("x-acme-signature".into()))
        );
        let github_says = |signature: &str| {
            github()
                .verify(&github_sent(signature), GITHUB_BODY, at(0))
                .unwrap_err()
        };
        let malformed = |problem| Rejection::malformed("x-hub-signature-256", problem);
        assert_eq!(
            github_says(&GITHUB_SIGNATURE["sha256=".len()..]),
            malformed("it does not start with the scheme's prefix")
        );
        assert_eq!(
            github_says("sha1=0123456789abcdef0123456789abcdef01234567"),
            malformed("it does not start with the scheme's prefix")
        );
        assert_eq!(github_says("sha256=xyz"), malformed("expected hexadecimal"));
        assert_eq!(
            github_says("sha256=0123456789abcdef0123456789abcdef01234567"),
            malformed("the MAC has the wrong length for the algorithm")
        );
        let sent = headers(&[("x-shopify-hmac-sha256", "not base64")]);
        assert_eq!(
            shopify().verify(&sent, SHOPIFY_BODY, at(0)),
            Err(Rejection::malformed(
                "x-shopify-hmac-sha256",
                "expected standard base64 with padding"
            ))
        );
    }
}
