//! The on-disk cache of compiled components: compiling a component takes
//! about 100 ms, loading its compiled form well under 1 ms, so a restart
//! with many campaigns does not recompile them. Files are named by the
//! SHA-256 of the component, so a new plugin version gets a new file.

use std::io::Write;
use std::path::{Path, PathBuf};

use wasmtime::component::Component;
use wasmtime::Engine;

/// Compiled components in one directory (inside the gateway's data dir).
pub struct CompiledCache {
    dir: PathBuf,
}

impl CompiledCache {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The compiled form of `bytes` (whose hex SHA-256 is `digest`): from
    /// the cache if it holds a usable one, else compiled now and stored for
    /// next time. Whether it came from the cache is the second value.
    pub fn component(
        &self,
        engine: &Engine,
        bytes: &[u8],
        digest: &str,
    ) -> wasmtime::Result<(Component, bool)> {
        let path = self.dir.join(format!("{digest}.cwasm"));
        if let Some(component) = load(engine, &path) {
            return Ok((component, true));
        }
        let component = Component::new(engine, bytes)?;
        if let Err(error) = self.store(&path, &component) {
            tracing::warn!(path = %path.display(), %error, "Could not cache a compiled component");
        }
        Ok((component, false))
    }

    /// Drop the compiled form of component `digest`, if cached.
    pub fn remove(&self, digest: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.dir.join(format!("{digest}.cwasm"))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn store(&self, path: &Path, component: &Component) -> wasmtime::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        // Write a uniquely named file then rename it, so a crash never
        // leaves half a file under the final name and two campaigns
        // compiling the same component never write into one file.
        let mut partial = tempfile::NamedTempFile::new_in(&self.dir)?;
        partial.write_all(&component.serialize()?)?;
        // On disk before it has the final name: a power cut must not leave
        // a truncated file that `load` would trust.
        partial.as_file().sync_all()?;
        partial.persist(path)?;
        Ok(())
    }
}

/// A cached component, or `None` if there is none or it cannot be used
/// (written by another wasmtime version or engine configuration).
#[allow(unsafe_code)]
fn load(engine: &Engine, path: &Path) -> Option<Component> {
    if !path.exists() {
        return None;
    }
    // SAFETY: `deserialize_file` trusts the file to be machine code that
    // wasmtime itself produced. This directory is written only by
    // `CompiledCache::store` above, from `Component::serialize`, inside the
    // gateway's own data directory, which is as trusted as the binary (an
    // attacker who can write there can replace the plugins too) — or, for
    // the tools, the user's own cache directory, as trusted as the user's
    // home (wasmtime's own cache lives there too). wasmtime
    // still checks the file's header against this engine's version and
    // configuration and refuses a mismatch, which we treat as a miss.
    match unsafe { Component::deserialize_file(engine, path) } {
        Ok(component) => Some(component),
        Err(error) => {
            tracing::info!(path = %path.display(), %error, "Recompiling: cached component is not usable");
            None
        }
    }
}
