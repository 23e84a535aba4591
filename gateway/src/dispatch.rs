//! Dispatch: the path of an event through the lanes. A synchronous
//! campaign's event runs at once on its lane and answers its caller
//! ([`Gateway::run_sync`]); an async one is stored ([`Gateway::accept`]) and
//! reaches its lane by being pulled. Each lane has one pull loop that asks
//! the queue for due events when the lane has room — at most
//! `max_in_flight` running and as many waiting in memory, however large the
//! backlog on disk — taking the lane's campaigns in turns and skipping
//! those at their concurrency cap, so one campaign's backlog never fills
//! the window. A restart is just starting the loops. A run's actions become
//! one commit ([`actions::plan`]) that settles its lease; a failed run is
//! retried with the lane's backoff or buried.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::actions::{self, Reply};
use crate::campaigns::LoadedCampaign;
use crate::config::Lane;
use crate::event::{now_ms, Event};
use crate::gateway::Gateway;
use crate::guard::Change;
use crate::lanes::LaneFull;
use crate::recent::{self, Actions, Ended};
use crate::retry::Backoff;
use crate::runtime::{Output, PluginFailure};
use crate::store::{
    persist, Attempt, Committed, DeadItem, Dedup, Enqueued, NewWebhook, Outcome, QueuedEvent,
    StoreError, GIVEN_UP_LEASE,
};
use crate::telemetry::sampled;

/// Why handling an event failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("campaign `{0}` is not loaded")]
    UnknownCampaign(String),
    #[error("campaign `{campaign}` cannot run: {reason}")]
    CampaignUnavailable { campaign: String, reason: String },
    #[error(transparent)]
    Plugin(#[from] PluginFailure),
    /// Committing what the run asked for failed.
    #[error("committing the run's effects failed: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    LaneFull(#[from] LaneFull),
    #[error("the {0} lane could not start the event within its deadline")]
    QueuedTooLong(Lane),
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

impl RunError {
    /// Stable, low-cardinality name of the cause, for logs and bodies.
    pub fn cause(&self) -> &'static str {
        match self {
            RunError::Plugin(failure) => failure.cause(),
            RunError::Store(_) => "store",
            RunError::UnknownCampaign(_) => "unknown_campaign",
            RunError::CampaignUnavailable { .. } => "campaign_unavailable",
            RunError::LaneFull(_) | RunError::QueuedTooLong(_) => "overloaded",
            RunError::ShuttingDown => "shutting_down",
        }
    }

    /// Whether trying again may succeed: deterministic failures (fuel,
    /// memory, traps, panics, bad output, refused input) would only repeat.
    pub fn is_retryable(&self) -> bool {
        match self {
            RunError::Plugin(failure) => failure.is_retryable(),
            RunError::UnknownCampaign(_) => false,
            RunError::Store(_)
            | RunError::CampaignUnavailable { .. }
            | RunError::LaneFull(_)
            | RunError::QueuedTooLong(_)
            | RunError::ShuttingDown => true,
        }
    }

    /// This failure as one failed try, for the item's history.
    fn attempt(&self) -> Attempt {
        Attempt {
            at_ms: now_ms(),
            cause: self.cause().into(),
            detail: self.to_string(),
        }
    }
}

/// What became of an accepted webhook.
#[derive(Debug, Clone)]
pub enum Accepted {
    /// Stored durably; its events will run.
    Stored,
    /// A copy seen within the dedup window; this is the first copy's id.
    Duplicate { event_id: String },
}

/// The longest a pull loop sleeps: leases that ran out are noticed within it.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How long a pull loop waits after a failed pull. A store that fails one
/// (a NATS leader election, a lost connection) fails the next too, and
/// each accepted event's wake would otherwise retry at once.
pub(crate) const PULL_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Most events the orphan sweep buries per pull.
const ORPHAN_BATCH: usize = 256;

