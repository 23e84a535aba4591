//! Group commit: one thread owns redb's single write transaction slot and
//! commits every write that arrived while the previous commit was syncing in
//! one transaction — many events per fsync, so durability does not cost
//! throughput.
//!
//! It also owns recovery. redb refuses every write after an I/O error (a
//! full disk, say) until the file is opened again, so a failed commit marks
//! the store broken: writes are refused at once with the reason, readiness
//! says so, and the thread reopens the database with backoff — proving it
//! with a small durable probe commit — until the disk takes writes again.

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redb::{Database, Durability, TableDefinition, WriteTransaction};
use tokio::sync::oneshot;

use crate::event::now_ms;
use crate::store::StoreError;
use crate::telemetry;

/// Most operations in one commit; bounds the latency one commit can add.
const MAX_BATCH: usize = 4096;
/// First wait before reopening a broken store; doubles up to the cap.
const FIRST_RECOVERY: Duration = Duration::from_millis(100);
const MAX_RECOVERY: Duration = Duration::from_secs(2);
/// How long a reopen waits for readers to let go of the old handle.
const READERS_GRACE: Duration = Duration::from_secs(5);
/// The least free space on the store's disk for a broken store to count as
/// recovered.
const MIN_FREE_BYTES: u64 = 1 << 20;
/// Written by the probe commit that proves a reopened store writes.
const PROBE: TableDefinition<&str, u64> = TableDefinition::new("write_probe");

/// Memory redb may use to cache pages. Its default (a GiB) let resident
/// memory grow with the backlog on disk; the queue reads in index order and
/// writes at the end, so a small cache serves it.
const CACHE_BYTES: usize = 8 << 20;

/// Open (or create) the database file at `path`.
pub fn open_database(path: &std::path::Path) -> Result<Database, redb::DatabaseError> {
    Database::builder().set_cache_size(CACHE_BYTES).create(path)
}

/// The database file and its open handle, shared by readers and the
/// writer thread, which swaps in a fresh handle after an I/O error.
pub struct Shared {
    path: PathBuf,
    db: ArcSwapOption<Database>,
    /// Why writes fail now; `None` while the store writes.
    broken: Mutex<Option<String>>,
}

impl Shared {
    pub fn new(path: PathBuf, db: Database) -> Self {
        Shared {
            path,
            db: ArcSwapOption::from_pointee(db),
            broken: Mutex::new(None),
        }
    }

    /// The open database, for a read.
    pub fn database(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .load_full()
            .ok_or_else(|| StoreError::Unavailable("the store is being reopened".into()))
    }

    /// The size of the database file.
    pub fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// Whether writes go through now; the reason when they do not.
    pub fn writable(&self) -> Result<(), StoreError> {
        match &*self.broken.lock().expect("store state lock") {
            None => Ok(()),
            Some(reason) => Err(StoreError::Unavailable(reason.clone())),
        }
    }

    fn set_broken(&self, reason: Option<String>) {
        *self.broken.lock().expect("store state lock") = reason;
    }

    fn is_broken(&self) -> bool {
        self.broken.lock().expect("store state lock").is_some()
    }

