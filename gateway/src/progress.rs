//! Progress of long operations (loading many campaigns, running a file of
//! events, a deploy): a bar when stderr is a terminal, a plain log line at every
//! tenth otherwise, so logs and CI output stay readable.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

/// Below this many steps an operation is quick: no progress is shown.
const WORTH_SHOWING: usize = 20;

pub struct Progress {
    what: &'static str,
    total: usize,
    done: AtomicUsize,
    started: Instant,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// `what` names the operation ("Loading campaigns"); `total` its steps.
    pub fn new(what: &'static str, total: usize) -> Self {
        let bar = (total >= WORTH_SHOWING && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total as u64).with_message(what);
            let style = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed}")
                .expect("the template is valid")
                .progress_chars("=> ");
            bar.set_style(style);
            bar
        });
        Progress {
            what,
            total,
            done: AtomicUsize::new(0),
            started: Instant::now(),
            bar,
        }
    }

    /// One more step done; may be called from several threads.
    pub fn step(&self) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        match &self.bar {
            Some(bar) => bar.inc(1),
            None if self.total >= WORTH_SHOWING && done.is_multiple_of(self.total / 10) => {
                tracing::info!(done, total = self.total, "{}", self.what)
            }
            None => {}
        }
    }

    /// Run `print` (which writes to the terminal) without the bar in the way.
    pub fn suspend<R>(&self, print: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }

    /// Clear the bar and say how long it took.
    pub fn finish(self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        tracing::info!(
            count = self.done.load(Ordering::Relaxed),
            seconds = self.started.elapsed().as_secs_f64(),
            "{} finished",
            self.what
        );
    }
}

/// A one-step operation that takes a while (a deploy): a spinner on a
/// terminal, one line otherwise. Stops when dropped.
pub struct Spinner(Option<ProgressBar>);

impl Spinner {
    pub fn start(what: String) -> Self {
        if !std::io::stderr().is_terminal() {
            eprintln!("{what}…");
            return Spinner(None);
        }
        let bar = ProgressBar::new_spinner().with_message(what);
        bar.enable_steady_tick(std::time::Duration::from_millis(100));
        Spinner(Some(bar))
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
