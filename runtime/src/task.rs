//! Running one process in a container: create the container and its task,
//! capture stdout and stderr through FIFOs, wait for the exit code, and
//! always remove the task and the container again — on success, on failure
//! and on cancellation.
//!
//! The root filesystem is given as mounts of a snapshot the caller prepared;
//! what happens to that snapshot afterwards (commit or remove) is the
//! caller's business.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use prost_types::Any;
use rbuild_containerd::containerd_client::services::v1::{
    CloseIoRequest, Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, KillRequest, ListContainersRequest, StartRequest, WaitRequest,
    container::Runtime,
};
use rbuild_containerd::containerd_client::tonic::Code;
use rbuild_containerd::containerd_client::types::Mount;
use rbuild_containerd::{Containerd, OWNER_LABEL, Owner, SNAPSHOTTER};
use rustix::fs::{CWD, Mode, mkfifoat};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::spec::{ExtraMount, NetworkMode, ProcessSpec, build_spec};

const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
pub(crate) const SIGKILL: u32 = 9;
/// How the ids of rbuild's containers begin (the callers choose the rest).
pub(crate) const ID_PREFIX: &str = "rbuild-";

/// One process to run in a fresh container.
#[derive(Clone)]
pub struct ContainerRun {
    /// Container id, unique in the namespace.
    pub id: String,
    /// The active snapshot the root filesystem was prepared as (recorded on the container).
    pub snapshot_key: String,
    /// Mounts of that snapshot, as `Snapshots.Prepare` returned them.
    pub rootfs: Vec<Mount>,
    pub process: ProcessSpec,
    pub mounts: Vec<ExtraMount>,
    pub labels: HashMap<String, String>,
    /// A private directory where the stdio FIFOs are made.
    pub io_dir: PathBuf,
    /// Bytes fed to the process's standard input (then closed); None: no stdin.
    pub stdin: Option<Vec<u8>>,
    /// The host's network, or a namespace of rbuild's.
    pub network: NetworkMode,
    /// Receives output as it is produced, instead of [`ProcessOutcome`]
    /// collecting it. The channel is bounded: a receiver that falls behind
    /// slows the process's writes down rather than letting output pile up
    /// in memory.
    pub output: Option<mpsc::Sender<OutputChunk>>,
}

/// Which stream a chunk of output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Clone, Debug)]
pub struct OutputChunk {
    pub stream: Stream,
    pub bytes: Vec<u8>,
}

