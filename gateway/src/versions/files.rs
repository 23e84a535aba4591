//! Versions in the data directory, for one node: under `data_dir/plugins/`,
//! `blobs/<sha256>.wasm` holds each component once and `<campaign>.json` a
//! campaign's history. Both are written to a temporary name, synced and
//! renamed, so a crash leaves the old or the new file, never half of one.
//! One gateway owns a data directory and makes one change at a time, so a
//! history's revision is not checked.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Revision, Shelf, VersionError};

pub struct FileShelf {
    dir: PathBuf,
}

impl FileShelf {
    pub fn open(dir: PathBuf) -> Result<Self, VersionError> {
        let blobs = dir.join("blobs");
        std::fs::create_dir_all(&blobs).map_err(io_error(&blobs))?;
        Ok(FileShelf { dir })
    }

    fn history_path(&self, campaign: &str) -> PathBuf {
        // Campaign names are plain (letters, digits, `-`, `_`): see config.
        self.dir.join(format!("{campaign}.json"))
    }

    pub(super) fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir.join("blobs").join(format!("{digest}.wasm"))
    }
}

impl Shelf for FileShelf {
    fn load(&self, campaign: &str) -> Result<Option<(Vec<u8>, Revision)>, VersionError> {
        let path = self.history_path(campaign);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some((bytes, 0))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(VersionError::Io { path, source }),
        }
    }

    fn save(
        &self,
        campaign: &str,
        document: &[u8],
        _expected: Option<Revision>,
    ) -> Result<bool, VersionError> {
        write_atomically(&self.history_path(campaign), document)?;
        Ok(true)
    }

    fn campaigns(&self) -> Result<Vec<String>, VersionError> {
        let entries = std::fs::read_dir(&self.dir).map_err(io_error(&self.dir))?;
        let mut campaigns = Vec::new();
        for entry in entries {
            let path = entry.map_err(io_error(&self.dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str());
            if let Some(campaign) = name.and_then(|n| n.strip_suffix(".json")) {
                campaigns.push(campaign.to_owned());
            }
        }
        Ok(campaigns)
    }

    fn read_blob(&self, digest: &str) -> Result<Option<Vec<u8>>, VersionError> {
        let path = self.blob_path(digest);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(VersionError::Io { path, source }),
        }
    }

    fn write_blob(&self, digest: &str, bytes: &[u8]) -> Result<(), VersionError> {
        write_atomically(&self.blob_path(digest), bytes)
    }

    fn delete_blob(&self, digest: &str) -> Result<(), VersionError> {
        let path = self.blob_path(digest);
        std::fs::remove_file(&path).map_err(io_error(&path))
    }

    fn blob_place(&self, digest: &str) -> String {
        self.blob_path(digest).display().to_string()
    }

    fn history_place(&self, campaign: &str) -> String {
        self.history_path(campaign).display().to_string()
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
