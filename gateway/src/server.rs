//! Running the gateway: bind the ingress and admin listeners, serve until a
//! shutdown signal, then let background work finish. Both listeners are
//! served by one loop with the same connection limits.
//!
//! An ingress connection is served where its first request's source
//! belongs: one for a source with a speed campaign on the speed lane's
//! threads (which accept every connection), any other — a segmentation or
//! care source, an unknown source, another path — on the bulk ingress
//! threads, as many as the speed lane's but at the segmentation lane's
//! niceness. A flood of webhooks the gateway refuses or stores for later
//! then takes CPU from the speed lane only when the speed lane leaves it
//! idle. The first request decides for the whole connection.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::StatusCode;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{service_fn, Service};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::error::ApiError;
use crate::gateway::{Gateway, StartError};
use crate::telemetry;

/// How often expired dedup records, KV values and old dead letters are swept.
const RETENTION_SWEEP: std::time::Duration = std::time::Duration::from_secs(60);

/// Keep the data directory from growing without bound.
fn spawn_retention(gateway: &std::sync::Arc<Gateway>, retention_hours: u64) {
    let gateway = gateway.clone();
    let queue = gateway.queue().clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(RETENTION_SWEEP);
        loop {
            every.tick().await;
            gateway.bury_orphans().await;
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

/// The stdout line a server prints once its listener `name` is bound to
/// `addr`: with port 0 in a config, scripts, tests and the bench learn the
/// ports from it.
pub fn listening_line(name: &str, addr: SocketAddr) -> String {
    format!("hooklane {name} listening on http://{addr}")
}

/// The listener name and address of a [`listening_line`], or `None` for
/// any other line.
pub fn parse_listening_line(line: &str) -> Option<(&str, SocketAddr)> {
    let (name, addr) = line
        .strip_prefix("hooklane ")?
        .split_once(" listening on http://")?;
    Some((name, addr.parse().ok()?))
}

/// Start the gateway from `config`, call `on_bound` once both listeners are
/// bound, and serve until `shutdown` resolves.
pub async fn serve(
    config: Config,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    on_bound: impl FnOnce(Bound),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let gateway = tokio::task::block_in_place(|| Gateway::start(&config))?;
    // Whatever the backlog, resuming is pulling: nothing is read ahead.
    gateway.start_pulling().await.map_err(StartError::Store)?;
    spawn_retention(&gateway, config.store.dead_letter_retention_hours);
    tokio::spawn(crate::schedule::run(gateway.clone()));
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
    let header_read_timeout = Duration::from_millis(config.header_read_timeout_ms);
    let bulk = (config.bulk_ingress)
        .then(|| bulk_ingress_threads(&config))
        .transpose()?;
    let placement = bulk.as_ref().map(|bulk| Placement {
        gateway: gateway.clone(),
        bulk: bulk.handle().clone(),
        header_read_timeout,
    });
    let ingress = crate::ingress::Ingress::new(gateway.clone(), &config);
    let ingress = serve_listener(
        "ingress",
        ingress_listener,
        service_fn(move |request| ingress.clone().answer(request)),
        header_read_timeout,
        placement,
        stopped(stop_rx.clone()),
    );
    let admin = serve_listener(
        "admin",
        admin_listener,
        TowerToHyperService::new(
            crate::admin::routes(gateway.clone(), config.admin.clone(), metrics)
                .layer(axum::middleware::map_request(refuse_large_head)),
        ),
        header_read_timeout,
        None,
        stopped(stop_rx),
    );
    tokio::try_join!(ingress, admin)?;
    tracing::info!("Listeners closed; waiting for the runs in progress");
    gateway.stop().await;
    if let Some(bulk) = bulk {
        bulk.shutdown_background();
    }
    Ok(())
}

/// The threads that serve ingress connections not for the speed lane.
fn bulk_ingress_threads(config: &Config) -> std::io::Result<tokio::runtime::Runtime> {
    let nice = config.lanes.segmentation.nice;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.lanes.speed.workers)
        .thread_name("ingress-bulk")
        .on_thread_start(move || crate::lanes::lower_priority("bulk ingress", nice))
        .enable_all()
        .build()
}

/// Where an ingress connection is served (see the module's comment).
#[derive(Clone)]
struct Placement {
    gateway: std::sync::Arc<Gateway>,
    bulk: tokio::runtime::Handle,
    header_read_timeout: Duration,
}

/// Bytes of a connection's start looked at to find its first request's
/// source: a request line with a long query may not fit, and then counts
/// as speed.
const PLACEMENT_PEEK_BYTES: usize = 512;

impl Placement {
    /// The threads to serve `stream` on: none (here, the speed lane's)
    /// or the bulk ones. Waits for the first bytes, without taking them,
    /// at most as long as a request head may take.
    async fn threads_for(&self, stream: &tokio::net::TcpStream) -> Option<&tokio::runtime::Handle> {
        let mut head = [0u8; PLACEMENT_PEEK_BYTES];
        let peeked = tokio::time::timeout(self.header_read_timeout, stream.peek(&mut head)).await;
        // Nothing to look at: hyper answers or times it out, here.
        let Ok(Ok(n)) = peeked else {
            return None;
        };
        let router = self.gateway.campaigns().router();
        (!crate::ingress::is_for_speed(&router, &head[..n])).then_some(&self.bulk)
    }
}

/// Most headers a request may carry; [`check_head`] answers beyond.
const MAX_HEADERS: usize = 64;
/// Largest request head (request line and headers) in bytes; likewise.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// hyper's own limits, four times ours. hyper refuses beyond them itself,
/// with a bare 431 and no way for us to add a body, so ours are the ones an
/// ordinary caller meets. The byte limit also bounds a connection's read
/// buffer.
const HYPER_MAX_HEADERS: usize = 4 * MAX_HEADERS;
const HYPER_MAX_HEAD_BYTES: usize = 4 * MAX_HEAD_BYTES;
/// How long shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Serve `service` on `listener` with the limits every caller gets, on the
/// ingress and the admin listener alike: bounded request heads, and a
/// deadline on reading them so a slow client cannot hold a connection
/// (slowloris); ingress bodies have their own deadline in
/// [`crate::ingress`]. An accept error (out of file descriptors and the
/// like) pauses accepting rather than spinning, and the connections already
/// open keep being served.
async fn serve_listener<S, B>(
    name: &'static str,
    listener: TcpListener,
    service: S,
    header_read_timeout: Duration,
    placement: Option<Placement>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    S: Service<http::Request<Incoming>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut http = http1::Builder::new();
    http.max_headers(HYPER_MAX_HEADERS)
        .max_header_size(HYPER_MAX_HEAD_BYTES)
        .max_buf_size(HYPER_MAX_HEAD_BYTES)
        .header_read_timeout(header_read_timeout)
        .timer(TokioTimer::new());
    let connections = GracefulShutdown::new();
    let mut errors = AcceptErrors::default();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                errors.reset();
                stream
            }
            Err(error) => {
                telemetry::accept_error(name);
                let pause = errors.failed(Instant::now());
                if let Some(suppressed) = pause.warn {
                    tracing::warn!(
                        listener = name,
                        %error,
                        suppressed,
                        "Could not accept a connection; pausing accepts"
                    );
                }
                tokio::select! {
                    () = tokio::time::sleep(pause.wait) => continue,
                    () = &mut shutdown => break,
                }
            }
        };
        let (http, watcher, placement) = (http.clone(), connections.watcher(), placement.clone());
        let service = service.clone();
        let serve = move |stream: tokio::net::TcpStream| async move {
            let connection = watcher.watch(http.serve_connection(TokioIo::new(stream), service));
            // A client hanging up mid-request is no error of ours.
            let _ = connection.await;
        };
        tokio::spawn(async move {
            let Some(placement) = placement else {
                return serve(stream).await;
            };
            let Some(threads) = placement.threads_for(&stream).await else {
                telemetry::ingress_connection("speed");
                return serve(stream).await;
            };
            telemetry::ingress_connection("bulk");
            // Registered with the bulk threads' own reactor: its readiness
            // events must not be handled on the speed lane's threads either.
            let Ok(stream) = stream.into_std() else {
                return;
            };
            threads.spawn(async move {
                if let Ok(stream) = tokio::net::TcpStream::from_std(stream) {
                    serve(stream).await;
                }
            });
        });
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            "Requests still in flight after the shutdown grace period"
        );
    }
    Ok(())
}

