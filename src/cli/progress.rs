//! Progress of a long command on stderr, stdout staying for its JSON summary: a bar on
//! a terminal (`indicatif`), otherwise a plain line at most once a second (logs, CI).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Lines at most this often when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(1);

pub struct Progress {
    label: String,
    total: u64,
    bar: Option<ProgressBar>,
    last_line: Option<Instant>,
}

impl Progress {
    pub fn new(label: impl Into<String>, total: u64) -> Self {
        let label = label.into();
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left) {msg}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(label.clone());
            bar
        });
        Self {
            label,
            total,
            bar,
            last_line: None,
        }
    }

    /// The total, once known (a walk of a queue knows it when it began).
    pub fn set_total(&mut self, total: u64) {
        self.total = total;
        if let Some(bar) = &self.bar {
            bar.set_length(total);
        }
    }

    /// `done` of the total are through (processed or refused); `note` says how.
    pub fn update(&mut self, done: u64, note: &str) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            bar.set_message(note.to_string());
            return;
        }
        if self.last_line.is_some_and(|at| at.elapsed() < LINE_EVERY) {
            return;
        }
        self.last_line = Some(Instant::now());
        eprintln!("{}: {done}/{} {note}", self.label, self.total);
    }

    pub fn finish(&mut self, done: u64, note: &str) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        eprintln!("{}: {done}/{} {note}, finished", self.label, self.total);
    }
}
