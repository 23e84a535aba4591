//! `hooklane plugin test`: the campaign author's inner loop. Runs a plugin
//! against recorded events, with no gateway running, under the same runtime
//! and limits, and carries out its actions as the gateway would: checked
//! and planned by [`actions::plan`] (an answer that cannot be sent, or a
//! destination or emit the campaign's config does not list, fails the
//! event as `bad_output`), KV changes committed to a scratch store with the
//! gateway's commit rules and quotas, so later events see them. Deliveries
//! and emits are shown, not made. Prints per event the actions, what they
//! came to, the fuel used and the time. Outbound HTTP goes to
//! `allowed_hosts` for real.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::actions;
use crate::config::{CampaignConfig, Config, Lane};
use crate::event::{Action, Event};
use crate::progress::Progress;
use crate::runtime::{HostServices, Output, PluginFailure, Runtime};
use crate::store::embedded::EmbeddedStore;
use crate::store::{EventQueue, Outcome, StoreError};

/// Which campaign to play and how.
#[derive(Debug, Clone)]
pub struct TestOptions {
    /// The component; by default the one the config names for the campaign.
    pub plugin: Option<PathBuf>,
    pub events: PathBuf,
    /// A gateway config: the campaign's lane, limits, settings, hosts,
    /// destinations and emits come from it, and actions are checked against
    /// them. Without one, any destination and emit is allowed.
    pub config: Option<PathBuf>,
    /// The campaign of `config` to play; may be left out when it has one.
    pub campaign: Option<String>,
    /// The lane whose default limits apply (default: the campaign's, or speed).
    pub lane: Option<Lane>,
    /// Settings added to (or replacing) the campaign's.
    pub settings: Vec<(String, String)>,
    /// Hosts added to the campaign's `allowed_hosts`.
    pub allowed_hosts: Vec<String>,
    /// Replaces the campaign's `events_per_instance`.
    pub events_per_instance: Option<u32>,
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

fn setup(error: impl std::fmt::Display) -> TestError {
    TestError::Setup(error.to_string())
}

/// The campaign under test: its name, its config, and whether its
/// destinations and emits are the config's (to be checked) or unknown.
struct UnderTest {
    name: String,
    config: Config,
    checked: bool,
}

impl UnderTest {
    fn campaign(&self) -> &CampaignConfig {
        &self.config.campaigns[&self.name]
    }
}

/// Run every event of the file through the plugin; each event's report is
/// handed to `report` as soon as it is done, with a progress bar on a
/// terminal for long files. Returns how many events failed.
pub async fn run(
    options: &TestOptions,
    mut report: impl FnMut(&Value),
) -> Result<usize, TestError> {
    let scratch = tempfile::tempdir().map_err(setup)?;
    let mut under_test = under_test(options)?;
    if let Some(count) = options.events_per_instance {
        let campaign = under_test.config.campaigns.get_mut(&under_test.name);
        campaign.expect("chosen by under_test").events_per_instance = count;
    }
    let (name, campaign) = (under_test.name.as_str(), under_test.campaign());
    let limits = campaign.limits(&under_test.config.lanes);
    let quota = under_test.config.store.kv_quota();
    let store = Arc::new(EmbeddedStore::open(scratch.path(), false, quota).map_err(setup)?);
    let services = HostServices::new(store.clone()).map_err(setup)?;
    let cache = crate::runtime::tool_cache_dir();
    let runtime = Runtime::new(
        &under_test.config.runtime,
        limits.memory_mb,
        services,
        cache,
    )
    .map_err(setup)?;
    let plugin = runtime.load(name, campaign, &limits).map_err(setup)?;
    let kv_namespace = plugin.sandbox().kv_namespace.clone();
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
        let carried_out = match run.result {
            Ok(output) => {
                line_report["actions"] = output.actions.iter().map(describe).collect();
                let outcome = Outcome {
                    kv_namespace: kv_namespace.clone(),
                    ..Outcome::default()
                };
                carry_out(&store, &under_test, &event, output, outcome).await?
            }
            Err(failure) => Err(failure),
        };
        match carried_out {
            Ok(planned) => line_report["planned"] = planned,
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

/// What the gateway would make of a successful run: the plan of its
/// actions, with the KV changes committed to the scratch store (the run's
/// own writes first); deliveries and emits described, not made.
async fn carry_out(
    store: &EmbeddedStore,
    under_test: &UnderTest,
    event: &Event,
    output: Output,
    mut outcome: Outcome,
) -> Result<Result<Value, PluginFailure>, TestError> {
    let mut allowed = under_test.campaign().clone();
    if !under_test.checked {
        // No config to check them against: whatever it names is allowed.
        let later = output.later.iter().map(|(action, _)| action);
        for action in output.actions.iter().chain(later) {
            match action {
                Action::Deliver { destination, .. } => {
                    allowed.destinations.push(destination.clone())
                }
                Action::Emit { campaign, .. } => allowed.emits.push(campaign.clone()),
                _ => {}
            }
        }
    }
    let reply = match actions::plan(&under_test.name, &allowed, event, output, &mut outcome) {
        Ok(reply) => reply,
        Err(failure) => return Ok(Err(failure)),
    };
    let planned = json!({
        "reply": reply.map(|r| r.status.as_u16()),
        "kv": outcome.kv.iter().map(|change| change.key()).collect::<Vec<_>>(),
        "deliveries": outcome.deliveries.iter().map(|d| json!({ "id": d.id, "destination": d.destination })).collect::<Vec<_>>(),
        "emits": outcome.emitted.iter().map(|e| json!({ "event_id": e.event.id, "campaigns": e.campaigns })).collect::<Vec<_>>(),
    });
    let kv_only = Outcome {
        kv_namespace: outcome.kv_namespace,
        kv: outcome.kv,
        ..Outcome::default()
    };
    match store.commit(kv_only).await {
        Ok(_) => Ok(Ok(planned)),
        Err(StoreError::QuotaExceeded(quota)) => Ok(Err(PluginFailure::KvQuota(quota))),
        Err(other) => Err(setup(format!("the scratch KV store failed: {other}"))),
    }
}

/// The campaign the options name: from the config file, or made up from
/// the plugin file and the flags.
fn under_test(options: &TestOptions) -> Result<UnderTest, TestError> {
    let Some(file) = &options.config else {
        let plugin = options.plugin.as_ref().ok_or_else(|| {
            setup("name the plugin file, or a config and its campaign (--config FILE --campaign NAME)")
        })?;
        let config = made_up_config(plugin, options)?;
        return Ok(UnderTest {
            name: MADE_UP_CAMPAIGN.into(),
            config,
            checked: false,
        });
    };
    let mut config = Config::load(file).map_err(setup)?;
    let names = || {
        config
            .campaigns
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    };
    let name = match &options.campaign {
        Some(name) if config.campaigns.contains_key(name) => name.clone(),
        Some(name) => {
            return Err(setup(format!(
                "--campaign {name}: {} has no campaign `{name}` (it has: {})",
                file.display(),
                names()
            )))
        }
        None if config.campaigns.len() == 1 => names(),
        None => {
            return Err(setup(format!(
                "{} has {} campaigns: name one with --campaign (one of: {})",
                file.display(),
                config.campaigns.len(),
                names()
            )))
        }
    };
    let campaign = config.campaigns.get_mut(&name).expect("chosen above");
    if let Some(plugin) = &options.plugin {
        campaign.plugin = plugin.clone();
    }
    if let Some(lane) = options.lane {
        campaign.lane = lane;
    }
    campaign.settings.extend(options.settings.iter().cloned());
    campaign
        .allowed_hosts
        .extend(options.allowed_hosts.iter().cloned());
    Ok(UnderTest {
        name,
        config,
        checked: true,
    })
}

/// The name of the campaign made up when there is no config.
const MADE_UP_CAMPAIGN: &str = "plugin-under-test";

fn made_up_config(plugin: &Path, options: &TestOptions) -> Result<Config, TestError> {
    let quote = |text: &str| toml::Value::String(text.to_owned()).to_string();
    let settings: Vec<String> = options
        .settings
        .iter()
        .map(|(k, v)| format!("{} = {}", quote(k), quote(v)))
        .collect();
    let hosts: Vec<String> = options.allowed_hosts.iter().map(|h| quote(h)).collect();
    let text = format!(
        "[sources.test]\n[campaigns.{MADE_UP_CAMPAIGN}]\nsource = \"test\"\nlane = \"{}\"\nmode = \"async\"\nplugin = {}\nallowed_hosts = [{}]\nsettings = {{ {} }}\n",
        options.lane.unwrap_or(Lane::Speed),
        quote(&plugin.display().to_string()),
        hosts.join(", "),
        settings.join(", ")
    );
    Config::parse(&text, Path::new("(plugin test)"), Path::new(".")).map_err(setup)
}

/// What `--watch` looks at besides the plugin, events and config files,
/// and how to rebuild the plugin.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    pub paths: Vec<PathBuf>,
    /// A shell command run before each rerun.
    pub build: Option<String>,
}

/// How often `--watch` looks at the files' modification times: polling
/// keeps it dependency-free and works on every file system, and a person
/// saving a file does not notice a quarter of a second.
const WATCH_POLL: Duration = Duration::from_millis(250);

/// Run the test, then again whenever a watched file changes (rebuilding
/// first), until the process is stopped. Each run ends with a line
/// `{"run": N, "failed": F}` (or `"error"` when the run could not start).
pub async fn watch(options: &TestOptions, watch: &Watch, mut report: impl FnMut(&Value)) {
    let mut paths: Vec<PathBuf> = watch.paths.clone();
    paths.extend(options.plugin.iter().cloned());
    paths.push(options.events.clone());
    paths.extend(options.config.iter().cloned());
    let mut seen = newest_change(&paths);
    for run_number in 1.. {
        let ended = match build(watch.build.as_deref()) {
            Err(error) => json!({ "run": run_number, "error": error }),
            Ok(()) => match run(options, &mut report).await {
                Ok(failed) => json!({ "run": run_number, "failed": failed }),
                Err(error) => json!({ "run": run_number, "error": error.to_string() }),
            },
        };
        report(&ended);
        loop {
            tokio::time::sleep(WATCH_POLL).await;
            let now = newest_change(&paths);
            if now != seen {
                seen = now;
                break;
            }
        }
    }
}

/// Run the `--build` command, if any; its output goes to stderr.
fn build(command: Option<&str>) -> Result<(), String> {
    let Some(command) = command else {
        return Ok(());
    };
    let status = std::process::Command::new("sh")
        .args(["-c", command])
        .stdout(std::process::Stdio::inherit())
        .status()
        .map_err(|e| format!("cannot run the build command `{command}`: {e}"))?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| format!("the build command `{command}` failed ({status})"))
}

/// The latest modification time under `paths` (files, and folders walked),
/// with how many files were seen: a deleted file changes it too.
fn newest_change(paths: &[PathBuf]) -> (Option<std::time::SystemTime>, usize) {
    let mut newest = None;
    let mut files = 0;
    let mut pending: Vec<PathBuf> = paths.to_vec();
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            let entries = std::fs::read_dir(&path).into_iter().flatten().flatten();
            pending.extend(entries.map(|entry| entry.path()));
            continue;
        }
        files += 1;
        newest = newest.max(meta.modified().ok());
    }
    (newest, files)
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
