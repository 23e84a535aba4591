//! Lanes: execution capacity per success factor, and the scheduler that
//! keeps a slow campaign from delaying a fast one.
//!
//! Each lane owns a tokio runtime on OS threads of its own, at the lane's
//! scheduling niceness: on a 2-core machine a CPU-bound plugin delays
//! everything on its thread, so lanes must not share threads, and the
//! kernel — not a cooperative queue — decides that the speed lane's threads
//! run first. Inside a lane, at most `max_in_flight` runs go at once, each
//! campaign is capped at its own concurrency (the caller's to say: the
//! lane's guard cuts it, and moves the runs to the lane below's threads,
//! for a campaign too heavy for the lane, see [`crate::guard`]), and
//! campaigns with work waiting
//! take turns (round robin), so one campaign cannot take a whole lane. At
//! most `max_in_flight` events wait in memory (sync callers, and stored
//! events pulled ahead from the backlog on disk); beyond that a sync caller
//! is refused at once, so overload is answered early instead of by a
//! growing queue.
//!
//! Must never know what a plugin is made of: work is an opaque future.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::config::{Lane, LaneConfig, LanesConfig};

/// A unit of work run in a lane.
pub type Work = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The lane had no room for the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the {lane} lane is full ({queued} events waiting)")]
pub struct LaneFull {
    pub lane: Lane,
    pub queued: usize,
}

/// The three lanes.
pub struct Lanes {
    speed: LaneScheduler,
    segmentation: LaneScheduler,
    care: LaneScheduler,
}

impl Lanes {
    /// Start the segmentation and care lanes' threads. The speed lane runs
    /// on `speed_threads`, the ingress runtime's: no thread hop between
    /// accepting a request and running its plugin, and both get the highest
    /// priority. (Size that runtime with `lanes.speed.workers`.)
    pub fn start(config: &LanesConfig, speed_threads: Handle) -> std::io::Result<Lanes> {
        Ok(Lanes {
            speed: LaneScheduler::new(
                Lane::Speed,
                &config.speed,
                config.speed.max_in_flight,
                Threads::Shared(speed_threads),
            )?,
            segmentation: LaneScheduler::start(
                Lane::Segmentation,
                &config.segmentation,
                config.segmentation.max_in_flight,
            )?,
            care: LaneScheduler::start(Lane::Care, &config.care, config.care.max_in_flight)?,
        })
    }

    fn get(&self, lane: Lane) -> &LaneScheduler {
        match lane {
            Lane::Speed => &self.speed,
            Lane::Segmentation => &self.segmentation,
            Lane::Care => &self.care,
        }
    }

    /// A run slot for `campaign` taken at once, for the caller to run the
    /// event on its own task — if `lane` runs on the caller's (ingress)
    /// threads and has a slot free. This spares the speed lane a task spawn
    /// and a hand-over per request; other lanes always run on their threads.
    pub fn try_run_here(
        &self,
        lane: Lane,
        campaign: &Arc<str>,
        campaign_cap: usize,
    ) -> Option<RunSlot> {
        let scheduler = self.get(lane);
        if scheduler.runtime.is_some() {
            return None;
        }
        let shared = &scheduler.shared;
        let mut state = shared.lock();
        if !state.starts_now(campaign, campaign_cap) {
            return None;
        }
        let queue = state.campaigns.entry(campaign.clone()).or_default();
        queue.cap = campaign_cap;
        queue.running += 1;
        state.running += 1;
        shared.outstanding.send_modify(|n| *n += 1);
        Some(RunSlot {
            _slot: Slot {
                lane: shared.clone(),
                campaign: campaign.clone(),
            },
        })
    }

    /// Queue `work` for `campaign` in `lane`, or refuse it at once if the
    /// lane is full. `campaign_cap` bounds the campaign's concurrent runs.
    pub fn submit(
        &self,
        lane: Lane,
        campaign: &Arc<str>,
        campaign_cap: usize,
        work: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), LaneFull> {
        self.get(lane)
            .submit(campaign, campaign_cap, Box::pin(work), Admission::Checked)
    }

