//! A real `nats-server -js` for the NATS store's tests, the end-to-end
//! tests and benchmarks: loopback only, a port the server picks itself (it
//! writes it to a ports file, which is what we wait for), its store in the
//! directory given, killed on drop. Blocks while it starts (milliseconds).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The nats-server binary: `HOOKLANE_NATS_SERVER`, else the one
/// `scripts/setup.sh` installs into `.tools/`, else `nats-server` on PATH.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("HOOKLANE_NATS_SERVER") {
        return path.into();
    }
    let installed =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/nats-server/bin/nats-server");
    if installed.exists() {
        return installed;
    }
    "nats-server".into()
}

pub struct NatsServer {
    child: Child,
    dir: PathBuf,
    pub url: String,
}

impl NatsServer {
    /// Start a server keeping its JetStream store under `dir/nats`, on a
    /// port it picks. Starting again on the same `dir` finds the same
    /// streams.
    pub fn start(dir: &Path) -> NatsServer {
        let (child, url) = spawn(dir, None);
        NatsServer {
            child,
            dir: dir.to_owned(),
            url,
        }
    }

    /// Kill the server as `kill -9` would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start the killed server again on its port and data.
    pub fn restart(&mut self) {
        let port = self.url.rsplit(':').next().and_then(|p| p.parse().ok());
        (self.child, self.url) = spawn(&self.dir, port);
    }
}

/// Start nats-server on `port` (or one it picks) and wait until it
/// listens; the process and its client URL.
fn spawn(dir: &Path, port: Option<u16>) -> (Child, String) {
    let store = dir.join("nats");
    let ports = dir.join("nats-ports");
    std::fs::create_dir_all(&ports).expect("ports dir");
    let config = dir.join("nats-server.conf");
    let port = port.map_or(-1, i32::from);
    // `sync_interval: always`: on one server a JetStream ack means the
    // message reached the OS, not the disk, unless every write is synced;
    // "202 only when durable" needs this (a cluster gets it from R3
    // instead). `max_payload`: a 1 MiB KV value plus headers.
    std::fs::write(
        &config,
        format!(
            "host: 127.0.0.1\nport: {port}\nports_file_dir: {ports:?}\nmax_payload: 8MB\n\
             jetstream {{\n  store_dir: {store:?}\n  sync_interval: always\n}}\n"
        ),
    )
    .expect("nats-server config");
    let binary = binary();
    let mut child = Command::new(&binary)
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {} (run scripts/setup.sh or set HOOKLANE_NATS_SERVER): {e}",
                binary.display()
            )
        });
    let file = ports.join(format!("nats-server_{}.ports", child.id()));
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(url) = client_url(&file) {
            return (child, url);
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("nats-server exited before listening: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "nats-server did not listen within {START_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The client URL in a server's ports file, once it is written whole.
fn client_url(file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
    ports["nats"][0].as_str().map(str::to_owned)
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
