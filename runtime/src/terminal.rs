//! An interactive process on the user's terminal: a shell in a container,
//! for debugging a failed step (`rbuild run -i`) or on purpose
//! (`Container::terminal`).
//!
//! The container's process gets a pseudo-terminal; this side puts the
//! user's terminal in raw mode, copies keystrokes in and output out, and
//! passes window size changes on — and puts the terminal back as it was,
//! whatever happens.

use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rbuild_containerd::Containerd;
use rbuild_containerd::containerd_client::services::v1::ResizePtyRequest;
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{SignalKind, signal};

use crate::Error;
use crate::task::{
    ContainerRun, TaskIo, create_container, create_task, delete_task, open_fifo, open_fifo_writer,
    remove_container, start_process, wait_for,
};

/// The size (columns, rows) of the terminal on stdin, if it is one.
pub fn terminal_size() -> Option<(u16, u16)> {
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills a winsize on a terminal fd.
    let rc = unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_col > 0).then_some((ws.ws_col, ws.ws_row))
}

/// Raw mode on a terminal, undone on drop.
struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    fn enter(fd: RawFd) -> std::io::Result<RawMode> {
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd is a terminal; termios structs are plain data.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut raw = saved;
        unsafe { libc::cfmakeraw(&mut raw) };
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restoring the attributes read in `enter`.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// Runs `run` (its process must have `terminal` set) attached to this
/// process's terminal until it exits; returns its exit code. The
/// container and task are removed afterwards.
pub async fn run_terminal(ctd: &Containerd, run: ContainerRun) -> Result<u32, Error> {
    if terminal_size().is_none() {
        return Err(Error::Spec(
            "an interactive shell needs a terminal: run rbuild from one (stdin is not a terminal)"
                .into(),
        ));
    }
    let io_dir = run.io_dir.join(&run.id);
    std::fs::create_dir_all(&io_dir).map_err(|e| Error::io("create FIFO directory", &io_dir, e))?;
    let result = terminal_in(ctd, &run, &io_dir).await;
    let cleanup = remove_container(ctd, &run.id).await;
    let _ = std::fs::remove_dir_all(&io_dir);
    let code = result?;
    cleanup?;
    Ok(code)
}

async fn terminal_in(ctd: &Containerd, run: &ContainerRun, io_dir: &Path) -> Result<u32, Error> {
    let stdin_path = io_dir.join("stdin");
    let stdout_path = io_dir.join("stdout");
    let stdin = open_fifo_writer(&stdin_path)?;
    let mut stdout = open_fifo(&stdout_path)?;
    create_container(ctd, run).await?;
    let io = TaskIo {
        stdin: Some(&stdin_path),
        stdout: &stdout_path,
        stderr: None,
        terminal: true,
    };
    create_task(ctd, run, io).await?;

    let mut waiter = wait_for(ctd, &run.id, "");
    let raw = RawMode::enter(libc::STDIN_FILENO)
        .map_err(|e| Error::io("set raw mode on", Path::new("/dev/stdin"), e))?;
    start_process(ctd, &run.id, "").await?;

    // Keystrokes in: a thread polls stdin so that it can stop when the shell ends.
    let done = Arc::new(AtomicBool::new(false));
    let keys = {
        let done = done.clone();
        let stdin_fd = stdin.as_raw_fd();
        let dup = unsafe { libc::dup(stdin_fd) };
        std::thread::spawn(move || copy_keys(dup, &done))
    };
    // Output out.
    let screen = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = stdout.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let mut out = std::io::stdout();
            let _ = out.write_all(&buf[..n]);
            let _ = out.flush();
        }
    });
    let mut winch = signal(SignalKind::window_change())
        .map_err(|e| Error::io("watch window size of", Path::new("/dev/stdin"), e))?;
    let exit = loop {
        tokio::select! {
            r = &mut waiter => break r,
            _ = winch.recv() => {
                if let Some((cols, rows)) = terminal_size() {
                    let _ = ctd.tasks().resize_pty(ctd.request(ResizePtyRequest {
                        container_id: run.id.clone(),
                        exec_id: String::new(),
                        width: cols as u32,
                        height: rows as u32,
                    })).await;
                }
            }
        }
    };
    done.store(true, Ordering::Relaxed);
    let _ = keys.join();
    drop(stdin);
    delete_task(ctd, &run.id).await?;
    let _ = tokio::time::timeout(Duration::from_secs(5), screen).await;
    drop(raw);
    let exit = exit
        .map_err(|e| Error::Spec(format!("wait task panicked: {e}")))?
        .map_err(|s| Error::rpc("wait for task", &run.id, s))?
        .into_inner();
    Ok(exit.exit_status)
}

/// Copies the user's keystrokes into the shell's stdin until `done`.
fn copy_keys(fifo: RawFd, done: &AtomicBool) {
    let mut buf = [0u8; 1024];
    while !done.load(Ordering::Relaxed) {
        let mut fds = libc::pollfd {
            fd: libc::STDIN_FILENO,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut fds, 1, 100) };
        if ready <= 0 {
            continue;
        }
        // SAFETY: reading into a valid buffer from stdin.
        let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        // SAFETY: writing n bytes of buf to the FIFO.
        unsafe { libc::write(fifo, buf.as_ptr().cast(), n as usize) };
    }
    // SAFETY: closing the duplicated descriptor.
    unsafe { libc::close(fifo) };
}
