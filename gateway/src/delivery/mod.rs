//! Deliveries: carrying out plugins' `deliver` actions from the durable
//! outbox. A worker per destination pulls its due deliveries — while the
//! circuit breaker lets them go, at most [`WINDOW`] at a time, whatever the
//! backlog on disk — and each is tried once, paced by the destination's
//! rate limit, then settled: delivered, retried later on the destination's
//! schedule with full jitter (a longer `Retry-After` wins; the store keeps
//! the due time), or buried. Every try is signed per Standard Webhooks with
//! the same `webhook-id`, so a dead destination costs nothing but its
//! worker's sleep. `410 Gone` disables the
//! destination — remembered across restarts until an operator enables it
//! again; after the last try the delivery becomes a dead letter with every
//! attempt. Must never run plugins.

mod breaker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::DestinationConfig;
use crate::event::now_ms;
use crate::retry::Backoff;
use crate::store::{
    persist, Attempt, DeadItem, EventQueue, KvStore, QueuedDelivery, StoreError, GIVEN_UP_LEASE,
};
use crate::verify::sign_standard_webhooks;
use breaker::{Breaker, Permit, Transition};

/// A destination and what the gateway knows of it.
struct Destination {
    name: String,
    config: DestinationConfig,
    /// The decoded `whsec_` secret, if deliveries are signed.
    secret: Option<Vec<u8>>,
    /// Set by a `410 Gone`: nothing more is sent there.
    disabled: AtomicBool,
    breaker: Mutex<Breaker>,
    /// When the rate limit lets the next attempt go.
    next_slot: Mutex<Instant>,
    /// Wakes its pull loop: deliveries were stored for it.
    wake: tokio::sync::Notify,
    /// Its `retry_schedule_ms`.
    backoff: Backoff,
}

/// Most deliveries per destination pulled and not yet settled.
const WINDOW: usize = 64;
/// How long a delivery stays leased beyond its timeout: a lease that runs
/// out means its worker died or hung, and the delivery is tried again.
const LEASE_MARGIN: Duration = Duration::from_secs(60);
/// The longest a pull loop sleeps: leases that ran out are noticed within it.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// A destination's signing secret could not be read.
#[derive(Debug, thiserror::Error)]
#[error("destination `{destination}`: {error}")]
pub struct SecretError {
    destination: String,
    #[source]
    error: crate::verify::SecretError,
}

/// Where destinations disabled by `410 Gone` are remembered: a namespace no
/// campaign can name (campaign namespaces have no `.`).
const DISABLED_NAMESPACE: &str = "hooklane.disabled-destinations";

/// A destination as operators see it.
#[derive(Debug, serde::Serialize)]
pub struct DestinationState {
    pub name: String,
    pub url: String,
    /// Disabled by a `410 Gone` until enabled again.
    pub disabled: bool,
    /// The circuit breaker: `closed`, `open` or `half_open`.
    pub breaker: &'static str,
}

