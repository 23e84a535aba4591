//! Where plugins compile: a pool of threads of its own at a lower priority,
//! so a deploy or a reload compiling while traffic flows yields the CPU to
//! the lanes.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::{Compiled, Runtime};

/// Owns the compile threads. wasmtime compiles a component's functions in
/// parallel on the rayon pool it is called from, so running the whole
/// compile inside this pool keeps every part of it — parsing, Cranelift,
/// linking, writing the cache — on these threads.
///
/// Nice, not `SCHED_IDLE`, though idle kept the speed lane's p99 flatter
/// during back-to-back deploys (1.3× against 2× at nice 19): an idle-class
/// thread gets next to nothing while anything else on the machine is busy,
/// and with the test suite running beside it a deploy stalled for tens of
/// seconds. Nice 19 still guarantees compiles a share.
pub struct Compiler {
    pool: rayon::ThreadPool,
}

impl Compiler {
    /// Start the compile threads at `nice` (the care lane's).
    pub fn new(nice: i32) -> std::io::Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("hooklane-compile-{i}"))
            .start_handler(move |_| crate::lanes::lower_priority("compile", nice))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Compiler { pool })
    }

    /// [`Runtime::compile`] on the compile threads; the caller waits. A
    /// compiler that panics on a component refuses it, without taking the
    /// caller (a deploy, a reload) down.
    pub fn compile(
        &self,
        runtime: &Runtime,
        bytes: &[u8],
        digest: &str,
    ) -> Result<Compiled, String> {
        let compile = AssertUnwindSafe(|| runtime.compile(bytes, digest));
        self.run(|| catch_unwind(compile))
            .map_err(|_| "the compiler panicked".to_owned())?
    }

    /// Run `work` — compiles, and what prepares them — on the compile
    /// threads, where rayon's parallel iterators spread it over them.
    pub fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        self.pool.install(work)
    }
}
