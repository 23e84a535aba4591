//! Shadow runs: a new version of a campaign's plugin tried on the events
//! the campaign ran lately, next to the version that runs, with no side
//! effects, before anyone deploys it.
//!
//! Recording is opt-in per campaign (`campaigns.*.shadow`). [`Recordings`]
//! keeps each such campaign's last `record` events — as its plugin saw
//! them: source, headers, body, content type, id — in memory on this node,
//! with the values at the configured JSON pointers of the body replaced by
//! `"[redacted]"` *before* they are kept. With pointers configured, a body
//! that is not JSON cannot be redacted and is not kept (counted as
//! `not_kept`). Campaigns that did not opt in cost one `Option` check per
//! run. Events kept under rules a reload removed or changed are forgotten
//! ([`Gateway::reload`]), and a restart forgets them all.
//!
//! A shadow run ([`Gateway::shadow_run`]) runs the running version and the
//! upload on each kept event, one after the other, as one piece of work in
//! the care lane (never on the speed lane's threads). Each run's actions
//! are checked and planned by [`actions::plan`] into an [`Outcome`] that is
//! never committed: nothing is acknowledged, stored, delivered or emitted.
//! KV reads come from a [`Snapshot`] of the store (the first read of a key
//! is kept for the whole shadow run, so both versions and every event see
//! the same state; writes are refused), and a run's own writes stay in the
//! run, where it reads them back, and are dropped with it. The runs are
//! not kept among the recent runs and count in no metric, so the advisor
//! does not see them.
//!
//! Not isolated: outbound HTTP. `http-fetch` reaches the campaign's
//! `allowed_hosts` for real, as `hooklane plugin test` does — an
//! enrichment campaign's comparison means nothing without its lookups, but
//! a plugin that changes something through `http-fetch` changes it in a
//! shadow run too. Logs of the plugins go to the log with a `shadow`
//! version.
//!
//! Must never commit an outcome, write KV, or record a run anywhere.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::actions::{self, Reply};
use crate::campaigns::{DeployError, LoadedCampaign};
use crate::config::{Lane, ShadowConfig};
use crate::dispatch::{check_emit_depth, RunError};
use crate::event::Event;
use crate::gateway::Gateway;
use crate::lanes::LaneFull;
use crate::runtime::{Plugin, PluginFailure};
use crate::store::{KvChange, KvQuota, KvStore, KvUsage, Outcome, StoreError};

/// What a redacted value becomes.
pub const REDACTED: &str = "[redacted]";

/// The longest a shadow run goes on: events not started by then are
/// counted as `not_run`.
const BUDGET: Duration = Duration::from_secs(60);

/// Bytes of a body shown as text in a report; the digest covers all of it.
const SHOWN_BYTES: usize = 512;

/// The kept events of every campaign that records them.
#[derive(Default)]
pub struct Recordings {
    by_campaign: DashMap<String, Mutex<Kept>>,
}

struct Kept {
    /// The rules they were kept under.
    config: ShadowConfig,
    /// Oldest first.
    events: VecDeque<Event>,
    /// Events not kept because their body could not be redacted.
    not_kept: u64,
}

impl Kept {
    fn new(config: &ShadowConfig) -> Kept {
        Kept {
            config: config.clone(),
            events: VecDeque::new(),
            not_kept: 0,
        }
    }
}

impl Recordings {
    /// Keep `event`, redacted as `shadow` says, in place of an earlier run
    /// of it (a retry), and forget the campaign's oldest beyond `record`.
    /// Events kept under other rules are forgotten first.
    pub fn record(&self, campaign: &str, shadow: &ShadowConfig, event: &Event) {
        let redacted = redacted(event, &shadow.redact);
        let kept = match self.by_campaign.get(campaign) {
            Some(kept) => kept,
            None => (self.by_campaign.entry(campaign.to_owned()))
                .or_insert_with(|| Mutex::new(Kept::new(shadow)))
                .downgrade(),
        };
        let mut kept = kept.lock().expect("recordings lock");
        if kept.config != *shadow {
            *kept = Kept::new(shadow);
        }
        let Some(redacted) = redacted else {
            kept.not_kept += 1;
            return;
        };
        kept.events.retain(|e| e.id != redacted.id);
        kept.events.push_back(redacted);
        while kept.events.len() > shadow.record {
            kept.events.pop_front();
        }
    }

