//! The `hooklane` command line.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use hooklane::config::Config;
use hooklane::server::listening_line;
use hooklane::telemetry::OneLinePerRecord;
use tracing_subscriber::EnvFilter;

// Per-request allocations (hyper's buffers, events, redb's pages) cost
// less with mimalloc than with glibc's arenas; see the README's Benchmarks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "hooklane",
    version,
    about = "A webhook gateway with lanes and sandboxed campaign plugins"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The configuration file.
        #[arg(long, short, default_value = "hooklane.toml")]
        config: PathBuf,
    },
    /// Validate a configuration file and the plugins it names, then exit.
    CheckConfig {
        /// The configuration file.
        #[arg(long, short, default_value = "hooklane.toml")]
        config: PathBuf,
    },
    /// Inspect and replay dead letters of a running gateway.
    DeadLetters {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// Make a running gateway read its config file again (like `kill -HUP`),
    /// and say what changed or why the new config was refused.
    Reload {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show the destinations' state, or enable one a `410 Gone` disabled.
    Destinations {
        #[command(flatten)]
        admin: AdminArgs,
        /// Send to this destination again.
        #[arg(long, value_name = "NAME")]
        enable: Option<String>,
    },
    /// Show each lane's queued and running events.
    Lanes {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Say which lane and mode fit each campaign of a running gateway, and
    /// why, from its config and its runs since the gateway started.
    Advise {
        #[command(flatten)]
        admin: AdminArgs,
        /// Only this campaign.
        campaign: Option<String>,
        /// Print the admin API's JSON answer instead of sentences.
        #[arg(long)]
        json: bool,
    },
    /// Deploy a new version of a campaign's plugin to a running gateway:
    /// checked, compiled, stored and swapped in without a restart. With
    /// `--shadow`, try it first: run it and the running version on the
    /// campaign's kept events with no side effects, and print what differs.
    Deploy {
        #[command(flatten)]
        admin: AdminArgs,
        /// The campaign.
        campaign: String,
        /// The plugin component (`.wasm`).
        plugin: PathBuf,
        /// Only a shadow run: neither store nor run the version (the
        /// campaign must keep events: `campaigns.<name>.shadow`).
        #[arg(long)]
        shadow: bool,
        /// With --shadow: print the admin API's JSON report instead.
        #[arg(long, requires = "shadow")]
        json: bool,
    },
    /// Run a stored version of a campaign's plugin again.
    Rollback {
        #[command(flatten)]
        admin: AdminArgs,
        /// The campaign.
        campaign: String,
        /// The version to run (see `versions`).
        version: u32,
    },
    /// List the stored versions of a campaign's plugin, or delete one.
    Versions {
        #[command(flatten)]
        admin: AdminArgs,
        /// The campaign.
        campaign: String,
        /// Delete this stored version instead (never the one that runs).
        #[arg(long, value_name = "VERSION")]
        delete: Option<u32>,
    },
    /// Work on a plugin without a gateway.
    Plugin {
        #[command(subcommand)]
        action: PluginAction,
    },
}

#[derive(Subcommand)]
enum PluginAction {
    /// Run a plugin against recorded events (one JSON object per line:
    /// `{"body": ..., "headers": {...}, "source": "..."}`) and print, per
    /// event, the actions, what the gateway would make of them (answer,
    /// KV changes, deliveries, emits), the fuel used and the time. KV
    /// changes are kept for the events after it.
    Test {
        /// The plugin component (`.wasm`); by default the one the config
        /// names for the campaign.
        plugin: Option<PathBuf>,
        /// The recorded events (JSON lines).
        #[arg(long)]
        events: PathBuf,
        /// A gateway config: the campaign's lane, limits, settings, hosts,
        /// destinations and emits come from it, and the plugin's actions
        /// are checked against them as the gateway checks them.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The campaign of `--config` to play (not needed if it has one).
        #[arg(long, requires = "config")]
        campaign: Option<String>,
        /// The lane whose default limits apply [default: the campaign's, or speed].
        #[arg(long, value_enum)]
        lane: Option<LaneArg>,
        /// A campaign setting, `KEY=VALUE`; repeat for more.
        #[arg(long = "setting", value_parser = parse_setting)]
        settings: Vec<(String, String)>,
        /// A host the plugin may fetch from; repeat for more.
        #[arg(long = "allow-host")]
        allowed_hosts: Vec<String>,
        /// Run the events on kept instances, up to N events each, as a
        /// campaign with `events_per_instance = N` would [default: the
        /// campaign's, or 1: a fresh instance per event].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        events_per_instance: Option<u32>,
        /// Keep going: run again whenever the plugin, the events, the
        /// config or a `--watch-path` changes (after `--build`, if given).
        #[arg(long)]
        watch: bool,
        /// A file or folder (e.g. the plugin's `src/`) whose changes rerun
        /// the test under `--watch`; repeat for more.
        #[arg(long = "watch-path", requires = "watch")]
        watch_paths: Vec<PathBuf>,
        /// A shell command that rebuilds the plugin, run before each rerun
        /// under `--watch` (e.g. `cargo build --release --target wasm32-wasip2`).
        #[arg(long, requires = "watch")]
        build: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LaneArg {
    Speed,
    Segmentation,
    Care,
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, found `{text}`"))
}

/// How to reach a running gateway's admin API.
#[derive(clap::Args)]
struct AdminArgs {
    /// The admin API's base URL.
    #[arg(
        long,
        env = "HOOKLANE_ADMIN_URL",
        default_value = "http://127.0.0.1:9090"
    )]
    admin: String,
    /// The admin bearer token.
    #[arg(
        long,
        env = "HOOKLANE_ADMIN_TOKEN",
        hide_env_values = true,
        required_unless_present = "token_file"
    )]
    token: Option<String>,
    /// A file holding the admin bearer token (the gateway's
    /// `admin.token_file`); it wins over `--token`.
    #[arg(long, env = "HOOKLANE_ADMIN_TOKEN_FILE")]
    token_file: Option<PathBuf>,
}

