//! What every queue backend must do, written once against the traits: due
//! times, leases that expire and hand the item out again, the redelivery
//! count, settling twice, dead letters and replay, the dedup window, turns
//! between campaigns, atomic ack with effects, what a reopen keeps, and
//! KV namespaces with their TTLs and quota.
//! A backend runs them all with [`conformance_tests!`].

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{
    Attempt, DeadItem, DeadLetterFilter, Dedup, Enqueued, EventQueue, KvChange, KvExpectation,
    KvQuota, KvStore, NewDelivery, NewWebhook, Outcome, QueuedEvent, StoreError,
};
use crate::event::{now_ms, Event};

/// Opens (or reopens) a backend's queue and KV store in a directory.
pub type Open = fn(&Path) -> Opening;

/// A backend being opened: connecting to a server takes awaiting.
pub type Opening = Pin<Box<dyn Future<Output = (Arc<dyn EventQueue>, Arc<dyn KvStore>)> + Send>>;

/// The KV quota every backend is opened with here.
pub const KV_QUOTA: KvQuota = KvQuota {
    bytes: 1 << 20,
    keys: 100,
};

const LEASE: Duration = Duration::from_secs(60);

/// A webhook for `campaigns` with dedup key `key` (remembered a minute):
/// what the backends' own tests store.
pub(crate) fn keyed_webhook(campaigns: &[&str], key: Option<&str>) -> NewWebhook {
    webhook(campaigns, key.map(|key| (key, Duration::from_secs(60))))
}

fn webhook(campaigns: &[&str], dedup: Option<(&str, Duration)>) -> NewWebhook {
    NewWebhook {
        event: Event::new("src".into(), vec![], Bytes::from_static(b"{}"), None),
        campaigns: campaigns.iter().map(|c| c.to_string()).collect(),
        dedup: dedup.map(|(key, window)| Dedup {
            key: key.into(),
            window,
        }),
        not_before_ms: 0,
    }
}

async fn stored(queue: &dyn EventQueue, campaigns: &[&str]) -> Vec<QueuedEvent> {
    match queue.enqueue(webhook(campaigns, None)).await.unwrap() {
        Enqueued::Stored(events) => events,
        Enqueued::Duplicate { .. } => panic!("no dedup key, no duplicate"),
    }
}

async fn pull(queue: &dyn EventQueue, campaigns: &[&str], n: usize) -> Vec<QueuedEvent> {
    let campaigns = campaigns.iter().map(|&c| Arc::from(c)).collect();
    queue.next_events(campaigns, n, LEASE).await.unwrap().items
}

/// The delivery to `sink` a run of `event` asks for, due at `not_before_ms`.
pub(crate) fn delivery(event: &QueuedEvent, not_before_ms: u64) -> NewDelivery {
    NewDelivery {
        id: format!("msg_{}_0", event.event.id),
        campaign: "a".into(),
        event_id: event.event.id.clone(),
        destination: "sink".into(),
        headers: vec![],
        body: Bytes::from_static(b"hi"),
        not_before_ms,
    }
}

