//! The `hooklane` command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use hooklane::bench::process::listening_line;
use hooklane::bench::BenchOptions;
use hooklane::config::Config;
use tracing_subscriber::EnvFilter;

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
    /// Run the lane-isolation load benchmark on loopback (about 1 minute).
    Bench {
        /// Directory of the built plugins.
        #[arg(long, default_value = "plugins/target/wasm32-wasip2/release")]
        plugins: PathBuf,
        /// Where to write the JSON report.
        #[arg(long, default_value = "target/bench/lanes.json")]
        out: PathBuf,
        /// A few seconds' run that only proves the bench works.
        #[arg(long)]
        smoke: bool,
    },
    /// The bench's floor: a bare hyper server answering a fixed body.
    #[command(hide = true)]
    BenchFloor,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_env("HOOKLANE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let result = match cli.command {
        Command::Serve { config } => serve(config),
        Command::CheckConfig { config } => {
            runtime(None).and_then(|rt| rt.block_on(check_config(config)))
        }
        Command::Bench {
            plugins,
            out,
            smoke,
        } => runtime(None).and_then(|rt| {
            rt.block_on(bench(BenchOptions {
                plugins,
                out,
                smoke,
            }))
        }),
        Command::BenchFloor => runtime(None).and_then(|rt| rt.block_on(bench_floor())),
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
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = workers {
        builder.worker_threads(workers);
    }
    Ok(builder.enable_all().build()?)
}

fn serve(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    // Ingress and the speed lane share these threads (see `lanes`).
    runtime(Some(config.lanes.speed.workers))?.block_on(serve_config(config))
}

async fn serve_config(config: Config) -> anyhow::Result<()> {
    let token = std::env::var(&config.admin.token_env)
        .ok()
        .filter(|t| !t.is_empty());
    if token.is_none() {
        tracing::warn!(
            env = %config.admin.token_env,
            "No admin token set: the admin API's /v1 endpoints will refuse every call"
        );
    }
    hooklane::server::serve(
        config,
        token,
        |bound| {
            // On stdout, one line each, so scripts and tests can find the
            // ports when the config asks for port 0.
            println!("{}", listening_line("ingress", bound.ingress));
            println!("{}", listening_line("admin", bound.admin));
            tracing::info!(ingress = %bound.ingress, admin = %bound.admin, "Gateway ready");
        },
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

async fn check_config(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    // Compile every plugin against a scratch store, so checking never
    // touches (or waits on the lock of) a running gateway's data.
    let scratch = tempfile::tempdir()?;
    let mut checked = config.clone();
    checked.data_dir = scratch.path().to_owned();
    tokio::task::block_in_place(|| hooklane::gateway::Gateway::start(&checked))?;
    println!(
        "{}: ok ({} sources, {} campaigns, {} destinations)",
        path.display(),
        config.sources.len(),
        config.campaigns.len(),
        config.destinations.len()
    );
    Ok(())
}

async fn bench(options: BenchOptions) -> anyhow::Result<()> {
    let report = hooklane::bench::run(&options).await?;
    print!("{}", report.render());
    println!("report: {}", options.out.display());
    Ok(())
}

async fn bench_floor() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listening_line("floor", listener.local_addr()?));
    hooklane::bench::floor::serve(listener).await?;
    Ok(())
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