/// What one pull loop needs to know to wake up.
#[derive(Default)]
pub struct Wakers {
    lanes: [tokio::sync::Notify; 3],
    /// Per lane: whether a wake is on its way that the pull loop has not
    /// yet answered with a pull. Wakes of a burst of events collapse into
    /// one (waking a task on another runtime costs a syscall), and none is
    /// lost: the loop clears the flag before it pulls.
    pending: [AtomicBool; 3],
}

impl Wakers {
    fn wake(&self, lane: Lane) {
        if !self.pending[lane as usize].swap(true, Ordering::AcqRel) {
            self.lanes[lane as usize].notify_one();
        }
    }

    /// Called before each pull: wakes from now on are for events it may
    /// not see.
    fn pulling(&self, lane: Lane) {
        self.pending[lane as usize].store(false, Ordering::Release);
    }

    async fn woken(&self, lane: Lane) {
        self.lanes[lane as usize].notified().await;
    }
}

/// How long a segmentation or care pull loop lets stored events gather
/// after a wake before it pulls: while it waits, further wakes cost
/// nothing, so a burst takes one wake and one pull instead of one per
/// event. The speed lane pulls at once.
const GATHER: Duration = Duration::from_millis(1);
/// How long a stored event of an unavailable campaign that was pulled waits
/// before it is pulled again (unavailable campaigns are not pulled).
const UNAVAILABLE_RECHECK: Duration = Duration::from_secs(1);
/// How long a running event stays leased beyond its deadline: a lease
/// that runs out means its worker died or hung, and the event runs again.
const LEASE_MARGIN: Duration = Duration::from_secs(60);

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
        if let Some(loaded) = self.campaigns().get(campaign) {
            self.wakers.wake(loaded.config.lane);
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
            self.wakers.pulling(lane);
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
                        Err(error) => {
                            tracing::warn!(%lane, %error, "Could not pull stored events");
                            tokio::time::sleep(PULL_ERROR_PAUSE).await;
                            continue;
                        }
                    }
                }
            }
            tokio::select! {
                () = self.wakers.woken(lane) => {
                    if lane != Lane::Speed {
                        tokio::time::sleep(GATHER).await;
                    }
                }
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
            .all()
            .into_iter()
            .filter(|c| c.config.lane == lane && self.queue().backlog(&c.name) > 0)
            .filter(|c| {
                let room = self.lanes().in_window(lane, &c.name) < c.concurrency();
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
            if self.campaigns().is_configured(&campaign) {
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
                    self.bury(event, &error).await;
                }
            }
        }
        self.deliveries().bury_orphans(destinations).await;
    }
}

impl Gateway {
    /// Run `campaign` on `event` in its lane and wait for its answer. The
    /// campaign's deadline covers the wait in the lane's queue too: an event
    /// that cannot start in time is refused rather than run late.
    pub async fn run_sync(
        self: &Arc<Self>,
        campaign: &str,
        event: &Event,
    ) -> Result<Option<Reply>, RunError> {
        let loaded = self.campaigns().runnable(campaign)?;
        let metrics = &loaded.plugin.sandbox().metrics;
        let deadline = Duration::from_millis(loaded.limits.deadline_ms);
        let lane = loaded.config.lane;
        let cap = loaded.concurrency();
        if let Some(_slot) = self.lanes().try_run_here(lane, &loaded.name, cap) {
            metrics.waited(0.0);
            return self.run(&loaded, event, deadline, None).await;
        }
        let (answer, answered) = oneshot::channel();
        let queued_at = Instant::now();
        let (gateway, running, event) = (self.clone(), loaded.clone(), event.clone());
        let submitted = self.lanes().submit(lane, &loaded.name, cap, async move {
            if answer.is_closed() {
                return; // The caller went away while the event was queued.
            }
            let metrics = &running.plugin.sandbox().metrics;
            let waited = queued_at.elapsed();
            metrics.waited(waited.as_secs_f64());
            let result = match deadline.checked_sub(waited) {
                Some(left) => gateway.run(&running, &event, left, None).await,
                None => {
                    metrics.refused();
                    Err(RunError::QueuedTooLong(running.config.lane))
                }
            };
            let _ = answer.send(result);
        });
        submitted.inspect_err(|_| metrics.refused())?;
        answered.await.map_err(|_| RunError::ShuttingDown)?
    }