impl AdminArgs {
    /// The token given, or the one in the token file, read as the gateway
    /// reads its `admin.token_file`.
    fn token(&self) -> anyhow::Result<String> {
        match (&self.token, &self.token_file) {
            (_, Some(file)) => hooklane::config::read_token_file(file)?
                .ok_or_else(|| anyhow::anyhow!("the admin token file {} is empty", file.display())),
            (Some(token), None) => Ok(token.clone()),
            (None, None) => anyhow::bail!("no admin token: pass --token or --token-file"),
        }
    }
}

#[derive(Subcommand)]
enum DeadLetterAction {
    /// List dead letters, oldest first.
    List {
        #[command(flatten)]
        filter: DeadLetterFilterArgs,
    },
    /// Show one dead letter with its payload and every attempt.
    Show { id: u64 },
    /// Replay one dead letter, or all that match the filter.
    Replay {
        /// The dead letter to replay; without it, every match of the filter.
        id: Option<u64>,
        #[command(flatten)]
        filter: DeadLetterFilterArgs,
    },
}

#[derive(clap::Args)]
struct DeadLetterFilterArgs {
    /// Only this campaign's.
    #[arg(long)]
    campaign: Option<String>,
    /// Only those that died at or after this time (ms since the epoch).
    #[arg(long)]
    since_ms: Option<u64>,
    /// Only those that died before this time (ms since the epoch).
    #[arg(long)]
    until_ms: Option<u64>,
}

