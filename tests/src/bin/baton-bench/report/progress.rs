//! The progress line on stderr while a benchmark runs ([`Progress`]), and set-up [`note`]s.
//! Used from the benchmarks' driving task on the generator runtime; never from sender or
//! receiver tasks.

use std::io::{IsTerminal, Write as _};
use std::time::{Duration, Instant};

/// A progress line on stderr: rewritten in place on a terminal, one line per update
/// otherwise (CI logs).
pub struct Progress {
    tty: bool,
    last: Option<Instant>,
    every: Duration,
    dirty: bool,
}

impl Progress {
    /// A progress writer updating at most once a second.
    pub fn new() -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            last: None,
            every: Duration::from_secs(1),
            dirty: false,
        }
    }

    /// Shows `line` if the last update is old enough.
    pub fn update(&mut self, line: impl FnOnce() -> String) {
        if self.last.is_some_and(|t| t.elapsed() < self.every) {
            return;
        }
        self.last = Some(Instant::now());
        let line = line();
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            self.dirty = true;
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// Ends the line in place, so later output starts on a fresh one.
    pub fn done(&mut self) {
        if self.dirty {
            let _ = writeln!(std::io::stderr());
            self.dirty = false;
        }
        self.last = None;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.done();
    }
}

/// A note on stderr (set-up steps), ending any progress line first.
pub fn note(progress: &mut Progress, text: impl std::fmt::Display) {
    progress.done();
    eprintln!("{text}");
}