fn seqs(events: &[QueuedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

fn failed() -> Attempt {
    Attempt {
        at_ms: now_ms(),
        cause: "deadline".into(),
        detail: "too slow".into(),
    }
}

pub async fn a_retry_is_not_handed_out_before_it_is_due(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _) = open(dir.path()).await;
    let mut event = stored(&*queue, &["a"]).await.remove(0);
    assert_eq!(seqs(&pull(&*queue, &["a"], 10).await), [event.seq]);
    event.attempts.push(failed());
    event.not_before_ms = now_ms() + 300;
    queue.retry_event(&event).await.unwrap();
    let early = queue
        .next_events(vec!["a".into()], 10, LEASE)
        .await
        .unwrap();
    assert!(early.items.is_empty(), "not due yet");
    assert_eq!(early.next_due_ms, Some(event.not_before_ms));
    tokio::time::sleep(Duration::from_millis(event.not_before_ms - now_ms() + 5)).await;
    let due = pull(&*queue, &["a"], 10).await;
    assert_eq!(seqs(&due), [event.seq]);
    assert_eq!(due[0].attempts.len(), 1, "the redelivery count is kept");
}

/// Effects made to wait (an emit or a delivery after a delay) are stored
/// at once and handed out only when due.
pub async fn delayed_effects_are_not_handed_out_before_they_are_due(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _) = open(dir.path()).await;
    let event = stored(&*queue, &["a"]).await.remove(0);
    let due_ms = now_ms() + 300;
    let mut later = webhook(&["b"], None);
    later.not_before_ms = due_ms;
    let outcome = Outcome {
        ack: Some(event.seq),
        kv_namespace: "a".into(),
        deliveries: vec![delivery(&event, due_ms)],
        emitted: vec![later],
        ..Outcome::default()
    };
    queue.commit(outcome).await.unwrap();
    assert_eq!(queue.backlog("b"), 1, "stored at once");
    let early = queue
        .next_events(vec!["b".into()], 10, LEASE)
        .await
        .unwrap();
    assert!(early.items.is_empty(), "not due yet");
    assert_eq!(early.next_due_ms, Some(due_ms));
    let early = queue.next_deliveries("sink", 10, LEASE).await.unwrap();
    assert!(early.items.is_empty(), "not due yet");
    tokio::time::sleep(Duration::from_millis(due_ms - now_ms() + 5)).await;
    assert_eq!(pull(&*queue, &["b"], 10).await.len(), 1);
    let due = queue.next_deliveries("sink", 10, LEASE).await.unwrap();
    assert_eq!(due.items.len(), 1);
}

/// Keys list by prefix, in order, page by page; a commit whose
/// compare-and-swap saw a key that changed since stores nothing.
pub async fn kv_lists_keys_and_refuses_a_stale_compare_and_swap(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let (queue, kv) = open(dir.path()).await;
    for key in ["cart:2", "cart:1", "order:1", "cart:3"] {
        kv.set("ns", key, b"v", None).await.unwrap();
    }
    kv.set("ns", "cart:0", b"gone", Some(Duration::from_millis(1)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let first = kv.list("ns", "cart:", None, 2).await.unwrap();
    assert_eq!(first, ["cart:1", "cart:2"], "expired keys are not listed");
    let rest = kv.list("ns", "cart:", Some("cart:2"), 2).await.unwrap();
    assert_eq!(rest, ["cart:3"]);
    assert!(kv.list("other", "", None, 10).await.unwrap().is_empty());

    let event = stored(&*queue, &["a"]).await.remove(0);
    let swap = |saw: &'static [u8]| Outcome {
        ack: Some(event.seq),
        kv_namespace: "ns".into(),
        kv_expected: vec![KvExpectation::new("cart:1".into(), Some(saw))],
        kv: vec![KvChange::Set {
            key: "cart:1".into(),
            value: Bytes::from_static(b"new"),
            ttl: None,
        }],
        ..Outcome::default()
    };
    let stale = queue.commit(swap(b"old")).await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
    assert_eq!(
        kv.get("ns", "cart:1").await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
    queue.commit(swap(b"v")).await.unwrap();
    assert_eq!(
        kv.get("ns", "cart:1").await.unwrap().as_deref(),
        Some(&b"new"[..])
    );
}

pub async fn a_lease_that_runs_out_hands_the_item_out_again(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _) = open(dir.path()).await;
    let event = stored(&*queue, &["a"]).await.remove(0);
    let short = Duration::from_millis(100);
    let first = queue
        .next_events(vec!["a".into()], 10, short)
        .await
        .unwrap();
    assert_eq!(seqs(&first.items), [event.seq]);
    assert!(pull(&*queue, &["a"], 10).await.is_empty(), "leased");
    tokio::time::sleep(short + Duration::from_millis(20)).await;
    assert_eq!(seqs(&pull(&*queue, &["a"], 10).await), [event.seq]);
    // A worker still on it keeps it.
    queue.in_progress(event.seq, Duration::from_secs(60));
    tokio::time::sleep(short + Duration::from_millis(20)).await;
    assert!(pull(&*queue, &["a"], 10).await.is_empty(), "extended");
}

pub async fn settling_twice_is_harmless(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _) = open(dir.path()).await;
    let events = stored(&*queue, &["a", "a"]).await;
    pull(&*queue, &["a"], 10).await;
    let ack = || Outcome {
        ack: Some(events[0].seq),
        ..Outcome::default()
    };
    queue.commit(ack()).await.unwrap();
    queue.commit(ack()).await.unwrap();
    assert_eq!(queue.backlog("a"), 1, "the other event is still stored");
}