    /// Store `event` durably for the async `campaigns`; their lanes pull it
    /// from there. The caller checked the lanes' backlog first.
    pub async fn accept(
        self: &Arc<Self>,
        event: Event,
        campaigns: Vec<String>,
        dedup: Option<Dedup>,
    ) -> Result<Accepted, StoreError> {
        let webhook = NewWebhook {
            event,
            campaigns,
            dedup,
            not_before_ms: 0,
        };
        match self.queue().enqueue(webhook).await? {
            Enqueued::Stored(events) => {
                for event in &events {
                    self.wake(&event.campaign);
                }
                Ok(Accepted::Stored)
            }
            Enqueued::Duplicate { event_id } => Ok(Accepted::Duplicate { event_id }),
        }
    }

    /// `campaign`'s lane, if its backlog on disk is at the lane's `queue`
    /// bound; the event is then counted as refused.
    pub fn full_lane(&self, campaign: &str) -> Option<Lane> {
        let c = self.campaigns().get(campaign)?;
        let lane = c.config.lane;
        let full = self.lane_backlog(lane) >= self.lane_config(lane).queue as u64;
        if full {
            c.plugin.sandbox().metrics.refused();
        }
        full.then_some(lane)
    }

    /// Whether the store's file is over `store.max_disk_mb`: async webhooks
    /// are refused until it shrinks.
    pub fn store_full(&self) -> bool {
        self.max_disk_bytes > 0 && self.queue().disk_bytes() > self.max_disk_bytes
    }

    /// Stored events of `lane`'s campaigns not yet done.
    pub fn lane_backlog(&self, lane: Lane) -> u64 {
        let mut backlog = 0;
        self.campaigns().for_each(|c| {
            if c.config.lane == lane {
                backlog += self.queue().backlog(&c.name);
            }
        });
        backlog
    }

    /// Have what a commit or a replay stored pulled soon.
    pub fn pull_soon(&self, committed: &Committed) {
        for delivery in &committed.deliveries {
            self.deliveries().wake(&delivery.destination);
        }
        for event in &committed.events {
            self.wake(&event.campaign);
        }
    }

    /// Hand a stored event its lane pulled to the lane. The campaign is
    /// looked up now, not when the event was stored, so a retry runs the
    /// version deployed meanwhile.
    fn submit_stored(self: &Arc<Self>, queued: QueuedEvent) {
        let gateway = self.clone();
        let loaded = match self.campaigns().runnable(&queued.campaign) {
            Ok(loaded) => loaded,
            // Kept until a deploy or rollback makes it run again.
            Err(RunError::CampaignUnavailable { .. }) => {
                return self.queue().in_progress(queued.seq, UNAVAILABLE_RECHECK);
            }
            // The campaign left the config: keep the event for an operator.
            Err(error) => {
                tokio::spawn(async move { gateway.bury(queued, &error).await });
                return;
            }
        };
        let (lane, name, cap) = (
            loaded.config.lane,
            loaded.name.clone(),
            loaded.concurrency(),
        );
        let queued_at = Instant::now();
        self.lanes().submit_admitted(lane, &name, cap, async move {
            let waited = queued_at.elapsed().as_secs_f64();
            loaded.plugin.sandbox().metrics.waited(waited);
            gateway.process(&loaded, queued).await
        });
    }

