//! The data of one plugin run's `Store`: WASI context, limits, and what the
//! host imports need and record.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::hooklane::plugin::types;
use super::host::{HostServices, KvWrites};
use super::output::{Dropped, GuestOutput, LogBudget, CAPTURE_LIMIT, LOG_BUDGET};
use super::Sandbox;

pub struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: MemoryLimiter,
    pub sandbox: Arc<Sandbox>,
    pub services: HostServices,
    pub event_id: String,
    /// The URL, redacted, of an http-fetch that hit its timeout during this
    /// run.
    pub timed_out_fetch: Option<String>,
    /// Wall time of the http-fetch calls that ended during this run.
    outbound: Duration,
    /// When the http-fetch under way started, if one is.
    fetching_since: Option<Instant>,
    /// Writes through the kv import, committed only if the run succeeds.
    pub kv_writes: KvWrites,
    /// Deliveries and emits after a delay, kept only if the run succeeds.
    pub later: Vec<(types::Action, std::time::Duration)>,
    /// What the logging import may still write during this run.
    pub log_budget: LogBudget,
    stdout: GuestOutput,
    stderr: GuestOutput,
    stderr_text: Vec<u8>,
}

impl PluginState {
    pub fn new(sandbox: Arc<Sandbox>, services: HostServices, event_id: &str) -> Self {
        let stdout = GuestOutput::default();
        let stderr = GuestOutput::default();
        // No preopens, no environment, no network: the defaults, stated.
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        PluginState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(sandbox.memory_bytes),
            sandbox,
            services,
            event_id: event_id.into(),
            timed_out_fetch: None,
            outbound: Duration::ZERO,
            fetching_since: None,
            kv_writes: KvWrites::default(),
            later: Vec::new(),
            log_budget: LogBudget::default(),
            stdout,
            stderr,
            stderr_text: Vec::new(),
        }
    }

    /// Make a kept instance's state ready for `event_id`: everything that
    /// belongs to one run starts over. Only the WASI context and its
    /// resource table carry over, as the guest holds handles into them
    /// (wasi-libc keeps its stdout and stderr streams open); a plugin can
    /// reach nothing else through WASI, and what its streams wrote was
    /// taken by [`PluginState::flush_guest_output`].
    pub fn next_event(&mut self, event_id: &str) {
        // Named field by field, so a field added later must be placed here.
        let PluginState {
            wasi: _,
            table: _,
            limiter,
            sandbox,
            services: _,
            event_id: id,
            timed_out_fetch,
            outbound,
            fetching_since,
            kv_writes,
            later,
            log_budget,
            stdout: _,
            stderr: _,
            stderr_text,
        } = self;
        *limiter = MemoryLimiter::new(sandbox.memory_bytes);
        *id = event_id.into();
        *timed_out_fetch = None;
        *outbound = Duration::ZERO;
        *fetching_since = None;
        *kv_writes = KvWrites::default();
        later.clear();
        *log_budget = LogBudget::default();
        stderr_text.clear();
    }

    /// Whether the memory cap refused a growth during the run: then the
    /// instance is not kept, whether or not the plugin carried on.
    pub fn growth_refused(&self) -> bool {
        self.limiter.refused_bytes().is_some()
    }

    /// Log what the guest printed, line by line, with its campaign, then
    /// one line per stream that went over its budget; keep stderr for
    /// [`PluginState::stderr`].
    pub fn flush_guest_output(&mut self) {
        let (stdout, stdout_dropped) = self.stdout.take();
        let (stderr, stderr_dropped) = self.stderr.take();
        self.log_lines("stdout", &stdout);
        self.log_lines("stderr", &stderr);
        for (stream, dropped, budget) in [
            ("log", self.log_budget.dropped(), LOG_BUDGET),
            ("stdout", stdout_dropped, CAPTURE_LIMIT),
            ("stderr", stderr_dropped, CAPTURE_LIMIT),
        ] {
            self.log_dropped(stream, dropped, budget);
        }
        self.stderr_text = stderr;
    }

    fn log_dropped(&self, stream: &str, dropped: Dropped, budget_bytes: usize) {
        if dropped == Dropped::default() {
            return;
        }
        tracing::warn!(
            campaign = %self.sandbox.campaign,
            lane = %self.sandbox.lane,
            version = %self.sandbox.version,
            event = %self.event_id,
            stream,
            dropped_bytes = dropped.bytes,
            dropped_lines = dropped.lines,
            budget_bytes,
            "Dropped plugin output over its per-event budget"
        );
    }

    fn log_lines(&self, stream: &str, text: &[u8]) {
        for line in String::from_utf8_lossy(text)
            .lines()
            .filter(|l| !l.is_empty())
        {
            tracing::info!(
                campaign = %self.sandbox.campaign,
                lane = %self.sandbox.lane,
                version = %self.sandbox.version,
                event = %self.event_id,
                stream,
                "{line}"
            );
        }
    }

    /// An http-fetch starts waiting; [`PluginState::fetch_ended`] stops
    /// its clock.
    pub fn fetch_started(&mut self) {
        self.fetching_since = Some(Instant::now());
    }

    pub fn fetch_ended(&mut self) {
        if let Some(since) = self.fetching_since.take() {
            self.outbound += since.elapsed();
        }
    }

    /// Wall time this run has waited on http-fetch, counting a call still
    /// under way: one cut off by the deadline never ended.
    pub fn outbound_time(&self) -> Duration {
        self.outbound
            + self
                .fetching_since
                .map_or(Duration::ZERO, |since| since.elapsed())
    }

    /// What the guest wrote to stderr during the run (up to the capture
    /// limit), once [`PluginState::flush_guest_output`] has run.
    pub fn stderr(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.stderr_text)
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps linear memory and records a refused growth, so a memory bomb is
/// reported as such whatever the guest does after its allocation fails.
pub struct MemoryLimiter {
    cap_bytes: usize,
    refused: Option<usize>,
}

impl MemoryLimiter {
    fn new(cap_bytes: usize) -> Self {
        Self {
            cap_bytes,
            refused: None,
        }
    }

    pub fn refused_bytes(&self) -> Option<usize> {
        self.refused
    }
}

/// Table elements a plugin may grow to; Rust guests use a few hundred.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap_bytes {
            self.refused = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