    /// Queue `work` that was already admitted and persisted (a stored event,
    /// a retry, a restart's backlog): it must run, so the queue bound does
    /// not apply.
    pub fn submit_admitted(
        &self,
        lane: Lane,
        campaign: &Arc<str>,
        campaign_cap: usize,
        work: impl Future<Output = ()> + Send + 'static,
    ) {
        let admitted =
            self.get(lane)
                .submit(campaign, campaign_cap, Box::pin(work), Admission::Admitted);
        debug_assert!(admitted.is_ok(), "admitted work is never refused");
    }

    /// The threads `lane`'s events run on.
    pub fn threads(&self, lane: Lane) -> &Handle {
        &self.get(lane).shared.threads
    }

    /// Whether `lane` could take one more event of `campaign` right now.
    pub fn has_room(&self, lane: Lane, campaign: &str, campaign_cap: usize) -> bool {
        self.get(lane).shared.lock().admits(campaign, campaign_cap)
    }

    /// Events of `campaign` running or waiting in `lane`.
    pub fn in_window(&self, lane: Lane, campaign: &str) -> usize {
        let state = self.get(lane).shared.lock();
        state
            .campaigns
            .get(campaign)
            .map_or(0, |queue| queue.running + queue.waiting.len())
    }

    /// Changes whenever `lane` starts or finishes an event: a puller waiting
    /// for room watches it.
    pub fn watch(&self, lane: Lane) -> watch::Receiver<usize> {
        self.get(lane).shared.outstanding.subscribe()
    }

    /// Events waiting and running in `lane`.
    pub fn depth(&self, lane: Lane) -> LaneDepth {
        self.get(lane).depth()
    }

    /// For shutdown: drop the work still queued — stored events resume after
    /// a restart, and a sync caller still waiting gets an error — and wait
    /// for the runs in progress to finish.
    pub async fn stop(&self) {
        for lane in Lane::ALL {
            self.get(lane).stop().await;
        }
    }
}

/// How much work a lane holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LaneDepth {
    pub queued: usize,
    pub running: usize,
}

struct LaneScheduler {
    lane: Lane,
    shared: Arc<LaneShared>,
    /// The lane's own threads, if it has them; `shared.threads` is a handle
    /// to whichever threads it runs on.
    runtime: Option<tokio::runtime::Runtime>,
}

/// Whether the queue bound applies to a submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    Checked,
    Admitted,
}

/// Where a lane's work runs.
enum Threads {
    Own(tokio::runtime::Runtime),
    Shared(Handle),
}

/// What runs in the lane need to give their slot back.
struct LaneShared {
    state: Mutex<LaneState>,
    /// Queued plus running events, for `drain`.
    outstanding: watch::Sender<usize>,
    threads: Handle,
}

/// The scheduler's bookkeeping. Critical sections are a few pointer moves,
/// never an await, so a plain mutex is the cheap choice here.
struct LaneState {
    max_in_flight: usize,
    queue_bound: usize,
    queued: usize,
    running: usize,
    campaigns: HashMap<Arc<str>, CampaignQueue>,
    /// Campaigns that have work waiting and room under their cap, in turn.
    turns: VecDeque<Arc<str>>,
}

#[derive(Default)]
struct CampaignQueue {
    waiting: VecDeque<Work>,
    running: usize,
    cap: usize,
    has_turn: bool,
}

impl CampaignQueue {
    fn wants_turn(&self) -> bool {
        !self.has_turn && !self.waiting.is_empty() && self.running < self.cap
    }
}

