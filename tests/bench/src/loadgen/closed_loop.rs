//! The closed-loop generator: the highest rate a server sustains.
//!
//! It must outrun the servers it measures, or a throughput figure is the
//! generator's and not the server's. So it is lean where reqwest is general:
//! one OS thread per core, each running a current-thread tokio runtime that
//! drives its share of the connections; each connection writes one request
//! serialised once for the whole run and reads the answer with `httparse`,
//! over plain HTTP/1.1 keep-alive (no pool, no per-request allocation beyond
//! the read buffer's growth). Requests are never pipelined: one in flight
//! per connection, as a webhook sender would.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{
    loopback_url, on_own_thread, per_second, quantile_us, LoadError, Tally, SUCCESS_STATUSES,
};

/// Headers an answer may carry; more is a broken answer.
const MAX_HEADERS: usize = 64;
/// Bytes read at a time; an answer larger than this is read in several.
const READ_CHUNK: usize = 16 * 1024;

/// What a closed-loop run got back.
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputReport {
    /// Answered 2xx.
    pub ok: u64,
    /// Answered 429 or 503: the server shed load.
    pub refused: u64,
    /// Any other status, a connect error, a broken answer or a timeout.
    pub errors: u64,
    /// From the start until the last in-flight request answered.
    pub elapsed_s: f64,
    /// The throughput figure: ok answers per second of `elapsed_s`.
    pub ok_per_s: f64,
    /// Latency quantiles of the ok answers, in µs from each actual send;
    /// `None` when nothing was ok.
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    /// Connections kept busy, and the generator threads that drove them.
    pub connections: usize,
    pub threads: usize,
}

/// Keeps `concurrency` requests to `url` in flight for `duration`, over as
/// many connections: each time one answers, its connection sends the next
/// at once. Requests in flight when the time is up are waited for, each
/// bounded by `request_timeout`; a connection whose request failed or timed
/// out is replaced by a new one.
pub async fn run_closed_loop(
    url: &str,
    body: Bytes,
    concurrency: usize,
    duration: Duration,
    request_timeout: Duration,
) -> Result<ThroughputReport, LoadError> {
    run_closed_loop_over(&[url], body, concurrency, duration, request_timeout).await
}

/// [`run_closed_loop`] against several servers at once: connection `i`
/// goes to `urls[i % urls.len()]`, so each gets an even share.
pub async fn run_closed_loop_over(
    urls: &[&str],
    body: Bytes,
    concurrency: usize,
    duration: Duration,
    request_timeout: Duration,
) -> Result<ThroughputReport, LoadError> {
    closed_loop(urls, body, concurrency, duration, request_timeout, 0).await
}

/// [`run_closed_loop`] from threads at niceness `nice`: load that stands
/// for traffic from other machines, which would take none of this one's
/// CPU, gets only what the servers measured leave.
pub async fn run_closed_loop_niced(
    url: &str,
    body: Bytes,
    concurrency: usize,
    duration: Duration,
    request_timeout: Duration,
    nice: i32,
) -> Result<ThroughputReport, LoadError> {
    closed_loop(&[url], body, concurrency, duration, request_timeout, nice).await
}