    /// Keep the events of the campaigns `keep(campaign, rules they were
    /// kept under)` holds for; forget the others.
    pub fn retain(&self, keep: impl Fn(&str, &ShadowConfig) -> bool) {
        (self.by_campaign).retain(|campaign, kept| {
            keep(campaign, &kept.get_mut().expect("recordings lock").config)
        });
    }

    /// `campaign`'s kept events, oldest first, and how many were not kept.
    pub fn events(&self, campaign: &str) -> (Vec<Event>, u64) {
        self.by_campaign
            .get(campaign)
            .map_or_else(Default::default, |kept| {
                let kept = kept.lock().expect("recordings lock");
                (kept.events.iter().cloned().collect(), kept.not_kept)
            })
    }
}

/// `event` with the values at `pointers` in its JSON body replaced by
/// [`REDACTED`] (pointers that match nothing are skipped); none when there
/// are pointers and the body is not JSON. A redacted body is written out
/// again: the same JSON, without its original spacing.
fn redacted(event: &Event, pointers: &[String]) -> Option<Event> {
    if pointers.is_empty() {
        return Some(event.clone());
    }
    let mut body: Value = serde_json::from_slice(&event.body).ok()?;
    for pointer in pointers {
        if let Some(value) = body.pointer_mut(pointer) {
            *value = Value::String(REDACTED.into());
        }
    }
    Some(Event {
        body: serde_json::to_vec(&body).ok()?.into(),
        ..event.clone()
    })
}

