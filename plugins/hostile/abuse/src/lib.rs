//! Hostile: does whatever the event's JSON body tells it, to push at the
//! gateway's limits from one plugin. Every key is optional and they run in
//! this order:
//!
//! - `"log_bytes": N` — write N bytes through the logging import, 1 KiB a line;
//! - `"print_bytes": N` — print N bytes to stdout, 1 KiB a line;
//! - `"kv_writes": {"prefix": "k", "count": N, "bytes": B}` — N keys of B
//!   bytes through the kv import (stops at the first refusal, which it
//!   reports in its answer);
//! - `"kv_read": "key"` — read a key back through the kv import;
//! - `"kv_list": "prefix"` — list the keys with that prefix (first 100);
//! - `"cas": {"key": k, "expected": e, "value": v}` — compare-and-swap
//!   (`null` for absent), reporting whether it swapped;
//! - `"fetch": "url"` — an http-fetch; its error text goes into the answer;
//! - `"fail": "deadline" | "error"` — then spin until the deadline, or
//!   fail with an internal error;
//! - `"deliver_to": "destination"` — deliver the body unchanged there;
//! - `"report_to": "destination"` — deliver the JSON report there;
//! - `"respond": {"status": S, "headers": [[name, value], ...]}` — answer
//!   with that status and those headers and, as body, a JSON report of what
//!   happened.
//!
//! Setting `emit_to` (campaign names, comma-separated) and `fanout` (default
//! 1): emit the body unchanged, `fanout` times to each — an emit cycle when
//! two campaigns name each other.

use hooklane_sdk::{config, http, json, kv, Action, Campaign, Error, Event};
use serde_json::Value;

struct Abuse;

impl Campaign for Abuse {
    fn handle(event: Event) -> Result<Vec<Action>, Error> {
        let script: Value = event.json()?;
        let mut report = serde_json::Map::new();
        let line = "x".repeat(1023);
        for _ in 0..script["log_bytes"].as_u64().unwrap_or(0) / 1024 {
            hooklane_sdk::info!("{line}");
        }
        for _ in 0..script["print_bytes"].as_u64().unwrap_or(0) / 1024 {
            println!("{line}");
        }
        if let Some(writes) = script.get("kv_writes") {
            let prefix = writes["prefix"].as_str().unwrap_or("k");
            let value = vec![b'v'; writes["bytes"].as_u64().unwrap_or(1) as usize];
            let mut written = 0;
            for i in 0..writes["count"].as_u64().unwrap_or(1) {
                if let Err(error) = kv::set(&format!("{prefix}{i}"), &value, None) {
                    report.insert("kv_error".into(), format!("{error:?}").into());
                    break;
                }
                written += 1;
            }
            report.insert("kv_written".into(), written.into());
        }
        if let Some(key) = script["kv_read"].as_str() {
            let found = kv::get(key)?.map(|v| v.len());
            report.insert("kv_read_bytes".into(), json!(found));
        }
        if let Some(prefix) = script["kv_list"].as_str() {
            let (keys, _) = kv::list(prefix, None, 100)?;
            report.insert("kv_list".into(), json!(keys));
        }
        if let Some(cas) = script.get("cas") {
            let key = cas["key"].as_str().unwrap_or("cas");
            let expected = cas["expected"].as_str().map(str::as_bytes);
            let value = cas["value"].as_str().map(str::as_bytes);
            let swapped = kv::compare_and_swap(key, expected, value, None)?;
            report.insert("swapped".into(), swapped.into());
        }
        if let Some(url) = script["fetch"].as_str() {
            let answer = match http::get(url) {
                Ok(response) => json!({ "status": response.status }),
                Err(error) => json!({ "error": format!("{error:?}") }),
            };
            report.insert("fetch".into(), answer);
        }
        match script["fail"].as_str() {
            Some("deadline") => loop {
                std::hint::black_box(());
            },
            Some("error") => return Err(Error::internal("failing as asked")),
            _ => {}
        }
        let mut actions = Vec::new();
        if let Some(destination) = script["deliver_to"].as_str() {
            actions.push(Action::Deliver(hooklane_sdk::Delivery {
                destination: destination.into(),
                headers: vec![],
                body: event.body.clone(),
            }));
        }
        if let Some(destination) = script["report_to"].as_str() {
            let body = serde_json::to_vec(&report).map_err(|e| Error::internal(e.to_string()))?;
            actions.push(Action::Deliver(hooklane_sdk::Delivery {
                destination: destination.into(),
                headers: vec![],
                body,
            }));
        }
        if let Some(targets) = config::get("emit_to") {
            let fanout: usize = config::get("fanout").map_or(Ok(1), |f| {
                f.parse()
                    .map_err(|_| Error::internal("fanout is not a number"))
            })?;
            for target in targets.split(',') {
                for _ in 0..fanout {
                    actions.push(Action::Emit(hooklane_sdk::Emission {
                        campaign: target.trim().into(),
                        body: event.body.clone(),
                        content_type: event.content_type.clone(),
                    }));
                }
            }
        }
        if let Some(respond) = script.get("respond") {
            let headers = respond["headers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|pair| Some((pair[0].as_str()?.into(), pair[1].as_str()?.into())))
                .collect();
            let status = respond["status"].as_u64().unwrap_or(200) as u16;
            let body = serde_json::to_vec(&report).map_err(|e| Error::internal(e.to_string()))?;
            actions.push(Action::respond(status, headers, body));
        }
        Ok(actions)
    }
}

hooklane_sdk::export!(Abuse);