async fn closed_loop(
    urls: &[&str],
    body: Bytes,
    concurrency: usize,
    duration: Duration,
    request_timeout: Duration,
    nice: i32,
) -> Result<ThroughputReport, LoadError> {
    if concurrency == 0 {
        return Err(LoadError::NoConcurrency);
    }
    if urls.is_empty() {
        return Err(LoadError::NoUrl);
    }
    let targets = urls
        .iter()
        .map(|url| target(url, &body))
        .collect::<Result<Vec<_>, _>>()?;
    let start = Instant::now();
    let end = start
        .checked_add(duration)
        .ok_or(LoadError::DurationTooLong(duration))?;

    let threads = generator_threads().min(concurrency);
    let mut finished = Vec::with_capacity(threads);
    for thread in 0..threads {
        // Connections dealt round the threads; each goes to its target.
        let connections: Vec<Target> = (thread..concurrency)
            .step_by(threads)
            .map(|i| targets[i % targets.len()].clone())
            .collect();
        let niced = move || {
            if nice != 0 {
                let thread = rustix::thread::gettid();
                // Best effort: a generator that stays at its niceness
                // only measures less kindly.
                let _ = rustix::process::setpriority_process(Some(thread), nice);
            }
        };
        finished.push(on_own_thread(
            format!("loadgen-{thread}"),
            niced,
            move || drive(connections, end, request_timeout),
        )?);
    }
    let mut tally = Tally::new();
    for thread in finished {
        tally.merge(thread.await.map_err(|_| LoadError::GeneratorThread)?);
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    Ok(ThroughputReport {
        ok: tally.ok,
        refused: tally.refused,
        errors: tally.errors,
        elapsed_s,
        ok_per_s: per_second(tally.ok, elapsed_s),
        p50_us: quantile_us(&tally.ok_latency_us, 0.5),
        p99_us: quantile_us(&tally.ok_latency_us, 0.99),
        connections: concurrency,
        threads,
    })
}

/// Where a connection goes and the request it sends there, serialised once.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    request: Bytes,
}

/// The target of a plain-HTTP loopback `url`.
fn target(url: &str, body: &[u8]) -> Result<Target, LoadError> {
    let parsed = loopback_url(url)?;
    if parsed.scheme() != "http" {
        return Err(LoadError::NotPlainHttp {
            url: url.to_string(),
        });
    }
    let addr = parsed
        .socket_addrs(|| Some(80))?
        .into_iter()
        .next()
        .ok_or_else(|| LoadError::NotLoopback {
            url: url.to_string(),
        })?;
    let host = match parsed.port() {
        Some(port) => format!("{}:{port}", parsed.host_str().unwrap_or_default()),
        None => parsed.host_str().unwrap_or_default().to_string(),
    };
    let request = Bytes::from(request_bytes(&host, parsed.path(), body));
    Ok(Target { addr, request })
}

/// One per core: a generator thread saturates about one core, and the
/// scheduler shares the cores between the generator and the server.
fn generator_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The request every connection sends, serialised once.
fn request_bytes(host: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// Run `connections` on this thread's runtime until `end`.
async fn drive(connections: Vec<Target>, end: Instant, timeout: Duration) -> Tally {
    let mut running = tokio::task::JoinSet::new();
    for target in connections {
        running.spawn(connection(target.addr, target.request, end, timeout));
    }
    let mut tally = Tally::new();
    while let Some(done) = running.join_next().await {
        match done {
            Ok(connection) => tally.merge(connection),
            Err(_) => tally.errors += 1,
        }
    }
    tally
}

/// One connection's loop: send, read the whole answer, send again, until
/// `end`; a failed exchange closes the connection and the next one opens a
/// new connection.
async fn connection(addr: SocketAddr, request: Bytes, end: Instant, timeout: Duration) -> Tally {
    let mut tally = Tally::new();
    let mut stream: Option<TcpStream> = None;
    let mut buffer = Vec::with_capacity(READ_CHUNK);
    while Instant::now() < end {
        let sent = Instant::now();
        let answer = tokio::time::timeout(timeout, async {
            let connected = match stream.as_mut() {
                Some(connected) => connected,
                None => {
                    let fresh = TcpStream::connect(addr).await?;
                    fresh.set_nodelay(true)?;
                    stream.insert(fresh)
                }
            };
            exchange(connected, &request, &mut buffer).await
        })
        .await;
        let status = match answer {
            Ok(Ok(answer)) => {
                if !answer.keep_alive {
                    stream = None;
                }
                Some(answer.status)
            }
            Ok(Err(_)) | Err(_) => {
                stream = None;
                None
            }
        };
        tally.count(status, sent.elapsed(), &SUCCESS_STATUSES);
    }
    tally
}

/// Write `request` and read one whole answer.
async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    buffer: &mut Vec<u8>,
) -> std::io::Result<Answer> {
    stream.write_all(request).await?;
    buffer.clear();
    loop {
        if let Some(answer) = parse_answer(buffer)? {
            return Ok(answer);
        }
        buffer.reserve(READ_CHUNK);
        if stream.read_buf(buffer).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// A whole answer's status, and whether its connection may carry the next
/// request.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    keep_alive: bool,
}

/// The answer in `bytes`, `None` while it is incomplete. Its body is
/// skipped: sized by `content-length` or chunked; an answer with neither
/// must end with the connection, which this generator counts as broken
/// (no server it measures does that).
fn parse_answer(bytes: &[u8]) -> std::io::Result<Option<Answer>> {
    let broken = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(broken("not an HTTP/1.1 answer")),
    };
    let status = response.code.ok_or_else(|| broken("no status"))?;
    let mut content_length = None;
    let mut chunked = false;
    let mut keep_alive = response.version == Some(1);
    for header in response.headers.iter() {
        let value = std::str::from_utf8(header.value).unwrap_or_default().trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.parse().map_err(|_| broken("bad content-length"))?);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if header.name.eq_ignore_ascii_case("connection") {
            keep_alive = !value.eq_ignore_ascii_case("close");
        }
    }
    let body = &bytes[head_len..];
    let complete = if chunked {
        chunked_body_complete(body).map_err(|()| broken("bad chunked body"))?
    } else {
        let length: usize = content_length.ok_or_else(|| broken("no content-length"))?;
        body.len() >= length
    };
    Ok(complete.then_some(Answer { status, keep_alive }))
}

