//! Progress display of the operator commands' long operations: a bar on a terminal, a plain
//! line every few seconds otherwise (logs, CI), both on stderr so stdout stays the command's
//! result. It renders the reports of [`consumer::ops::Progress`].

use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Progress of a long operation: a bar on a terminal, a plain line every few seconds otherwise
/// (logs, CI), both on stderr so stdout stays the command's result.
#[derive(Debug)]
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    plain: std::sync::Mutex<PlainProgress>,
}

#[derive(Debug, Default)]
struct PlainProgress {
    label: String,
    total: u64,
    done: u64,
    last_line: Option<Instant>,
}

impl Progress {
    /// A bar when stderr is a terminal, plain lines otherwise.
    pub fn for_stderr() -> Self {
        if std::io::stderr().is_terminal() {
            Self::bar()
        } else {
            Self::plain()
        }
    }

    /// Plain lines on stderr.
    pub fn plain() -> Self {
        Self {
            bar: None,
            plain: std::sync::Mutex::new(PlainProgress::default()),
        }
    }

    fn bar() -> Self {
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left)",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        Self {
            bar: Some(bar),
            plain: std::sync::Mutex::new(PlainProgress::default()),
        }
    }
}

impl consumer::ops::Progress for Progress {
    fn start(&self, label: &str, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_message(label.to_owned());
            return;
        }
        if let Ok(mut p) = self.plain.lock() {
            *p = PlainProgress {
                label: label.to_owned(),
                total,
                done: 0,
                last_line: Some(Instant::now()),
            };
            eprintln!("{label}: 0/{total}");
        }
    }

    fn advance(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
            return;
        }
        if let Ok(mut p) = self.plain.lock() {
            p.done += n;
            if p.last_line
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(2))
            {
                eprintln!("{}: {}/{}", p.label, p.done, p.total);
                p.last_line = Some(Instant::now());
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
            return;
        }
        if let Ok(p) = self.plain.lock() {
            eprintln!("{}: {}/{} done", p.label, p.done, p.total);
        }
    }
}