/// How the process ended and what it wrote (empty when
/// [`ContainerRun::output`] received it).
#[derive(Clone, Debug, Default)]
pub struct ProcessOutcome {
    pub exit_code: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// What a created task waits for before its process starts: the task (its
/// runc init, namespaces and mounts) is made while the caller still gets
/// something ready, such as the services a step binds. An error ends the
/// run without starting the process.
pub type StartGate = std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Runs the process to completion. The container and its task are gone
/// when this returns, whatever the outcome; the FIFO directory too.
pub async fn run(
    ctd: &Containerd,
    run: ContainerRun,
    cancel: &CancellationToken,
) -> Result<ProcessOutcome, Error> {
    run_gated(ctd, run, None, cancel).await
}

/// [`run`], with the process started only once `gate` is open (the
/// container and its task are created before).
pub async fn run_gated(
    ctd: &Containerd,
    run: ContainerRun,
    gate: Option<StartGate>,
    cancel: &CancellationToken,
) -> Result<ProcessOutcome, Error> {
    let io_dir = run.io_dir.join(&run.id);
    std::fs::create_dir_all(&io_dir).map_err(|e| Error::io("create FIFO directory", &io_dir, e))?;
    let result = run_in(ctd, &run, &io_dir, gate, cancel).await;
    let cleanup = remove_container(ctd, &run.id).await;
    let _ = std::fs::remove_dir_all(&io_dir);
    let outcome = result?;
    cleanup?;
    Ok(outcome)
}

async fn run_in(
    ctd: &Containerd,
    run: &ContainerRun,
    io_dir: &Path,
    gate: Option<StartGate>,
    cancel: &CancellationToken,
) -> Result<ProcessOutcome, Error> {
    let t0 = std::time::Instant::now();
    let stdout_path = io_dir.join("stdout");
    let stderr_path = io_dir.join("stderr");
    // The read ends must be open before Tasks.Create, which blocks until
    // the shim can open the write ends.
    let stdout = open_fifo(&stdout_path)?;
    let stderr = open_fifo(&stderr_path)?;
    // stdin: opened read-write so that opening never blocks and the shim
    // finds a writer; the data is written after Start and the end closed.
    let stdin_path = io_dir.join("stdin");
    let stdin = match &run.stdin {
        Some(_) => Some(open_fifo_writer(&stdin_path)?),
        None => None,
    };

    create_container(ctd, run).await?;
    tracing::debug!(
        id = run.id,
        ms = t0.elapsed().as_millis(),
        "container created"
    );

    let io = TaskIo {
        stdin: stdin.is_some().then_some(stdin_path.as_path()),
        stdout: &stdout_path,
        stderr: Some(&stderr_path),
        terminal: false,
    };
    create_task(ctd, run, io).await?;
    tracing::debug!(id = run.id, ms = t0.elapsed().as_millis(), "task created");
    // Killed here, rbuild leaves a created task: its shim and runc's init.
    rbuild_containerd::kill_point("task-created");
    if let Some(gate) = gate {
        tokio::select! {
            r = gate => r.map_err(Error::NotStarted)?,
            _ = cancel.cancelled() => return Err(Error::Cancelled),
        }
        tracing::debug!(
            id = run.id,
            ms = t0.elapsed().as_millis(),
            "start gate open"
        );
    }

    let stdout_reader = tokio::spawn(drain(stdout, Stream::Stdout, run.output.clone()));
    let stderr_reader = tokio::spawn(drain(stderr, Stream::Stderr, run.output.clone()));

    let waiter = wait_for(ctd, &run.id, "");
    start_process(ctd, &run.id, "").await?;
    tracing::debug!(id = run.id, ms = t0.elapsed().as_millis(), "task started");
    if let (Some(mut tx), Some(data)) = (stdin, run.stdin.clone()) {
        let mut tasks = ctd.tasks();
        let close = ctd.request(CloseIoRequest {
            container_id: run.id.clone(),
            exec_id: String::new(),
            stdin: true,
        });
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            // A process that never reads its input just doesn't get it.
            let _ = tx.write_all(&data).await;
            drop(tx);
            // The shim holds the FIFO open; only CloseIO ends the process's stdin.
            let _ = tasks.close_io(close).await;
        });
    }

    let mut waiter = waiter;
    let exit = tokio::select! {
        r = &mut waiter => r,
        _ = cancel.cancelled() => {
            kill(ctd, &run.id).await;
            // The task reports its exit once killed; don't wait forever on a wedged shim.
            let _ = tokio::time::timeout(Duration::from_secs(10), &mut waiter).await;
            return Err(Error::Cancelled);
        }
    };
    let exit = exit
        .map_err(|e| Error::Spec(format!("wait task panicked: {e}")))?
        .map_err(|s| Error::rpc("wait for task", &run.id, s))?
        .into_inner();

    // Deleting the task makes the shim close its end of the FIFOs, which
    // ends the readers even if a background process kept them open.
    tracing::debug!(id = run.id, ms = t0.elapsed().as_millis(), "task exited");
    delete_task(ctd, &run.id).await?;
    tracing::debug!(id = run.id, ms = t0.elapsed().as_millis(), "task deleted");
    let stdout = stdout_reader.await.unwrap_or_default();
    let stderr = stderr_reader.await.unwrap_or_default();
    Ok(ProcessOutcome {
        exit_code: exit.exit_status,
        stdout,
        stderr,
    })
}

/// Where a task's standard streams go: FIFOs (None: not connected).
pub(crate) struct TaskIo<'a> {
    pub stdin: Option<&'a Path>,
    pub stdout: &'a Path,
    pub stderr: Option<&'a Path>,
    pub terminal: bool,
}

fn fifo_arg(path: Option<&Path>) -> String {
    path.map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Creates container `run`'s task (its shim and runc's init), its streams
