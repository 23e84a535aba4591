//! The HMAC plumbing every HMAC scheme shares: computing a MAC over the
//! pieces of the signed content, the text encodings MACs travel in, and the
//! constant-time comparison against what a sender claimed.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Sha256, Sha512};
use subtle::ConstantTimeEq;

use super::secret::Secret;

/// The hash under an HMAC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// HMAC-SHA256: what every named scheme uses.
    #[default]
    Sha256,
    /// HMAC-SHA512.
    Sha512,
}

impl Algorithm {
    /// The MAC of the concatenation of `parts` under `key`. Signed content
    /// is often `a.b.body`; taking the pieces avoids copying the body.
    pub(super) fn mac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        match self {
            Algorithm::Sha256 => mac_with::<Hmac<Sha256>>(key, parts),
            Algorithm::Sha512 => mac_with::<Hmac<Sha512>>(key, parts),
        }
    }

    /// Length of a MAC in bytes: a decoded signature of another length is a
    /// sender mistake worth naming, not a forgery.
    pub(super) fn mac_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        }
    }

    /// A MAC written in `encoding`, checked to have this algorithm's length.
    pub(super) fn decode_mac(self, encoding: Encoding, text: &str) -> Result<Vec<u8>, BadMac> {
        let mac = encoding.decode(text).map_err(BadMac::Encoding)?;
        if mac.len() == self.mac_len() {
            Ok(mac)
        } else {
            Err(BadMac::Length)
        }
    }

    /// Whether any of `keys` signed `parts` with one of `candidates`. One MAC
    /// per key, compared with every candidate in constant time, so a header
    /// of [`super::MAX_SIGNATURES`] signatures costs one MAC per key, not
    /// one per signature.
    pub(super) fn any_key_signed(
        self,
        keys: &[Secret],
        parts: &[&[u8]],
        candidates: &[&[u8]],
    ) -> bool {
        keys.iter().any(|key| {
            let expected = self.mac(key.as_bytes(), parts);
            candidates
                .iter()
                .any(|candidate| bool::from(expected.as_slice().ct_eq(candidate)))
        })
    }
}

/// Why a written MAC cannot be used; each scheme names it in its own terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BadMac {
    /// Not in the encoding; says what was expected.
    Encoding(&'static str),
    Length,
}

fn mac_with<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = <M as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// How a MAC is written in a header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Hexadecimal, either case.
    #[default]
    Hex,
    /// Standard base64 with padding (RFC 4648 §4).
    Base64,
}

impl Encoding {
    pub(super) fn encode(self, bytes: &[u8]) -> String {
        match self {
            Encoding::Hex => hex::encode(bytes),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }

    /// The bytes `text` encodes, or a description of why it does not. The
    /// decoders' own errors are not passed on: they quote the offending
    /// character, and `text` may be a secret.
    pub(super) fn decode(self, text: &str) -> Result<Vec<u8>, &'static str> {
        match self {
            Encoding::Hex => hex::decode(text).map_err(|_| "expected hexadecimal"),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| "expected standard base64 with padding"),
        }
    }
}
