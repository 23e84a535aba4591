//! `daily-enrich` (care lane, asynchronous): merges enrichment records into
//! customer profiles kept in KV (`profile:<customer_id>`). A `null` attribute
//! removes it. Nothing here is urgent, but nothing may be lost: every profile
//! write is an action the gateway applies only when the whole batch succeeded.

use hooklane_sdk::{clock, kv, Action, Campaign, Error, Event};
use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Deserialize)]
struct Record {
    customer_id: String,
    attributes: Map<String, Value>,
}

/// Either one record or `{"records": [...]}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Batch {
    Many { records: Vec<Record> },
    One(Record),
}

/// Most records in one event; bigger batches should be split by the sender.
const MAX_RECORDS: usize = 1000;

struct DailyEnrich;

impl Campaign for DailyEnrich {
    fn handle(event: Event) -> Result<Vec<Action>, Error> {
        let records = match event.json::<Batch>()? {
            Batch::Many { records } => records,
            Batch::One(record) => vec![record],
        };
        if records.len() > MAX_RECORDS {
            return Err(Error::invalid_input(format!(
                "{} records in one event, at most {MAX_RECORDS}",
                records.len()
            )));
        }
        let mut profiles: Vec<(String, Map<String, Value>)> = Vec::new();
        for record in records {
            if record.customer_id.is_empty() {
                return Err(Error::invalid_input("a record has an empty `customer_id`"));
            }
            let key = format!("profile:{}", record.customer_id);
            // Several records for one customer in a batch merge in order.
            let index = match profiles.iter().position(|(k, _)| *k == key) {
                Some(i) => i,
                None => {
                    let stored = kv::get_json::<Map<String, Value>>(&key)?.unwrap_or_default();
                    profiles.push((key, stored));
                    profiles.len() - 1
                }
            };
            merge(&mut profiles[index].1, record.attributes);
        }
        let now = clock::now_ms();
        let mut actions = Vec::with_capacity(profiles.len());
        for (key, mut profile) in profiles {
            profile.insert("updated_at".into(), now.into());
            actions.push(Action::kv_set_json(&key, &profile, None)?);
        }
        hooklane_sdk::info!("Enriched {} profiles", actions.len());
        Ok(actions)
    }
}

fn merge(profile: &mut Map<String, Value>, attributes: Map<String, Value>) {
    for (name, value) in attributes {
        if value.is_null() {
            profile.remove(&name);
        } else {
            profile.insert(name, value);
        }
    }
}

hooklane_sdk::export!(DailyEnrich);