/// on `io`; returns the init process's pid on the host.
pub(crate) async fn create_task(
    ctd: &Containerd,
    run: &ContainerRun,
    io: TaskIo<'_>,
) -> Result<u32, Error> {
    let created = ctd
        .tasks()
        .create(ctd.request(CreateTaskRequest {
            container_id: run.id.clone(),
            rootfs: run.rootfs.clone(),
            stdin: fifo_arg(io.stdin),
            stdout: fifo_arg(Some(io.stdout)),
            stderr: fifo_arg(io.stderr),
            terminal: io.terminal,
            ..Default::default()
        }))
        .await
        .map_err(|s| Error::rpc("create task", &run.id, s))?;
    Ok(created.into_inner().pid)
}

/// Whether host process `pid` has a handler for signal `signo`, from
/// /proc/PID/status (SigCgt). A container's init gets no signal from
/// outside its PID namespace that it does not handle (SIGKILL aside):
/// SIGTERM to an init without a handler does nothing. Unknown (no such
/// process, unreadable): true.
pub(crate) fn handles_signal(pid: u32, signo: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_none_or(|mask| mask & (1 << (signo - 1)) != 0)
}

/// What waiting for a process comes to.
pub(crate) type Waiter = tokio::task::JoinHandle<
    Result<
        rbuild_containerd::containerd_client::tonic::Response<
            rbuild_containerd::containerd_client::services::v1::WaitResponse,
        >,
        rbuild_containerd::containerd_client::tonic::Status,
    >,
>;

/// Waits for process `exec_id` of container `id` (empty: its init) in the
/// background. Taken before Start, so that a process that exits at once
/// cannot be missed.
pub(crate) fn wait_for(ctd: &Containerd, id: &str, exec_id: &str) -> Waiter {
    let mut tasks = ctd.tasks();
    let req = ctd.request(WaitRequest {
        container_id: id.to_string(),
        exec_id: exec_id.to_string(),
    });
    tokio::spawn(async move { tasks.wait(req).await })
}

/// Starts process `exec_id` of container `id` (empty: its init).
pub(crate) async fn start_process(ctd: &Containerd, id: &str, exec_id: &str) -> Result<(), Error> {
    let what = if exec_id.is_empty() {
        "start task"
    } else {
        "start exec in"
    };
    ctd.tasks()
        .start(ctd.request(StartRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        }))
        .await
        .map_err(|s| Error::rpc(what, id, s))?;
    Ok(())
}

/// Creates the container record for `run` (spec, snapshot, owner label).
pub(crate) async fn create_container(ctd: &Containerd, run: &ContainerRun) -> Result<(), Error> {
    let spec = build_spec(
        &run.id,
        ctd.namespace(),
        &run.process,
        &run.mounts,
        &run.network,
    )?;
    let spec_json = serde_json::to_vec(&spec).map_err(|e| Error::Spec(e.to_string()))?;
    let mut labels = run.labels.clone();
    labels.insert(OWNER_LABEL.into(), Owner::current().label());
    let container = Container {
        id: run.id.clone(),
        labels,
        image: String::new(),
        runtime: Some(Runtime {
            name: RUNC_RUNTIME.into(),
            options: None,
        }),
        spec: Some(Any {
            type_url: SPEC_TYPE_URL.into(),
            value: spec_json,
        }),
        snapshotter: SNAPSHOTTER.into(),
        snapshot_key: run.snapshot_key.clone(),
        ..Default::default()
    };
    ctd.containers()
        .create(ctd.request(CreateContainerRequest {
            container: Some(container),
        }))
        .await
        .map_err(|s| Error::rpc("create container", &run.id, s))?;
    Ok(())
}

pub(crate) async fn kill(ctd: &Containerd, id: &str) {
    signal(ctd, id, "", SIGKILL, true).await;
}

/// Sends `signal` to a task's init (or exec `exec_id`), or to all its processes.
pub(crate) async fn signal(ctd: &Containerd, id: &str, exec_id: &str, signal: u32, all: bool) {
    let _ = ctd
        .tasks()
        .kill(ctd.request(KillRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            signal,
            all,
        }))
        .await;
}