impl LaneScheduler {
    /// A lane on OS threads of its own, at the lane's niceness.
    /// As many events may wait in memory as `queue_bound`: the lanes use
    /// `max_in_flight`, as the backlog waits on disk.
    fn start(lane: Lane, config: &LaneConfig, queue_bound: usize) -> std::io::Result<Self> {
        let nice = config.nice;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.workers)
            .thread_name(format!("lane-{lane}"))
            .on_thread_start(move || lower_priority(lane, nice))
            .enable_all()
            .build()?;
        Self::new(lane, config, queue_bound, Threads::Own(runtime))
    }

    fn new(
        lane: Lane,
        config: &LaneConfig,
        queue_bound: usize,
        threads: Threads,
    ) -> std::io::Result<Self> {
        let (handle, runtime) = match threads {
            Threads::Own(runtime) => (runtime.handle().clone(), Some(runtime)),
            Threads::Shared(handle) => (handle, None),
        };
        Ok(LaneScheduler {
            lane,
            shared: Arc::new(LaneShared {
                state: Mutex::new(LaneState {
                    max_in_flight: config.max_in_flight,
                    queue_bound,
                    queued: 0,
                    running: 0,
                    campaigns: HashMap::new(),
                    turns: VecDeque::new(),
                }),
                outstanding: watch::channel(0).0,
                threads: handle,
            }),
            runtime,
        })
    }

    fn depth(&self) -> LaneDepth {
        let state = self.shared.lock();
        LaneDepth {
            queued: state.queued,
            running: state.running,
        }
    }

    fn submit(
        &self,
        campaign: &Arc<str>,
        cap: usize,
        work: Work,
        admission: Admission,
    ) -> Result<(), LaneFull> {
        let ready = {
            let mut state = self.shared.lock();
            if admission == Admission::Checked && !state.admits(campaign, cap) {
                return Err(LaneFull {
                    lane: self.lane,
                    queued: state.queued,
                });
            }
            let queue = state.campaigns.entry(campaign.clone()).or_default();
            queue.cap = cap;
            queue.waiting.push_back(work);
            let wants_turn = queue.wants_turn();
            if wants_turn {
                queue.has_turn = true;
                state.turns.push_back(campaign.clone());
            }
            state.queued += 1;
            self.shared.outstanding.send_modify(|n| *n += 1);
            state.take_ready()
        };
        self.shared.start(ready);
        Ok(())
    }

    async fn stop(&self) {
        let dropped: Vec<Work> = {
            let mut state = self.shared.lock();
            state.turns.clear();
            let dropped: Vec<Work> = state
                .campaigns
                .values_mut()
                .flat_map(|queue| {
                    queue.has_turn = false;
                    queue.waiting.drain(..)
                })
                .collect();
            state.queued -= dropped.len();
            dropped
        };
        self.shared.outstanding.send_modify(|n| *n -= dropped.len());
        drop(dropped);
        let mut outstanding = self.shared.outstanding.subscribe();
        let _ = outstanding.wait_for(|n| *n == 0).await;
    }
}

impl Drop for LaneScheduler {
    fn drop(&mut self) {
        // Dropping a runtime blocks; the gateway may be dropped from async
        // code, where that is not allowed.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl LaneState {
    /// Room means the event can start at once (a free run slot and the
    /// campaign under its cap), or space in the queue.
    fn admits(&self, campaign: &str, cap: usize) -> bool {
        self.starts_now(campaign, cap) || self.queued < self.queue_bound
    }

    /// Whether an event of `campaign` would take a run slot at once: one is
    /// free and the campaign is under its cap.
    fn starts_now(&self, campaign: &str, cap: usize) -> bool {
        let campaign_running = self.campaigns.get(campaign).map_or(0, |q| q.running);
        self.running < self.max_in_flight && campaign_running < cap
    }

    /// Move work from the queues to run slots, one campaign turn at a time.
    fn take_ready(&mut self) -> Vec<(Arc<str>, Work)> {
        let mut ready = Vec::new();
        while self.running < self.max_in_flight {
            let Some(campaign) = self.turns.pop_front() else {
                break;
            };
            let queue = self
                .campaigns
                .get_mut(&campaign)
                .expect("a campaign with a turn has a queue");
            queue.has_turn = false;
            let Some(work) = queue.waiting.pop_front() else {
                continue;
            };
            queue.running += 1;
            if queue.wants_turn() {
                queue.has_turn = true;
                self.turns.push_back(campaign.clone());
            }
            self.queued -= 1;
            self.running += 1;
            ready.push((campaign, work));
        }
        ready
    }

    fn finished(&mut self, campaign: &Arc<str>) -> Vec<(Arc<str>, Work)> {
        self.running -= 1;
        if let Some(queue) = self.campaigns.get_mut(campaign) {
            queue.running -= 1;
            if queue.wants_turn() {
                queue.has_turn = true;
                self.turns.push_back(campaign.clone());
            } else if queue.running == 0 && queue.waiting.is_empty() {
                self.campaigns.remove(campaign);
            }
        }
        self.take_ready()
    }
}

impl LaneShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, LaneState> {
        self.state.lock().expect("lane lock poisoned")
    }

