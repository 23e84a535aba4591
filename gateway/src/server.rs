//! Running the gateway: bind the ingress and admin listeners, serve until a
//! shutdown signal, then let background work finish.

use std::future::{Future, IntoFuture};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::gateway::{Gateway, StartError};

/// How often expired dedup records, KV values and old dead letters are swept.
const RETENTION_SWEEP: std::time::Duration = std::time::Duration::from_secs(60);

/// Keep the data directory from growing without bound.
fn spawn_retention(gateway: &std::sync::Arc<Gateway>, retention_hours: u64) {
    let queue = gateway.queue().clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(RETENTION_SWEEP);
        loop {
            every.tick().await;
            let cutoff = crate::event::now_ms().saturating_sub(retention_hours * 3_600_000);
            match queue.purge(cutoff).await {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "Swept expired records"),
                Err(error) => tracing::warn!(%error, "Retention sweep failed"),
            }
        }
    });
}

/// `kill -HUP` reloads the config file; a refused reload is logged and the
/// running config stays.
fn spawn_reload_on_hangup(gateway: &std::sync::Arc<Gateway>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup())?;
    let gateway = gateway.clone();
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            // A refusal is logged by the reload itself.
            let _ = gateway.reload().await;
        }
    });
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The bound addresses of a started gateway.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub ingress: SocketAddr,
    pub admin: SocketAddr,
}

/// Start the gateway from `config`, call `on_bound` once both listeners are
/// bound, and serve until `shutdown` resolves.
pub async fn serve(
    config: Config,
    admin_token: Option<String>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    on_bound: impl FnOnce(Bound),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let gateway = tokio::task::block_in_place(|| Gateway::start(&config))?;
    let (events, deliveries) = gateway.resume().await.map_err(StartError::Store)?;
    if events + deliveries > 0 {
        tracing::info!(
            events,
            deliveries,
            "Resumed stored work from before the restart"
        );
    }
    spawn_retention(&gateway, config.store.dead_letter_retention_hours);
    spawn_reload_on_hangup(&gateway)?;
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })
    };
    let ingress_listener = bind(config.listen).await?;
    let admin_listener = bind(config.admin.listen).await?;
    on_bound(Bound {
        ingress: ingress_listener.local_addr()?,
        admin: admin_listener.local_addr()?,
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(());
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<()>| async move {
        let _ = rx.changed().await;
    };
    let ingress = serve_sources(
        ingress_listener,
        crate::ingress::routes(gateway.clone(), &config),
        Duration::from_millis(config.header_read_timeout_ms),
        stopped(stop_rx.clone()),
    );
    let admin = axum::serve(
        admin_listener,
        crate::admin::routes(gateway.clone(), admin_token, metrics),
    )
    .with_graceful_shutdown(stopped(stop_rx));
    tokio::try_join!(ingress, admin.into_future())?;
    tracing::info!("Listeners closed; waiting for the runs in progress");
    gateway.stop().await;
    Ok(())
}

/// Most headers a webhook may carry.
const MAX_HEADERS: usize = 64;
/// Largest request head (request line and headers) in bytes; hyper answers
/// 431 beyond it.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Serve the source-facing routes with the connection limits sources get:
/// bounded headers, and a deadline on reading them so a slow client cannot
/// hold a connection (slowloris); bodies have their own deadline in
/// [`crate::ingress`].
async fn serve_sources(
    listener: TcpListener,
    routes: axum::Router,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut http = http1::Builder::new();
    http.max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEAD_BYTES)
        .header_read_timeout(header_read_timeout)
        .timer(TokioTimer::new());
    let connections = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    // Out of file descriptors and the like: keep serving the
                    // connections we have.
                    Err(error) => {
                        tracing::warn!(%error, "Could not accept a connection");
                        continue;
                    }
                };
                let service = TowerToHyperService::new(routes.clone());
                let connection = connections.watch(http.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    // A client hanging up mid-request is no error of ours.
                    let _ = connection.await;
                });
            }
            () = &mut shutdown => break,
        }
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("Requests still in flight after the shutdown grace period");
    }
    Ok(())
}
