//! Starting a server process and learning its addresses: each server prints
//! a [`listening_line`](hooklane::server::listening_line) on stdout once
//! bound, which makes port 0 usable by the bench and the end-to-end tests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use hooklane::server::parse_listening_line;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot start the process: {0}")]
    Start(#[from] std::io::Error),
    #[error("the process exited before listening on {0:?}")]
    Exited(Vec<String>),
    #[error("the process did not listen on {0:?} within {1:?}")]
    Timeout(Vec<String>, Duration),
}

/// A child process that is listening; killed when dropped.
pub struct Server {
    pub child: Child,
    addresses: HashMap<String, SocketAddr>,
}

impl Server {
    /// Spawn `command` and wait until it has printed the address of every
    /// listener in `names`.
    pub async fn spawn(
        mut command: Command,
        names: &[&str],
        patience: Duration,
    ) -> Result<Server, SpawnError> {
        let mut child = command.stdout(Stdio::piped()).kill_on_drop(true).spawn()?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let mut addresses = HashMap::new();
        let wanted = || names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let read = async {
            while addresses.len() < names.len() {
                let Some(line) = lines.next_line().await? else {
                    return Err(SpawnError::Exited(wanted()));
                };
                if let Some((name, addr)) = parse_listening_line(&line) {
                    if names.contains(&name) {
                        addresses.insert(name.to_string(), addr);
                    }
                }
            }
            Ok(())
        };
        tokio::time::timeout(patience, read)
            .await
            .map_err(|_| SpawnError::Timeout(wanted(), patience))??;
        // Keep reading, so the child never writes into a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Server { child, addresses })
    }

    /// The process's resident set, in MiB.
    pub fn rss_mb(&self) -> std::io::Result<f64> {
        resident_mb(self.pid()?)
    }

    /// The address `name` listens on.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.addresses[name]
    }

    /// The process id, unless the process has been waited for.
    pub fn pid(&self) -> std::io::Result<u32> {
        self.child
            .id()
            .ok_or_else(|| std::io::Error::other("the process has exited"))
    }
}

/// The resident set of process `pid` (`VmRSS` in `/proc/<pid>/status`), in MiB.
pub fn resident_mb(pid: u32) -> std::io::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no VmRSS in /proc/<pid>/status"))?;
    Ok(kb / 1024.0)
}

/// The CPU time process `pid` has used so far, in user and system mode
/// (`utime` + `stime` in `/proc/<pid>/stat`), in seconds.
pub fn cpu_seconds(pid: u32) -> std::io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses and may
    // hold spaces: the state (field 3) first, utime and stime are 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |field: usize| fields.get(field - 3).and_then(|t| t.parse::<u64>().ok());
    let (utime, stime) = ticks(14)
        .zip(ticks(15))
        .ok_or_else(|| std::io::Error::other("no utime and stime in /proc/<pid>/stat"))?;
    Ok((utime + stime) as f64 / rustix::param::clock_ticks_per_second() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_from_proc_and_grows_with_work() {
        let pid = std::process::id();
        let before = cpu_seconds(pid).unwrap();
        let started = std::time::Instant::now();
        let mut spin = 0u64;
        // Until it shows 50 ms of work, however busy the machine is.
        while cpu_seconds(pid).unwrap() - before < 0.05 {
            assert!(started.elapsed() < Duration::from_secs(30), "no CPU time");
            for _ in 0..100_000 {
                spin = std::hint::black_box(spin.wrapping_add(1));
            }
        }
        assert!(cpu_seconds(u32::MAX).is_err());
    }
}
