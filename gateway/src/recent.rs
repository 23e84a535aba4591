//! The recent runs of each campaign, for operators: what each run of an
//! event asked for (its reply, deliveries, emits and KV keys), what it cost
//! and how it ended, with the tries before it. Kept in memory on this node,
//! the last [`PER_CAMPAIGN`] events of each campaign: a window to look
//! through, not a log (the store keeps what must not be lost; dead letters
//! keep what failed for good).

use std::collections::VecDeque;
use std::sync::Mutex;

use dashmap::DashMap;
use serde::Serialize;

use crate::event::now_ms;
use crate::store::{Attempt, KvChange, Outcome};

/// Events kept per campaign.
pub const PER_CAMPAIGN: usize = 100;

/// How a run of an event ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ended {
    /// Ran, and what it asked for was committed.
    Ok,
    /// Failed; its caller got the error (a sync run) or it is not stored.
    Failed,
    /// Failed, and is stored to be tried again.
    Retrying,
    /// Failed for good: a dead letter.
    Dead,
}

/// One event's latest run by one campaign.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub event_id: String,
    pub campaign: String,
    pub source: String,
    /// `sync`: its caller waited for the answer; `async`: pulled from the
    /// store.
    pub mode: &'static str,
    /// The plugin version that ran it ("v3").
    pub version: String,
    pub ended: Ended,
    /// When the latest run ended, ms since the epoch.
    pub at_ms: u64,
    pub run_ms: f64,
    pub fuel: u64,
    /// Why it failed, as in dead letters and metrics.
    pub cause: Option<String>,
    pub detail: Option<String>,
    /// What the run asked for; empty when it failed.
    pub actions: Actions,
    /// The tries before this one that failed.
    pub attempts: Vec<Attempt>,
}

/// What a run asked for, as committed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Actions {
    /// The HTTP status its sync caller got, if it answered one.
    pub reply_status: Option<u16>,
    pub deliveries: Vec<PlannedDelivery>,
    pub emits: Vec<PlannedEmit>,
    pub kv: Vec<KvWrite>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedDelivery {
    pub id: String,
    pub destination: String,
    /// Not before this time (ms since the epoch); 0: at once.
    pub not_before_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedEmit {
    pub event_id: String,
    pub campaigns: Vec<String>,
    pub not_before_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct KvWrite {
    pub key: String,
    /// `set` or `delete`.
    pub op: &'static str,
}

impl Actions {
    /// What `outcome` (about to be committed) and the reply hold.
    pub fn of(outcome: &Outcome, reply_status: Option<u16>) -> Actions {
        Actions {
            reply_status,
            deliveries: (outcome.deliveries.iter())
                .map(|d| PlannedDelivery {
                    id: d.id.clone(),
                    destination: d.destination.clone(),
                    not_before_ms: d.not_before_ms,
                })
                .collect(),
            emits: (outcome.emitted.iter())
                .map(|e| PlannedEmit {
                    event_id: e.event.id.clone(),
                    campaigns: e.campaigns.clone(),
                    not_before_ms: e.not_before_ms,
                })
                .collect(),
            kv: (outcome.kv.iter())
                .map(|change| KvWrite {
                    key: change.key().to_owned(),
                    op: match change {
                        KvChange::Set { .. } => "set",
                        KvChange::Delete { .. } => "delete",
                    },
                })
                .collect(),
        }
    }
}

/// Which records to list.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub campaign: Option<String>,
    pub ended: Option<Ended>,
    /// Most records listed, newest first; default and most: every kept one.
    pub limit: Option<usize>,
}

/// The recent runs of every campaign.
#[derive(Default)]
pub struct RecentRuns {
    by_campaign: DashMap<String, Mutex<VecDeque<RunRecord>>>,
}

impl RecentRuns {
    /// Keep `record`, in place of the event's earlier run by the same
    /// campaign (whose tries it carries on), and forget the campaign's
    /// oldest beyond [`PER_CAMPAIGN`].
    pub fn record(&self, record: RunRecord) {
        let runs = self.by_campaign.entry(record.campaign.clone()).or_default();
        let mut runs = runs.lock().expect("recent runs lock");
        // Only a stored event runs again (a retry); a sync caller's event
        // runs once, so its run is not looked for (a scan per request).
        if record.mode == "async" {
            runs.retain(|r| r.event_id != record.event_id);
        }
        runs.push_back(record);
        if runs.len() > PER_CAMPAIGN {
            runs.pop_front();
        }
    }

    /// Say how `campaign`'s latest run of `event_id` ended after all: it is
    /// to be retried, or it is dead.
    pub fn ended(&self, campaign: &str, event_id: &str, ended: Ended, attempts: Vec<Attempt>) {
        let Some(runs) = self.by_campaign.get(campaign) else {
            return;
        };
        let mut runs = runs.lock().expect("recent runs lock");
        if let Some(run) = runs.iter_mut().rev().find(|r| r.event_id == event_id) {
            run.ended = ended;
            run.attempts = attempts;
        }
    }

    /// The kept records `filter` selects, newest first.
    pub fn list(&self, filter: &Filter) -> Vec<RunRecord> {
        let ended = |r: &RunRecord| filter.ended.is_none_or(|e| r.ended == e);
        let mut selected = self.select(filter.campaign.as_deref(), ended);
        selected.truncate(filter.limit.unwrap_or(usize::MAX));
        selected
    }

    /// Every kept run of event `event_id`, by any campaign, newest first.
    pub fn event(&self, event_id: &str) -> Vec<RunRecord> {
        self.select(None, |r| r.event_id == event_id)
    }

    /// Copies of the records of `campaign` (or of all) that `keep`
    /// selects, newest first; only those are copied.
    fn select(&self, campaign: Option<&str>, keep: impl Fn(&RunRecord) -> bool) -> Vec<RunRecord> {
        let mut selected: Vec<RunRecord> = Vec::new();
        for runs in self.by_campaign.iter() {
            if campaign.is_some_and(|c| c != runs.key()) {
                continue;
            }
            let runs = runs.lock().expect("recent runs lock");
            selected.extend(runs.iter().filter(|r| keep(r)).cloned());
        }
        selected.sort_by_key(|r| std::cmp::Reverse(r.at_ms));
        selected
    }
}

/// A record of `campaign`'s run of an event that ended now.
pub struct Run<'a> {
    pub event: &'a crate::event::Event,
    pub campaign: &'a str,
    pub version: &'a str,
    pub stored: bool,
    pub run_ms: f64,
    pub fuel: u64,
}

