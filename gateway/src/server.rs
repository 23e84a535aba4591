//! Running the gateway: bind the ingress and admin listeners, serve until a
//! shutdown signal, then let background work finish.

use std::future::{Future, IntoFuture};
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

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Verifier(#[from] crate::ingress::VerifierError),
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
    on_bound: impl FnOnce(Bound),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let verifiers = crate::ingress::verifiers(&config)?;
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
    let ingress = axum::serve(
        ingress_listener,
        crate::ingress::routes(gateway.clone(), &config, verifiers),
    )
    .with_graceful_shutdown(stopped(stop_rx.clone()));
    let admin = axum::serve(
        admin_listener,
        crate::admin::routes(gateway.clone(), admin_token),
    )
    .with_graceful_shutdown(stopped(stop_rx));
    tokio::try_join!(ingress.into_future(), admin.into_future())?;
    tracing::info!("Listeners closed; waiting for background work");
    gateway.drain().await;
    Ok(())
}
