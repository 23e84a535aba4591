//! Dispatch: stored events reach their lanes by being pulled. Each lane has
//! one pull loop that asks the queue for due events when the lane has room
//! — at most `max_in_flight` running and as many waiting in memory, however
//! large the backlog on disk — taking the lane's campaigns in turns and
//! skipping those at their concurrency cap, so one campaign's backlog never
//! fills the window. A restart is just starting the loops. Must never run
//! plugins itself: it hands events to [`Gateway::submit_stored`].

use std::sync::Arc;
use std::time::Duration;

use crate::config::Lane;
use crate::event::now_ms;
use crate::gateway::{Gateway, RunError, LEASE_MARGIN};
use crate::store::StoreError;

/// The longest a pull loop sleeps: leases that ran out are noticed within it.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Most events the orphan sweep buries per pull.
const ORPHAN_BATCH: usize = 256;

/// What one pull loop needs to know to wake up.
#[derive(Default)]
pub struct Wakers {
    lanes: [tokio::sync::Notify; 3],
}

impl Wakers {
    fn get(&self, lane: Lane) -> &tokio::sync::Notify {
        &self.lanes[lane as usize]
    }
}

impl Gateway {
    /// Start pulling: a loop per lane, and the delivery workers once the
    /// destinations disabled before a restart are disabled again.
    pub async fn start_pulling(self: &Arc<Self>) -> Result<(), StoreError> {
        self.deliveries().restore_disabled().await?;
        self.deliveries().start_pulling();
        for lane in Lane::ALL {
            tokio::spawn(self.clone().pull_events(lane));
        }
        Ok(())
    }

    /// Tell `campaign`'s lane that it has events to pull.
    pub fn wake(&self, campaign: &str) {
        if let Some(loaded) = self.campaign(campaign) {
            self.wakers().get(loaded.config.lane).notify_one();
        }
    }

    async fn pull_events(self: Arc<Self>, lane: Lane) {
        let in_flight = self.lane_config(lane).max_in_flight;
        let window = 2 * in_flight;
        let lease = Duration::from_millis(self.lane_config(lane).deadline_ms) + LEASE_MARGIN;
        let mut room_changed = self.lanes().watch(lane);
        let mut turn = 0;
        loop {
            room_changed.borrow_and_update();
            let depth = self.lanes().depth(lane);
            let room = window.saturating_sub(depth.queued + depth.running);
            let mut wait = IDLE_POLL;
            // Whether to wake up when the lane's room changes: when more
            // may be due than the lane could take.
            let mut held_back = room == 0;
            if room > 0 {
                let (campaigns, capped) = self.pullable(lane, &mut turn);
                held_back = capped;
                if !campaigns.is_empty() {
                    match self.queue().next_events(campaigns, room, lease).await {
                        Ok(pulled) => {
                            if let Some(due_ms) = pulled.next_due_ms {
                                let until = due_ms.saturating_sub(now_ms());
                                wait = wait.min(Duration::from_millis(until));
                            }
                            held_back |= pulled.items.len() == room;
                            for event in pulled.items {
                                self.submit_stored(event);
                            }
                        }
                        Err(error) => tracing::warn!(%lane, %error, "Could not pull stored events"),
                    }
                }
            }
            tokio::select! {
                () = self.wakers().get(lane).notified() => {}
                changed = room_changed.changed(), if held_back => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// The campaigns of `lane` with a backlog and room under their cap, in
    /// the order of this turn; and whether any was left out for its cap.
    fn pullable(&self, lane: Lane, turn: &mut usize) -> (Vec<Arc<str>>, bool) {
        let mut capped = false;
        let mut campaigns: Vec<Arc<str>> = self
            .campaigns()
            .into_iter()
            .filter(|c| c.config.lane == lane && self.queue().backlog(&c.name) > 0)
            .filter(|c| {
                let room = self.lanes().in_window(lane, &c.name) < c.limits.max_concurrency;
                capped |= !room;
                room
            })
            .map(|c| c.name.clone())
            .collect();
        if !campaigns.is_empty() {
            let first = *turn % campaigns.len();
            campaigns.rotate_left(first);
            *turn += 1;
        }
        (campaigns, capped)
    }

    /// Dead-letter the stored events of campaigns the config no longer
    /// has, and the deliveries to destinations it no longer has, as they
    /// fall due: nothing would ever pull them, and an operator can replay
    /// them once the campaign is back.
    pub async fn bury_orphans(self: &Arc<Self>) {
        let (campaigns, destinations) = match self.queue().owners().await {
            Ok(owners) => owners,
            Err(error) => return tracing::warn!(%error, "Could not look for orphaned events"),
        };
        for campaign in campaigns {
            if self.is_configured(&campaign) {
                continue;
            }
            let lease = Duration::from_secs(60);
            loop {
                let owner = vec![Arc::from(campaign.as_str())];
                let pulled = self.queue().next_events(owner, ORPHAN_BATCH, lease).await;
                let events = match pulled {
                    Ok(pulled) if !pulled.items.is_empty() => pulled.items,
                    Ok(_) => break,
                    Err(error) => {
                        tracing::warn!(%campaign, %error, "Could not pull orphaned events");
                        break;
                    }
                };
                for event in events {
                    let error = RunError::UnknownCampaign(campaign.clone());
                    self.bury_event(event, &error).await;
                }
            }
        }
        self.deliveries().bury_orphans(destinations).await;
    }
}
