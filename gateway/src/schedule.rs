//! Campaigns that act on a schedule: `[campaigns.X] schedule = "0 3 * * *"`
//! (cron, seconds optional, in `time_zone`, default UTC) fires a synthetic
//! event into the campaign at every slot — durably, through the same
//! queue as webhooks, and once per slot: the event is deduplicated by the
//! slot (`schedule/<campaign>/<slot ms>`), so nodes that share a store,
//! or a restart in the middle of firing, fire it once. The last slot fired
//! is kept in the store; slots missed while the gateway was down are fired
//! at start as `catch_up` says: `none`, the `last` one (default), or `all`
//! (at most [`MOST_CAUGHT_UP`]).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use croner::Cron;
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use serde::Deserialize;

use crate::event::Event;
use crate::gateway::Gateway;
use crate::store::{Dedup, StoreError};

/// What to do with slots missed while the gateway was down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Skip them: the next slot is the next one from now.
    None,
    /// Fire the latest missed slot once.
    #[default]
    Last,
    /// Fire every missed slot, oldest first.
    All,
}

/// Most missed slots one campaign fires at start with `catch_up = "all"`.
pub const MOST_CAUGHT_UP: usize = 1000;
/// The KV namespace holding each scheduled campaign's last fired slot.
const NAMESPACE: &str = "hooklane";
/// How long a fired slot is remembered for deduplication.
const DEDUP_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest the scheduler sleeps: a reload that adds or changes a
/// schedule is picked up within it.
const MOST_ASLEEP: Duration = Duration::from_secs(1);

/// A parsed `schedule`: when a campaign's slots fall. The config writes it
/// as a cron pattern, `schedule = "0 3 * * *"`, or as a table,
/// `schedule = { cron = "0 3 * * *", time_zone = "Europe/Berlin",
/// catch_up = "all" }`.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    time_zone: TimeZone,
    /// How the config wrote it, to tell a changed schedule.
    text: String,
    pub catch_up: CatchUp,
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

