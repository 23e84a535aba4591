//! Secrets and where they come from. Secrets never appear in the config file
//! itself: it names an environment variable or a file, read once when the
//! config is resolved. Errors name the variable or file, never the value.

use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Largest secret file read. Secrets are tens of bytes; the cap keeps a
/// misconfigured path (a log, `/dev/zero`) from being read whole.
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Where one secret is read from: `{ env = "VAR" }` or `{ file = "/path" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum SecretSource {
    /// An environment variable of the gateway process, used as it is.
    Env(String),
    /// A file, read as bytes with one trailing newline removed (editors and
    /// `echo` add one). Relative paths are resolved against the config
    /// file's directory.
    File(PathBuf),
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(name) => write!(f, "env var `{name}`"),
            SecretSource::File(path) => write!(f, "file `{}`", path.display()),
        }
    }
}

/// A secret that could not be resolved; names its source, never its value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret {0} is missing")]
    Missing(SecretSource),
    #[error("secret {secret} cannot be read: {cause}")]
    Unreadable {
        secret: SecretSource,
        #[source]
        cause: std::io::Error,
    },
    #[error("secret {secret} is malformed: {problem}")]
    Malformed {
        secret: SecretSource,
        problem: &'static str,
    },
}

/// Key material. Its `Debug` output is redacted so a verifier can be logged
/// whole.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

impl Secret {
    /// A secret of these bytes; an empty one is refused, since anyone can
    /// guess it.
    pub fn new(bytes: Vec<u8>) -> Result<Self, &'static str> {
        if bytes.is_empty() {
            Err("it is empty")
        } else {
            Ok(Secret(bytes))
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl SecretSource {
    /// Read the secret's raw bytes, looking environment variables up with
    /// `env` and resolving relative files against `base`, then hand them to
    /// `parse` (which says how the scheme expects the secret to be written).
    pub(super) fn read<T>(
        &self,
        base: &Path,
        env: &dyn Fn(&str) -> Option<OsString>,
        parse: impl FnOnce(Vec<u8>) -> Result<T, &'static str>,
    ) -> Result<T, SecretError> {
        let (source, bytes) = match self {
            SecretSource::Env(name) => {
                let value = env(name).ok_or_else(|| SecretError::Missing(self.clone()))?;
                let value = value.into_string().map_err(|_| SecretError::Malformed {
                    secret: self.clone(),
                    problem: "it is not valid UTF-8",
                })?;
                (self.clone(), value.into_bytes())
            }
            SecretSource::File(path) => {
                let path = base.join(path);
                let bytes = read_secret_file(&path);
                let resolved = SecretSource::File(path);
                let bytes = bytes.map_err(|cause| {
                    if cause.kind() == std::io::ErrorKind::NotFound {
                        SecretError::Missing(resolved.clone())
                    } else {
                        SecretError::Unreadable {
                            secret: resolved.clone(),
                            cause,
                        }
                    }
                })?;
                (resolved, bytes)
            }
        };
        parse(bytes).map_err(|problem| SecretError::Malformed {
            secret: source,
            problem,
        })
    }
}

fn read_secret_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "larger than 64 KiB; a secret file holds only the secret",
        ));
    }
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    Ok(bytes)
}
