//! The bench's floor: a bare hyper server answering a fixed body, the
//! fastest a webhook can be answered on this machine with this HTTP stack.
//! It also stands in for the `sms` destination during the lanes bench. It
//! runs as a process of its own (`hooklane-bench floor`), like the gateway.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::process::Command;

use crate::process::Server;
use crate::{BenchError, PATIENCE};

/// Start `hooklane-bench floor` (this executable); it listens as `floor`.
pub async fn start() -> Result<Server, BenchError> {
    eprintln!("bench: starting the floor server");
    let mut command = Command::new(std::env::current_exe()?);
    command.arg("floor");
    Ok(Server::spawn(command, &["floor"], PATIENCE).await?)
}

/// Serve `{"status":"ok"}` to every request on `listener`, forever.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let answer = service_fn(|_request: Request<hyper::body::Incoming>| async {
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from_static(b"{\"status\":\"ok\"}")))
                        .expect("static response"),
                )
            });
            // A client hanging up mid-request is normal under load.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), answer)
                .await;
        });
    }
}
