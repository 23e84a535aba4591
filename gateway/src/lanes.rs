//! Lanes: execution capacity per success factor.
//!
//! Today each lane is a bounded pool of concurrent runs (a semaphore), and
//! background work is a tokio task holding a permit. The lane scheduler
//! (reserved speed capacity on its own threads, bounded queues, admission and
//! backpressure, per-campaign fairness) replaces this in the lanes issue.
//! Must never know what a plugin is made of.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::config::Lane;

/// Concurrent runs per lane.
const LANE_CONCURRENCY: usize = 64;

/// The lanes and the background work running in them.
pub struct Lanes {
    capacity: HashMap<Lane, Arc<Semaphore>>,
    running: std::sync::Mutex<JoinSet<()>>,
}

impl Default for Lanes {
    fn default() -> Self {
        Lanes {
            capacity: Lane::ALL
                .into_iter()
                .map(|lane| (lane, Arc::new(Semaphore::new(LANE_CONCURRENCY))))
                .collect(),
            running: std::sync::Mutex::new(JoinSet::new()),
        }
    }
}

impl Lanes {
    /// Run `work` in `lane` on the caller's task, waiting for capacity.
    pub async fn run<T>(&self, lane: Lane, work: impl Future<Output = T>) -> T {
        let _permit = self.capacity[&lane]
            .acquire()
            .await
            .expect("lane semaphores are never closed");
        work.await
    }

    /// Run `work` in `lane` in the background.
    pub fn spawn(self: &Arc<Self>, lane: Lane, work: impl Future<Output = ()> + Send + 'static) {
        let lanes = self.clone();
        let mut running = self.running.lock().expect("lanes lock poisoned");
        // Reap finished tasks so the set stays as small as the live work.
        while running.try_join_next().is_some() {}
        running.spawn(async move { lanes.run(lane, work).await });
    }

    /// Wait until all background work has finished.
    pub async fn drain(&self) {
        let mut running = std::mem::take(&mut *self.running.lock().expect("lanes lock poisoned"));
        while running.join_next().await.is_some() {}
    }
}
