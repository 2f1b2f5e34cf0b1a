//! An `rbuild` process running in the background whose output is collected
//! line by line as it comes, so a test can wait for an event (a progress
//! line, a step's own output) instead of sleeping.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Generous bound on waiting for an event: only a hang exceeds it.
pub const HANG: Duration = Duration::from_secs(120);

pub struct Running {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

fn collect(pipe: impl Read + Send + 'static, sink: Arc<Mutex<String>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    })
}

impl Running {
    /// Starts `command` (an `rbuild …` from `TestEnv::command`).
    pub fn spawn(mut command: Command) -> Running {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start rbuild");
        let (stdout, stderr) = (Arc::default(), Arc::default());
        let readers = vec![
            collect(child.stdout.take().unwrap(), Arc::clone(&stdout)),
            collect(child.stderr.take().unwrap(), Arc::clone(&stderr)),
        ];
        Running {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The stderr (progress, logs) so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr holds `what`; panics after [`HANG`] or if the
    /// process ends without it.
    pub fn wait_for_line(&mut self, what: &str) {
        let deadline = Instant::now() + HANG;
        while !self.stderr().contains(what) {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.join_readers();
                if self.stderr().contains(what) {
                    return;
                }
                panic!(
                    "rbuild ended ({status}) before {what:?}:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {what:?} within {HANG:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    pub fn terminate(&self) {
        self.signal(rustix::process::Signal::TERM);
    }

    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
    }

    /// Everything on stdout so far (all of it once the process ended).
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits for the process to end (killing it and panicking after
    /// [`HANG`]); then [`Running::stdout`] and [`Running::stderr`] hold
    /// everything it printed.
    pub fn finish(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + HANG;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("rbuild did not exit within {HANG:?}:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The pipes close when the process is gone: the readers have it all.
        self.join_readers();
        status
    }

    /// As [`Running::finish`], the exit code only (-1 for a signal).
    pub fn wait(&mut self) -> i32 {
        self.finish().code().unwrap_or(-1)
    }
}
