//! User-facing progress: its own channel (stderr), not log lines.
//!
//! The solver reports events (a step queued, running, its output, cached,
//! done, failed); a renderer shows them: `plain` as one line per event
//! (output lines prefixed with their step, for CI logs), `json` as one
//! object per event (for machines), `tty` as a live tree of running steps
//! with their elapsed time and last output line (indicatif). Every line is
//! scrubbed of secret values before it is shown.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::secrets::Secrets;
use crate::timeline::{Recorder, StepTag};

/// A step's number in this run, as shown to the user (`#3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StepNo(pub u64);

/// Whether this process reports as JSON (`--progress json`): then every
/// line rbuild writes to stderr is a JSON object, its own messages
/// (`{"event": "message"}`), cargo's compile output (`"compile"`) and the
/// pipeline's own lines (`"pipeline_output"`) included.
static JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Sets how this process reports (once, before anything is said).
pub fn set_json(on: bool) {
    JSON.store(on, Ordering::Relaxed);
}

pub fn is_json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// One line on stderr outside a run's display: as it is, or under
/// `--progress json` as an event of `kind` with the line under `field`.
pub fn say_as(kind: &str, field: &str, text: &str) {
    if is_json() {
        let mut event = json!({"event": kind});
        event[field] = json!(text);
        eprintln!("{event}");
    } else {
        eprintln!("{text}");
    }
}

/// A message of rbuild's own (a hint, a notice, an error).
pub fn say(text: &str) {
    say_as("message", "text", text);
}

/// How many stderr lines a failure shows.
pub const STDERR_TAIL_LINES: usize = 20;

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `tty` on a terminal, `plain` otherwise.
    Auto,
    Tty,
    Plain,
    Json,
}

impl Mode {
    /// Decides `auto` by whether stderr is a terminal.
    pub fn resolve(self) -> Mode {
        use std::io::IsTerminal;
        match self {
            Mode::Auto if std::io::stderr().is_terminal() => Mode::Tty,
            Mode::Auto => Mode::Plain,
            other => other,
        }
    }
}

/// Which stream a line of step output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

enum Render {
    Plain(Mutex<Box<dyn Write + Send>>),
    Json(Mutex<Box<dyn Write + Send>>),
    Tty(Tty),
}

struct Tty {
    multi: MultiProgress,
    bars: Mutex<HashMap<StepNo, (ProgressBar, String)>>,
}

pub struct Progress {
    render: Render,
    secrets: Arc<Secrets>,
    started: Instant,
    next: AtomicU64,
    ran: AtomicU64,
    cached: AtomicU64,
    failed: AtomicU64,
    /// The run's timeline, for `rbuild explain`, `report` and traces.
    timeline: Recorder,
}

