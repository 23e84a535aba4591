//! Real new versions of one plugin: `plugins/revision` built once per
//! revision number (`HOOKLANE_REVISION`), so two versions differ in their
//! `handle` code the way two builds of an author's campaign do — not only
//! in a custom section. Built on first use with the plugins' own cargo
//! workspace into `plugins/target/revisions/` and kept there: a revision
//! is built again only when the plugin's source is newer than it.

use std::path::{Path, PathBuf};

use crate::BenchError;

/// The plugins' cargo workspace, beside this crate in the source tree.
const PLUGINS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../plugins");

/// Revisions `0..count` of the `revision` plugin, built if need be.
pub fn revisions(count: usize) -> Result<Vec<PathBuf>, BenchError> {
    let plugins = Path::new(PLUGINS).canonicalize()?;
    let built = plugins.join("target/revisions");
    std::fs::create_dir_all(&built)?;
    let source = std::fs::metadata(plugins.join("revision/src/lib.rs"))?.modified()?;
    (0..count)
        .map(|revision| {
            let path = built.join(format!("revision-{revision}.wasm"));
            let fresh = std::fs::metadata(&path)
                .and_then(|built| built.modified())
                .is_ok_and(|built| built > source);
            if !fresh {
                build(&plugins, revision, &path)?;
            }
            Ok(path)
        })
        .collect()
}

/// Build revision `revision` of the plugin and copy it to `to`.
fn build(plugins: &Path, revision: usize, to: &Path) -> Result<(), BenchError> {
    // A target directory of its own: the build that tests and the demo use
    // (revision 0, from scripts/setup.sh) stays as it is.
    let target_dir = plugins.join("target/revisions/build");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
        ])
        .args(["--package", "revision", "--manifest-path"])
        .arg(plugins.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env("HOOKLANE_REVISION", revision.to_string())
        .status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!(
            "building revision {revision} of plugins/revision failed ({status}); scripts/setup.sh installs the wasm32-wasip2 target"
        ))
        .into());
    }
    std::fs::copy(target_dir.join("wasm32-wasip2/release/revision.wasm"), to)?;
    Ok(())
}