/// Why a destination could not be enabled.
#[derive(Debug, thiserror::Error)]
pub enum EnableError {
    #[error("no destination named `{0}` is configured")]
    Unknown(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The delivery worker: schedules every stored delivery until done.
pub struct Deliveries {
    queue: Arc<dyn EventQueue>,
    kv: Arc<dyn KvStore>,
    client: reqwest::Client,
    destinations: HashMap<String, Arc<Destination>>,
}

/// How one attempt ended.
enum Tried {
    Delivered,
    /// Retry unless out of tries; the destination may ask for a minimum wait.
    Failed {
        attempt: Attempt,
        retry_after: Option<Duration>,
    },
    /// `410 Gone` or a destination disabled earlier: never retry.
    Gone(Attempt),
}

impl Deliveries {
    pub fn new(
        queue: Arc<dyn EventQueue>,
        kv: Arc<dyn KvStore>,
        client: reqwest::Client,
        configs: &std::collections::BTreeMap<String, DestinationConfig>,
        base_dir: &std::path::Path,
    ) -> Result<Self, SecretError> {
        let mut destinations = HashMap::new();
        for (name, config) in configs {
            let secret = config
                .secret
                .as_ref()
                .map(|source| {
                    source.whsec(base_dir).map_err(|error| SecretError {
                        destination: name.clone(),
                        error,
                    })
                })
                .transpose()?
                .map(|secret| secret.as_bytes().to_vec());
            let destination = Destination::new(name, config.clone(), secret);
            destinations.insert(name.clone(), Arc::new(destination));
        }
        Ok(Deliveries {
            queue,
            kv,
            client,
            destinations,
        })
    }

    /// Disable again the destinations a `410 Gone` disabled before the
    /// restart. Call it before scheduling deliveries.
    pub async fn restore_disabled(&self) -> Result<(), StoreError> {
        for destination in self.destinations.values() {
            if self
                .kv
                .get(DISABLED_NAMESPACE, &destination.name)
                .await?
                .is_some()
            {
                destination.disabled.store(true, Ordering::Relaxed);
                tracing::warn!(destination = %destination.name, "Destination stays disabled: it answered 410 Gone before the restart");
            }
        }
        Ok(())
    }

    /// Every destination's state, by name.
    pub fn states(&self) -> Vec<DestinationState> {
        let mut states: Vec<DestinationState> = self
            .destinations
            .values()
            .map(|d| DestinationState {
                name: d.name.clone(),
                url: d.config.url.to_string(),
                disabled: d.disabled.load(Ordering::Relaxed),
                breaker: d.breaker.lock().expect("breaker lock").state(),
            })
            .collect();
        states.sort_by(|a, b| a.name.cmp(&b.name));
        states
    }

    /// Send to `name` again after a `410 Gone` disabled it; deliveries
    /// dead-lettered meanwhile can then be replayed.
    pub async fn enable(&self, name: &str) -> Result<(), EnableError> {
        let destination = self
            .destinations
            .get(name)
            .ok_or_else(|| EnableError::Unknown(name.into()))?;
        self.kv.delete(DISABLED_NAMESPACE, name).await?;
        destination.disabled.store(false, Ordering::Relaxed);
        tracing::info!(destination = %name, "Destination enabled");
        Ok(())
    }

    /// Start a worker per destination that pulls its due deliveries.
    pub fn start_pulling(self: &Arc<Self>) {
        for destination in self.destinations.values() {
            tokio::spawn(self.clone().pull(destination.clone()));
        }
    }

    /// Tell `destination`'s worker that it has deliveries to pull.
    pub fn wake(&self, destination: &str) {
        if let Some(destination) = self.destinations.get(destination) {
            destination.wake.notify_one();
        }
    }

    /// Pull `destination`'s due deliveries while the breaker lets them go,
    /// at most [`WINDOW`] at a time, each tried once by a task of its own
    /// and then settled: delivered, retried later (the store keeps its due
    /// time) or buried.
    async fn pull(self: Arc<Self>, destination: Arc<Destination>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(WINDOW));
        let lease = Duration::from_millis(destination.config.timeout_ms) + LEASE_MARGIN;
        loop {
            // Held back by the breaker, nothing is pulled.
            let held_back = destination.breaker.lock().expect("breaker lock").wait();
            if let Some(wait) = held_back {
                tokio::time::sleep(wait).await;
                continue;
            }
            let room = slots.available_permits();
            let (mut wait, mut full) = (IDLE_POLL, room == 0);
            if room > 0 {
                match self
                    .queue
                    .next_deliveries(&destination.name, room, lease)
                    .await
                {
                    Ok(pulled) => {
                        if let Some(due_ms) = pulled.next_due_ms {
                            let until = due_ms.saturating_sub(now_ms());
                            wait = wait.min(Duration::from_millis(until));
                        }
                        full = pulled.items.len() == room;
                        for delivery in pulled.items {
                            let slot = slots.clone().try_acquire_owned().expect("counted");
                            let (deliveries, destination) = (self.clone(), destination.clone());
                            tokio::spawn(async move {
                                deliveries.try_once(&destination, delivery).await;
                                drop(slot);
                            });
                        }
                    }
                    Err(error) => {
                        tracing::warn!(destination = %destination.name, %error, "Could not pull deliveries");
                        tokio::time::sleep(crate::dispatch::PULL_ERROR_PAUSE).await;
                        continue;
                    }
                }
            }
            tokio::select! {
                () = destination.wake.notified() => {}
                _ = slots.clone().acquire_owned(), if full => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One try of a pulled delivery, settled in the store.
    async fn try_once(&self, destination: &Destination, mut delivery: QueuedDelivery) {
        if destination.disabled.load(Ordering::Relaxed) {
            let attempt = attempt(
                "destination_disabled",
                "the destination answered 410 Gone earlier and is disabled until an operator enables it",
            );
            return self.bury(delivery, attempt).await;
        }
        destination.admit().await;
        let timeout = Duration::from_millis(destination.config.timeout_ms);
        self.queue.in_progress(delivery.seq, timeout + LEASE_MARGIN);
        match self.attempt(destination, &delivery).await {
            Tried::Delivered => {
                if let Err(error) = persist(|| self.queue.delivered(delivery.seq)).await {
                    tracing::error!(delivery = %delivery.id, %error, "Could not record a delivery; it may be sent again");
                }
                tracing::debug!(delivery = %delivery.id, destination = %destination.name, "Delivered");
            }
            Tried::Gone(attempt) => self.bury(delivery, attempt).await,
            Tried::Failed {
                attempt,
                retry_after,
            } => {
                tracing::warn!(
                    campaign = %delivery.campaign,
                    delivery = %delivery.id,
                    destination = %destination.name,
                    cause = %attempt.cause,
                    "Delivery attempt failed: {}", attempt.detail
                );
                let Some(delay) = destination
                    .backoff
                    .delay(delivery.attempts.len() + 1, retry_after)
                else {
                    return self.bury(delivery, attempt).await;
                };
                delivery.attempts.push(attempt);
                delivery.not_before_ms = now_ms() + delay.as_millis() as u64;
                match persist(|| self.queue.retry_delivery(&delivery)).await {
                    Ok(()) => destination.wake.notify_one(),
                    // Pulled again soon, with the tries stored before.
                    Err(error) => {
                        tracing::error!(delivery = %delivery.id, %error, "Could not store a delivery retry");
                        self.queue.in_progress(delivery.seq, GIVEN_UP_LEASE);
                    }
                }
            }
        }
    }

    /// Dead-letter the due deliveries to `destinations` that are no longer
    /// configured: nothing would ever send them.
    pub async fn bury_orphans(&self, destinations: Vec<String>) {
        let lease = Duration::from_secs(60);
        for destination in destinations {
            if self.destinations.contains_key(&destination) {
                continue;
            }
            loop {
                let pulled = self
                    .queue
                    .next_deliveries(&destination, WINDOW, lease)
                    .await;
                let deliveries = match pulled {
                    Ok(pulled) if !pulled.items.is_empty() => pulled.items,
                    Ok(_) => break,
                    Err(error) => {
                        tracing::warn!(%destination, %error, "Could not pull orphaned deliveries");
                        break;
                    }
                };
                for delivery in deliveries {
                    let attempt =
                        attempt("unknown_destination", "the destination is not configured");
                    self.bury(delivery, attempt).await;
                }
            }
        }
    }

    /// One try, recorded by the breaker whatever its outcome (the caller
    /// holds the breaker's permit for it).
    async fn attempt(&self, destination: &Destination, delivery: &QueuedDelivery) -> Tried {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mut request = self
            .client
            .post(destination.config.url.clone())
            .timeout(Duration::from_millis(destination.config.timeout_ms))
            .header("webhook-id", &delivery.id)
            .header("webhook-timestamp", timestamp.to_string())
            .body(delivery.body.clone());
        if let Some(secret) = &destination.secret {
            let signature = sign_standard_webhooks(secret, &delivery.id, timestamp, &delivery.body);
            request = request.header("webhook-signature", signature);
        }
        for (name, value) in &delivery.headers {
            request = request.header(name, value);
        }
        let outcome = request.send().await;
        let tried = match outcome {
            Ok(response) if response.status().is_success() => Tried::Delivered,
            Ok(response) if response.status() == reqwest::StatusCode::GONE => {
                destination.disabled.store(true, Ordering::Relaxed);
                tracing::warn!(destination = %destination.name, "Destination answered 410 Gone: disabled");
                if let Err(error) = self
                    .kv
                    .set(DISABLED_NAMESPACE, &destination.name, b"410", None)
                    .await
                {
                    tracing::error!(destination = %destination.name, %error, "Could not record the destination as disabled; it is tried again after a restart");
                }
                Tried::Gone(attempt("http_410", "the destination answered 410 Gone"))
            }
            Ok(response) => {
                let status = response.status().as_u16();
                Tried::Failed {
                    retry_after: retry_after(response.headers()),
                    attempt: attempt(
                        &format!("http_{status}"),
                        &format!("the destination answered {status}"),
                    ),
                }
            }
            Err(e) if e.is_timeout() => Tried::Failed {
                retry_after: None,
                attempt: attempt(
                    "timeout",
                    &format!("no answer within {} ms", destination.config.timeout_ms),
                ),
            },
            Err(e) => Tried::Failed {
                retry_after: None,
                // Without the URL: its query may hold a credential.
                attempt: attempt(
                    "connection",
                    &format!("cannot reach the destination: {}", e.without_url()),
                ),
            },
        };
        destination.record(matches!(tried, Tried::Delivered));
        let outcome = match &tried {
            Tried::Delivered => "delivered",
            Tried::Failed { attempt, .. } | Tried::Gone(attempt) => attempt.cause.as_str(),
        };
        crate::telemetry::delivery_attempt(&destination.name, outcome);
        tried
    }

    async fn bury(&self, delivery: QueuedDelivery, last: Attempt) {
        crate::retry::bury(&self.queue, DeadItem::Delivery(delivery), last).await;
    }
}

impl Destination {
    fn new(name: &str, config: DestinationConfig, secret: Option<Vec<u8>>) -> Self {
        let steps = config.retry_schedule_ms.iter();
        let backoff = Backoff::Schedule(steps.map(|&ms| Duration::from_millis(ms)).collect());
        Destination {
            name: name.into(),
            breaker: Mutex::new(Breaker::new(
                config.breaker_failure_ratio,
                Duration::from_millis(config.breaker_cooldown_ms),
            )),
            config,
            secret,
            disabled: AtomicBool::new(false),
            next_slot: Mutex::new(Instant::now()),
            wake: tokio::sync::Notify::new(),
            backoff,
        }
    }

    /// Reserve the next free slot of the rate limit: when this attempt may
    /// go. Every waiting delivery gets a slot of its own, so a backlog wakes
    /// one task per slot instead of all of them racing for each one.
    fn reserve_slot(&self) -> Instant {
        let mut next = self.next_slot.lock().expect("rate lock");
        let slot = (*next).max(Instant::now());
        *next = slot + Duration::from_secs_f64(1.0 / self.config.rate_per_s);
        slot
    }

    /// Wait until the breaker and the rate limit let one attempt go, and
    /// take the breaker's permit for it: the caller must send it and
    /// [`Destination::record`] the result (in half-open it is the probe
    /// everyone else waits for). The breaker is asked how long to wait
    /// before a rate-limit slot is taken, so no slot is spent on a delivery
    /// it holds back, and gives its permit once, when the slot comes.
    async fn admit(&self) {
        loop {
            let held_back = self.breaker.lock().expect("breaker lock").wait();
            if let Some(wait) = held_back {
                tokio::time::sleep(wait).await;
                continue;
            }
            tokio::time::sleep_until(self.reserve_slot().into()).await;
            let permit = self.breaker.lock().expect("breaker lock").permit();
            match permit {
                Permit::Go => return,
                // It opened, or another delivery took the probe, meanwhile.
                Permit::Wait(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    fn record(&self, success: bool) {
        let changed = self.breaker.lock().expect("breaker lock").record(success);
        let Some(transition) = changed else { return };
        crate::telemetry::breaker_transition(&self.name, transition.as_str());
        match transition {
            Transition::Closed => {
                tracing::info!(destination = %self.name, "Circuit breaker closed: the destination answers again")
            }
            Transition::Opened => {
                tracing::warn!(destination = %self.name, cooldown_ms = self.config.breaker_cooldown_ms, "Circuit breaker opened: deliveries wait for the cooldown")
            }
        }
    }
}

fn attempt(cause: &str, detail: &str) -> Attempt {
    Attempt {
        at_ms: now_ms(),
        cause: cause.into(),
        detail: detail.into(),
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare for webhooks and
/// treated as absent).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let seconds = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    Some(Duration::from_secs(seconds.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backlog_gets_one_rate_limit_slot_each() {
        let config: DestinationConfig =
            toml::from_str("url = \"http://127.0.0.1:9/\"\nrate_per_s = 10.0").unwrap();
        let destination = Destination::new("sink", config, None);
        assert!(
            destination.reserve_slot() <= Instant::now(),
            "the first goes now"
        );
        // A backlog: the next free slot is a minute away.
        let free = Instant::now() + Duration::from_secs(60);
        *destination.next_slot.lock().unwrap() = free;
        let slots: Vec<Instant> = (0..5).map(|_| destination.reserve_slot()).collect();
        assert_eq!(slots[0], free);
        for pair in slots.windows(2) {
            assert_eq!(pair[1] - pair[0], Duration::from_millis(100));
        }
    }

    /// The caller's side of the breaker: one probe after the cooldown, the
    /// others held until its result, and a good probe closes it.
    #[tokio::test]
    async fn an_open_breaker_lets_one_probe_through_and_closes_on_its_success() {
        let config: DestinationConfig = toml::from_str(
            "url = \"http://127.0.0.1:9/\"\nrate_per_s = 1000.0\nbreaker_cooldown_ms = 20",
        )
        .unwrap();
        let destination = Arc::new(Destination::new("sink", config, None));
        for _ in 0..5 {
            destination.record(false);
        }
        assert_eq!(destination.breaker.lock().unwrap().state(), "open");
        destination.admit().await;
        assert_eq!(destination.breaker.lock().unwrap().state(), "half_open");
        let second = tokio::spawn({
            let destination = destination.clone();
            async move { destination.admit().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "nobody goes while the probe is out");
        destination.record(true);
        second.await.unwrap();
        assert_eq!(destination.breaker.lock().unwrap().state(), "closed");
    }
}
