//! Versions on NATS JetStream, shared by every node: histories in the KV
//! bucket `<prefix>_versions` (key: the campaign as a token, each update
//! checked against the revision it was read at), components in the Object
//! Store `<prefix>_plugins` (name: their SHA-256). Every node watches the
//! bucket ([`Shelf::watch`]) and runs the version a changed history makes
//! active, so a deploy, rollback or reload through one node's admin API
//! runs on all of them.

use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use async_nats::jetstream::object_store::{GetErrorKind, ObjectStore};
use async_nats::jetstream::stream::{Config as StreamConfig, DiscardPolicy};
use futures_util::{StreamExt, TryStreamExt};
use tokio::io::AsyncReadExt;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use super::{Revision, Shelf, VersionError};
use crate::store::nats::{bucket_config, connect, stream, token, untoken, NatsOptions};

/// How long a watch that broke waits before it starts again.
const WATCH_AGAIN_AFTER: Duration = Duration::from_millis(500);

pub struct NatsShelf {
    /// The runtime the client runs on: the blocking calls wait on it.
    runtime: Handle,
    histories: kv::Store,
    components: ObjectStore,
    components_bucket: String,
}

impl NatsShelf {
    /// Connect and create the bucket and the object store if they are
    /// missing. Call it on the runtime the client is to run on.
    pub async fn open(options: &NatsOptions) -> Result<Self, VersionError> {
        let unavailable = |e: &dyn std::fmt::Display| VersionError::Unavailable(e.to_string());
        let (_, js) = connect(options, "hooklane-versions", || {})
            .await
            .map_err(|e| unavailable(&e))?;
        let prefix = &options.stream_prefix;
        // Created as the queue's streams are: tried again while a cluster
        // elects the leader of one another node is creating.
        let histories_bucket = format!("{prefix}_versions");
        let histories_config = StreamConfig {
            // Read from the leader: a replica may not have a write another
            // node just made, and a history read stale would name no
            // version that was just stored.
            allow_direct: false,
            ..bucket_config(&histories_bucket, options.replicas)
        };
        stream(&js, histories_config)
            .await
            .map_err(|e| unavailable(&e))?;
        let histories = js.get_key_value(&histories_bucket).await.map_err(|e| {
            unavailable(&format!(
                "cannot open the NATS KV bucket `{histories_bucket}`: {e}"
            ))
        })?;
        let components_bucket = format!("{prefix}_plugins");
        stream(
            &js,
            object_store_config(&components_bucket, options.replicas),
        )
        .await
        .map_err(|e| unavailable(&e))?;
        let components = js.get_object_store(&components_bucket).await.map_err(|e| {
            unavailable(&format!(
                "cannot open the NATS object store `{components_bucket}`: {e}"
            ))
        })?;
        Ok(NatsShelf {
            runtime: Handle::current(),
            histories,
            components,
            components_bucket,
        })
    }

    fn wait<F: std::future::Future>(&self, work: F) -> F::Output {
        self.runtime.block_on(work)
    }
}