/// The table form of a schedule.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleTable {
    cron: String,
    time_zone: Option<String>,
    #[serde(default)]
    catch_up: CatchUp,
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Schedule;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a cron pattern, or a table with `cron`, `time_zone` and `catch_up`")
            }

            fn visit_str<E: serde::de::Error>(self, cron: &str) -> Result<Schedule, E> {
                Schedule::parse(cron, None, CatchUp::default()).map_err(E::custom)
            }

            fn visit_map<M: serde::de::MapAccess<'de>>(self, map: M) -> Result<Schedule, M::Error> {
                let table =
                    ScheduleTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Schedule::parse(&table.cron, table.time_zone.as_deref(), table.catch_up)
                    .map_err(serde::de::Error::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl Schedule {
    /// Parse `cron` in `time_zone` (an IANA name; default UTC). The error
    /// says what is wrong, for a config error.
    pub fn parse(cron: &str, time_zone: Option<&str>, catch_up: CatchUp) -> Result<Self, String> {
        let parsed = Cron::from_str(cron).map_err(|e| {
            format!("expected a cron pattern (`min hour day month weekday`, seconds optional in front), found `{cron}`: {e}")
        })?;
        let zone = time_zone.unwrap_or("UTC");
        let time_zone = TimeZone::get(zone).map_err(|_| {
            format!("expected an IANA time zone such as `Europe/Berlin`, found `{zone}`")
        })?;
        Ok(Schedule {
            cron: parsed,
            time_zone,
            text: format!("{cron} {zone} {catch_up:?}"),
            catch_up,
        })
    }

    /// The slots after `after` up to and including `until`, oldest first,
    /// at most `most`.
    fn slots(&self, after: Timestamp, until: Timestamp, most: usize) -> Vec<Zoned> {
        self.cron
            .iter_after(after.to_zoned(self.time_zone.clone()))
            .take_while(|slot| slot.timestamp() <= until)
            .take(most)
            .collect()
    }

    /// The first slot after `after`.
    fn next(&self, after: Timestamp) -> Option<Zoned> {
        let after = after.to_zoned(self.time_zone.clone());
        self.cron.find_next_occurrence(&after, false).ok()
    }

    /// Of the slots missed between `last_fired` and `now`, the ones to fire.
    fn caught_up(&self, last_fired: Timestamp, now: Timestamp) -> Vec<Zoned> {
        match self.catch_up {
            CatchUp::None => Vec::new(),
            CatchUp::All => self.slots(last_fired, now, MOST_CAUGHT_UP),
            CatchUp::Last => {
                let since = self
                    .cron
                    .find_previous_occurrence(&now.to_zoned(self.time_zone.clone()), true);
                since
                    .ok()
                    .filter(|slot| slot.timestamp() > last_fired)
                    .into_iter()
                    .collect()
            }
        }
    }
}

/// One scheduled campaign as the scheduler tracks it.
struct Tracked {
    schedule: Schedule,
    /// Slots up to here are fired (or skipped).
    done_until: Timestamp,
}

/// Fire every scheduled campaign's slots until the process ends.
pub async fn run(gateway: Arc<Gateway>) {
    let mut tracked: HashMap<Arc<str>, Tracked> = HashMap::new();
    loop {
        let now = Timestamp::now();
        let mut wake = now + MOST_ASLEEP;
        let mut scheduled = Vec::new();
        gateway.campaigns().for_each(|campaign| {
            if let Some(schedule) = campaign.config.schedule.clone() {
                scheduled.push((campaign.name.clone(), schedule));
            }
        });
        tracked.retain(|name, _| scheduled.iter().any(|(n, _)| n == name));
        for (name, schedule) in scheduled {
            let due = match tracked.get_mut(&name) {
                Some(known) if known.schedule.text == schedule.text => {
                    known.schedule.slots(known.done_until, now, MOST_CAUGHT_UP)
                }
                // New, changed, or first seen since start: catch up.
                _ => {
                    let last = last_fired(&gateway, &name).await;
                    let due = last.map_or_else(Vec::new, |last| schedule.caught_up(last, now));
                    let tracking = Tracked {
                        schedule,
                        done_until: now,
                    };
                    tracked.insert(name.clone(), tracking);
                    due
                }
            };
            let known = tracked.get_mut(&name).expect("tracked above");
            let mut fired_all = true;
            for slot in due {
                if let Err(error) = fire(&gateway, &name, &known.schedule, &slot).await {
                    // Tried again on the next wake, from this slot on.
                    tracing::warn!(campaign = %name, slot = %slot, %error, "Could not fire a scheduled event; trying again");
                    known.done_until = slot.timestamp() - jiff::SignedDuration::from_nanos(1);
                    fired_all = false;
                    break;
                }
            }
            if fired_all {
                known.done_until = known.done_until.max(now);
                if let Some(next) = known.schedule.next(known.done_until) {
                    wake = wake.min(next.timestamp());
                }
            }
        }
        let sleep = Timestamp::now().duration_until(wake);
        tokio::time::sleep(sleep.try_into().unwrap_or(Duration::ZERO)).await;
    }
}

/// Store the event of `slot` for `campaign` (once per slot), then record
/// the slot as fired.
async fn fire(
    gateway: &Arc<Gateway>,
    campaign: &str,
    schedule: &Schedule,
    slot: &Zoned,
) -> Result<(), StoreError> {
    let slot_ms = slot.timestamp().as_millisecond();
    let body = serde_json::json!({
        "schedule": schedule.cron.pattern.to_string(),
        "slot": slot.to_string(),
        "slot_ms": slot_ms,
    });
    let event = Event::new(
        format!("schedule:{campaign}"),
        Vec::new(),
        Bytes::from(body.to_string()),
        Some("application/json".into()),
    );
    let dedup = Dedup {
        key: format!("schedule/{campaign}/{slot_ms}"),
        window: DEDUP_WINDOW,
    };
    gateway
        .accept(event, vec![campaign.to_owned()], Some(dedup))
        .await?;
    let key = format!("schedule/{campaign}");
    let value = slot_ms.to_string();
    gateway
        .kv()
        .set(NAMESPACE, &key, value.as_bytes(), None)
        .await?;
    tracing::debug!(campaign, slot = %slot, "Fired a scheduled event");
    Ok(())
}

/// When `campaign` last fired, if it ever did.
async fn last_fired(gateway: &Gateway, campaign: &str) -> Option<Timestamp> {
    let key = format!("schedule/{campaign}");
    let stored = match gateway.kv().get(NAMESPACE, &key).await {
        Ok(stored) => stored?,
        Err(error) => {
            tracing::warn!(campaign, %error, "Cannot read when a schedule last fired: missed slots are not caught up");
            return None;
        }
    };
    let ms: i64 = std::str::from_utf8(&stored).ok()?.parse().ok()?;
    Timestamp::from_millisecond(ms).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn slots(schedule: &Schedule, after: &str, until: &str) -> Vec<String> {
        schedule
            .slots(at(after), at(until), 100)
            .iter()
            .map(|slot| slot.timestamp().to_string())
            .collect()
    }

    #[test]
    fn slots_fall_in_the_schedules_time_zone() {
        let daily = Schedule::parse("0 3 * * *", Some("Europe/Berlin"), CatchUp::Last).unwrap();
        // 03:00 in Berlin is 02:00 UTC in winter.
        assert_eq!(
            slots(&daily, "2026-12-01T00:00:00Z", "2026-12-03T00:00:00Z"),
            ["2026-12-01T02:00:00Z", "2026-12-02T02:00:00Z"]
        );
    }

    #[test]
    fn seconds_are_optional_in_front() {
        let every_second = Schedule::parse("* * * * * *", None, CatchUp::All).unwrap();
        assert_eq!(
            slots(
                &every_second,
                "2026-12-01T00:00:00Z",
                "2026-12-01T00:00:02Z"
            ),
            ["2026-12-01T00:00:01Z", "2026-12-01T00:00:02Z"]
        );
    }

    #[test]
    fn missed_slots_are_caught_up_as_configured() {
        let last = at("2026-12-01T00:00:30Z");
        let now = at("2026-12-01T00:03:10Z");
        let caught = |catch_up| {
            let minutely = Schedule::parse("* * * * *", None, catch_up).unwrap();
            minutely
                .caught_up(last, now)
                .iter()
                .map(|slot| slot.timestamp().to_string())
                .collect::<Vec<_>>()
        };
        assert!(caught(CatchUp::None).is_empty());
        assert_eq!(caught(CatchUp::Last), ["2026-12-01T00:03:00Z"]);
        assert_eq!(
            caught(CatchUp::All),
            [
                "2026-12-01T00:01:00Z",
                "2026-12-01T00:02:00Z",
                "2026-12-01T00:03:00Z"
            ]
        );
        let nothing_missed = Schedule::parse("* * * * *", None, CatchUp::Last).unwrap();
        assert!(nothing_missed.caught_up(now, now).is_empty());
    }

    #[test]
    fn bad_patterns_and_zones_are_named() {
        let bad = Schedule::parse("61 * * * *", None, CatchUp::Last).unwrap_err();
        assert!(bad.contains("found `61 * * * *`"), "{bad}");
        let zone = Schedule::parse("0 3 * * *", Some("Mars/Olympus"), CatchUp::Last).unwrap_err();
        assert!(zone.contains("found `Mars/Olympus`"), "{zone}");
    }
}