pub(crate) async fn delete_task(ctd: &Containerd, id: &str) -> Result<(), Error> {
    match ctd
        .tasks()
        .delete(ctd.request(DeleteTaskRequest {
            container_id: id.to_string(),
        }))
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::NotFound => Ok(()),
        Err(s) => Err(Error::rpc("delete task", id, s)),
    }
}

/// Kills and deletes a container's task, then the container. Idempotent.
pub async fn remove_container(ctd: &Containerd, id: &str) -> Result<(), Error> {
    if delete_task(ctd, id).await.is_err() {
        // Still running: kill it, wait until it is stopped, delete again.
        kill(ctd, id).await;
        let mut tasks = ctd.tasks();
        let req = ctd.request(WaitRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        });
        let _ = tokio::time::timeout(Duration::from_secs(10), tasks.wait(req)).await;
        delete_task(ctd, id).await?;
    }
    match ctd
        .containers()
        .delete(ctd.request(DeleteContainerRequest { id: id.to_string() }))
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::NotFound => Ok(()),
        Err(s) => Err(Error::rpc("delete container", id, s)),
    }
}

/// Removes containers left behind by rbuild processes that no longer run
/// (killed, crashed). Returns how many were removed.
pub async fn remove_orphan_containers(ctd: &Containerd) -> Result<usize, Error> {
    let resp = ctd
        .containers()
        .list(ctd.request(ListContainersRequest {
            filters: vec![format!("labels.\"{OWNER_LABEL}\"")],
        }))
        .await
        .map_err(|s| Error::rpc("list containers", ctd.namespace(), s))?;
    let mut removed = 0;
    for c in resp.into_inner().containers {
        let dead = c
            .labels
            .get(OWNER_LABEL)
            .and_then(|l| Owner::parse(l))
            .is_some_and(|o| !o.is_alive());
        if dead {
            remove_container(ctd, &c.id).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn make_fifo(path: &Path) -> Result<(), Error> {
    mkfifoat(CWD, path, Mode::RUSR | Mode::WUSR)
        .map_err(|e| Error::io("create FIFO", path, e.into()))
}

pub(crate) fn open_fifo(path: &Path) -> Result<pipe::Receiver, Error> {
    make_fifo(path)?;
    pipe::OpenOptions::new()
        .open_receiver(path)
        .map_err(|e| Error::io("open FIFO", path, e))
}

pub(crate) fn open_fifo_writer(path: &Path) -> Result<pipe::Sender, Error> {
    make_fifo(path)?;
    pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(path)
        .map_err(|e| Error::io("open FIFO", path, e))
}

pub(crate) async fn drain(
    mut rx: pipe::Receiver,
    stream: Stream,
    sink: Option<mpsc::Sender<OutputChunk>>,
) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => match &sink {
                Some(sink) => {
                    let chunk = OutputChunk {
                        stream,
                        bytes: buf[..n].to_vec(),
                    };
                    // A receiver that is gone wants no more; keep draining
                    // so that the process is not blocked on a full FIFO.
                    let _ = sink.send(chunk).await;
                }
                None => all.extend_from_slice(&buf[..n]),
            },
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::handles_signal;

    /// Polls `cond` for up to ten seconds.
    fn eventually(cond: impl Fn() -> bool) -> bool {
        (0..200).any(|_| {
            cond() || {
                std::thread::sleep(std::time::Duration::from_millis(50));
                false
            }
        })
    }

    #[test]
    fn a_process_with_a_sigterm_trap_handles_it_and_a_plain_one_does_not() {
        let spawn = |script: &str| {
            std::process::Command::new("sh")
                .args(["-c", script])
                .spawn()
                .unwrap()
        };
        let mut trapping = spawn("trap 'exit 0' TERM; while :; do sleep 1; done");
        let mut plain = spawn("exec sleep 30");
        let (t, p) = (trapping.id(), plain.id());
        assert!(eventually(|| handles_signal(t, 15)), "the trap is set");
        let comm =
            |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        assert!(
            eventually(|| comm(p).trim() == "sleep"),
            "sh has exec'd sleep"
        );
        assert!(!handles_signal(p, 15));
        // No such process: assumed to handle it (the normal stop path).
        assert!(handles_signal(u32::MAX - 1, 15));
        for c in [&mut trapping, &mut plain] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}
