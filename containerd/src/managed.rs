//! A containerd of rbuild's own, for machines where none runs: started from
//! the `containerd` on PATH with its config, state, socket and log under
//! rbuild's root, detached so that later runs reuse it, and stopped on
//! request (`rbuild engine stop`).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};

use crate::{Containerd, Error};

pub struct ManagedContainerd {
    dir: PathBuf,
}

/// Whether it runs, and as which process.
#[derive(Debug, PartialEq, Eq)]
pub enum ManagedState {
    Running { pid: u32 },
    Stopped,
}

/// The Debian package that provides a missing program.
pub fn missing_program(program: &str) -> Option<Error> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    (!found).then(|| Error::NotInstalled {
        program: program.to_string(),
    })
}

impl ManagedContainerd {
    /// The managed containerd of the state root `root`.
    pub fn new(root: &Path) -> ManagedContainerd {
        ManagedContainerd {
            dir: root.join("containerd"),
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("containerd.pid")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    pub fn state(&self) -> ManagedState {
        let pid = std::fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        match pid {
            Some(pid)
                if std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(&self.dir.display().to_string()))
                    .unwrap_or(false) =>
            {
                ManagedState::Running { pid }
            }
            _ => ManagedState::Stopped,
        }
    }

    fn config(&self) -> String {
        let d = self.dir.display();
        format!(
            "# Written by rbuild: the containerd it starts when none runs.\n\
             version = 2\n\
             root = \"{d}/root\"\n\
             state = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\
             [debug]\n  address = \"{d}/debug.sock\"\n\
             [plugins]\n  [plugins.\"io.containerd.internal.v1.opt\"]\n    path = \"{d}/opt\"\n"
        )
    }

    /// Starts it (if it is not running) and connects; `Ok(true)` when it was started now.
    pub async fn start(&self, namespace: &str) -> Result<(Containerd, bool), Error> {
        if let ManagedState::Running { .. } = self.state()
            && let Ok(c) = Containerd::connect(&self.socket(), namespace).await
        {
            return Ok((c, false));
        }
        for program in ["containerd", "runc"] {
            if let Some(e) = missing_program(program) {
                return Err(e);
            }
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io("create", &self.dir, e))?;
        let config = self.dir.join("config.toml");
        std::fs::write(&config, self.config()).map_err(|e| Error::io("write", &config, e))?;
        let _ = std::fs::remove_file(self.socket());
        let log =
            std::fs::File::create(self.log()).map_err(|e| Error::io("create", &self.log(), e))?;
        let mut cmd = std::process::Command::new("containerd");
        cmd.arg("--config")
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stdout(
                log.try_clone()
                    .map_err(|e| Error::io("open", &self.log(), e))?,
            )
            .stderr(log);
        // Its own session: it outlives this rbuild and its terminal.
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                let _ = rustix::process::setsid();
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| Error::io("start", Path::new("containerd"), e))?;
        std::fs::write(self.pid_file(), child.id().to_string())
            .map_err(|e| Error::io("write", &self.pid_file(), e))?;
        for _ in 0..200 {
            if let Ok(c) = Containerd::connect(&self.socket(), namespace).await {
                return Ok((c, true));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let tail = std::fs::read_to_string(self.log()).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(10).collect();
        Err(Error::Connect {
            address: self.socket(),
            reason: format!(
                "the containerd rbuild started did not answer within 20 s; its log ({}) ends with:\n{}",
                self.log().display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ),
        })
    }

    /// Stops it; `Ok(false)` if it was not running.
    pub async fn stop(&self) -> Result<bool, Error> {
        let ManagedState::Running { pid } = self.state() else {
            return Ok(false);
        };
        // Only the process we started: state() checked its command line.
        let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
            return Ok(false);
        };
        let _ = kill_process(pid, Signal::TERM);
        for _ in 0..100 {
            if self.state() == ManagedState::Stopped {
                let _ = std::fs::remove_file(self.pid_file());
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = kill_process(pid, Signal::KILL);
        let _ = std::fs::remove_file(self.pid_file());
        Ok(true)
    }
}