    /// Run a stored event; on failure retry it with backoff or bury it.
    async fn process(self: &Arc<Self>, loaded: &Arc<LoadedCampaign>, mut queued: QueuedEvent) {
        let deadline = Duration::from_millis(loaded.limits.deadline_ms);
        self.queue()
            .in_progress(queued.seq, deadline + LEASE_MARGIN);
        let Err(error) = self
            .run(loaded, &queued.event, deadline, Some(queued.seq))
            .await
        else {
            return;
        };
        if let RunError::Store(StoreError::Unavailable(reason)) = &error {
            // Not the event's fault and no try of it: run it again once the
            // store writes (the writer logs the store's failure itself).
            tracing::debug!(campaign = %loaded.name, event = %queued.event.id, %reason, "Run not committed: the store cannot write; running it again later");
            let later = Duration::from_millis(fastrand::u64(500..=1500));
            return self.queue().in_progress(queued.seq, later);
        }
        log_failure(loaded, &queued.event, &error);
        let backoff = Backoff::lane(self.lane_config(loaded.config.lane));
        let tries = queued.attempts.len() + 1;
        let delay = error.is_retryable().then(|| backoff.delay(tries, None));
        let Some(delay) = delay.flatten() else {
            return self.bury(queued, &error).await;
        };
        queued.attempts.push(error.attempt());
        let tries = queued.attempts.clone();
        (self.recent).ended(&loaded.name, &queued.event.id, Ended::Retrying, tries);
        crate::telemetry::retry(&loaded.name, loaded.config.lane);
        queued.not_before_ms = now_ms() + delay.as_millis() as u64;
        match persist(|| self.queue().retry_event(&queued)).await {
            Ok(()) => self.wake(&queued.campaign),
            Err(store) => {
                // Pulled again soon, with the tries stored before.
                tracing::error!(campaign = %loaded.name, event = %queued.event.id, error = %store, "Could not store a retry");
                self.queue().in_progress(queued.seq, GIVEN_UP_LEASE);
            }
        }
    }

    /// Give up on a stored event: a dead letter, logged and counted.
    async fn bury(&self, queued: QueuedEvent, error: &RunError) {
        let last = error.attempt();
        let tries = queued.attempts.iter().chain([&last]).cloned().collect();
        (self.recent).ended(&queued.campaign, &queued.event.id, Ended::Dead, tries);
        crate::retry::bury(self.queue(), DeadItem::Event(queued), last).await;
    }

    /// Run the plugin and commit what it asked for — KV changes,
    /// deliveries, emitted events and the acknowledgement of `ack` — in one
    /// durable commit, then schedule the deliveries and events. The run is
    /// kept among the campaign's recent ones, and its event for shadow runs
    /// if the campaign keeps them.
    async fn run(
        self: &Arc<Self>,
        loaded: &Arc<LoadedCampaign>,
        event: &Event,
        deadline: Duration,
        ack: Option<u64>,
    ) -> Result<Option<Reply>, RunError> {
        let ran = match loaded.guard.moved_to() {
            // Its slot stays in its own lane; the run takes the lower
            // lane's threads, which the kernel runs after this lane's. Its
            // wait for one counts against its deadline.
            Some(lane) => {
                let (moved, event, handed_over) = (loaded.clone(), event.clone(), Instant::now());
                let moved = self.lanes().threads(lane).spawn(async move {
                    let left = deadline.saturating_sub(handed_over.elapsed());
                    moved.plugin.run(&event, left).await
                });
                match moved.await {
                    Ok(ran) => ran,
                    Err(stopped) if stopped.is_cancelled() => return Err(RunError::ShuttingDown),
                    Err(panicked) => std::panic::resume_unwind(panicked.into_panic()),
                }
            }
            None => loaded.plugin.run(event, deadline).await,
        };
        if let Some(change) = loaded.guard.observe(ran.fuel_used) {
            report_guard(loaded, change);
        }
        let record = recent::Run {
            event,
            campaign: &loaded.name,
            version: &loaded.plugin.sandbox().version,
            stored: ack.is_some(),
            run_ms: ran.elapsed.as_secs_f64() * 1e3,
            fuel: ran.fuel_used,
        };
        let committed = match ran.result {
            Ok(output) => self.commit(loaded, event, output, ack).await,
            Err(failure) => Err(failure.into()),
        };
        let (answer, record) = match committed {
            Ok((reply, actions)) => (Ok(reply), record.ok(actions)),
            Err(error) => {
                let record = record.failed(error.cause(), error.to_string());
                (Err(error), record)
            }
        };
        self.recent.record(record);
        if let Some(shadow) = &loaded.config.shadow {
            self.recordings.record(&loaded.name, shadow, event);
        }
        answer
    }

