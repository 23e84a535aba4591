//! Stored plugin versions: every component a campaign has run — from its
//! config file or deployed through the admin API — numbered per campaign,
//! with the active one recorded, so a deploy or a rollback survives a
//! restart and any earlier version can come back.
//!
//! On disk, under `data_dir/plugins/`: `blobs/<sha256>.wasm` holds each
//! component once, and `<campaign>.json` a campaign's history. Both are
//! written to a temporary name, synced and renamed, so a crash leaves the
//! old or the new file, never half of one. A blob is checked against its
//! name whenever it is read. Must never compile anything:
//! the runtime does that before a version is stored.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::event::now_ms;

/// Where a version came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The `plugin` file of the campaign's config.
    Config,
    /// An upload to the admin API.
    Deploy,
}

/// One stored version of a campaign's plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// 1, 2, 3… per campaign, in the order versions were first stored.
    pub version: u32,
    /// Hex SHA-256 of the component.
    pub digest: String,
    pub size_bytes: u64,
    pub stored_at_ms: u64,
    pub origin: Origin,
}

impl Version {
    /// How logs name it: "v3".
    pub fn label(&self) -> String {
        format!("v{}", self.version)
    }
}

/// A campaign's versions and which one runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    /// The version that runs; 0 while none is stored.
    pub active: u32,
    pub versions: Vec<Version>,
    /// Hex SHA-256 of the component the campaign's config named when it was
    /// last loaded. A config that names another one is a new intent (even a
    /// component the campaign ran before) and runs it; one that names the
    /// same leaves deploys and rollbacks in place.
    #[serde(default)]
    pub config_digest: Option<String>,
    /// The highest number ever given, so a deleted version's number is
    /// never given to another component.
    #[serde(default)]
    pub last_number: u32,
}

impl History {
    pub fn get(&self, version: u32) -> Option<&Version> {
        self.versions.iter().find(|v| v.version == version)
    }

    pub fn active(&self) -> Option<&Version> {
        self.get(self.active)
    }

    fn by_digest(&self, digest: &str) -> Option<&Version> {
        self.versions.iter().find(|v| v.digest == digest)
    }

    fn next_number(&self) -> u32 {
        let highest_listed = self.versions.iter().map(|v| v.version).max();
        self.last_number.max(highest_listed.unwrap_or(0)) + 1
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    #[error("campaign `{campaign}` has no version {version}")]
    Unknown { campaign: String, version: u32 },
    #[error("version {version} is the one campaign `{campaign}` runs: switch to another first")]
    Active { campaign: String, version: u32 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a version history: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: the stored component is missing")]
    MissingBlob { path: PathBuf },
    #[error("{path}: the stored component does not match its SHA-256 name (its content hashes to {found}): it was changed after it was stored")]
    TamperedBlob { path: PathBuf, found: String },
}

impl VersionError {
    /// Whether a stored component is missing or not what was stored: its
    /// campaign cannot run it, the others are not concerned.
    pub fn is_bad_blob(&self) -> bool {
        matches!(
            self,
            VersionError::MissingBlob { .. } | VersionError::TamperedBlob { .. }
        )
    }
}

/// The stored versions of every campaign (`data_dir/plugins`).
pub struct PluginVersions {
    dir: PathBuf,
}

impl PluginVersions {
    pub fn open(dir: PathBuf) -> Result<Self, VersionError> {
        let blobs = dir.join("blobs");
        std::fs::create_dir_all(&blobs).map_err(io_error(&blobs))?;
        Ok(PluginVersions { dir })
    }

    /// `campaign`'s history; empty if it has none yet.
    pub fn history(&self, campaign: &str) -> Result<History, VersionError> {
        let path = self.history_path(campaign);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| VersionError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(History::default()),
            Err(source) => Err(VersionError::Io { path, source }),
        }
    }

    /// The component stored under `digest`.
    /// Checked against its name: a changed or missing blob is an error.
    pub fn read(&self, digest: &str) -> Result<Vec<u8>, VersionError> {
        let path = self.blob_path(digest);
        let bytes = std::fs::read(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => VersionError::MissingBlob { path: path.clone() },
            _ => VersionError::Io {
                path: path.clone(),
                source,
            },
        })?;
        let found = hex::encode(Sha256::digest(&bytes));
        if found != digest {
            return Err(VersionError::TamperedBlob { path, found });
        }
        Ok(bytes)
    }