    /// Run each ready event on the lane's threads in its slot.
    fn start(self: &Arc<Self>, ready: Vec<(Arc<str>, Work)>) {
        for (campaign, work) in ready {
            let slot = Slot {
                lane: self.clone(),
                campaign,
            };
            self.threads.spawn(async move {
                let _slot = slot;
                work.await;
            });
        }
    }
}

/// A run slot held by a caller running the event itself; dropping it gives
/// the slot back.
pub struct RunSlot {
    _slot: Slot,
}

/// A run slot, given back when the run ends — even by a panic — which
/// starts whatever waited for it.
struct Slot {
    lane: Arc<LaneShared>,
    campaign: Arc<str>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let ready = self.lane.lock().finished(&self.campaign);
        self.lane.outstanding.send_modify(|n| *n -= 1);
        self.lane.start(ready);
    }
}

/// Lower the calling thread's scheduling priority (Linux niceness is per
/// thread). Lowering never needs privileges; failure only costs isolation,
/// so it is logged, not fatal.
/// `work` names the thread's work in the warning.
pub(crate) fn lower_priority(work: impl std::fmt::Display, nice: i32) {
    if nice == 0 {
        return;
    }
    let thread = rustix::thread::gettid();
    if let Err(error) = rustix::process::setpriority_process(Some(thread), nice) {
        tracing::warn!(%work, nice, %error, "Could not lower a thread's priority");
    }
}

/// The time slice the threads of ingress and the speed lane ask for.
const SPEED_SLICE: std::time::Duration = std::time::Duration::from_micros(100);