/// Refuse a request head over [`MAX_HEADERS`] or [`MAX_HEAD_BYTES`] with
/// 431 and a JSON body. The size counts the head as HTTP/1.1 writes it:
/// request line, `name: value` lines and the blank line.
pub(crate) fn check_head<B>(request: &http::Request<B>) -> Result<(), ApiError> {
    let headers = request.headers();
    // `METHOD target HTTP/1.1\r\n`
    let target = request
        .uri()
        .path_and_query()
        .map_or(1, |p| p.as_str().len());
    let request_line = request.method().as_str().len() + target + 12;
    let size = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + request_line
        + 2;
    if headers.len() <= MAX_HEADERS && size <= MAX_HEAD_BYTES {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
        format!(
            "the request has {} headers in {size} bytes of head; at most {MAX_HEADERS} headers and {MAX_HEAD_BYTES} bytes are accepted",
            headers.len()
        ),
    ))
}

/// [`check_head`] as the admin router's middleware.
async fn refuse_large_head(request: Request) -> Result<Request, ApiError> {
    check_head(&request).map(|()| request)
}

/// The first pause after an accept error; it doubles with each error ...
const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(5);
/// ... up to this.
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);
/// The least time between two warnings about accept errors.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(1);

/// A listener's run of accept errors. The error persists until something
/// else frees a descriptor, so retrying at once only burns CPU and floods
/// the log: the pause doubles with each error, and one warning a second
/// says how many were not logged.
#[derive(Debug, Default)]
struct AcceptErrors {
    /// The next pause; zero after a successful accept.
    pause: Duration,
    last_warned: Option<Instant>,
    /// Errors since the last warning.
    suppressed: u64,
}

