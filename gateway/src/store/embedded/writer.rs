//! Group commit: one thread owns redb's single write transaction slot and
//! commits every write that arrived while the previous commit was syncing in
//! one transaction — many events per fsync, so durability does not cost
//! throughput.

use std::sync::mpsc;
use std::sync::Arc;

use redb::{Database, Durability, WriteTransaction};
use tokio::sync::oneshot;

use crate::store::StoreError;

/// Most operations in one commit; bounds the latency one commit can add.
const MAX_BATCH: usize = 4096;

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// Applies a write to the batch's transaction; says whether it succeeded
/// and how to tell its caller once the batch is committed.
type Apply = Box<dyn FnOnce(&WriteTransaction) -> (bool, Completion) + Send>;

/// Whether a write must be on disk before its caller hears back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// Synced before the reply: anything acknowledged to a sender.
    Durable,
    /// Persisted with the next durable commit: losing it in a crash only
    /// means doing something again (an ack: the event re-runs), which
    /// at-least-once allows. Spares the disk a sync for the common case.
    Lazy,
}

struct Operation {
    sync: Sync,
    apply: Apply,
}

/// The handle through which every write goes; cheap to clone. When the
/// last clone is dropped the writer thread finishes its batch and exits,
/// releasing the database (so it can be reopened at once).
#[derive(Clone)]
pub struct Writer {
    thread: Arc<WriterThread>,
}

struct WriterThread {
    operations: Option<mpsc::Sender<Operation>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        self.operations.take();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

impl Writer {
    /// Start the writer thread. With `fsync` off, commits are not synced:
    /// acknowledged data may be lost on a crash (for benchmarks).
    pub fn start(db: Arc<Database>, fsync: bool) -> std::io::Result<Writer> {
        let (operations, received) = mpsc::channel::<Operation>();
        let handle = std::thread::Builder::new()
            .name("hooklane-store".into())
            .spawn(move || commit_batches(&db, &received, fsync))?;
        Ok(Writer {
            thread: Arc::new(WriterThread {
                operations: Some(operations),
                handle: Some(handle),
            }),
        })
    }

    /// Run `write` in the next group commit and return its result once the
    /// commit is durable.
    pub async fn write<T: Send + 'static>(
        &self,
        sync: Sync,
        write: impl FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, replied) = oneshot::channel();
        let apply: Apply = Box::new(move |txn| {
            let result = write(txn);
            let ok = result.is_ok();
            let completion: Completion = Box::new(move |committed| {
                // A write's own error wins over the commit's.
                let _ = reply.send(result.and_then(|value| committed.map(|()| value)));
            });
            (ok, completion)
        });
        let operation = Operation { sync, apply };
        let stopped = || StoreError::Backend("the store's writer has stopped".into());
        let operations = self.thread.operations.as_ref().ok_or_else(stopped)?;
        operations.send(operation).map_err(|_| stopped())?;
        replied.await.map_err(|_| stopped())?
    }
}

fn commit_batches(db: &Database, received: &mpsc::Receiver<Operation>, fsync: bool) {
    while let Ok(first) = received.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match received.try_recv() {
                Ok(operation) => batch.push(operation),
                Err(_) => break,
            }
        }
        let mut txn = match db.begin_write() {
            Ok(txn) => txn,
            Err(error) => {
                // Dropping the batch tells every caller that nothing was stored.
                tracing::error!(%error, "Cannot begin a store write");
                drop(batch);
                continue;
            }
        };
        let must_sync = fsync && batch.iter().any(|op| op.sync == Sync::Durable);
        let durability = if must_sync {
            Durability::Immediate
        } else {
            Durability::None
        };
        if let Err(e) = txn.set_durability(durability) {
            tracing::error!(error = %e, "Cannot set the store's durability");
        }
        let mut all_ok = true;
        let mut completions = Vec::with_capacity(batch.len());
        for operation in batch {
            let (ok, completion) = (operation.apply)(&txn);
            all_ok &= ok;
            completions.push(completion);
        }
        // One failed write may have left partial changes: commit nothing.
        let committed = if all_ok {
            txn.commit()
                .map_err(|e| StoreError::Backend(format!("commit failed: {e}")))
        } else {
            let _ = txn.abort();
            Err(StoreError::Backend(
                "a write in the same commit failed; nothing was stored".into(),
            ))
        };
        for completion in completions {
            completion(committed.clone());
        }
    }
}
