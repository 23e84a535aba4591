//! `hooklane plugin test`: the campaign author's inner loop. Runs a plugin
//! against recorded events, with no gateway running, under the same runtime
//! and limits, and prints per event the actions, the fuel used and the time.
//! KV is a scratch store that lives for the run, so events see each other's
//! writes; outbound HTTP goes to `allowed_hosts` for real.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::{Config, Lane};
use crate::event::{Action, Event};
use crate::progress::Progress;
use crate::runtime::{HostServices, Runtime};
use crate::store::embedded::EmbeddedStore;

/// How to run the plugin: the campaign settings a config would give it.
#[derive(Debug, Clone)]
pub struct TestOptions {
    pub plugin: PathBuf,
    pub events: PathBuf,
    pub lane: Lane,
    pub settings: Vec<(String, String)>,
    pub allowed_hosts: Vec<String>,
}

/// One line of the events file. Every field may be left out.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RecordedEvent {
    /// The source name the plugin sees. Default `test`.
    source: Option<String>,
    /// Request headers, names lower-cased by the runner.
    headers: serde_json::Map<String, Value>,
    /// A JSON value sent as JSON; a string is sent as it is.
    body: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum TestError {
    #[error("{file}:{line}: not a recorded event: {reason}")]
    BadEvent {
        file: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0}")]
    Setup(String),
}

/// Run every event of the file through the plugin; each event's report is
/// handed to `report` as soon as it is done, with a progress bar on a
/// terminal for long files. Returns how many events failed.
pub async fn run(
    options: &TestOptions,
    mut report: impl FnMut(&Value),
) -> Result<usize, TestError> {
    let scratch = tempfile::tempdir().map_err(|e| TestError::Setup(e.to_string()))?;
    let config = campaign_config(options)?;
    let campaign = &config.campaigns["plugin-under-test"];
    let limits = campaign.limits(&config.lanes);
    let store = EmbeddedStore::open(scratch.path(), false, config.store.kv_quota())
        .map_err(|e| TestError::Setup(e.to_string()))?;
    let services =
        HostServices::new(Arc::new(store)).map_err(|e| TestError::Setup(e.to_string()))?;
    let runtime = Runtime::new(&config.runtime, limits.memory_mb, services, None)
        .map_err(|e| TestError::Setup(e.to_string()))?;
    let plugin = runtime
        .load("plugin-under-test", campaign, &limits)
        .map_err(|e| TestError::Setup(e.to_string()))?;
    let recorded = std::fs::read_to_string(&options.events)
        .map_err(|e| TestError::Read(options.events.clone(), e))?;
    let events = recorded.lines().filter(|l| !l.trim().is_empty()).count();
    let progress = Progress::new("Testing events", events);
    let mut failed = 0;
    for (index, line) in recorded.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| TestError::BadEvent {
            file: options.events.clone(),
            line: index + 1,
            reason,
        };
        let recorded: RecordedEvent = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let event = to_event(recorded).map_err(bad)?;
        let run = plugin
            .run(&event, Duration::from_millis(limits.deadline_ms))
            .await;
        let mut line_report = json!({
            "event": index + 1,
            "fuel": run.fuel_used,
            "ms": (run.elapsed.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
        });
        match run.result {
            Ok(output) => {
                line_report["actions"] = output.actions.iter().map(describe).collect();
                if !output.kv_writes.is_empty() {
                    line_report["kv_writes"] = output.kv_writes.iter().map(|w| w.key()).collect();
                }
            }
            Err(failure) => {
                failed += 1;
                line_report["failed"] =
                    json!({ "cause": failure.cause(), "detail": failure.to_string() });
            }
        }
        progress.suspend(|| report(&line_report));
        progress.step();
    }
    progress.finish();
    Ok(failed)
}

fn campaign_config(options: &TestOptions) -> Result<Config, TestError> {
    let quote = |text: &str| toml::Value::String(text.to_owned()).to_string();
    let settings: Vec<String> = options
        .settings
        .iter()
        .map(|(k, v)| format!("{} = {}", quote(k), quote(v)))
        .collect();
    let hosts: Vec<String> = options.allowed_hosts.iter().map(|h| quote(h)).collect();
    let text = format!(
        "[sources.test]\n[campaigns.plugin-under-test]\nsource = \"test\"\nlane = \"{}\"\nmode = \"async\"\nplugin = {}\nallowed_hosts = [{}]\nsettings = {{ {} }}\n",
        options.lane,
        quote(&options.plugin.display().to_string()),
        hosts.join(", "),
        settings.join(", ")
    );
    Config::parse(&text, Path::new("(plugin test)"), Path::new("."))
        .map_err(|e| TestError::Setup(e.to_string()))
}

fn to_event(recorded: RecordedEvent) -> Result<Event, String> {
    let mut headers = Vec::with_capacity(recorded.headers.len());
    for (name, value) in recorded.headers {
        let value = value
            .as_str()
            .ok_or_else(|| format!("header `{name}` must be a string"))?;
        headers.push((name.to_ascii_lowercase(), value.to_owned()));
    }
    let (body, content_type) = match recorded.body {
        Value::String(text) => (text.into_bytes(), None),
        Value::Null => (Vec::new(), None),
        json => (
            json.to_string().into_bytes(),
            Some("application/json".to_owned()),
        ),
    };
    let source = recorded.source.unwrap_or_else(|| "test".into());
    Ok(Event::new(source, headers, body.into(), content_type))
}

/// An action as the author wants to read it: bodies as text when they are.
fn describe(action: &Action) -> Value {
    let text = |body: &[u8]| match std::str::from_utf8(body) {
        Ok(text) => Value::String(text.to_owned()),
        Err(_) => json!({ "bytes": body.len() }),
    };
    match action {
        Action::Respond {
            status,
            headers,
            body,
        } => {
            json!({ "respond": { "status": status, "headers": headers, "body": text(body) } })
        }
        Action::Deliver {
            destination,
            headers,
            body,
        } => {
            json!({ "deliver": { "destination": destination, "headers": headers, "body": text(body) } })
        }
        Action::KvSet {
            key,
            value,
            ttl_seconds,
        } => {
            json!({ "kv_set": { "key": key, "value": text(value), "ttl_seconds": ttl_seconds } })
        }
        Action::KvDelete { key } => json!({ "kv_delete": { "key": key } }),
        Action::Emit { campaign, body, .. } => {
            json!({ "emit": { "campaign": campaign, "body": text(body) } })
        }
    }
}