impl DeadLetterFilterArgs {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut query = Vec::new();
        if let Some(c) = &self.campaign {
            query.push(("campaign", c.clone()));
        }
        if let Some(t) = self.since_ms {
            query.push(("since_ms", t.to_string()));
        }
        if let Some(t) = self.until_ms {
            query.push(("until_ms", t.to_string()));
        }
        query
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_env("HOOKLANE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(OneLinePerRecord(std::io::stderr));
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let result = match cli.command {
        Command::Serve { config } => serve(config),
        Command::CheckConfig { config } => {
            runtime(None).and_then(|rt| rt.block_on(check_config(config)))
        }
        Command::DeadLetters { admin, action } => {
            let call = match &action {
                DeadLetterAction::List { filter } => {
                    AdminCall::get("/v1/dead-letters".into()).query(filter.query())
                }
                DeadLetterAction::Show { id } => AdminCall::get(format!("/v1/dead-letters/{id}")),
                DeadLetterAction::Replay { id: Some(id), .. } => {
                    AdminCall::post(format!("/v1/dead-letters/{id}/replay"))
                }
                DeadLetterAction::Replay { id: None, filter } => {
                    AdminCall::post("/v1/dead-letters/replay".into()).query(filter.query())
                }
            };
            admin_call(&admin, call)
        }
        Command::Deploy {
            admin,
            campaign,
            plugin,
            shadow,
            json,
        } => std::fs::read(&plugin)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", plugin.display()))
            .and_then(|wasm| {
                let (path, doing) = if shadow {
                    ("shadow", "Shadow-running")
                } else {
                    ("versions", "Deploying")
                };
                let call = AdminCall::post(format!("/v1/campaigns/{campaign}/{path}"))
                    .body(AdminBody::Wasm(wasm))
                    .announce(format!("{doing} {} on `{campaign}`", plugin.display()));
                if shadow && !json {
                    shadow_report(&admin, call)
                } else {
                    admin_call(&admin, call)
                }
            }),
        Command::Rollback {
            admin,
            campaign,
            version,
        } => {
            let call = AdminCall::post(format!("/v1/campaigns/{campaign}/rollback"))
                .body(AdminBody::Json(serde_json::json!({ "version": version })))
                .announce(format!("Switching `{campaign}` to v{version}"));
            admin_call(&admin, call)
        }
        Command::Versions {
            admin,
            campaign,
            delete: None,
        } => admin_call(
            &admin,
            AdminCall::get(format!("/v1/campaigns/{campaign}/versions")),
        ),
        Command::Versions {
            admin,
            campaign,
            delete: Some(version),
        } => admin_call(
            &admin,
            AdminCall::new(
                reqwest::Method::DELETE,
                format!("/v1/campaigns/{campaign}/versions/{version}"),
            ),
        ),
        Command::Plugin {
            action:
                PluginAction::Test {
                    plugin,
                    events,
                    config,
                    campaign,
                    lane,
                    settings,
                    allowed_hosts,
                    events_per_instance,
                    watch,
                    watch_paths,
                    build,
                },
        } => {
            let options = hooklane::plugin_test::TestOptions {
                plugin,
                events,
                config,
                campaign,
                lane: lane.map(|lane| match lane {
                    LaneArg::Speed => hooklane::config::Lane::Speed,
                    LaneArg::Segmentation => hooklane::config::Lane::Segmentation,
                    LaneArg::Care => hooklane::config::Lane::Care,
                }),
                settings,
                allowed_hosts,
                events_per_instance,
            };
            let watching = watch.then_some(hooklane::plugin_test::Watch {
                paths: watch_paths,
                build,
            });
            runtime(None).and_then(|rt| rt.block_on(plugin_test(options, watching)))
        }
        Command::Destinations {
            admin,
            enable: None,
        } => admin_call(&admin, AdminCall::get("/v1/destinations".into())),
        Command::Destinations {
            admin,
            enable: Some(name),
        } => admin_call(
            &admin,
            AdminCall::post(format!("/v1/destinations/{name}/enable")),
        ),
        Command::Reload { admin } => admin_call(&admin, AdminCall::post("/v1/reload".into())),
        Command::Lanes { admin } => admin_call(&admin, AdminCall::get("/v1/lanes".into())),
        Command::Advise {
            admin,
            campaign,
            json,
        } => {
            let query = campaign.map(|c| ("campaign", c)).into_iter().collect();
            let call = AdminCall::get("/v1/advice".into()).query(query);
            if json {
                admin_call(&admin, call)
            } else {
                advise(&admin, call)
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A multi-threaded runtime with `workers` threads (default: one per core).
fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(runtime_builder(workers).build()?)
}

/// A multi-thread runtime with I/O and timers, on `workers` threads
/// (default: one per core).
fn runtime_builder(workers: Option<usize>) -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = workers {
        builder.worker_threads(workers);
    }
    builder.enable_all();
    builder
}

fn serve(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    // Ingress and the speed lane share these threads (see `lanes`).
    runtime_builder(Some(config.lanes.speed.workers))
        .on_thread_start(hooklane::lanes::ask_for_short_slices)
        .build()?
        .block_on(serve_config(config))
}

async fn serve_config(config: Config) -> anyhow::Result<()> {
    // The admin API reads the token again per call (a rotated file takes
    // effect at once); reading it now makes an unreadable file a start error.
    if config.admin_token()?.is_none() {
        tracing::warn!(
            env = %config.admin.token_env,
            file = ?config.admin.token_file,
            "No admin token set: the admin API's /v1 endpoints will refuse every call"
        );
    }
    let metrics = match hooklane::telemetry::install() {
        Ok(handle) => Some(handle),
        Err(error) => {
            tracing::warn!(%error, "Metrics are off: cannot install the recorder");
            None
        }
    };
    hooklane::server::serve(
        config,
        metrics,
        |bound| {
            // On stdout, one line each, so scripts and tests can find the
            // ports when the config asks for port 0.
            // Whoever started us may have stopped reading: not an error.
            let mut stdout = std::io::stdout();
            let _ = writeln!(stdout, "{}", listening_line("ingress", bound.ingress));
            let _ = writeln!(stdout, "{}", listening_line("admin", bound.admin));
            tracing::info!(ingress = %bound.ingress, admin = %bound.admin, "Gateway ready");
        },
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

async fn check_config(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    if let Some(warning) = config.admin.exposure_warning() {
        eprintln!("warning: {warning}");
    }
    for cycle in config.emit_cycles() {
        eprintln!(
            "warning: {}: key `campaigns.*.emits`: campaigns {} emit to each other in a cycle; each chain of emits ends after max_emit_depth ({}) as a dead letter (cause `emit_depth`)",
            path.display(),
            cycle.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", "),
            config.max_emit_depth
        );
    }
    // Compile every plugin against a scratch store, so checking never
    // touches (or waits on the lock of) a running gateway's data; compiled
    // components are kept in the tools' cache for the next check.
    let scratch = tempfile::tempdir()?;
    let mut checked = config.clone();
    checked.data_dir = scratch.path().to_owned();
    let cache = hooklane::runtime::tool_cache_dir();
    tokio::task::block_in_place(|| hooklane::gateway::Gateway::start_with_cache(&checked, cache))?;
    println!(
        "{}: ok ({} sources, {} campaigns, {} destinations)",
        path.display(),
        config.sources.len(),
        config.campaigns.len(),
        config.destinations.len()
    );
    Ok(())
}

async fn plugin_test(
    options: hooklane::plugin_test::TestOptions,
    watch: Option<hooklane::plugin_test::Watch>,
) -> anyhow::Result<()> {
    let Some(watch) = watch else {
        let failed = hooklane::plugin_test::run(&options, |report| println!("{report}")).await?;
        anyhow::ensure!(failed == 0, "{failed} event(s) failed");
        return Ok(());
    };
    hooklane::plugin_test::watch(&options, &watch, |report| println!("{report}")).await;
    Ok(())
}

/// One call to a running gateway's admin API.
struct AdminCall {
    method: reqwest::Method,
    path: String,
    query: Vec<(&'static str, String)>,
    body: Option<AdminBody>,
    /// Said while the call runs, for calls that take a while.
    announce: Option<String>,
}

enum AdminBody {
    Json(serde_json::Value),
    Wasm(Vec<u8>),
}

impl AdminCall {
    fn get(path: String) -> Self {
        Self::new(reqwest::Method::GET, path)
    }

    fn post(path: String) -> Self {
        Self::new(reqwest::Method::POST, path)
    }

    fn new(method: reqwest::Method, path: String) -> Self {
        AdminCall {
            method,
            path,
            query: Vec::new(),
            body: None,
            announce: None,
        }
    }

    fn query(mut self, query: Vec<(&'static str, String)>) -> Self {
        self.query = query;
        self
    }

    fn body(mut self, body: AdminBody) -> Self {
        self.body = Some(body);
        self
    }

    fn announce(mut self, what: String) -> Self {
        self.announce = Some(what);
        self
    }
}

/// Call the admin API and print its JSON answer.
fn admin_call(admin: &AdminArgs, call: AdminCall) -> anyhow::Result<()> {
    let (status, body) = admin_request(admin, call)?;
    print_answer(&body)?;
    anyhow::ensure!(status.is_success(), "the admin API answered {status}");
    Ok(())
}

/// Ask the admin API for advice and print it as sentences; a refusal as
/// its JSON, like every other call.
fn advise(admin: &AdminArgs, call: AdminCall) -> anyhow::Result<()> {
    let report: hooklane::advice::Report = read_answer(admin, call, "advice")?;
    print!("{report}");
    Ok(())
}

/// Ask the admin API for a shadow run and print its report as a summary;
/// a refusal as its JSON, like every other call.
fn shadow_report(admin: &AdminArgs, call: AdminCall) -> anyhow::Result<()> {
    let report: hooklane::shadow::Report = read_answer(admin, call, "shadow run report")?;
    print!("{report}");
    Ok(())
}

/// Make `call` and read its answer as `T`; a refusal is printed as its
/// JSON and fails. `what` names the answer in an error.
fn read_answer<T: serde::de::DeserializeOwned>(
    admin: &AdminArgs,
    call: AdminCall,
    what: &str,
) -> anyhow::Result<T> {
    let (status, body) = admin_request(admin, call)?;
    if !status.is_success() {
        print_answer(&body)?;
        anyhow::bail!("the admin API answered {status}");
    }
    serde_json::from_slice(&body)
        .map_err(|e| anyhow::anyhow!("the admin API's {what} is not what this hooklane reads: {e}"))
}

/// Whatever the status, show the answer: JSON pretty, anything else as is.
fn print_answer(body: &[u8]) -> anyhow::Result<()> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(json) => println!("{}", serde_json::to_string_pretty(&json)?),
        Err(_) => println!("{}", String::from_utf8_lossy(body)),
    }
    Ok(())
}

/// Make one call to the admin API: its status and body.
fn admin_request(
    admin: &AdminArgs,
    call: AdminCall,
) -> anyhow::Result<(reqwest::StatusCode, bytes::Bytes)> {
    let url = format!("{}{}", admin.admin.trim_end_matches('/'), call.path);
    let client = reqwest::Client::new();
    let mut request = client
        .request(call.method, &url)
        .query(&call.query)
        .bearer_auth(admin.token()?);
    request = match call.body {
        Some(AdminBody::Json(json)) => request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(json.to_string()),
        Some(AdminBody::Wasm(wasm)) => request
            .header(reqwest::header::CONTENT_TYPE, "application/wasm")
            .body(wasm),
        None => request,
    };
    let spinner = call.announce.map(hooklane::progress::Spinner::start);
    let answer = runtime(Some(1))?.block_on(async {
        let response = request
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the admin API at {url}: {e}"))?;
        let status = response.status();
        anyhow::Ok((status, response.bytes().await?))
    });
    drop(spinner);
    answer
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("can install a SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
    tracing::info!("Shutting down");
}
