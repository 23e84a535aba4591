//! `[sources.NAME.verify]`: which scheme a source signs with and where its
//! secrets are, and turning that into a ready [`Verifier`].

use std::ffi::OsString;
use std::path::Path;

use serde::{Deserialize, Deserializer};

use super::body_mac::BodyMac;
use super::mac::{Algorithm, Encoding};
use super::secret::{Secret, SecretError, SecretSource};
use super::standard_webhooks::{Key, StandardWebhooks};
use super::stripe::Stripe;
use super::{Scheme, Verifier};

/// How a source signs its webhooks, tagged by `scheme`. Every scheme takes
/// `secrets`, a list of places to read a secret from: several during a key
/// rotation, any of which verifies.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "scheme", rename_all = "kebab-case", deny_unknown_fields)]
pub enum VerifyConfig {
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp` and
    /// `webhook-signature` headers, or Svix's `svix-id`, `svix-timestamp`
    /// and `svix-signature`.
    StandardWebhooks {
        /// Required, at least one: each a `whsec_<base64>` HMAC key or a
        /// `whpk_<base64>` ed25519 public key.
        #[serde(deserialize_with = "at_least_one")]
        secrets: Vec<SecretSource>,
        /// Largest accepted difference, in seconds, between the signed
        /// timestamp and the gateway's clock, in either direction.
        /// Default 300.
        #[serde(default = "default_tolerance_s")]
        tolerance_s: u64,
    },
    /// GitHub: `X-Hub-Signature-256: sha256=<hex>` of the body.
    Github {
        /// Required, at least one: the webhook's secret, as entered at
        /// GitHub.
        #[serde(deserialize_with = "at_least_one")]
        secrets: Vec<SecretSource>,
    },
    /// Stripe: `Stripe-Signature: t=<unix seconds>,v1=<hex>`.
    Stripe {
        /// Required, at least one: the endpoint's signing secret
        /// (`whsec_...`), used as Stripe shows it.
        #[serde(deserialize_with = "at_least_one")]
        secrets: Vec<SecretSource>,
        /// Largest accepted difference, in seconds, between `t=` and the
        /// gateway's clock, in either direction. Default 300.
        #[serde(default = "default_tolerance_s")]
        tolerance_s: u64,
    },
    /// Shopify: `X-Shopify-Hmac-Sha256: <base64>` of the body.
    Shopify {
        /// Required, at least one: the app's client secret.
        #[serde(deserialize_with = "at_least_one")]
        secrets: Vec<SecretSource>,
    },
    /// Any other sender that puts an HMAC of the body in one header.
    Hmac {
        /// Required, at least one: the shared key, used as written.
        #[serde(deserialize_with = "at_least_one")]
        secrets: Vec<SecretSource>,
        /// Required: the header carrying the MAC (any case).
        #[serde(deserialize_with = "header_name")]
        header: String,
        /// `sha256` or `sha512`. Default `sha256`.
        #[serde(default)]
        algorithm: Algorithm,
        /// How the MAC is written: `hex` or `base64`. Default `hex`.
        #[serde(default)]
        encoding: Encoding,
        /// Text before the encoded MAC, such as `sha256=`. Default none.
        #[serde(default)]
        prefix: String,
    },
}

fn default_tolerance_s() -> u64 {
    300
}

fn at_least_one<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<SecretSource>, D::Error> {
    let secrets = Vec::<SecretSource>::deserialize(deserializer)?;
    if secrets.is_empty() {
        return Err(serde::de::Error::custom(
            "expected at least one secret: `{ env = \"VAR\" }` or `{ file = \"/path\" }`",
        ));
    }
    Ok(secrets)
}

/// An HTTP header name (a token), kept lower-case as ingress hands them over.
fn header_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let name = String::deserialize(deserializer)?;
    http::HeaderName::from_bytes(name.as_bytes())
        .map(|name| name.as_str().to_owned())
        .map_err(|_| {
            serde::de::Error::custom(format!("expected an HTTP header name, found `{name}`"))
        })
}