pub async fn buried_items_wait_as_dead_letters_until_replayed(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _) = open(dir.path()).await;
    let mut event = pull_one_stored(&*queue).await;
    event.attempts.push(failed());
    let dead = queue.bury(DeadItem::Event(event.clone())).await.unwrap();
    assert_eq!(queue.backlog("a"), 0);
    assert!(pull(&*queue, &["a"], 10).await.is_empty());
    let listed = queue
        .dead_letters(&DeadLetterFilter::default())
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].attempts()[0].cause, "deadline");
    let replayed = queue.replay(&[dead.seq]).await.unwrap();
    assert_eq!(replayed.events.len(), 1);
    let again = pull(&*queue, &["a"], 10).await;
    assert_eq!(seqs(&again), seqs(&replayed.events));
    assert!(again[0].attempts.is_empty(), "a fresh history");
    assert_eq!(again[0].event.id, event.event.id);
}

async fn pull_one_stored(queue: &dyn EventQueue) -> QueuedEvent {
    stored(queue, &["a"]).await;
    pull(queue, &["a"], 1).await.remove(0)
}

pub async fn a_webhook_id_is_remembered_for_its_window(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _) = open(dir.path()).await;
    let once = || webhook(&["a"], Some(("src/1", Duration::from_millis(200))));
    let Enqueued::Stored(first) = queue.enqueue(once()).await.unwrap() else {
        panic!("the first copy is stored");
    };
    match queue.enqueue(once()).await.unwrap() {
        Enqueued::Duplicate { event_id } => assert_eq!(event_id, first[0].event.id),
        Enqueued::Stored(_) => panic!("a copy within the window was stored"),
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(matches!(
        queue.enqueue(once()).await.unwrap(),
        Enqueued::Stored(_)
    ));
}

pub async fn campaigns_take_turns(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _) = open(dir.path()).await;
    for _ in 0..5 {
        stored(&*queue, &["busy"]).await;
    }
    stored(&*queue, &["quiet"]).await;
    let pulled = pull(&*queue, &["busy", "quiet"], 2).await;
    let campaigns: Vec<&str> = pulled.iter().map(|e| e.campaign.as_str()).collect();
    assert_eq!(campaigns, ["busy", "quiet"], "one each per turn");
    assert_eq!(pull(&*queue, &["busy", "quiet"], 10).await.len(), 4);
}

pub async fn an_ack_commits_its_effects_with_it_or_nothing(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let (queue, kv) = open(dir.path()).await;
    let event = pull_one_stored(&*queue).await;
    let outcome = |value: Bytes| Outcome {
        ack: Some(event.seq),
        kv_namespace: "a".into(),
        kv_expected: vec![],
        kv: vec![KvChange::Set {
            key: "k".into(),
            value,
            ttl: None,
        }],
        deliveries: vec![delivery(&event, 0)],
        emitted: vec![webhook(&["b"], None)],
    };
    // A commit the store refuses (a value over its limit) keeps nothing.
    let too_big = Bytes::from(vec![0; 2 << 20]);
    assert!(queue.commit(outcome(too_big)).await.is_err());
    assert_eq!(kv.get("a", "k").await.unwrap(), None);
    assert_eq!(queue.backlog("a"), 1, "not acked");
    assert_eq!(queue.backlog("b"), 0, "nothing emitted");
    let none = queue.next_deliveries("sink", 10, LEASE).await.unwrap();
    assert!(none.items.is_empty(), "nothing to deliver");

    queue
        .commit(outcome(Bytes::from_static(b"v")))
        .await
        .unwrap();
    assert_eq!(kv.get("a", "k").await.unwrap(), Some(b"v".to_vec()));
    assert_eq!((queue.backlog("a"), queue.backlog("b")), (0, 1));
    let delivery = queue.next_deliveries("sink", 10, LEASE).await.unwrap();
    assert_eq!(delivery.items.len(), 1);
    let emitted = pull(&*queue, &["b"], 10).await;
    assert_eq!(emitted.len(), 1);
}