/// Why a shadow run was refused.
#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    /// Unknown campaign, or an upload a deploy would refuse.
    #[error(transparent)]
    Upload(#[from] DeployError),
    #[error("campaign `{campaign}` cannot run, so there is no running version to compare with: {reason}")]
    Unavailable { campaign: String, reason: String },
    #[error("campaign `{0}` keeps no events for shadow runs: set `campaigns.{0}.shadow = {{ record = N }}` in the config")]
    NotEnabled(String),
    #[error("campaign `{campaign}` has kept no event on this node yet ({not_kept} not kept since recording started: with `redact` pointers, a body that is not JSON is not kept)")]
    NothingRecorded { campaign: String, not_kept: u64 },
    #[error(transparent)]
    LaneFull(#[from] LaneFull),
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

impl Gateway {
    /// Run `upload` and `campaign`'s running version on the campaign's
    /// kept events, with no side effects, and compare what they asked for
    /// and what it cost. The upload is checked as a deploy checks it; it is
    /// neither stored nor swapped in.
    pub async fn shadow_run(
        self: &Arc<Self>,
        campaign: &str,
        upload: Bytes,
    ) -> Result<Report, ShadowError> {
        let loaded = self.campaigns().runnable(campaign).map_err(|e| match e {
            RunError::CampaignUnavailable { campaign, reason } => {
                ShadowError::Unavailable { campaign, reason }
            }
            _ => DeployError::UnknownCampaign(campaign.into()).into(),
        })?;
        if loaded.config.shadow.is_none() {
            return Err(ShadowError::NotEnabled(campaign.into()));
        }
        let (events, not_kept) = self.recordings.events(campaign);
        if events.is_empty() {
            let campaign = campaign.into();
            return Err(ShadowError::NothingRecorded { campaign, not_kept });
        }
        let compiled = self.campaigns().compile_upload(campaign, upload).await?;
        let snapshot: Arc<dyn KvStore> = Arc::new(Snapshot::of(self.kv().clone()));
        let (name, config, limits) = (&loaded.name, &loaded.config, &loaded.limits);
        let upload = (self.campaigns().runtime()).plugin(&compiled, name, config, limits, "upload");
        let running = format!("{} (shadow)", loaded.version.label());
        let sides = Sides {
            running: loaded.plugin.shadow(&running, snapshot.clone()),
            candidate: upload.shadow("upload (shadow)", snapshot),
            max_emit_depth: self.max_emit_depth,
        };
        let (answer, answered) = oneshot::channel();
        let work = async move {
            let _ = answer.send(sides.compare(&loaded, &events, not_kept).await);
        };
        // One shadow run per campaign at a time, on the care lane's threads.
        let name: Arc<str> = format!("shadow:{campaign}").into();
        self.lanes().submit(Lane::Care, &name, 1, work)?;
        answered.await.map_err(|_| ShadowError::ShuttingDown)
    }
}

/// The two versions compared.
struct Sides {
    running: Plugin,
    candidate: Plugin,
    max_emit_depth: usize,
}

impl Sides {
    async fn compare(&self, loaded: &LoadedCampaign, events: &[Event], not_kept: u64) -> Report {
        let deadline = Duration::from_millis(loaded.limits.deadline_ms);
        let started = Instant::now();
        let mut compared = Vec::with_capacity(events.len());
        for event in events {
            if started.elapsed() > BUDGET {
                break;
            }
            let running = self.run(loaded, &self.running, event, deadline).await;
            let candidate = self.run(loaded, &self.candidate, event, deadline).await;
            compared.push(Comparison::of(event, running, candidate));
        }
        Report {
            campaign: loaded.name.to_string(),
            running: loaded.version.label(),
            running_digest: loaded.version.digest.clone(),
            candidate_digest: self.candidate.compiled().digest.to_string(),
            totals: Totals::of(&compared, events.len(), not_kept),
            events: compared,
        }
    }

    /// Run `plugin` on `event` and plan what it asked for, as the
    /// dispatcher would before its commit — which never comes. (The checks
    /// only a commit makes — lanes with room for the emits, the KV quota
    /// against returned `kv-set` actions, compare-and-swap expectations —
    /// are not made.)
    async fn run(
        &self,
        loaded: &LoadedCampaign,
        plugin: &Plugin,
        event: &Event,
        deadline: Duration,
    ) -> Side {
        let ran = plugin.run(event, deadline).await;
        let mut outcome = Outcome {
            kv_namespace: plugin.sandbox().kv_namespace.clone(),
            ..Outcome::default()
        };
        let planned = ran
            .result
            .and_then(|output| {
                actions::plan(&loaded.name, &loaded.config, event, output, &mut outcome)
            })
            .and_then(|reply| {
                check_emit_depth(&outcome.emitted, self.max_emit_depth).map(|()| reply)
            });
        Side::of(planned, &outcome, ran.fuel_used, ran.elapsed)
    }
}

/// A shadow run's answer: each kept event's runs by both versions, and
/// totals.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub campaign: String,
    /// The running version ("v2").
    pub running: String,
    pub running_digest: String,
    /// The upload's SHA-256.
    pub candidate_digest: String,
    pub totals: Totals,
    /// Oldest event first.
    pub events: Vec<Comparison>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Totals {
    /// Events both versions ran.
    pub events: usize,
    /// Of those, events whose outcome or actions differ.
    pub differing: usize,
    pub failed_running: usize,
    pub failed_candidate: usize,
    pub fuel_running: u64,
    pub fuel_candidate: u64,
    /// The upload's fuel over the running version's; none if that is 0.
    pub fuel_ratio: Option<f64>,
    pub run_ms_running: f64,
    pub run_ms_candidate: f64,
    /// The upload's run time over the running version's.
    pub time_ratio: Option<f64>,
    /// Kept events not run: the shadow run's time budget ran out.
    pub not_run: usize,
    /// Events not kept since recording started: their bodies were not
    /// JSON, so they could not be redacted.
    pub not_kept: u64,
}

impl Totals {
    fn of(compared: &[Comparison], kept: usize, not_kept: u64) -> Totals {
        let sum = |f: &dyn Fn(&Comparison) -> f64| compared.iter().map(f).sum::<f64>();
        let count = |f: &dyn Fn(&Comparison) -> bool| compared.iter().filter(|c| f(c)).count();
        let ratio = |candidate: f64, running: f64| (running > 0.0).then(|| candidate / running);
        let fuel_running = compared.iter().map(|c| c.running.fuel).sum::<u64>();
        let fuel_candidate = compared.iter().map(|c| c.candidate.fuel).sum::<u64>();
        let run_ms_running = sum(&|c| c.running.run_ms);
        let run_ms_candidate = sum(&|c| c.candidate.run_ms);
        Totals {
            events: compared.len(),
            differing: count(&|c| c.differs),
            failed_running: count(&|c| c.running.outcome != "ok"),
            failed_candidate: count(&|c| c.candidate.outcome != "ok"),
            fuel_running,
            fuel_candidate,
            fuel_ratio: ratio(fuel_candidate as f64, fuel_running as f64),
            run_ms_running,
            run_ms_candidate,
            time_ratio: ratio(run_ms_candidate, run_ms_running),
            not_run: kept - compared.len(),
            not_kept,
        }
    }
}

/// One kept event, run by both versions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    pub event_id: String,
    pub source: String,
    pub received_at_ms: u64,
    pub differs: bool,
    /// What differs: `outcome`, `reply`, `deliveries`, `emits`, `kv`.
    pub differences: Vec<String>,
    pub running: Side,
    pub candidate: Side,
}

impl Comparison {
    fn of(event: &Event, running: Side, candidate: Side) -> Comparison {
        let differences: Vec<String> = [
            ("outcome", running.outcome != candidate.outcome),
            ("reply", running.reply != candidate.reply),
            ("deliveries", running.deliveries != candidate.deliveries),
            ("emits", running.emits != candidate.emits),
            ("kv", running.kv != candidate.kv),
        ]
        .into_iter()
        .filter(|(_, differs)| *differs)
        .map(|(what, _)| what.to_owned())
        .collect();
        Comparison {
            event_id: event.id.clone(),
            source: event.source.clone(),
            received_at_ms: event.received_at_ms,
            differs: !differences.is_empty(),
            differences,
            running,
            candidate,
        }
    }
}

/// One version's run of one event: how it ended, what it asked for (as
/// planned, never carried out) and what it cost.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Side {
    /// `ok`, or the failure's cause (`trap`, `deadline`, `bad_output`...).
    pub outcome: String,
    pub detail: Option<String>,
    pub fuel: u64,
    pub run_ms: f64,
    pub reply: Option<ShownReply>,
    pub deliveries: Vec<ShownDelivery>,
    pub emits: Vec<ShownEmit>,
    pub kv: Vec<ShownKv>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShownReply {
    pub status: u16,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShownDelivery {
    pub destination: String,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShownEmit {
    pub campaigns: Vec<String>,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShownKv {
    pub key: String,
    /// `set` or `delete`.
    pub op: String,
    pub value: Option<Body>,
}

/// A body as a report shows it: its size and digest, and its start as text
/// when it is UTF-8.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Body {
    pub bytes: usize,
    pub sha256: String,
    /// The first [`SHOWN_BYTES`] bytes (or fewer, to end on a character),
    /// when they are UTF-8 text.
    pub text: Option<String>,
}

impl Body {
    fn of(bytes: &[u8]) -> Body {
        let mut end = bytes.len().min(SHOWN_BYTES);
        let text = loop {
            match std::str::from_utf8(&bytes[..end]) {
                Ok(text) => break Some(text.to_owned()),
                // A character cut at the end: end before it.
                Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => end = e.valid_up_to(),
                Err(_) => break None,
            }
        };
        Body {
            bytes: bytes.len(),
            sha256: hex::encode(Sha256::digest(bytes)),
            text,
        }
    }
}

impl Side {
    fn of(
        planned: Result<Option<Reply>, PluginFailure>,
        outcome: &Outcome,
        fuel: u64,
        elapsed: Duration,
    ) -> Side {
        let (fuel, run_ms) = (fuel, elapsed.as_secs_f64() * 1e3);
        let reply = match planned {
            Ok(reply) => reply,
            Err(failure) => {
                return Side {
                    outcome: failure.cause().into(),
                    detail: Some(failure.to_string()),
                    fuel,
                    run_ms,
                    reply: None,
                    deliveries: Vec::new(),
                    emits: Vec::new(),
                    kv: Vec::new(),
                }
            }
        };
        Side {
            outcome: "ok".into(),
            detail: None,
            fuel,
            run_ms,
            reply: reply.map(|r| ShownReply {
                status: r.status.as_u16(),
                body: Body::of(&r.body),
            }),
            deliveries: (outcome.deliveries.iter())
                .map(|d| ShownDelivery {
                    destination: d.destination.clone(),
                    body: Body::of(&d.body),
                })
                .collect(),
            emits: (outcome.emitted.iter())
                .map(|e| ShownEmit {
                    campaigns: e.campaigns.clone(),
                    body: Body::of(&e.event.body),
                })
                .collect(),
            kv: (outcome.kv.iter())
                .map(|change| ShownKv {
                    key: change.key().to_owned(),
                    op: match change {
                        KvChange::Set { .. } => "set".into(),
                        KvChange::Delete { .. } => "delete".into(),
                    },
                    value: match change {
                        KvChange::Set { value, .. } => Some(Body::of(value)),
                        KvChange::Delete { .. } => None,
                    },
                })
                .collect(),
        }
    }
}

/// The campaign's KV as a shadow run reads it: each key's value, list page
/// and namespace usage is read once from the live store and kept for the
/// rest of the shadow run, so both versions and every event see the same
/// state. Writes are refused (the kv import never writes during a run: a
/// run's writes stay in the run until its commit, which a shadow run never
/// makes).
struct Snapshot {
    live: Arc<dyn KvStore>,
    seen: Mutex<Seen>,
}

/// What a [`Snapshot`] read from the live store so far.
#[derive(Default)]
struct Seen {
    /// By namespace and key; none: absent.
    values: HashMap<(String, String), Option<Vec<u8>>>,
    /// By the list call's arguments, as JSON.
    lists: HashMap<String, Vec<String>>,
    /// By namespace.
    usage: HashMap<String, (KvUsage, KvQuota)>,
}

impl Snapshot {
    fn of(live: Arc<dyn KvStore>) -> Snapshot {
        Snapshot {
            live,
            seen: Mutex::default(),
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().expect("snapshot lock")
    }
}

fn read_only() -> StoreError {
    StoreError::Unavailable("a shadow run never writes the store".into())
}

#[async_trait::async_trait]
impl KvStore for Snapshot {
    async fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let id = (namespace.to_owned(), key.to_owned());
        if let Some(seen) = self.seen().values.get(&id) {
            return Ok(seen.clone());
        }
        let value = self.live.get(namespace, key).await?;
        Ok(self.seen().values.entry(id).or_insert(value).clone())
    }

    async fn set(
        &self,
        _namespace: &str,
        _key: &str,
        _value: &[u8],
        _ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        Err(read_only())
    }

    async fn delete(&self, _namespace: &str, _key: &str) -> Result<(), StoreError> {
        Err(read_only())
    }

    async fn list(
        &self,
        namespace: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let id = serde_json::json!([namespace, prefix, after, limit]).to_string();
        if let Some(seen) = self.seen().lists.get(&id) {
            return Ok(seen.clone());
        }
        let page = self.live.list(namespace, prefix, after, limit).await?;
        Ok(self.seen().lists.entry(id).or_insert(page).clone())
    }

    async fn usage(&self, namespace: &str) -> Result<(KvUsage, KvQuota), StoreError> {
        if let Some(seen) = self.seen().usage.get(namespace) {
            return Ok(*seen);
        }
        let usage = self.live.usage(namespace).await?;
        Ok(*self
            .seen()
            .usage
            .entry(namespace.to_owned())
            .or_insert(usage))
    }
}

impl fmt::Display for Report {
    /// The report as `hooklane deploy --shadow` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.totals;
        let running = &self.running;
        writeln!(
            f,
            "Shadow run of `{}`: the upload ({}) against {running} ({}), on {} kept event(s)",
            self.campaign,
            &self.candidate_digest[..12],
            &self.running_digest[..12.min(self.running_digest.len())],
            t.events
        )?;
        writeln!(
            f,
            "  {} differ; failed: {} with {running}, {} with the upload",
            t.differing, t.failed_running, t.failed_candidate
        )?;
        let times = |ratio: Option<f64>| ratio.map_or(String::new(), |r| format!(" (x{r:.2})"));
        writeln!(
            f,
            "  fuel: {} with {running}, {} with the upload{}",
            t.fuel_running,
            t.fuel_candidate,
            times(t.fuel_ratio)
        )?;
        writeln!(
            f,
            "  run time: {:.2} ms with {running}, {:.2} ms with the upload{}",
            t.run_ms_running,
            t.run_ms_candidate,
            times(t.time_ratio)
        )?;
        if t.not_run > 0 {
            writeln!(f, "  {} kept event(s) not run: out of time", t.not_run)?;
        }
        if t.not_kept > 0 {
            writeln!(
                f,
                "  {} event(s) not kept: bodies that are not JSON cannot be redacted",
                t.not_kept
            )?;
        }
        for event in &self.events {
            if !event.differs {
                writeln!(f, "event {} ({}): the same", event.event_id, event.source)?;
                continue;
            }
            writeln!(
                f,
                "event {} ({}): differs in {}",
                event.event_id,
                event.source,
                event.differences.join(", ")
            )?;
            writeln!(f, "  {running}: {}", event.running)?;
            writeln!(f, "  upload: {}", event.candidate)?;
        }
        Ok(())
    }
}

impl fmt::Display for Side {
    /// One line: the outcome, then each action with its body's start.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.outcome)?;
        if let Some(detail) = &self.detail {
            write!(f, " ({detail})")?;
        }
        if let Some(reply) = &self.reply {
            write!(f, "; reply {} {}", reply.status, reply.body)?;
        }
        for d in &self.deliveries {
            write!(f, "; deliver to {} {}", d.destination, d.body)?;
        }
        for e in &self.emits {
            write!(f, "; emit to {} {}", e.campaigns.join(", "), e.body)?;
        }
        for kv in &self.kv {
            write!(f, "; kv {} {}", kv.op, kv.key)?;
        }
        write!(f, "; fuel {}, {:.2} ms", self.fuel, self.run_ms)
    }
}

impl fmt::Display for Body {
    /// The body's start in backquotes, shortened to a line, control
    /// characters escaped; its size and digest if it is not text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const LINE: usize = 80;
        let Some(text) = &self.text else {
            return write!(f, "({} bytes, sha256 {})", self.bytes, &self.sha256[..12]);
        };
        let start: String = (text.chars().take(LINE))
            .flat_map(|c| {
                if c.is_control() {
                    c.escape_default().collect()
                } else {
                    vec![c]
                }
            })
            .collect();
        if text.chars().count() <= LINE && text.len() == self.bytes {
            write!(f, "`{start}`")
        } else {
            write!(f, "`{start}`... ({} bytes)", self.bytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(body: &str) -> Event {
        let json = Some("application/json".to_owned());
        Event::new("site".into(), vec![], Bytes::from(body.to_owned()), json)
    }

    fn shadow(record: usize, redact: &[&str]) -> ShadowConfig {
        ShadowConfig {
            record,
            redact: redact.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn values_at_the_pointers_are_redacted_before_they_are_kept() {
        let recordings = Recordings::default();
        let config = shadow(5, &["/customer/phone", "/email", "/absent/x"]);
        let sent = event(r#"{"email": "a@b.c", "customer": {"phone": "+49 1", "id": 7}}"#);
        recordings.record("c", &config, &sent);
        let (kept, not_kept) = recordings.events("c");
        assert_eq!(not_kept, 0);
        assert_eq!((&kept[0].id, &kept[0].source), (&sent.id, &sent.source));
        let body: Value = serde_json::from_slice(&kept[0].body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({ "email": "[redacted]", "customer": { "phone": "[redacted]", "id": 7 } })
        );
    }

    #[test]
    fn a_body_that_is_not_json_is_kept_only_without_pointers() {
        let recordings = Recordings::default();
        let text = event("plain text");
        recordings.record("redacting", &shadow(5, &["/email"]), &text);
        recordings.record("keeping", &shadow(5, &[]), &text);
        let (kept, not_kept) = recordings.events("redacting");
        assert!(kept.is_empty());
        assert_eq!(not_kept, 1);
        let (kept, _) = recordings.events("keeping");
        assert_eq!(kept[0].body, "plain text");
    }

    #[test]
    fn the_latest_events_are_kept_and_a_retry_replaces_its_first_run() {
        let recordings = Recordings::default();
        let config = shadow(3, &[]);
        let events: Vec<Event> = (0..5).map(|i| event(&i.to_string())).collect();
        for e in &events {
            recordings.record("c", &config, e);
        }
        recordings.record("c", &config, &events[2]);
        let kept: Vec<String> = (recordings.events("c").0.iter())
            .map(|e| e.id.clone())
            .collect();
        let expected = [&events[3].id, &events[4].id, &events[2].id];
        assert_eq!(kept, expected.map(String::clone));
        assert!(recordings.events("other").0.is_empty());

        // Other rules: what was kept under the old ones goes.
        recordings.record("c", &shadow(3, &["/email"]), &event("{}"));
        assert_eq!(recordings.events("c").0.len(), 1);
        recordings.retain(|_, kept_under| kept_under.redact.is_empty());
        assert!(recordings.events("c").0.is_empty());
    }

    #[tokio::test]
    async fn the_snapshot_keeps_what_it_first_read_and_never_writes() {
        let dir = tempfile::tempdir().unwrap();
        let quota = KvQuota {
            bytes: 1 << 20,
            keys: 100,
        };
        let store = crate::store::embedded::EmbeddedStore::open(dir.path(), false, quota).unwrap();
        let live: Arc<dyn KvStore> = Arc::new(store);
        live.set("ns", "k", b"before", None).await.unwrap();
        let snapshot = Snapshot::of(live.clone());
        assert_eq!(snapshot.get("ns", "k").await.unwrap().unwrap(), b"before");
        assert_eq!(snapshot.list("ns", "", None, 10).await.unwrap(), ["k"]);
        live.set("ns", "k", b"after", None).await.unwrap();
        live.set("ns", "k2", b"new", None).await.unwrap();
        assert_eq!(snapshot.get("ns", "k").await.unwrap().unwrap(), b"before");
        assert_eq!(snapshot.list("ns", "", None, 10).await.unwrap(), ["k"]);
        assert!(snapshot.set("ns", "k", b"shadow", None).await.is_err());
        assert!(snapshot.delete("ns", "k").await.is_err());
        assert_eq!(live.get("ns", "k").await.unwrap().unwrap(), b"after");
    }

    #[test]
    fn a_body_is_shown_by_its_start_and_compared_by_its_digest() {
        let long = "é".repeat(SHOWN_BYTES);
        let shown = Body::of(long.as_bytes());
        assert_eq!(shown.bytes, 2 * SHOWN_BYTES);
        assert_eq!(shown.text.as_deref(), Some(&long[..SHOWN_BYTES]));
        assert_eq!(Body::of(&[0xff, 0]).text, None);
        assert_ne!(Body::of(b"a"), Body::of(b"b"));
    }
}