    /// Store `bytes` (hex SHA-256 `digest`) as a version of `campaign` —
    /// the one it already is, if the campaign had these bytes before. Does
    /// not make it run: see [`PluginVersions::activate`].
    pub fn store(
        &self,
        campaign: &str,
        bytes: &[u8],
        digest: &str,
        origin: Origin,
    ) -> Result<Version, VersionError> {
        let mut history = self.history(campaign)?;
        if let Some(known) = history.by_digest(digest) {
            return Ok(known.clone());
        }
        // Written again if it is missing or was changed.
        if self.read(digest).is_err() {
            write_atomically(&self.blob_path(digest), bytes)?;
        }
        let version = Version {
            version: history.next_number(),
            digest: digest.into(),
            size_bytes: bytes.len() as u64,
            stored_at_ms: now_ms(),
            origin,
        };
        history.last_number = version.version;
        history.versions.push(version.clone());
        self.save(campaign, &history)?;
        Ok(version)
    }

    /// Record stored `version` as the one `campaign` runs; `from_config`
    /// when the campaign's config named it (see [`History::config_digest`]).
    pub fn activate(
        &self,
        campaign: &str,
        version: u32,
        from_config: bool,
    ) -> Result<Version, VersionError> {
        let mut history = self.history(campaign)?;
        let chosen = history
            .get(version)
            .cloned()
            .ok_or_else(|| VersionError::Unknown {
                campaign: campaign.into(),
                version,
            })?;
        history.active = version;
        if from_config {
            history.config_digest = Some(chosen.digest.clone());
        }
        self.save(campaign, &history)?;
        Ok(chosen)
    }

    /// Forget stored `version` of `campaign` (never the active one). The
    /// component itself is deleted too unless another version, of any
    /// campaign, is the same component; the digest of a deleted component
    /// is returned, so its compiled form can go as well.
    pub fn delete(&self, campaign: &str, version: u32) -> Result<Option<String>, VersionError> {
        let mut history = self.history(campaign)?;
        if version == history.active {
            return Err(VersionError::Active {
                campaign: campaign.into(),
                version,
            });
        }
        let unknown = || VersionError::Unknown {
            campaign: campaign.into(),
            version,
        };
        let index = history
            .versions
            .iter()
            .position(|v| v.version == version)
            .ok_or_else(unknown)?;
        let gone = history.versions.remove(index);
        // A history holds each component once, so only other campaigns can
        // still use it. Decided before anything changes, so a history that
        // cannot be read refuses the delete instead of orphaning a component.
        let still_used = self.is_referenced_elsewhere(&gone.digest, campaign)?;
        self.save(campaign, &history)?;
        if still_used {
            return Ok(None);
        }
        let blob = self.blob_path(&gone.digest);
        if let Err(error) = std::fs::remove_file(&blob) {
            // The version is gone either way; only disk space is at stake.
            tracing::warn!(path = %blob.display(), %error, "Could not delete an unused component");
        }
        Ok(Some(gone.digest))
    }

