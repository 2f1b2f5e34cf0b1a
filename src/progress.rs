//! User-facing progress: one line per step as it starts and as it ends
//! (cached, done in N ms, failed). Its own channel (stderr), not log lines.

use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::secrets::Secrets;
use std::sync::atomic::{AtomicU64, Ordering};

/// A step's number in this run, as shown to the user (`#3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepNo(pub u64);

pub struct Progress {
    out: Mutex<Box<dyn Write + Send>>,
    /// Every line is scrubbed of secret values before it is written.
    secrets: Arc<Secrets>,
    next: AtomicU64,
    /// Counters for the summary line.
    ran: AtomicU64,
    cached: AtomicU64,
}

/// How many stderr lines a failure shows.
pub const STDERR_TAIL_LINES: usize = 20;

impl Progress {
    pub fn new(out: Box<dyn Write + Send>, secrets: Arc<Secrets>) -> Progress {
        Progress {
            out: Mutex::new(out),
            secrets,
            next: AtomicU64::new(1),
            ran: AtomicU64::new(0),
            cached: AtomicU64::new(0),
        }
    }

    pub fn stderr(secrets: Arc<Secrets>) -> Progress {
        Progress::new(Box::new(std::io::stderr()), secrets)
    }

    fn next_step(&self) -> StepNo {
        StepNo(self.next.fetch_add(1, Ordering::Relaxed))
    }

    fn line(&self, text: &str) {
        let text = self.secrets.scrub_str(text);
        let mut out = self.out.lock().expect("progress lock poisoned");
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }

    /// A step answered from the cache: one line.
    pub fn cached(&self, what: &str) {
        self.cached.fetch_add(1, Ordering::Relaxed);
        let no = self.next_step();
        self.line(&format!("#{} {what} CACHED", no.0));
    }

    /// A step (or a pull) starts running; its end is reported with the number returned.
    pub fn started(&self, what: &str) -> StepNo {
        let no = self.next_step();
        self.line(&format!("#{} {what}", no.0));
        no
    }

    /// A step ran to success.
    pub fn done(&self, no: StepNo, millis: u128) {
        self.ran.fetch_add(1, Ordering::Relaxed);
        self.line(&format!("#{} DONE in {millis} ms", no.0));
    }

    /// A line of information that is not a step (a host directory scanned).
    pub fn info(&self, text: &str) {
        let no = self.next_step();
        self.line(&format!("#{} {text}", no.0));
    }

    /// A detail of running work (a layer pushed).
    pub fn detail(&self, no: StepNo, text: &str) {
        self.line(&format!("#{}   {text}", no.0));
    }

    /// Work that is not a step (an image pull) finished.
    pub fn finished(&self, no: StepNo, millis: u128, detail: &str) {
        self.line(&format!("#{} DONE in {millis} ms ({detail})", no.0));
    }

    pub fn failed(&self, no: StepNo, what: &str, reason: &str, stderr: &[u8]) {
        let mut msg = format!("#{} FAILED: {what}\n#{}   {reason}", no.0, no.0);
        let tail = tail_lines(stderr, STDERR_TAIL_LINES);
        if !tail.is_empty() {
            msg.push_str(&format!("\n#{}   stderr (last lines):", no.0));
            for l in tail.lines() {
                msg.push_str(&format!("\n#{}   | {l}", no.0));
            }
        }
        self.line(&msg);
    }

    /// Steps run and cached so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.ran.load(Ordering::Relaxed),
            self.cached.load(Ordering::Relaxed),
        )
    }

    pub fn summary(&self, wall_ms: u128) {
        let (ran, cached) = self.counts();
        self.line(&format!(
            "rbuild: {ran} steps run, {cached} cached, in {:.2} s",
            wall_ms as f64 / 1000.0
        ));
    }
}

/// The last `n` lines of a byte stream, lossily decoded.
pub fn tail_lines(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.trim_end_matches('\n').lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail_lines(b"a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines(b"a", 5), "a");
        assert_eq!(tail_lines(b"", 5), "");
    }
}
