//! Progress display: an indicatif spinner (step n/N, elapsed) on a terminal, plain prefixed
//! lines otherwise (CI logs, pipes). Everything goes to stderr so stdout stays for the image
//! uuid / JSON manifest.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Fancy,
    Plain,
    Quiet,
}

impl Mode {
    /// Fancy only on a terminal outside CI.
    pub fn detect() -> Mode {
        if std::io::stderr().is_terminal() && std::env::var_os("CI").is_none() {
            Mode::Fancy
        } else {
            Mode::Plain
        }
    }
}

/// (n, total, name, started)
type CurrentStep = (usize, usize, String, Instant);

#[derive(Clone)]
pub struct Reporter {
    mode: Mode,
    start: Instant,
    bar: Option<ProgressBar>,
    /// Lines kept in Quiet mode (tests inspect them).
    pub captured: Arc<Mutex<Vec<String>>>,
    step: Arc<Mutex<Option<CurrentStep>>>,
    /// Put before every line: a matrix combination's label (`[kubernetes_version=1.34.1]`).
    prefix: Option<Arc<str>>,
}

impl Reporter {
    pub fn new(mode: Mode) -> Reporter {
        let bar = (mode == Mode::Fancy).then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Reporter {
            mode,
            start: Instant::now(),
            bar,
            captured: Arc::default(),
            step: Arc::default(),
            prefix: None,
        }
    }

    /// A reporter for one build of a matrix: every line starts with `prefix`; the step state is
    /// its own, the output (terminal bar or captured lines) and the clock shared.
    pub fn prefixed(&self, prefix: &str) -> Reporter {
        Reporter {
            mode: self.mode,
            start: self.start,
            bar: self.bar.clone(),
            captured: self.captured.clone(),
            step: Arc::default(),
            prefix: Some(prefix.into()),
        }
    }

    fn emit(&self, s: &str) {
        let prefixed;
        let s = match &self.prefix {
            Some(p) => {
                prefixed = format!("{p} {s}");
                prefixed.as_str()
            }
            None => s,
        };
        match (&self.bar, self.mode) {
            (Some(b), _) => b.println(s),
            (None, Mode::Quiet) => self
                .captured
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(s.to_string()),
            // not eprintln!: after SIGHUP the terminal is gone, and a panic on the failed write
            // would cut the cleanup short
            (None, _) => {
                use std::io::Write as _;
                let _ = writeln!(std::io::stderr(), "{s}");
            }
        }
    }

    fn stamp(&self) -> String {
        let e = self.start.elapsed().as_secs();
        format!("[{:02}:{:02}]", e / 60, e % 60)
    }

    pub fn phase(&self, p: &str) {
        if let Some(b) = &self.bar {
            b.set_message(format!("{}{p}", self.bar_prefix()));
        }
        self.emit(&format!("{} == {p}", self.stamp()));
    }

    /// Report how long the current step took (when the next one starts or the steps end).
    fn close_step(&self) {
        let prev = self.step.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((n, t, name, at)) = prev {
            self.emit(&format!(
                "{} -- step {n}/{t} done in {:.1}s: {name}",
                self.stamp(),
                at.elapsed().as_secs_f64()
            ));
        }
    }

    pub fn step(&self, n: usize, total: usize, name: &str) {
        self.close_step();
        *self.step.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((n, total, name.to_string(), Instant::now()));
        if let Some(b) = &self.bar {
            b.set_message(format!("{}step {n}/{total}: {name}", self.bar_prefix()));
        }
        self.emit(&format!("{} -- step {n}/{total}: {name}", self.stamp()));
    }

    fn bar_prefix(&self) -> String {
        self.prefix
            .as_deref()
            .map(|p| format!("{p} "))
            .unwrap_or_default()
    }

    pub fn end_steps(&self) {
        self.close_step();
    }

    /// One line of remote output, prefixed with the step so interleaved logs stay readable.
    pub fn output(&self, line: &str) {
        let prefix = match &*self.step.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((n, t, _, _)) => format!("[{n}/{t}]"),
            None => "     ".into(),
        };
        self.emit(&format!("{prefix} {line}"));
    }

    pub fn line(&self, s: &str) {
        self.emit(s);
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }

    pub fn captured(&self) -> Vec<String> {
        self.captured
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