impl Progress {
    pub fn new(mode: Mode, out: Box<dyn Write + Send>, secrets: Arc<Secrets>) -> Progress {
        let render = match mode.resolve() {
            Mode::Json => Render::Json(Mutex::new(out)),
            Mode::Tty => Render::Tty(Tty {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                bars: Mutex::new(HashMap::new()),
            }),
            _ => Render::Plain(Mutex::new(out)),
        };
        let started = Instant::now();
        Progress {
            render,
            secrets,
            timeline: Recorder::new(started),
            started,
            next: AtomicU64::new(1),
            ran: AtomicU64::new(0),
            cached: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    pub fn stderr(mode: Mode, secrets: Arc<Secrets>) -> Progress {
        Progress::new(mode, Box::new(std::io::stderr()), secrets)
    }

    fn next_step(&self) -> StepNo {
        StepNo(self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// Writes a line (plain) or a line above the live bars (tty).
    fn line(&self, text: &str) {
        let text = self.secrets.scrub_str(text);
        match &self.render {
            Render::Plain(out) => {
                let mut out = out.lock().expect("progress lock poisoned");
                let _ = writeln!(out, "{text}");
                let _ = out.flush();
            }
            Render::Tty(t) => {
                let _ = t.multi.println(text);
            }
            Render::Json(_) => {}
        }
    }

    fn json(&self, mut event: serde_json::Value) {
        if let Render::Json(out) = &self.render {
            event["time_ms"] = json!(self.started.elapsed().as_millis() as u64);
            let text = self.secrets.scrub_str(&event.to_string());
            let mut out = out.lock().expect("progress lock poisoned");
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        }
    }

    fn bar(&self, no: StepNo, what: &str, queued: bool) {
        if let Render::Tty(t) = &self.render {
            let bar = t.multi.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} #{prefix} {msg} {elapsed:.dim}")
                    .expect("valid template"),
            );
            bar.set_prefix(no.0.to_string());
            let what = self.secrets.scrub_str(what);
            bar.set_message(if queued {
                format!("{what} (queued)")
            } else {
                what.clone()
            });
            bar.enable_steady_tick(Duration::from_millis(120));
            t.bars.lock().unwrap().insert(no, (bar, what));
        }
    }

    fn end_bar(&self, no: StepNo) {
        if let Render::Tty(t) = &self.render
            && let Some((bar, _)) = t.bars.lock().unwrap().remove(&no)
        {
            bar.finish_and_clear();
        }
    }

    /// A line the pipeline itself printed (shown above the live display).
    pub fn pipeline_line(&self, line: &str) {
        match &self.render {
            Render::Tty(t) => {
                let _ = t.multi.println(line);
            }
            Render::Json(_) => self.json(json!({"event": "pipeline_output", "line": line})),
            _ => eprintln!("{line}"),
        }
    }

    /// A step answered from the cache: one line.
    #[cfg(test)]
    pub fn cached(&self, what: &str) {
        self.cached_tagged(what, &StepTag::default());
    }

    /// A step answered from the cache, with what the solver knows of it.
    pub fn cached_tagged(&self, what: &str, tag: &StepTag) -> StepNo {
        self.hit(what, tag, None)
    }

    /// A step answered by the remote cache (counted as cached).
    pub fn cached_remote(&self, what: &str, repo: &str, tag: &StepTag) {
        self.hit(what, tag, Some(repo));
    }

    /// A cache hit, local or from the remote cache `remote`: one line.
    fn hit(&self, what: &str, tag: &StepTag, remote: Option<&str>) -> StepNo {
        self.cached.fetch_add(1, Ordering::Relaxed);
        let no = self.next_step();
        self.timeline.begin(no.0, what, tag, true);
        let mut event = json!({"event": "cached", "step": no.0, "name": what, "key": tag.key});
        match remote {
            None => {
                self.timeline.end(no.0, "cached", None);
                self.line(&format!("#{} {what} CACHED", no.0));
            }
            Some(repo) => {
                self.timeline
                    .end(no.0, "remote", Some(&format!("remote {repo}")));
                self.line(&format!("#{} {what} CACHED (remote {repo})", no.0));
                event["remote"] = json!(repo);
            }
        }
        self.json(event);
        no
    }

    /// A step waits for a free job slot (`--jobs`); `running` follows.
    pub fn queued(&self, what: &str) -> StepNo {
        self.queued_tagged(what, &StepTag::default())
    }

    /// A step that missed the cache waits for a job slot (`tag.reason`: why it missed).
    pub fn queued_tagged(&self, what: &str, tag: &StepTag) -> StepNo {
        let no = self.next_step();
        self.timeline.begin(no.0, what, tag, false);
        self.bar(no, what, true);
        self.json(json!({"event": "queued", "step": no.0, "name": what, "key": tag.key}));
        no
    }

    /// A queued step starts running.
    pub fn running(&self, no: StepNo, what: &str) {
        self.timeline.running(no.0);
        if let Render::Tty(t) = &self.render
            && let Some((bar, w)) = t.bars.lock().unwrap().get(&no)
        {
            bar.set_message(w.clone());
            bar.reset_elapsed();
        }
        self.line(&format!("#{} {what}", no.0));
        self.json(json!({"event": "started", "step": no.0, "name": what}));
        self.miss(no);
    }

    /// A step (or a pull) starts running at once; its end is reported with the number returned.
    pub fn started(&self, what: &str) -> StepNo {
        self.started_tagged(what, &StepTag::default())
    }

    /// A step that missed the cache starts at once (`tag.reason`: why it missed).
    pub fn started_tagged(&self, what: &str, tag: &StepTag) -> StepNo {
        let no = self.next_step();
        self.timeline.begin(no.0, what, tag, true);
        self.bar(no, what, false);
        self.line(&format!("#{} {what}", no.0));
        self.json(json!({"event": "started", "step": no.0, "name": what, "key": tag.key}));
        self.miss(no);
        no
    }

    /// Why a step that runs missed the cache: one line under it, and a
    /// `miss` event.
    fn miss(&self, no: StepNo) {
        let (reason, replaced) = self.timeline.reason(no.0);
        if reason.is_empty() {
            return;
        }
        self.line(&format!("#{}   cache miss: {reason}", no.0));
        let mut event = json!({"event": "miss", "step": no.0, "reason": reason});
        if !replaced.is_empty() {
            event["replaced"] = json!(replaced);
        }
        self.json(event);
    }

    /// Work that already happened and is not a step (a host directory
    /// scanned, since `since`): an info line, and its place in the timeline.
    pub fn past(&self, text: &str, kind: &'static str, since: Instant) {
        let no = self.next_step();
        self.timeline.past(no.0, text, kind, since);
        self.line(&format!("#{} {text}", no.0));
        self.json(json!({"event": "info", "step": no.0, "text": text}));
    }

    /// Of a running step's time, what committing its result took.
    pub fn commit_time(&self, no: StepNo, millis: u64) {
        self.timeline.commit(no.0, millis);
    }

    /// Work for the step with key `key` beside its running time, from
    /// `since` to now (its push to the remote cache), with the bytes pushed.
    pub fn phase(&self, key: &str, name: &str, since: Instant, pushed: u64) {
        self.timeline.phase(key, name, since, pushed);
    }

    /// Bytes a step pulled or pushed (for the run's totals).
    pub fn bytes(&self, no: StepNo, pulled: u64, pushed: u64) {
        self.timeline.bytes(no.0, pulled, pushed);
    }

    /// When this run's progress (and its timeline's clock) started.
    pub fn started_at(&self) -> std::time::SystemTime {
        std::time::SystemTime::now() - self.started.elapsed()
    }

    /// The run's timeline so far.
    pub fn timeline(&self) -> Vec<crate::timeline::Entry> {
        self.timeline.entries()
    }

    /// A line a running step wrote.
    pub fn output(&self, no: StepNo, stream: Stream, line: &str) {
        let line = line.trim_end_matches('\r');
        // Shown on a terminal: escape sequences and control characters as
        // text, so that a step cannot clear the screen or move the cursor
        // (JSON escapes them itself).
        let shown = if matches!(self.render, Render::Json(_)) {
            std::borrow::Cow::Borrowed(line)
        } else {
            neutralized(line)
        };
        let line = shown.as_ref();
        match &self.render {
            Render::Tty(t) => {
                if let Some((bar, what)) = t.bars.lock().unwrap().get(&no) {
                    let shown: String = self.secrets.scrub_str(line).chars().take(80).collect();
                    bar.set_message(format!("{what} | {shown}"));
                }
            }
            Render::Plain(_) => self.line(&format!("#{} | {line}", no.0)),
            Render::Json(_) => self.json(json!({
                "event": "output",
                "step": no.0,
                "stream": if stream == Stream::Stdout { "stdout" } else { "stderr" },
                "line": line,
            })),
        }
    }

    /// A step ran to success.
    pub fn done(&self, no: StepNo, what: &str, millis: u128) {
        self.ran.fetch_add(1, Ordering::Relaxed);
        self.timeline.end(no.0, "ran", None);
        self.end_bar(no);
        match &self.render {
            Render::Tty(_) => self.line(&format!("#{} {what} DONE in {}", no.0, human_ms(millis))),
            _ => self.line(&format!("#{} DONE in {millis} ms", no.0)),
        }
        self.json(json!({"event": "done", "step": no.0, "ms": millis as u64}));
    }

    /// A service starts (its own line, which its output goes under).
    pub fn service_started(&self, what: &str) -> StepNo {
        let no = self.next_step();
        let tag = StepTag {
            kind: "service",
            ..StepTag::default()
        };
        self.timeline.begin(no.0, what, &tag, true);
        self.bar(no, what, false);
        self.line(&format!("#{} {what} starting", no.0));
        self.json(json!({"event": "service_started", "step": no.0, "name": what}));
        no
    }

    /// A started service became ready.
    pub fn service_ready(&self, no: StepNo, what: &str, millis: u128) {
        self.line(&format!("#{} {what} ready in {}", no.0, human_ms(millis)));
        self.json(json!({"event": "service_ready", "step": no.0, "ms": millis as u64}));
    }

    /// A service stopped (its last consumer ended, `stop()`, or the run's end).
    pub fn service_stopped(&self, no: StepNo, what: &str, millis: u128) {
        self.timeline.end(no.0, "ran", None);
        self.end_bar(no);
        self.line(&format!(
            "#{} {what} stopped after {}",
            no.0,
            human_ms(millis)
        ));
        self.json(json!({"event": "service_stopped", "step": no.0, "ms": millis as u64}));
    }

    /// A line of information that is not a step (a host directory scanned).
    pub fn info(&self, text: &str) {
        let no = self.next_step();
        self.line(&format!("#{} {text}", no.0));
        self.json(json!({"event": "info", "step": no.0, "text": text}));
    }

    /// Something the user should know that does not fail the run (a
    /// remote cache that did not answer): its own line, and a `warning` event.
    pub fn warn(&self, text: &str) {
        let no = self.next_step();
        self.line(&format!("#{} warning: {text}", no.0));
        self.json(json!({"event": "warning", "step": no.0, "text": text}));
    }

    /// A detail of running work (a layer pushed).
    pub fn detail(&self, no: StepNo, text: &str) {
        self.line(&format!("#{}   {text}", no.0));
        self.json(json!({"event": "detail", "step": no.0, "text": text}));
    }

    /// Work that is not a step (an image pull) finished.
    pub fn finished(&self, no: StepNo, millis: u128, detail: &str) {
        self.timeline.end(no.0, "ran", Some(detail));
        self.end_bar(no);
        self.line(&format!("#{} DONE in {millis} ms ({detail})", no.0));
        self.json(json!({"event": "done", "step": no.0, "ms": millis as u64, "detail": detail}));
    }

    pub fn failed(&self, no: StepNo, what: &str, reason: &str, stderr: &[u8]) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.timeline.end(no.0, "failed", Some(reason));
        self.end_bar(no);
        let mut msg = format!("#{} FAILED: {what}\n#{}   {reason}", no.0, no.0);
        let tail = tail_lines(stderr, STDERR_TAIL_LINES);
        if !tail.is_empty() {
            msg.push_str(&format!("\n#{}   stderr (last lines):", no.0));
            for l in tail.lines() {
                msg.push_str(&format!("\n#{}   | {}", no.0, neutralized(l)));
            }
        }
        self.line(&msg);
        self.json(json!({
            "event": "failed", "step": no.0, "name": what, "reason": reason, "stderr_tail": tail,
        }));
    }

    /// Steps run and cached so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.ran.load(Ordering::Relaxed),
            self.cached.load(Ordering::Relaxed),
        )
    }

    pub fn summary(&self, wall_ms: u128, exit_code: i32) {
        let (ran, cached) = self.counts();
        let ratio = if ran + cached == 0 {
            0.0
        } else {
            100.0 * cached as f64 / (ran + cached) as f64
        };
        if let Render::Tty(t) = &self.render {
            let _ = t.multi.clear();
        }
        let failed = self.failed.load(Ordering::Relaxed);
        let failures = match failed {
            0 => String::new(),
            n => format!(", {n} failed"),
        };
        self.line(&format!(
            "rbuild: {ran} steps run, {cached} cached ({ratio:.0}% hits){failures}, in {:.2} s",
            wall_ms as f64 / 1000.0
        ));
        self.json(json!({
            "event": "summary", "steps_run": ran, "steps_cached": cached, "steps_failed": failed,
            "hit_ratio": ratio / 100.0, "wall_ms": wall_ms as u64, "exit_code": exit_code,
        }));
    }

    /// Hides the live display while an interactive shell has the terminal
    /// (`true`), and shows it again (`false`).
    pub fn pause(&self, on: bool) {
        if let Render::Tty(t) = &self.render {
            if on {
                let _ = t.multi.clear();
                t.multi.set_draw_target(ProgressDrawTarget::hidden());
            } else {
                t.multi.set_draw_target(ProgressDrawTarget::stderr());
            }
        }
    }
}

