//! Stored plugin versions: every component a campaign has run — from its
//! config file or deployed through the admin API — numbered per campaign,
//! with the active one recorded, so a deploy or a rollback survives a
//! restart and any earlier version can come back.
//!
//! Each component is kept once under its SHA-256 and checked against it
//! whenever it is read; a campaign's history is a JSON document changed
//! only by compare-and-swap, so nodes sharing a [`Shelf`] never overwrite
//! each other's change. Shelves: [`files`] (the data directory, one node)
//! and [`nats`] (JetStream KV and Object Store, watched by every node, so a
//! deploy made on one node runs on all). Must never compile anything: the
//! runtime does that before a version is stored.

pub mod files;
pub mod nats;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::config::{Config, StoreBackend};
use crate::event::now_ms;
use crate::store::nats::NatsOptions;

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
    /// The shared shelf cannot be reached or refused the request.
    #[error("{0}")]
    Unavailable(String),
    #[error("{place}: not a version history: {source}")]
    Corrupt {
        place: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{place}: the stored component is missing")]
    MissingBlob { place: String },
    #[error("{place}: the stored component does not match its SHA-256 name (its content hashes to {found}): it was changed after it was stored")]
    TamperedBlob { place: String, found: String },
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

/// Where histories and components are kept. A history is an opaque
/// document with a revision; [`Shelf::save`] writes it only over the
/// revision it was read at, so concurrent changes retry instead of losing
/// one another. Blocking: call it off the async threads.
pub trait Shelf: Send + Sync + 'static {
    /// `campaign`'s history document and its revision; `None` before the
    /// first save.
    fn load(&self, campaign: &str) -> Result<Option<(Vec<u8>, Revision)>, VersionError>;
    /// Write `document` if the stored one is still at `expected` (`None`:
    /// there is none yet); `false` if another writer came first.
    fn save(
        &self,
        campaign: &str,
        document: &[u8],
        expected: Option<Revision>,
    ) -> Result<bool, VersionError>;
    /// Every campaign with a history.
    fn campaigns(&self) -> Result<Vec<String>, VersionError>;
    /// The component stored under `digest`, unchecked; `None` if missing.
    fn read_blob(&self, digest: &str) -> Result<Option<Vec<u8>>, VersionError>;
    fn write_blob(&self, digest: &str, bytes: &[u8]) -> Result<(), VersionError>;
    /// Whether the component stored under `digest` is there and is what
    /// was stored; by default read and hashed.
    fn has_intact_blob(&self, digest: &str) -> bool {
        matches!(self.read_blob(digest), Ok(Some(bytes)) if hex::encode(Sha256::digest(&bytes)) == digest)
    }
    fn delete_blob(&self, digest: &str) -> Result<(), VersionError>;
    /// How errors name a component's place.
    fn blob_place(&self, digest: &str) -> String;
    /// How errors name a history's place.
    fn history_place(&self, campaign: &str) -> String;
    /// The names of campaigns whose history another node may have changed,
    /// as they change; `None` on a shelf only this node writes.
    fn watch(&self) -> Option<mpsc::UnboundedReceiver<String>> {
        None
    }
}

/// A history's revision on its shelf.
pub type Revision = u64;

/// The stored versions of every campaign.
#[derive(Clone)]
pub struct PluginVersions {
    shelf: Arc<dyn Shelf>,
}

impl PluginVersions {
    pub fn new(shelf: Arc<dyn Shelf>) -> Self {
        PluginVersions { shelf }
    }

    /// The shelf `[store] backend` names: the data directory's for the
    /// embedded store, the shared one on NATS. Call it where blocking is
    /// allowed, on the runtime the NATS client is to run on.
    pub fn open(config: &Config) -> Result<Self, VersionError> {
        let shelf: Arc<dyn Shelf> = match config.store.backend {
            StoreBackend::Embedded => {
                Arc::new(files::FileShelf::open(config.data_dir.join("plugins"))?)
            }
            StoreBackend::Nats => {
                let options = NatsOptions::new(&config.store);
                let opening = nats::NatsShelf::open(&options);
                Arc::new(tokio::runtime::Handle::current().block_on(opening)?)
            }
        };
        Ok(PluginVersions::new(shelf))
    }

    /// See [`Shelf::watch`].
    pub fn watch(&self) -> Option<mpsc::UnboundedReceiver<String>> {
        self.shelf.watch()
    }

    /// `campaign`'s history; empty if it has none yet.
    pub fn history(&self, campaign: &str) -> Result<History, VersionError> {
        Ok(self.load(campaign)?.0)
    }

    fn load(&self, campaign: &str) -> Result<(History, Option<Revision>), VersionError> {
        match self.shelf.load(campaign)? {
            None => Ok((History::default(), None)),
            Some((bytes, revision)) => serde_json::from_slice(&bytes)
                .map(|history| (history, Some(revision)))
                .map_err(|source| VersionError::Corrupt {
                    place: self.shelf.history_place(campaign),
                    source,
                }),
        }
    }

    /// Apply `change` to `campaign`'s history and save it, again on the
    /// newest history whenever another writer saved first. `change` says
    /// whether there is anything to save.
    fn modify<T>(
        &self,
        campaign: &str,
        mut change: impl FnMut(&mut History) -> Result<(T, bool), VersionError>,
    ) -> Result<T, VersionError> {
        loop {
            let (mut history, revision) = self.load(campaign)?;
            let (answer, changed) = change(&mut history)?;
            if !changed {
                return Ok(answer);
            }
            let json = serde_json::to_vec_pretty(&history).expect("a history serialises");
            if self.shelf.save(campaign, &json, revision)? {
                return Ok(answer);
            }
        }
    }