impl Run<'_> {
    pub fn ok(self, actions: Actions) -> RunRecord {
        self.record(Ended::Ok, None, actions)
    }

    pub fn failed(self, cause: &str, detail: String) -> RunRecord {
        self.record(
            Ended::Failed,
            Some((cause.into(), detail)),
            Actions::default(),
        )
    }

    fn record(
        self,
        ended: Ended,
        failure: Option<(String, String)>,
        actions: Actions,
    ) -> RunRecord {
        let (cause, detail) = failure.unzip();
        RunRecord {
            event_id: self.event.id.clone(),
            campaign: self.campaign.into(),
            source: self.event.source.clone(),
            mode: if self.stored { "async" } else { "sync" },
            version: self.version.into(),
            ended,
            at_ms: now_ms(),
            run_ms: self.run_ms,
            fuel: self.fuel,
            cause,
            detail,
            actions,
            attempts: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    fn run(campaign: &str, event: &Event, ended: Ended) -> RunRecord {
        let run = Run {
            event,
            campaign,
            version: "v1",
            stored: true,
            run_ms: 1.0,
            fuel: 10,
        };
        match ended {
            Ended::Ok => run.ok(Actions::default()),
            _ => run.failed("trap", "boom".into()),
        }
    }

    fn event() -> Event {
        Event::new("src".into(), vec![], bytes::Bytes::new(), None)
    }

    #[test]
    fn a_run_again_replaces_the_earlier_one_and_each_campaign_keeps_its_last() {
        let recent = RecentRuns::default();
        let first = event();
        recent.record(run("a", &first, Ended::Failed));
        let tried = [Attempt {
            at_ms: 1,
            cause: "trap".into(),
            detail: "boom".into(),
        }];
        recent.ended("a", &first.id, Ended::Retrying, tried.to_vec());
        let retrying = recent.event(&first.id);
        assert_eq!(retrying.len(), 1);
        assert_eq!(retrying[0].ended, Ended::Retrying);
        assert_eq!(retrying[0].attempts.len(), 1);
        recent.record(run("a", &first, Ended::Ok));
        recent.record(run("b", &first, Ended::Failed));
        let ok = Filter {
            campaign: Some("a".into()),
            ended: Some(Ended::Ok),
            limit: None,
        };
        assert_eq!(
            recent.list(&ok).len(),
            1,
            "one record per event and campaign"
        );
        assert_eq!(recent.event(&first.id).len(), 2, "one per campaign");

        for _ in 0..PER_CAMPAIGN {
            recent.record(run("a", &event(), Ended::Ok));
        }
        let only_a = Filter {
            campaign: Some("a".into()),
            ..Filter::default()
        };
        assert_eq!(recent.list(&only_a).len(), PER_CAMPAIGN);
        assert!(
            recent.event(&first.id).iter().all(|r| r.campaign == "b"),
            "a's oldest went"
        );
    }
}