impl VerifyConfig {
    /// Read the secrets (env vars of this process; files relative to `base`,
    /// the config file's directory) and build the source's [`Verifier`]. The
    /// error names the env var or file at fault, never a secret.
    pub fn verifier(&self, base: &Path) -> Result<Verifier, SecretError> {
        self.verifier_with_env(base, &|name| std::env::var_os(name))
    }

    /// [`VerifyConfig::verifier`], looking env vars up with `env`.
    pub(super) fn verifier_with_env(
        &self,
        base: &Path,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<Verifier, SecretError> {
        let read = |secrets: &[SecretSource]| read_all(secrets, base, env, Secret::new);
        let scheme = match self {
            VerifyConfig::StandardWebhooks {
                secrets,
                tolerance_s,
            } => Scheme::StandardWebhooks(StandardWebhooks::new(
                read_all(secrets, base, env, Key::parse)?,
                *tolerance_s,
            )),
            VerifyConfig::Github { secrets } => Scheme::BodyMac(BodyMac::github(read(secrets)?)),
            VerifyConfig::Stripe {
                secrets,
                tolerance_s,
            } => Scheme::Stripe(Stripe {
                keys: read(secrets)?,
                tolerance_s: *tolerance_s,
            }),
            VerifyConfig::Shopify { secrets } => Scheme::BodyMac(BodyMac::shopify(read(secrets)?)),
            VerifyConfig::Hmac {
                secrets,
                header,
                algorithm,
                encoding,
                prefix,
            } => Scheme::BodyMac(BodyMac {
                header: header.clone(),
                algorithm: *algorithm,
                encoding: *encoding,
                prefix: prefix.clone(),
                id_header: None,
                keys: read(secrets)?,
            }),
        };
        Ok(Verifier { scheme })
    }
}

fn read_all<T>(
    secrets: &[SecretSource],
    base: &Path,
    env: &dyn Fn(&str) -> Option<OsString>,
    parse: fn(Vec<u8>) -> Result<T, &'static str>,
) -> Result<Vec<T>, SecretError> {
    secrets
        .iter()
        .map(|secret| secret.read(base, env, parse))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::verify::tests::{at, fake_env, headers};

    fn parse(text: &str) -> Result<VerifyConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn every_scheme_parses_with_its_defaults() {
        let env = SecretSource::Env("KEY".into());
        assert_eq!(
            parse("scheme = 'standard-webhooks'\nsecrets = [{ env = 'KEY' }]"),
            Ok(VerifyConfig::StandardWebhooks {
                secrets: vec![env.clone()],
                tolerance_s: 300
            })
        );
        assert_eq!(
            parse(
                "scheme = 'stripe'\nsecrets = [{ file = 'k' }, { env = 'KEY' }]\ntolerance_s = 60"
            ),
            Ok(VerifyConfig::Stripe {
                secrets: vec![SecretSource::File("k".into()), env.clone()],
                tolerance_s: 60
            })
        );
        assert_eq!(
            parse("scheme = 'github'\nsecrets = [{ env = 'KEY' }]"),
            Ok(VerifyConfig::Github {
                secrets: vec![env.clone()]
            })
        );
        assert_eq!(
            parse("scheme = 'shopify'\nsecrets = [{ env = 'KEY' }]"),
            Ok(VerifyConfig::Shopify {
                secrets: vec![env.clone()]
            })
        );
        assert_eq!(
            parse("scheme = 'hmac'\nsecrets = [{ env = 'KEY' }]\nheader = 'X-Sig'"),
            Ok(VerifyConfig::Hmac {
                secrets: vec![env],
                header: "x-sig".into(),
                algorithm: Algorithm::Sha256,
                encoding: Encoding::Hex,
                prefix: String::new(),
            })
        );
    }

    #[test]
    fn mistakes_are_refused_when_the_config_is_read() {
        for (text, expected) in [
            (
                "scheme = 'github'\nsecrets = [{ env = 'K' }]\ntolerance_s = 60",
                "unknown field `tolerance_s`",
            ),
            (
                "scheme = 'github'\nsecrets = []",
                "expected at least one secret",
            ),
            ("scheme = 'github'", "missing field `secrets`"),
            (
                "scheme = 'github'\nsecrets = [{ value = 'hunter2' }]",
                "unknown variant `value`",
            ),
            ("scheme = 'github'\nsecrets = ['hunter2']", "expected"),
            (
                "scheme = 'gitlab'\nsecrets = [{ env = 'K' }]",
                "unknown variant `gitlab`",
            ),
            ("secrets = [{ env = 'K' }]", "missing field `scheme`"),
            (
                "scheme = 'hmac'\nsecrets = [{ env = 'K' }]\nheader = 'X Sig'",
                "expected an HTTP header name, found `X Sig`",
            ),
            (
                "scheme = 'hmac'\nsecrets = [{ env = 'K' }]\nheader = 'x'\nalgorithm = 'md5'",
                "unknown variant `md5`",
            ),
            (
                "scheme = 'stripe'\nsecrets = [{ env = 'K' }]\ntolerance_s = -1",
                "invalid value",
            ),
        ] {
            let error = parse(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    fn resolve(text: &str, base: &Path, env: &[(&str, &str)]) -> Result<Verifier, String> {
        parse(text)
            .unwrap()
            .verifier_with_env(base, &fake_env(env))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn resolution_errors_name_the_source_never_the_value() {
        let base = Path::new("/etc/hooklane");
        let github = "scheme = 'github'\nsecrets = [{ env = 'GH_SECRET' }]";
        assert_eq!(
            resolve(github, base, &[]).unwrap_err(),
            "secret env var `GH_SECRET` is missing"
        );
        assert_eq!(
            resolve(github, base, &[("GH_SECRET", "")]).unwrap_err(),
            "secret env var `GH_SECRET` is malformed: it is empty"
        );
        let file = "scheme = 'github'\nsecrets = [{ file = 'secrets/none' }]";
        assert_eq!(
            resolve(file, base, &[]).unwrap_err(),
            "secret file `/etc/hooklane/secrets/none` is missing"
        );
        let standard = "scheme = 'standard-webhooks'\nsecrets = [{ env = 'SW' }]";
        let error = resolve(standard, base, &[("SW", "whsec_hunter2!")]).unwrap_err();
        assert_eq!(
            error,
            "secret env var `SW` is malformed: expected standard base64 after `whsec_`"
        );
        let error = resolve(standard, base, &[("SW", "hunter2hunter2")]).unwrap_err();
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn secret_files_lose_one_trailing_newline_and_resolve_against_the_base() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("github"), "It's a Secret to Everybody\n").unwrap();
        std::fs::write(dir.path().join("crlf"), "It's a Secret to Everybody\r\n").unwrap();
        std::fs::write(dir.path().join("two"), "It's a Secret to Everybody\n\n").unwrap();
        let sent = headers(&[(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        let check = |file: &str| {
            let text = format!("scheme = 'github'\nsecrets = [{{ file = '{file}' }}]");
            resolve(&text, dir.path(), &[])
                .unwrap()
                .verify(&sent, b"Hello, World!", at(0))
        };
        assert!(check("github").is_ok());
        assert!(check("crlf").is_ok());
        let absolute: PathBuf = dir.path().join("github");
        assert!(check(absolute.to_str().unwrap()).is_ok());
        // Only one newline is the editor's; the rest is the secret's.
        assert_eq!(check("two"), Err(crate::verify::Rejection::BadSignature));
    }

    #[test]
    fn oversized_secret_files_are_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big"), vec![b'a'; 64 * 1024 + 1]).unwrap();
        let error = resolve(
            "scheme = 'shopify'\nsecrets = [{ file = 'big' }]",
            dir.path(),
            &[],
        )
        .unwrap_err();
        assert!(error.starts_with("secret file `"), "{error}");
        assert!(
            error.ends_with(
                "/big` cannot be read: larger than 64 KiB; a secret file holds only the secret"
            ),
            "{error}"
        );
    }
}