/// Whether `body` holds a whole chunked body, up to its last chunk and the
/// empty line after the (ignored) trailers.
fn chunked_body_complete(mut body: &[u8]) -> Result<bool, ()> {
    loop {
        let Some(line_end) = find_crlf(body) else {
            return Ok(false);
        };
        let size_field = std::str::from_utf8(&body[..line_end]).map_err(|_| ())?;
        let size_hex = size_field.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| ())?;
        body = &body[line_end + 2..];
        if size == 0 {
            // Trailers, each a line, until an empty line.
            loop {
                let Some(line_end) = find_crlf(body) else {
                    return Ok(false);
                };
                if line_end == 0 {
                    return Ok(true);
                }
                body = &body[line_end + 2..];
            }
        }
        if body.len() < size + 2 {
            return Ok(false);
        }
        body = &body[size + 2..];
    }
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|pair| pair == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, keep_alive: bool) -> Option<Answer> {
        Some(Answer { status, keep_alive })
    }

    #[test]
    fn the_request_is_plain_http_1_1_with_its_length() {
        let request = request_bytes("127.0.0.1:8080", "/hooks/a", b"{}");
        assert_eq!(
            request,
            b"POST /hooks/a HTTP/1.1\r\nhost: 127.0.0.1:8080\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        );
    }

    #[test]
    fn answers_sized_by_content_length_are_whole_once_the_body_is_in() {
        let whole = b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_answer(whole).unwrap(), answer(202, true));
        for cut in 0..whole.len() {
            assert_eq!(parse_answer(&whole[..cut]).unwrap(), None, "{cut}");
        }
        let closing =
            b"HTTP/1.1 429 Too Many Requests\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse_answer(closing).unwrap(), answer(429, false));
        let old = b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(parse_answer(old).unwrap(), answer(200, false));
    }

    #[test]
    fn chunked_answers_are_whole_after_the_last_chunk_and_trailers() {
        let whole = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n2;x=y\r\n:1\r\n1\r\n}\r\n0\r\nx-trailer: 1\r\n\r\n";
        assert_eq!(parse_answer(whole).unwrap(), answer(200, true));
        for cut in 0..whole.len() {
            assert_eq!(parse_answer(&whole[..cut]).unwrap(), None, "{cut}");
        }
    }

    #[test]
    fn broken_answers_are_errors() {
        for broken in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        ] {
            assert!(parse_answer(broken).is_err(), "{broken:?}");
        }
    }
}
