//! The `hooklane-bench` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;

use clap::{Parser, Subcommand};
use hooklane::server::listening_line;
use hooklane_bench::ceiling::Ceiling;
use hooklane_bench::lanes::Scenario;
use hooklane_bench::{gateway_binary, Backend, BenchOptions};

#[derive(Parser)]
#[command(
    name = "hooklane-bench",
    version,
    about = "Load benchmarks of the hooklane gateway, on loopback. Build the gateway first: \
             `cargo build --release --workspace`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Lane isolation: trivial ÷ floor throughput, and speed p99 ÷ idle under
    /// a hostile mix, a refused flood and a slow neighbour; about 7 minutes
    /// with 5 rounds.
    Lanes {
        #[command(flatten)]
        args: Args,
        /// The store the gateway runs on; the report is `lanes-nats.json`
        /// for nats.
        #[arg(long, value_enum, default_value_t = Backend::Embedded)]
        store: Backend,
        /// Run only these scenarios (comma-separated); default all.
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<Scenario>,
        /// Rounds per scenario, each ratio the median of its rounds'
        /// (default 5; 1 with --smoke).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        rounds: Option<u16>,
    },
    /// Durable ingest, fsync on beside fsync off; about 15 s.
    Ingest(Args),
    /// 1,000 campaign versions: memory, deploy and restart time; about a
    /// minute.
    Deploy(Args),
    /// A million events queued on disk: memory, restart time, drain rate;
    /// about two minutes.
    Backlog(Args),
    /// Durable accepted/s with 1, 2 and 3 gateways on one nats-server,
    /// beside the embedded store and an R3 cluster, with events per
    /// CPU-second; about 30 s.
    Nodes(Args),
    /// Mixed traffic while the destination flaps and the gateway is killed
    /// every 2 minutes: nothing accepted may be lost.
    Soak {
        #[command(flatten)]
        args: Args,
        /// How long the traffic lasts.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
    },
    /// The generator's ceiling alone: what the closed-loop generator drives
    /// a bare hyper server to.
    Ceiling {
        /// Connections kept busy.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// How long to drive it.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// The floor alone: a bare hyper server answering a fixed body, on a free
    /// loopback port it prints (the benches start it as a process of their
    /// own; run it to measure it with another generator, such as wrk).
    Floor,
}

/// What every suite takes.
#[derive(clap::Args)]
struct Args {
    /// The `hooklane` binary to benchmark. Default: the one beside this
    /// executable (same cargo target directory and profile).
    #[arg(long, value_name = "PATH")]
    gateway: Option<PathBuf>,
    /// Directory of the built plugins.
    #[arg(long, default_value = "plugins/target/wasm32-wasip2/release")]
    plugins: PathBuf,
    /// Where to write the JSON report. Default `target/bench/<suite>.json`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// A few seconds' run that only proves the bench works.
    #[arg(long)]
    smoke: bool,
}

impl Args {
    fn options(self, suite: &str) -> anyhow::Result<BenchOptions> {
        Ok(BenchOptions {
            gateway: gateway_binary(self.gateway)?,
            plugins: self.plugins,
            out: self
                .out
                .unwrap_or_else(|| PathBuf::from(format!("target/bench/{suite}.json"))),
            smoke: self.smoke,
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(cli.command)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    use hooklane_bench::{backlog, deploy, ingest, lanes, nodes, soak};
    let (rendered, out) = match command {
        Command::Lanes {
            args,
            store,
            only,
            rounds,
        } => {
            let suite = match store {
                Backend::Embedded => "lanes",
                Backend::Nats => "lanes-nats",
            };
            let options = args.options(suite)?;
            let selection = lanes::Selection {
                only,
                rounds: rounds.map(usize::from),
            };
            let report = lanes::run(&options, store, &selection).await?;
            (report.render(), options.out)
        }
        Command::Ingest(args) => {
            let options = args.options("ingest")?;
            (ingest::run(&options).await?.render(), options.out)
        }
        Command::Deploy(args) => {
            let options = args.options("deploy")?;
            (deploy::run(&options).await?.render(), options.out)
        }
        Command::Backlog(args) => {
            let options = args.options("backlog")?;
            (backlog::run(&options).await?.render(), options.out)
        }
        Command::Nodes(args) => {
            let options = args.options("nodes")?;
            (nodes::run(&options).await?.render(), options.out)
        }
        Command::Soak { args, minutes } => {
            let options = args.options("soak")?;
            (soak::run(&options, minutes).await?.render(), options.out)
        }
        Command::Ceiling {
            connections,
            seconds,
        } => {
            let window = Duration::from_secs(seconds);
            let body = Bytes::from_static(b"{}");
            let ceiling = Ceiling::measure(body, connections, window).await?;
            println!(
                "generator ceiling: {:.0} ok/s ({} connections, {} threads, {seconds} s on bare hyper)",
                ceiling.ok_per_s, ceiling.connections, ceiling.threads
            );
            return Ok(());
        }
        Command::Floor => return floor().await,
    };
    print!("{rendered}");
    println!("report: {}", out.display());
    Ok(())
}

async fn floor() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listening_line("floor", listener.local_addr()?));
    hooklane_bench::floor::serve(listener).await?;
    Ok(())
}