/// An object store's stream, laid out as async-nats lays it out (but for
/// direct gets).
fn object_store_config(bucket: &str, replicas: usize) -> StreamConfig {
    StreamConfig {
        name: format!("OBJ_{bucket}"),
        subjects: vec![format!("$O.{bucket}.C.>"), format!("$O.{bucket}.M.>")],
        num_replicas: replicas,
        discard: DiscardPolicy::New,
        allow_rollup: true,
        // From the leader, as histories are.
        allow_direct: false,
        ..StreamConfig::default()
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> VersionError {
    VersionError::Unavailable(format!("NATS: cannot {what}: {e}"))
}

impl Shelf for NatsShelf {
    fn load(&self, campaign: &str) -> Result<Option<(Vec<u8>, Revision)>, VersionError> {
        let entry = self
            .wait(self.histories.entry(token(campaign)))
            .map_err(|e| failed(&format!("read the history of `{campaign}`"), e))?;
        Ok(entry
            .filter(|entry| entry.operation == Operation::Put)
            .map(|entry| (entry.value.to_vec(), entry.revision)))
    }

    fn save(
        &self,
        campaign: &str,
        document: &[u8],
        expected: Option<Revision>,
    ) -> Result<bool, VersionError> {
        let key = token(campaign);
        let value = bytes::Bytes::copy_from_slice(document);
        let what = || format!("save the history of `{campaign}`");
        match expected {
            None => match self.wait(self.histories.create(key, value)) {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(failed(&what(), e)),
            },
            Some(revision) => match self.wait(self.histories.update(key, value, revision)) {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(false),
                Err(e) => Err(failed(&what(), e)),
            },
        }
    }

    fn campaigns(&self) -> Result<Vec<String>, VersionError> {
        self.wait(async {
            let keys = self.histories.keys().await.map_err(|e| e.to_string())?;
            keys.map_err(|e| e.to_string())
                .try_collect::<Vec<_>>()
                .await
        })
        .map(|keys| keys.iter().filter_map(|key| untoken(key)).collect())
        .map_err(|e| failed("list the campaigns' histories", e))
    }

    fn read_blob(&self, digest: &str) -> Result<Option<Vec<u8>>, VersionError> {
        let what = || format!("read component {digest}");
        self.wait(async {
            let mut object = match self.components.get(digest).await {
                Ok(object) => object,
                Err(e) if e.kind() == GetErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(failed(&what(), e)),
            };
            let mut bytes = Vec::new();
            object
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| failed(&what(), e))?;
            Ok(Some(bytes))
        })
    }

    fn write_blob(&self, digest: &str, bytes: &[u8]) -> Result<(), VersionError> {
        let mut reader = bytes;
        self.wait(self.components.put(digest, &mut reader))
            .map(|_| ())
            .map_err(|e| failed(&format!("store component {digest}"), e))
    }

    /// The object store checks each object's digest as it is read; here
    /// it is enough that the object is there.
    fn has_intact_blob(&self, digest: &str) -> bool {
        // A deleted object keeps its info, marked deleted.
        self.wait(self.components.info(digest))
            .is_ok_and(|info| !info.deleted)
    }

    fn delete_blob(&self, digest: &str) -> Result<(), VersionError> {
        self.wait(self.components.delete(digest))
            .map_err(|e| failed(&format!("delete component {digest}"), e))
    }

    fn blob_place(&self, digest: &str) -> String {
        format!("NATS object store `{}`, {digest}", self.components_bucket)
    }

    fn history_place(&self, campaign: &str) -> String {
        format!("NATS KV bucket `{}`, `{campaign}`", self.histories.name)
    }

    /// Every campaign's name as soon as the watch starts (so a node that
    /// was cut off catches up), then each one whose history changes. A
    /// watch that breaks starts again.
    fn watch(&self) -> Option<mpsc::UnboundedReceiver<String>> {
        let (changed, changes) = mpsc::unbounded_channel();
        let histories = self.histories.clone();
        self.runtime.spawn(async move {
            while !changed.is_closed() {
                match histories.watch_with_history(">").await {
                    Ok(mut watch) => {
                        while let Some(entry) = watch.next().await {
                            let entry = match entry {
                                Ok(entry) => entry,
                                Err(e) => {
                                    tracing::debug!(error = %e, "The watch of plugin versions broke");
                                    break;
                                }
                            };
                            let Some(campaign) = untoken(&entry.key) else {
                                continue;
                            };
                            if changed.send(campaign).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "Cannot watch plugin versions"),
                }
                tokio::time::sleep(WATCH_AGAIN_AFTER).await;
            }
        });
        Some(changes)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::nats::test_server::NatsServer;
    use crate::versions::tests::{
        deleting_keeps_the_active_version_and_shared_components, numbered_deduplicated_and_kept,
        sha,
    };
    use crate::versions::{Origin, PluginVersions};

    /// Shelves on one real nats-server, opened (like the gateway does) on
    /// a runtime of their own and used from this plain thread.
    struct Node {
        runtime: tokio::runtime::Runtime,
        options: NatsOptions,
    }

    impl Node {
        fn on(server: &NatsServer) -> Node {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let options = NatsOptions {
                servers: vec![server.url.clone()],
                credentials_file: None,
                stream_prefix: "hooklane".into(),
                replicas: 1,
                quota: crate::store::conformance::KV_QUOTA,
            };
            Node { runtime, options }
        }

        fn versions(&self) -> PluginVersions {
            let shelf = self
                .runtime
                .block_on(NatsShelf::open(&self.options))
                .unwrap();
            PluginVersions::new(Arc::new(shelf))
        }
    }

    #[test]
    fn versions_behave_as_on_files() {
        let dir = tempfile::tempdir().unwrap();
        let server = NatsServer::start(dir.path());
        let node = Node::on(&server);
        numbered_deduplicated_and_kept(|| node.versions());
        let other = tempfile::tempdir().unwrap();
        let server = NatsServer::start(other.path());
        deleting_keeps_the_active_version_and_shared_components(Node::on(&server).versions());
    }

    #[test]
    fn nodes_storing_at_once_lose_no_version_and_see_each_others_changes() {
        let dir = tempfile::tempdir().unwrap();
        let server = NatsServer::start(dir.path());
        let (a, b) = (Node::on(&server), Node::on(&server));
        let (on_a, on_b) = (a.versions(), b.versions());
        let mut changes = on_b.watch().expect("a shared shelf is watched");
        // Every history there is comes first: none yet.
        std::thread::scope(|s| {
            for (versions, side) in [(&on_a, "a"), (&on_b, "b")] {
                s.spawn(move || {
                    for i in 0..10 {
                        let bytes = format!("{side}{i}").into_bytes();
                        let digest = sha(&bytes);
                        versions
                            .store("cart", &bytes, &digest, Origin::Deploy)
                            .unwrap();
                    }
                });
            }
        });
        let history = on_a.history("cart").unwrap();
        let mut numbers: Vec<u32> = history.versions.iter().map(|v| v.version).collect();
        numbers.sort();
        assert_eq!(
            numbers,
            (1..=20).collect::<Vec<_>>(),
            "20 versions, none overwritten"
        );
        // B hears of A's activation: its watch names the campaign.
        on_a.activate("cart", 7, false).unwrap();
        let heard = b.runtime.block_on(async {
            let deadline = Duration::from_secs(15);
            tokio::time::timeout(deadline, async {
                loop {
                    let campaign = changes.recv().await.unwrap();
                    if on_b_sees_active(&on_b, &campaign, 7) {
                        return campaign;
                    }
                }
            })
            .await
        });
        assert_eq!(heard.expect("the change reaches B within 15 s"), "cart");
    }

    fn on_b_sees_active(versions: &PluginVersions, campaign: &str, active: u32) -> bool {
        let versions = versions.clone();
        let campaign = campaign.to_owned();
        // The shelf blocks: not on the watching runtime's own thread.
        std::thread::spawn(move || versions.history(&campaign).unwrap().active == active)
            .join()
            .unwrap()
    }
}