/// Ask the kernel for short time slices on the calling thread (EEVDF,
/// Linux 6.12 and later): a waking thread with a shorter slice than the
/// running one preempts it at once, so a speed request does not wait out
/// the slice of a niced thread refusing a flood (milliseconds). For the
/// threads of ingress and the speed lane, at niceness 0. Older kernels
/// ignore the slice; failure only costs latency, so it is logged.
pub fn ask_for_short_slices() {
    let attr = libc::sched_attr {
        size: std::mem::size_of::<libc::sched_attr>() as u32,
        sched_policy: libc::SCHED_OTHER as u32,
        sched_flags: 0,
        sched_nice: 0,
        sched_priority: 0,
        sched_runtime: SPEED_SLICE.as_nanos() as u64,
        sched_deadline: 0,
        sched_period: 0,
    };
    // SAFETY: `attr` is a fully initialised `sched_attr` whose `size` is
    // its own; pid 0 is the calling thread; the kernel only reads `attr`.
    #[allow(unsafe_code)]
    let result = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            0,
            &attr as *const libc::sched_attr,
            0,
        )
    };
    if result != 0 {
        let error = std::io::Error::last_os_error();
        tracing::warn!(%error, "Could not ask for short time slices on a speed lane thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::{mpsc, oneshot};

    fn lane(max_in_flight: usize, queue: usize) -> LaneScheduler {
        let mut config = LanesConfig::default().segmentation;
        config.max_in_flight = max_in_flight;
        config.nice = 0;
        LaneScheduler::start(Lane::Segmentation, &config, queue).unwrap()
    }

    /// Work that reports when it starts and finishes when released.
    fn gated(
        started: &mpsc::UnboundedSender<&'static str>,
        name: &'static str,
    ) -> (Work, oneshot::Sender<()>) {
        let (release, gate) = oneshot::channel();
        let started = started.clone();
        let work = Box::pin(async move {
            let _ = started.send(name);
            let _ = gate.await;
        });
        (work, release)
    }

    #[tokio::test]
    async fn a_full_lane_refuses_and_recovers() {
        let lane = lane(1, 1);
        let (started, mut starts) = mpsc::unbounded_channel();
        let a: Arc<str> = "a".into();
        let (first, release_first) = gated(&started, "first");
        let (second, release_second) = gated(&started, "second");
        lane.submit(&a, 10, first, Admission::Checked).unwrap();
        lane.submit(&a, 10, second, Admission::Checked).unwrap();
        let (third, _) = gated(&started, "third");
        assert_eq!(
            lane.submit(&a, 10, third, Admission::Checked),
            Err(LaneFull {
                lane: Lane::Segmentation,
                queued: 1
            })
        );
        assert_eq!(starts.recv().await, Some("first"));
        release_first.send(()).unwrap();
        assert_eq!(starts.recv().await, Some("second"));
        assert!(lane.shared.lock().admits("a", 10));
        release_second.send(()).unwrap();
        lane.stop().await;
        assert_eq!(
            lane.depth(),
            LaneDepth {
                queued: 0,
                running: 0
            }
        );
    }

    #[tokio::test]
    async fn a_capped_campaign_queues_within_the_bound() {
        let lane = lane(8, 1);
        let (started, _starts) = mpsc::unbounded_channel();
        let a: Arc<str> = "a".into();
        let mut releases = vec![];
        // One runs (cap 1), one waits; the free run slots are no room for a.
        for _ in 0..2 {
            let (work, release) = gated(&started, "a");
            lane.submit(&a, 1, work, Admission::Checked).unwrap();
            releases.push(release);
        }
        let (work, _) = gated(&started, "a");
        assert!(lane.submit(&a, 1, work, Admission::Checked).is_err());
        assert_eq!(
            lane.depth(),
            LaneDepth {
                queued: 1,
                running: 1
            }
        );
        // Another campaign can still start in a free slot.
        let (work, release) = gated(&started, "b");
        lane.submit(&"b".into(), 1, work, Admission::Checked)
            .unwrap();
        releases.push(release);
        for release in releases {
            let _ = release.send(());
        }
        lane.stop().await;
    }

    #[tokio::test]
    async fn a_campaign_at_its_cap_does_not_block_another() {
        let lane = lane(4, 100);
        let (started, mut starts) = mpsc::unbounded_channel();
        let (greedy, polite): (Arc<str>, Arc<str>) = ("greedy".into(), "polite".into());
        let mut releases = Vec::new();
        for _ in 0..5 {
            let (work, release) = gated(&started, "greedy");
            lane.submit(&greedy, 2, work, Admission::Checked).unwrap();
            releases.push(release);
        }
        let (work, release_polite) = gated(&started, "polite");
        lane.submit(&polite, 2, work, Admission::Checked).unwrap();
        // greedy is capped at 2 runs, so polite starts despite queuing last.
        let mut first_three = vec![];
        for _ in 0..3 {
            first_three.push(starts.recv().await.unwrap());
        }
        first_three.sort();
        assert_eq!(first_three, ["greedy", "greedy", "polite"]);
        assert_eq!(
            lane.depth(),
            LaneDepth {
                queued: 3,
                running: 3
            }
        );
        release_polite.send(()).unwrap();
        for release in releases {
            let _ = release.send(());
        }
        lane.stop().await;
    }

    #[tokio::test]
    async fn campaigns_take_turns() {
        let lane = lane(1, 100);
        let (started, mut starts) = mpsc::unbounded_channel();
        let (blocker, release_blocker) = gated(&started, "blocker");
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        lane.submit(&c, 10, blocker, Admission::Checked).unwrap();
        assert_eq!(starts.recv().await, Some("blocker"));
        let mut releases: HashMap<&str, VecDeque<oneshot::Sender<()>>> = HashMap::new();
        for name in ["a", "a", "a", "b"] {
            let (work, release) = gated(&started, name);
            lane.submit(
                if name == "a" { &a } else { &b },
                10,
                work,
                Admission::Checked,
            )
            .unwrap();
            releases.entry(name).or_default().push_back(release);
        }
        release_blocker.send(()).unwrap();
        let mut order = vec![];
        for _ in 0..4 {
            let name = starts.recv().await.unwrap();
            order.push(name);
            let _ = releases
                .get_mut(name)
                .unwrap()
                .pop_front()
                .unwrap()
                .send(());
        }
        // b's one event does not wait behind all of a's.
        assert_eq!(order, ["a", "b", "a", "a"]);
        lane.stop().await;
    }
}