    /// The component stored under `digest`.
    /// Checked against its name: a changed or missing blob is an error.
    pub fn read(&self, digest: &str) -> Result<Vec<u8>, VersionError> {
        let place = || self.shelf.blob_place(digest);
        let bytes = self
            .shelf
            .read_blob(digest)?
            .ok_or_else(|| VersionError::MissingBlob { place: place() })?;
        let found = hex::encode(Sha256::digest(&bytes));
        if found != digest {
            return Err(VersionError::TamperedBlob {
                place: place(),
                found,
            });
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
        // Written first, and again if it is missing or was changed: a
        // history never names a component that is not there.
        if !self.shelf.has_intact_blob(digest) {
            self.shelf.write_blob(digest, bytes)?;
        }
        self.modify(campaign, |history| {
            if let Some(known) = history.by_digest(digest) {
                return Ok((known.clone(), false));
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
            Ok((version, true))
        })
    }

    /// Record stored `version` as the one `campaign` runs; `from_config`
    /// when the campaign's config named it (see [`History::config_digest`]).
    pub fn activate(
        &self,
        campaign: &str,
        version: u32,
        from_config: bool,
    ) -> Result<Version, VersionError> {
        self.modify(campaign, |history| {
            let chosen = history
                .get(version)
                .cloned()
                .ok_or_else(|| VersionError::Unknown {
                    campaign: campaign.into(),
                    version,
                })?;
            let config_digest = match from_config {
                true => Some(chosen.digest.clone()),
                false => history.config_digest.clone(),
            };
            // Saving an unchanged history would wake every watching node.
            let changed = history.active != version || history.config_digest != config_digest;
            history.active = version;
            history.config_digest = config_digest;
            Ok((chosen, changed))
        })
    }

    /// Forget stored `version` of `campaign` (never the active one). The
    /// component itself is deleted too unless another version, of any
    /// campaign, is the same component; the digest of a deleted component
    /// is returned, so its compiled form can go as well.
    pub fn delete(&self, campaign: &str, version: u32) -> Result<Option<String>, VersionError> {
        let digest = (self.history(campaign)?.get(version))
            .map(|v| v.digest.clone())
            .ok_or_else(|| VersionError::Unknown {
                campaign: campaign.into(),
                version,
            })?;
        // A history holds each component once, so only other campaigns can
        // still use it. Decided before anything changes, so a history that
        // cannot be read refuses the delete instead of orphaning a component.
        let still_used = self.is_referenced_elsewhere(&digest, campaign)?;
        self.modify(campaign, |history| {
            if version == history.active {
                return Err(VersionError::Active {
                    campaign: campaign.into(),
                    version,
                });
            }
            let index = (history.versions.iter())
                .position(|v| v.version == version)
                .ok_or_else(|| VersionError::Unknown {
                    campaign: campaign.into(),
                    version,
                })?;
            history.versions.remove(index);
            Ok(((), true))
        })?;
        if still_used {
            return Ok(None);
        }
        if let Err(error) = self.shelf.delete_blob(&digest) {
            // The version is gone either way; only space is at stake.
            tracing::warn!(%digest, %error, "Could not delete an unused component");
        }
        Ok(Some(digest))
    }

    /// Whether a campaign other than `except` still names component
    /// `digest`.
    fn is_referenced_elsewhere(&self, digest: &str, except: &str) -> Result<bool, VersionError> {
        for campaign in self.shelf.campaigns()? {
            if campaign != except && self.history(&campaign)?.by_digest(digest).is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    fn on_files(dir: &std::path::Path) -> PluginVersions {
        let shelf = files::FileShelf::open(dir.join("plugins")).unwrap();
        PluginVersions::new(Arc::new(shelf))
    }

    #[test]
    fn a_changed_or_missing_blob_is_refused_and_stored_again() {
        let dir = tempfile::tempdir().unwrap();
        let versions = on_files(dir.path());
        let digest = sha(b"one");
        versions
            .store("a", b"one", &digest, Origin::Config)
            .unwrap();
        let blob = files::FileShelf::open(dir.path().join("plugins"))
            .unwrap()
            .blob_path(&digest);
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
        numbered_deduplicated_and_kept(|| on_files(dir.path()));
    }

    #[test]
    fn deleting_a_version_keeps_the_active_one_and_shared_components() {
        let dir = tempfile::tempdir().unwrap();
        deleting_keeps_the_active_version_and_shared_components(on_files(dir.path()));
    }

    /// What every shelf must do; `open` opens the same shelf again.
    pub(crate) fn numbered_deduplicated_and_kept(open: impl Fn() -> PluginVersions) {
        let versions = open();
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

        let reopened = open();
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

    pub(crate) fn deleting_keeps_the_active_version_and_shared_components(
        versions: PluginVersions,
    ) {
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
        // The last version naming it takes the component with it…
        assert_eq!(versions.delete("b", 1).unwrap(), Some(sha(b"one")));
        assert!(versions.read(&sha(b"one")).is_err());
        // …and storing it again brings it back.
        versions
            .store("b", b"one", &sha(b"one"), Origin::Deploy)
            .unwrap();
        assert_eq!(versions.read(&sha(b"one")).unwrap(), b"one");
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
