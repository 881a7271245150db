//! How a long operator operation (a reprocess, a redrive) reports its progress: a callback the
//! caller renders (a bar, log lines) or ignores.

/// Progress of one long operation: `start` once with the amount of work, `advance` as units
/// complete, `finish` at the end (also after an empty run).
pub trait Progress: Send + Sync {
    fn start(&self, label: &str, total: u64);
    fn advance(&self, done: u64);
    fn finish(&self);
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _label: &str, _total: u64) {}
    fn advance(&self, _done: u64) {}
    fn finish(&self) {}
}