    /// Whether a campaign other than `except` still names component
    /// `digest`.
    fn is_referenced_elsewhere(&self, digest: &str, except: &str) -> Result<bool, VersionError> {
        let entries = std::fs::read_dir(&self.dir).map_err(io_error(&self.dir))?;
        for entry in entries {
            let path = entry.map_err(io_error(&self.dir))?.path();
            let Some(campaign) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            if campaign != except && self.history(campaign)?.by_digest(digest).is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn save(&self, campaign: &str, history: &History) -> Result<(), VersionError> {
        let json = serde_json::to_vec_pretty(history).expect("a history serialises");
        write_atomically(&self.history_path(campaign), &json)
    }

    fn history_path(&self, campaign: &str) -> PathBuf {
        // Campaign names are plain (letters, digits, `-`, `_`): see config.
        self.dir.join(format!("{campaign}.json"))
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir.join("blobs").join(format!("{digest}.wasm"))
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> VersionError + '_ {
    move |source| VersionError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Write a uniquely named temporary file, sync it, rename it over `path`
/// and sync the directory: after a crash the file is either the old one or
/// the whole new one, and campaigns loading in parallel that store the same
/// component never write into each other's temporary file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), VersionError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let write = || -> std::io::Result<()> {
        let mut file = tempfile::NamedTempFile::new_in(dir)?;
        file.write_all(bytes)?;
        file.as_file().sync_all()?;
        file.persist(path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(io_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[test]
    fn a_changed_or_missing_blob_is_refused_and_stored_again() {
        let dir = tempfile::tempdir().unwrap();
        let versions = PluginVersions::open(dir.path().join("plugins")).unwrap();
        let digest = sha(b"one");
        versions
            .store("a", b"one", &digest, Origin::Config)
            .unwrap();
        let blob = versions.blob_path(&digest);
        std::fs::write(&blob, b"evil").unwrap();
        let changed = versions.read(&digest).unwrap_err();
        assert!(
            matches!(changed, VersionError::TamperedBlob { ref found, .. } if *found == sha(b"evil"))
        );
        assert!(changed.is_bad_blob());
        std::fs::remove_file(&blob).unwrap();
        assert!(matches!(
            versions.read(&digest),
            Err(VersionError::MissingBlob { .. })
        ));
        // Storing the same component again repairs it.
        versions
            .store("b", b"one", &digest, Origin::Deploy)
            .unwrap();
        assert_eq!(versions.read(&digest).unwrap(), b"one");
    }

    #[test]
    fn versions_are_numbered_deduplicated_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let versions = PluginVersions::open(dir.path().join("plugins")).unwrap();
        assert_eq!(versions.history("welcome").unwrap().active, 0);

        let v1 = versions
            .store("welcome", b"one", &sha(b"one"), Origin::Config)
            .unwrap();
        let v2 = versions
            .store("welcome", b"two", &sha(b"two"), Origin::Deploy)
            .unwrap();
        assert_eq!((v1.version, v2.version), (1, 2));
        assert_eq!(
            versions.history("welcome").unwrap().active,
            0,
            "stored, not running"
        );
        // The same bytes again are the same version, not a third.
        let again = versions
            .store("welcome", b"one", &sha(b"one"), Origin::Deploy)
            .unwrap();
        assert_eq!(again, v1);
        versions.activate("welcome", 1, true).unwrap();
        versions.activate("welcome", 2, false).unwrap();

        let reopened = PluginVersions::open(dir.path().join("plugins")).unwrap();
        let history = reopened.history("welcome").unwrap();
        assert_eq!(history.active, 2);
        assert_eq!(history.versions.len(), 2);
        assert_eq!(history.config_digest.as_deref(), Some(sha(b"one").as_str()));
        assert_eq!(reopened.read(&sha(b"one")).unwrap(), b"one");

        assert_eq!(reopened.activate("welcome", 1, false).unwrap(), v1);
        assert_eq!(reopened.history("welcome").unwrap().active, 1);
        assert!(matches!(
            reopened.activate("welcome", 7, false),
            Err(VersionError::Unknown { version: 7, .. })
        ));
        // Campaigns do not see each other's versions.
        assert!(reopened.history("other").unwrap().versions.is_empty());
    }

    #[test]
    fn deleting_a_version_keeps_the_active_one_and_shared_components() {
        let dir = tempfile::tempdir().unwrap();
        let versions = PluginVersions::open(dir.path().join("plugins")).unwrap();
        for (campaign, bytes, digest) in [
            ("a", b"one", &sha(b"one")),
            ("a", b"two", &sha(b"two")),
            ("b", b"one", &sha(b"one")),
        ] {
            versions
                .store(campaign, bytes, digest, Origin::Deploy)
                .unwrap();
        }
        versions.activate("a", 2, false).unwrap();
        assert!(matches!(
            versions.delete("a", 2),
            Err(VersionError::Active { version: 2, .. })
        ));
        // `b` still has the same component: it stays.
        assert_eq!(versions.delete("a", 1).unwrap(), None);
        assert_eq!(versions.read(&sha(b"one")).unwrap(), b"one");
        assert_eq!(versions.history("a").unwrap().versions.len(), 1);
        assert!(matches!(
            versions.delete("a", 1),
            Err(VersionError::Unknown { version: 1, .. })
        ));
        // The last version naming it takes the component with it.
        assert_eq!(versions.delete("b", 1).unwrap(), Some(sha(b"one")));
        assert!(versions.read(&sha(b"one")).is_err());
        // A deleted number, even the highest, is never given again.
        let three = versions
            .store("a", b"three", &sha(b"three"), Origin::Deploy)
            .unwrap();
        assert_eq!(three.version, 3);
        versions.delete("a", 3).unwrap();
        let four = versions
            .store("a", b"four", &sha(b"four"), Origin::Deploy)
            .unwrap();
        assert_eq!(four.version, 4);
    }
}