/// What to do after an accept error.
#[derive(Debug, PartialEq, Eq)]
struct AcceptPause {
    wait: Duration,
    /// Warn now, saying how many errors went unlogged since the last warning.
    warn: Option<u64>,
}

impl AcceptErrors {
    fn failed(&mut self, now: Instant) -> AcceptPause {
        self.pause = (self.pause * 2).clamp(ACCEPT_PAUSE_MIN, ACCEPT_PAUSE_MAX);
        let due = self
            .last_warned
            .is_none_or(|last| now.duration_since(last) >= ACCEPT_WARN_EVERY);
        let warn = if due {
            self.last_warned = Some(now);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        };
        AcceptPause {
            wait: self.pause,
            warn,
        }
    }

    /// An accept worked: the next error starts from the shortest pause.
    fn reset(&mut self) {
        self.pause = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_back_off_and_warn_once_a_second() {
        let start = Instant::now();
        let mut errors = AcceptErrors::default();
        let at = |ms| start + Duration::from_millis(ms);
        let first = errors.failed(at(0));
        assert_eq!(
            first,
            AcceptPause {
                wait: Duration::from_millis(5),
                warn: Some(0)
            }
        );
        let waits: Vec<Duration> = (1..=10).map(|ms| errors.failed(at(ms)).wait).collect();
        assert_eq!(waits[0], Duration::from_millis(10));
        assert_eq!(waits[9], Duration::from_secs(1));
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
        // Twelve errors in the first second: one warning, then one for the
        // eleven held back.
        assert_eq!(errors.failed(at(999)).warn, None);
        assert_eq!(errors.failed(at(1000)).warn, Some(11));
        assert_eq!(errors.failed(at(1001)).warn, None);

        errors.reset();
        assert_eq!(errors.failed(at(1002)).wait, Duration::from_millis(5));
    }

    #[test]
    fn heads_over_the_limits_get_a_json_431() {
        let request = |headers: usize, value: &str| {
            let mut request = Request::new(axum::body::Body::empty());
            for i in 0..headers {
                let name = http::HeaderName::try_from(format!("x-h{i}")).unwrap();
                request.headers_mut().insert(name, value.parse().unwrap());
            }
            request
        };
        assert!(check_head(&request(MAX_HEADERS, "x")).is_ok());
        let many = check_head(&request(MAX_HEADERS + 1, "x")).unwrap_err();
        assert_eq!(many.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(many.error, "headers_too_large");
        assert_eq!(
            many.detail,
            "the request has 65 headers in 658 bytes of head; at most 64 headers and 16384 bytes are accepted"
        );
        let long = "x".repeat(MAX_HEAD_BYTES);
        assert!(check_head(&request(1, &long)).is_err());
    }

    #[test]
    fn listening_lines_read_back() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let line = listening_line("ingress", addr);
        assert_eq!(line, "hooklane ingress listening on http://127.0.0.1:8080");
        assert_eq!(parse_listening_line(&line), Some(("ingress", addr)));
        assert_eq!(
            parse_listening_line("hooklane ingress listening on http://x"),
            None
        );
        assert_eq!(parse_listening_line("Gateway ready"), None);
    }
}
