//! A process that keeps running (a service): started in a fresh container
//! and left to run, with a watch of its exit, `exec` of further processes
//! in it (healthchecks), and `stop` (SIGTERM, SIGKILL after a grace
//! period, then task, container and FIFOs removed). The container itself
//! is made as a step's is ([`crate::task`]); only its lifetime differs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost_types::Any;
use rbuild_containerd::Containerd;
use rbuild_containerd::containerd_client::services::v1::{
    DeleteProcessRequest, ExecProcessRequest,
};
use tokio::sync::watch;

use crate::Error;
use crate::spec::{ProcessSpec, build_process};
use crate::task::{
    ContainerRun, SIGKILL, Stream, TaskIo, create_container, create_task, drain, handles_signal,
    open_fifo, remove_container, signal, start_process, wait_for,
};

const SIGTERM: u32 = 15;
const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

/// A container whose process runs until it ends or is stopped.
pub struct RunningTask {
    ctd: Containerd,
    id: String,
    /// The container's init on the host.
    pid: u32,
    io_dir: PathBuf,
    process: ProcessSpec,
    exited: watch::Receiver<Option<i64>>,
    stopped: tokio::sync::Mutex<bool>,
    execs: AtomicU64,
}

/// Creates and starts the container's process and returns at once; its
/// output goes to `run.output` as it is written. On an error nothing is left.
pub async fn start(ctd: &Containerd, run: ContainerRun) -> Result<RunningTask, Error> {
    let io_dir = run.io_dir.join(&run.id);
    std::fs::create_dir_all(&io_dir).map_err(|e| Error::io("create FIFO directory", &io_dir, e))?;
    match start_in(ctd, &run, &io_dir).await {
        Ok((pid, exited)) => Ok(RunningTask {
            ctd: ctd.clone(),
            id: run.id.clone(),
            pid,
            io_dir,
            process: run.process.clone(),
            exited,
            stopped: tokio::sync::Mutex::new(false),
            execs: AtomicU64::new(0),
        }),
        Err(e) => {
            let _ = remove_container(ctd, &run.id).await;
            let _ = std::fs::remove_dir_all(&io_dir);
            Err(e)
        }
    }
}

async fn start_in(
    ctd: &Containerd,
    run: &ContainerRun,
    io_dir: &std::path::Path,
) -> Result<(u32, watch::Receiver<Option<i64>>), Error> {
    let stdout_path = io_dir.join("stdout");
    let stderr_path = io_dir.join("stderr");
    let stdout = open_fifo(&stdout_path)?;
    let stderr = open_fifo(&stderr_path)?;
    create_container(ctd, run).await?;
    let io = TaskIo {
        stdin: None,
        stdout: &stdout_path,
        stderr: Some(&stderr_path),
        terminal: false,
    };
    let pid = create_task(ctd, run, io).await?;
    tokio::spawn(drain(stdout, Stream::Stdout, run.output.clone()));
    tokio::spawn(drain(stderr, Stream::Stderr, run.output.clone()));
    let (tx, rx) = watch::channel(None);
    let waiter = wait_for(ctd, &run.id, "");
    let id = run.id.clone();
    tokio::spawn(async move {
        let code = match waiter.await {
            Ok(Ok(r)) => r.into_inner().exit_status as i64,
            Ok(Err(s)) => {
                tracing::warn!(id, error = %s, "lost the wait for a service's process");
                -1
            }
            Err(e) => {
                tracing::warn!(id, error = %e, "lost the wait for a service's process");
                -1
            }
        };
        let _ = tx.send(Some(code));
    });
    start_process(ctd, &run.id, "").await?;
    Ok((pid, rx))
}

impl RunningTask {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Some(exit code) once the process has ended, for any reason.
    pub fn exited(&self) -> watch::Receiver<Option<i64>> {
        self.exited.clone()
    }