    /// Open the file again and prove it takes a durable write, once the
    /// disk has room. Readers keep the old handle until then.
    fn reopen(&self) -> Result<(), String> {
        // A probe commit alone can fit in pages the file has free inside
        // while the disk is still full: ask for real room too.
        let free = rustix::fs::statvfs(&self.path)
            .map(|fs| fs.f_bavail.saturating_mul(fs.f_frsize))
            .map_err(|e| format!("cannot tell the free space of {}: {e}", self.path.display()))?;
        if free < MIN_FREE_BYTES {
            return Err(format!(
                "the disk holding {} has {free} bytes free, under {MIN_FREE_BYTES}",
                self.path.display()
            ));
        }
        if let Some(mut old) = self.db.swap(None) {
            // redb allows one handle per file: readers finish with the old
            // one first (a read takes milliseconds).
            let waited = Instant::now();
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => break drop(db),
                    Err(still) if waited.elapsed() > READERS_GRACE => {
                        self.db.store(Some(still));
                        return Err("readers still hold the old store handle".into());
                    }
                    Err(still) => {
                        old = still;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        }
        let db = open_database(&self.path)
            .map_err(|e| format!("cannot reopen {}: {e}", self.path.display()))?;
        let probe = || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            txn.open_table(PROBE)?.insert("last", now_ms())?;
            txn.commit()?;
            Ok(())
        };
        let probed = probe().map_err(|e| format!("the store still cannot write: {e}"));
        // Readers may use the handle even if writes still fail.
        self.db.store(Some(Arc::new(db)));
        probed
    }
}

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// Applies a write to the batch's transaction (none: the store refuses
/// writes now); says whether it succeeded and how to tell its caller once
/// the batch is committed.
type Apply = Box<dyn FnOnce(Option<&WriteTransaction>) -> (bool, Completion) + Send>;

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
    pub fn start(shared: Arc<Shared>, fsync: bool) -> std::io::Result<Writer> {
        let (operations, received) = mpsc::channel::<Operation>();
        let handle = std::thread::Builder::new()
            .name("hooklane-store".into())
            .spawn(move || commit_batches(&shared, &received, fsync))?;
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
            let result = txn.map(write);
            // A quota refusal comes before its write changes anything, so
            // the rest of the batch may still commit.
            let ok = matches!(result, Some(Ok(_) | Err(StoreError::QuotaExceeded(_))));
            let completion: Completion = Box::new(move |committed| {
                let answer = match result {
                    // A write's own error wins over the commit's.
                    Some(result) => result.and_then(|value| committed.map(|()| value)),
                    None => committed.and_then(|()| {
                        Err(StoreError::Unavailable("the write was not run".into()))
                    }),
                };
                let _ = reply.send(answer);
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

fn commit_batches(shared: &Shared, received: &mpsc::Receiver<Operation>, fsync: bool) {
    let mut recovery = FIRST_RECOVERY;
    loop {
        // While broken, wake up to reopen even when no write comes.
        let first = if shared.is_broken() {
            match received.recv_timeout(recovery) {
                Ok(operation) => Some(operation),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match received.recv() {
                Ok(operation) => Some(operation),
                Err(_) => return,
            }
        };
        if shared.is_broken() {
            match shared.reopen() {
                Ok(()) => {
                    shared.set_broken(None);
                    recovery = FIRST_RECOVERY;
                    tracing::info!("Store recovered: writes go through again");
                }
                Err(reason) => {
                    shared.set_broken(Some(reason));
                    recovery = (recovery * 2).min(MAX_RECOVERY);
                }
            }
        }
        let Some(first) = first else { continue };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match received.try_recv() {
                Ok(operation) => batch.push(operation),
                Err(_) => break,
            }
        }
        let failed = match shared.writable().and_then(|()| shared.database()) {
            Ok(db) => commit(&db, batch, fsync),
            Err(unavailable) => {
                refuse(batch, &unavailable);
                None
            }
        };
        if let Some(reason) = failed {
            tracing::error!(%reason, "The store cannot write: refusing writes until it is reopened");
            shared.set_broken(Some(reason));
        }
    }
}

/// Tell every caller in `batch` that nothing was stored.
fn refuse(batch: Vec<Operation>, why: &StoreError) {
    for operation in batch {
        let (_, completion) = (operation.apply)(None);
        completion(Err(why.clone()));
    }
}

/// Commit `batch` in one transaction; the storage failure, if the store
/// itself failed (a write's own refusal is its caller's business).
fn commit(db: &Database, batch: Vec<Operation>, fsync: bool) -> Option<String> {
    let started = Instant::now();
    let writes = batch.len();
    let mut txn = match db.begin_write() {
        Ok(txn) => txn,
        Err(error) => {
            let reason = format!("cannot begin a write: {error}");
            refuse(batch, &StoreError::Unavailable(reason.clone()));
            return Some(reason);
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
        let (ok, completion) = (operation.apply)(Some(&txn));
        all_ok &= ok;
        completions.push(completion);
    }
    // One failed write may have left partial changes: commit nothing.
    let (committed, failure) = if all_ok {
        match txn.commit() {
            Ok(()) => (Ok(()), None),
            Err(e) => {
                let reason = format!("commit failed: {e}");
                (Err(StoreError::Unavailable(reason.clone())), Some(reason))
            }
        }
    } else {
        let _ = txn.abort();
        let refused = "a write in the same commit failed; nothing was stored";
        (Err(StoreError::Backend(refused.into())), None)
    };
    if committed.is_ok() {
        telemetry::store_commit(started.elapsed().as_secs_f64(), writes, must_sync);
    }
    for completion in completions {
        completion(committed.clone());
    }
    failure
}