fn human_ms(ms: u128) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

/// The last `n` lines of a byte stream, lossily decoded.
pub fn tail_lines(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.trim_end_matches('\n').lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A line of a step's output is shown up to this many bytes.
pub const MAX_SHOWN_LINE: usize = 4096;

/// Splits chunks of a step's output into lines (after scrubbing), in time
/// linear in the output and memory bounded by [`MAX_SHOWN_LINE`]: of a
/// longer line, the start is shown and the rest counted.
#[derive(Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
    /// Bytes of the current line beyond what is shown.
    dropped: u64,
}

impl LineSplitter {
    /// Complete lines in `chunk` (plus what was pending).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = chunk;
        while let Some(i) = rest.iter().position(|b| *b == b'\n') {
            self.take(&rest[..i]);
            out.push(self.line());
            rest = &rest[i + 1..];
        }
        self.take(rest);
        out
    }

    fn take(&mut self, bytes: &[u8]) {
        let room = MAX_SHOWN_LINE - self.pending.len();
        let n = room.min(bytes.len());
        self.pending.extend_from_slice(&bytes[..n]);
        self.dropped += (bytes.len() - n) as u64;
    }

    fn line(&mut self) -> String {
        let mut line = String::from_utf8_lossy(&self.pending).into_owned();
        if self.dropped > 0 {
            line.push_str(&format!(" [… {} more bytes]", self.dropped));
        }
        self.pending.clear();
        self.dropped = 0;
        line
    }

    /// The last, unterminated line.
    pub fn finish(&mut self) -> Option<String> {
        (!self.pending.is_empty() || self.dropped > 0).then(|| self.line())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn run(mode: Mode) -> String {
        let out = Captured::default();
        let secrets = Arc::new(Secrets::default());
        secrets
            .resolve(
                &crate::graph::SecretDef {
                    name: "s".into(),
                    uri: None,
                    plaintext: Some("hunter2".into()),
                },
                crate::secrets::Rule::AllTrim,
            )
            .unwrap();
        let p = Progress::new(mode, Box::new(out.clone()), secrets);
        p.cached("exec echo a");
        let no = p.queued("exec make");
        p.running(no, "exec make");
        p.output(no, Stream::Stdout, "compiling with hunter2");
        p.done(no, "exec make", 12);
        p.summary(1500, 0);
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn plain_is_one_line_per_event_with_step_prefixed_output() {
        let text = run(Mode::Plain);
        assert_eq!(
            text,
            "#1 exec echo a CACHED\n#2 exec make\n#2 | compiling with ***\n#2 DONE in 12 ms\n\
             rbuild: 1 steps run, 1 cached (50% hits), in 1.50 s\n"
        );
    }

    #[test]
    fn json_is_one_object_per_event() {
        let text = run(Mode::Json);
        let events: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let kinds: Vec<&str> = events
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            ["cached", "queued", "started", "output", "done", "summary"]
        );
        assert_eq!(events[3]["line"], "compiling with ***");
        assert_eq!(events[5]["steps_run"], 1);
    }

    #[test]
    fn lines_are_split_across_chunks() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"ab"), Vec::<String>::new());
        assert_eq!(
            s.push(b"c\nde\nf"),
            vec!["abc".to_string(), "de".to_string()]
        );
        assert_eq!(s.finish(), Some("f".to_string()));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail_lines(b"a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines(b"a", 5), "a");
        assert_eq!(tail_lines(b"", 5), "");
    }

    #[test]
    fn a_huge_line_is_shown_cut_and_counted_and_short_lines_whole() {
        let mut lines = LineSplitter::default();
        let chunk = vec![b'a'; 64 << 10];
        for _ in 0..100 {
            assert!(lines.push(&chunk).is_empty());
        }
        let out = lines.push(b"aa\nnext\nlast");
        assert_eq!(out.len(), 2);
        assert!(out[0].starts_with(&"a".repeat(MAX_SHOWN_LINE)));
        assert!(
            out[0].ends_with(&format!(
                " [… {} more bytes]",
                100 * (64 << 10) + 2 - MAX_SHOWN_LINE
            )),
            "{}",
            &out[0][MAX_SHOWN_LINE..]
        );
        assert_eq!(out[1], "next");
        assert_eq!(lines.finish().as_deref(), Some("last"));
        assert_eq!(lines.finish(), None);
    }
}

/// `line` with every control character (C0 but tab, DEL, C1) written as
/// `\xNN`, escape sequences included: what a terminal shows as text.
pub fn neutralized(line: &str) -> std::borrow::Cow<'_, str> {
    let control = |c: char| c.is_control() && c != '\t';
    if !line.chars().any(control) {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 8);
    for c in line.chars() {
        if control(c) {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod neutralize_tests {
    use super::*;

    #[test]
    fn control_characters_and_escape_sequences_show_as_text() {
        assert_eq!(neutralized("plain\ttext"), "plain\ttext");
        assert_eq!(neutralized("\u{1b}[2Jcleared"), "\\x1b[2Jcleared");
        assert_eq!(neutralized("a\rb\u{7}c"), "a\\x0db\\x07c");
        assert_eq!(neutralized("\u{9b}31m"), "\\x9b31m");
        assert_eq!(neutralized("ünïcode ✓"), "ünïcode ✓");
    }
}