    /// Runs `args` in the container with the process's user, environment
    /// and working directory; its exit code and its stdout and stderr
    /// together. Killed after `timeout`: then the exit code is -1 and the
    /// output ends with a line saying so.
    pub async fn exec(
        &self,
        args: Vec<String>,
        timeout: Duration,
    ) -> Result<(i64, Vec<u8>), Error> {
        let n = self.execs.fetch_add(1, Ordering::Relaxed);
        let exec_id = format!("exec-{n}");
        // One FIFO per stream: the shim opens and closes each stream's
        // write end on its own, so a shared FIFO could see its only writer
        // (stdout's) close before stderr's opened; our reader then reads
        // end-of-file and goes, and the shim's open of stderr's write end
        // waits for a reader until its 30 s deadline.
        let out_fifo = self.io_dir.join(format!("{exec_id}.out"));
        let err_fifo = self.io_dir.join(format!("{exec_id}.err"));
        let fifos = [out_fifo.as_path(), err_fifo.as_path()];
        let result = match (open_fifo(&out_fifo), open_fifo(&err_fifo)) {
            (Ok(out), Ok(err)) => {
                let output = merged_output(out, err);
                self.exec_in(&exec_id, fifos, output, args, timeout).await
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        let _ = self
            .ctd
            .tasks()
            .delete_process(self.ctd.request(DeleteProcessRequest {
                container_id: self.id.clone(),
                exec_id: exec_id.clone(),
            }))
            .await;
        for fifo in fifos {
            let _ = std::fs::remove_file(fifo);
        }
        let (code, reader) = result?;
        let mut out = reader.await.unwrap_or_default();
        if code.is_none() {
            out.extend_from_slice(
                format!("\n(killed after {} s)\n", timeout.as_secs_f64()).as_bytes(),
            );
        }
        Ok((code.unwrap_or(-1), out))
    }

    #[allow(clippy::type_complexity)]
    async fn exec_in(
        &self,
        exec_id: &str,
        [stdout, stderr]: [&std::path::Path; 2],
        reader: tokio::task::JoinHandle<Vec<u8>>,
        args: Vec<String>,
        timeout: Duration,
    ) -> Result<(Option<i64>, tokio::task::JoinHandle<Vec<u8>>), Error> {
        let process = build_process(&ProcessSpec {
            args,
            terminal: None,
            ..self.process.clone()
        })?;
        let spec = serde_json::to_vec(&process).map_err(|e| Error::Spec(e.to_string()))?;
        self.ctd
            .tasks()
            .exec(self.ctd.request(ExecProcessRequest {
                container_id: self.id.clone(),
                stdin: String::new(),
                stdout: stdout.to_string_lossy().into_owned(),
                stderr: stderr.to_string_lossy().into_owned(),
                terminal: false,
                spec: Some(Any {
                    type_url: PROCESS_TYPE_URL.into(),
                    value: spec,
                }),
                exec_id: exec_id.to_string(),
            }))
            .await
            .map_err(|s| Error::rpc("exec in", &self.id, s))?;
        let mut waiter = wait_for(&self.ctd, &self.id, exec_id);
        start_process(&self.ctd, &self.id, exec_id).await?;
        match tokio::time::timeout(timeout, &mut waiter).await {
            Ok(r) => {
                let code = r
                    .map_err(|e| Error::Spec(format!("wait for exec panicked: {e}")))?
                    .map_err(|s| Error::rpc("wait for exec in", &self.id, s))?
                    .into_inner()
                    .exit_status;
                Ok((Some(code as i64), reader))
            }
            Err(_) => {
                signal(&self.ctd, &self.id, exec_id, SIGKILL, false).await;
                let _ = tokio::time::timeout(Duration::from_secs(10), &mut waiter).await;
                Ok((None, reader))
            }
        }
    }

    /// SIGTERM to the process, SIGKILL to all of the container's after
    /// `grace`; then the task, the container and the FIFOs are removed.
    /// An init that has no SIGTERM handler (a plain program as a
    /// container's first process: the kernel drops the signal) is killed
    /// at once instead of after a grace it cannot use. Idempotent.
    pub async fn stop(&self, grace: Duration) -> Result<(), Error> {
        let mut stopped = self.stopped.lock().await;
        if *stopped {
            return Ok(());
        }
        let mut exited = self.exited.clone();
        if exited.borrow().is_none() {
            let ended = if handles_signal(self.pid, SIGTERM) {
                signal(&self.ctd, &self.id, "", SIGTERM, false).await;
                tokio::time::timeout(grace, exited.wait_for(|e| e.is_some()))
                    .await
                    .is_ok_and(|r| r.is_ok())
            } else {
                tracing::debug!(
                    id = self.id,
                    pid = self.pid,
                    "its init has no SIGTERM handler: SIGKILL"
                );
                false
            };
            if !ended {
                signal(&self.ctd, &self.id, "", SIGKILL, true).await;
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), exited.wait_for(|e| e.is_some()))
                        .await;
            }
        }
        remove_container(&self.ctd, &self.id).await?;
        let _ = std::fs::remove_dir_all(&self.io_dir);
        *stopped = true;
        Ok(())
    }
}

/// Both streams of an exec, drained at once into one buffer in the order
/// their chunks arrived.
fn merged_output(
    stdout: tokio::net::unix::pipe::Receiver,
    stderr: tokio::net::unix::pipe::Receiver,
) -> tokio::task::JoinHandle<Vec<u8>> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(drain(stdout, Stream::Stdout, Some(tx.clone())));
    tokio::spawn(drain(stderr, Stream::Stderr, Some(tx)));
    tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(chunk) = rx.recv().await {
            all.extend_from_slice(&chunk.bytes);
        }
        all
    })
}