pub async fn a_reopened_queue_keeps_the_backlog_and_forgets_the_leases(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let (queue, kv) = open(dir.path()).await;
    let events = stored(&*queue, &["a", "a", "a"]).await;
    assert_eq!(pull(&*queue, &["a"], 2).await.len(), 2);
    queue
        .commit(Outcome {
            ack: Some(events[2].seq),
            ..Outcome::default()
        })
        .await
        .unwrap();
    drop((queue, kv));
    let (queue, _) = open(dir.path()).await;
    assert_eq!(queue.backlog("a"), 2);
    let again = pull(&*queue, &["a"], 10).await;
    assert_eq!(seqs(&again), [events[0].seq, events[1].seq]);
}

pub async fn a_kv_namespace_keeps_ttls_and_its_quota_across_a_reopen(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let (queue, kv) = open(dir.path()).await;
    kv.set("a", "k", b"1", None).await.unwrap();
    kv.set("b b", "k.k", b"2", None).await.unwrap();
    kv.set("a", "gone", b"x", Some(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(kv.get("a", "k").await.unwrap(), Some(b"1".to_vec()));
    assert_eq!(kv.get("b b", "k.k").await.unwrap(), Some(b"2".to_vec()));
    assert_eq!(kv.get("a", "gone").await.unwrap(), None, "expired");
    assert_eq!(kv.get("never", "k").await.unwrap(), None);
    kv.delete("a", "gone").await.unwrap();
    kv.delete("b b", "k.k").await.unwrap();
    assert_eq!(kv.usage("a").await.unwrap().0.keys, 1);
    assert_eq!(kv.usage("b b").await.unwrap().0.keys, 0);

    let value = vec![0; 100 << 10];
    for i in 0..10 {
        kv.set("a", &format!("k{i}"), &value, None).await.unwrap();
    }
    let refused = kv.set("a", "k10", &value, None).await;
    assert!(
        matches!(refused, Err(StoreError::QuotaExceeded(ref m)) if m.contains("`a`")),
        "{refused:?}"
    );
    assert_eq!(
        kv.get("a", "k10").await.unwrap(),
        None,
        "nothing of it kept"
    );
    // Replacing a value counts its new size only.
    kv.set("a", "k0", b"small", None).await.unwrap();
    kv.set("a", "k10", &value, None).await.unwrap();
    // A commit over the quota is refused whole, ack included.
    let event = stored(&*queue, &["c"]).await.remove(0);
    let over = queue
        .commit(Outcome {
            ack: Some(event.seq),
            kv_namespace: "a".into(),
            kv: vec![KvChange::Set {
                key: "x".into(),
                value: Bytes::from(value),
                ttl: None,
            }],
            ..Outcome::default()
        })
        .await;
    assert!(
        matches!(over, Err(StoreError::QuotaExceeded(_))),
        "{over:?}"
    );
    assert_eq!(queue.backlog("c"), 1, "not acked");
    let usage = kv.usage("a").await.unwrap().0;
    drop((queue, kv));
    let (queue, kv) = open(dir.path()).await;
    assert_eq!(
        kv.usage("a").await.unwrap().0,
        usage,
        "kept across a reopen"
    );
    assert_eq!(kv.get("a", "k0").await.unwrap(), Some(b"small".to_vec()));
    assert_eq!(queue.backlog("c"), 1);
}

/// One `#[tokio::test]` per behaviour above, for the backend `open` opens.
macro_rules! conformance_tests {
    ($open:expr) => {
        mod conformance {
            use crate::store::conformance as suite;
            $crate::store::conformance::conformance_tests!(@each $open;
                a_retry_is_not_handed_out_before_it_is_due,
                delayed_effects_are_not_handed_out_before_they_are_due,
                kv_lists_keys_and_refuses_a_stale_compare_and_swap,
                a_lease_that_runs_out_hands_the_item_out_again,
                settling_twice_is_harmless,
                buried_items_wait_as_dead_letters_until_replayed,
                a_webhook_id_is_remembered_for_its_window,
                campaigns_take_turns,
                an_ack_commits_its_effects_with_it_or_nothing,
                a_reopened_queue_keeps_the_backlog_and_forgets_the_leases,
                a_kv_namespace_keeps_ttls_and_its_quota_across_a_reopen,
            );
        }
    };
    (@each $open:expr; $($name:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                suite::$name($open).await;
            }
        )+
    };
}
pub(crate) use conformance_tests;