    /// Check `output`, commit it with the acknowledgement of `ack`, and
    /// have what it scheduled pulled soon.
    async fn commit(
        &self,
        loaded: &LoadedCampaign,
        event: &Event,
        output: Output,
        ack: Option<u64>,
    ) -> Result<(Option<Reply>, Actions), RunError> {
        let mut outcome = Outcome {
            ack,
            kv_namespace: loaded.plugin.sandbox().kv_namespace.clone(),
            ..Outcome::default()
        };
        let reply = actions::plan(&loaded.name, &loaded.config, event, output, &mut outcome)?;
        self.admit_emits(&outcome.emitted)?;
        let planned = Actions::of(&outcome, reply.as_ref().map(|r| r.status.as_u16()));
        let committed = self
            .queue()
            .commit(outcome)
            .await
            .map_err(|error| match error {
                StoreError::QuotaExceeded(quota) => RunError::Plugin(PluginFailure::KvQuota(quota)),
                other => RunError::Store(other),
            })?;
        self.pull_soon(&committed);
        Ok((reply, planned))
    }

    /// Refuse a run's emits when they would go deeper than
    /// `max_emit_depth` (a cycle, most likely: the run fails and its event
    /// becomes a dead letter), or when a target's lane is full: emitted
    /// events count against admission like webhooks, so the run is retried
    /// later instead of growing a lane's backlog without bound.
    fn admit_emits(&self, emitted: &[NewWebhook]) -> Result<(), RunError> {
        check_emit_depth(emitted, self.max_emit_depth)?;
        for webhook in emitted {
            if let Some(lane) = webhook.campaigns.iter().find_map(|c| self.full_lane(c)) {
                let queued = self.lane_backlog(lane) as usize;
                return Err(LaneFull { lane, queued }.into());
            }
        }
        Ok(())
    }
}

/// Refuse emits more than `max_emit_depth` emits away from the webhook
/// that started their chain.
pub(crate) fn check_emit_depth(
    emitted: &[NewWebhook],
    max_emit_depth: usize,
) -> Result<(), PluginFailure> {
    for webhook in emitted {
        let depth = webhook.event.emit_depth();
        if depth > max_emit_depth {
            let target = webhook.campaigns.join(", ");
            return Err(PluginFailure::EmitTooDeep(format!(
                "its emit to `{target}` would be {depth} emits away from the webhook that started the chain, beyond max_emit_depth ({max_emit_depth}): an emit cycle?"
            )));
        }
    }
    Ok(())
}

/// Tell operators, once per change, that a campaign's lane guard throttled
/// it or let it go.
fn report_guard(loaded: &LoadedCampaign, change: Change) {
    let (campaign, lane) = (&loaded.name, loaded.config.lane);
    match change {
        Change::Throttled(throttled) => {
            crate::telemetry::throttled(campaign, lane);
            let reason = throttled.reason;
            tracing::warn!(%campaign, %lane, "Campaign throttled by its lane's guard: {reason}");
        }
        Change::Released => {
            tracing::info!(%campaign, %lane, "Campaign no longer throttled by its lane's guard: its runs' average fuel fell under half of guard_fuel")
        }
    }
}

pub fn log_failure(loaded: &LoadedCampaign, event: &Event, error: &RunError) {
    let cause = error.cause();
    // A plugin's failures repeat under a flood and are sampled; a failed
    // commit says which write failed and why (a compare-and-swap conflict,
    // or the write beside it in the same commit), so each is logged.
    let held_back = match error {
        RunError::Store(_) => 0,
        _ => match loaded.failures.admit(cause, Instant::now()) {
            Some(held_back) => held_back,
            None => return,
        },
    };
    tracing::warn!(
        campaign = %loaded.name,
        lane = %loaded.config.lane,
        version = %loaded.plugin.sandbox().version,
        event = %event.id,
        cause,
        held_back,
        "Campaign failed: {error}{}",
        sampled::held_back_note(held_back, "failed for this cause")
    );
}
