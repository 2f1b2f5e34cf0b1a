//! Which containerd the engine uses — the one at the configured address,
//! else rbuild's own — and starting or stopping rbuild's own (`rbuild
//! engine status|start|stop`). A system containerd is never started or
//! stopped here. Connecting for a run is `engine::connect`.

use std::fmt;
use std::path::PathBuf;

use anyhow::Result;
use rbuild_containerd::Containerd;
use rbuild_containerd::managed::{ManagedContainerd, ManagedState};

use crate::engine::{EngineConfig, connect};

/// What answers now.
#[derive(Debug)]
pub struct Status {
    address: PathBuf,
    /// Whether the containerd at `address` answers (then rbuild uses it).
    system: bool,
    /// rbuild's own, and its socket.
    managed: ManagedState,
    managed_socket: PathBuf,
}

pub async fn status(config: &EngineConfig) -> Status {
    let managed = ManagedContainerd::new(&config.root);
    Status {
        address: config.address.clone(),
        system: system_answers(config).await,
        managed: managed.state(),
        managed_socket: managed.socket(),
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let address = self.address.display();
        if self.system {
            writeln!(f, "containerd at {address}: running (rbuild uses it)")?;
        } else {
            writeln!(f, "containerd at {address}: not answering")?;
        }
        match self.managed {
            ManagedState::Running { pid } => write!(
                f,
                "rbuild's own containerd: running (pid {pid}, socket {}){}",
                self.managed_socket.display(),
                if self.system {
                    ""
                } else {
                    " — rbuild uses it"
                }
            ),
            ManagedState::Stopped => write!(f, "rbuild's own containerd: stopped"),
        }
    }
}

/// Which containerd `start` left running.
#[derive(Debug)]
pub enum Started {
    /// The one at the configured address answers: nothing was started.
    System { address: PathBuf },
    /// rbuild's own runs (started now, or already).
    Managed { socket: PathBuf },
}

/// Starts rbuild's own containerd unless one answers at the configured address.
pub async fn start(config: &EngineConfig) -> Result<Started> {
    if system_answers(config).await {
        return Ok(Started::System {
            address: config.address.clone(),
        });
    }
    connect(config).await?;
    Ok(Started::Managed {
        socket: ManagedContainerd::new(&config.root).socket(),
    })
}

impl fmt::Display for Started {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Started::System { address } => write!(
                f,
                "containerd at {} is running; rbuild uses it (nothing to start)",
                address.display()
            ),
            Started::Managed { socket } => write!(
                f,
                "rbuild's own containerd is running (socket {})",
                socket.display()
            ),
        }
    }
}

/// What `stop` did.
#[derive(Debug)]
pub enum Stopped {
    Stopped,
    WasNotRunning,
}

/// Stops rbuild's own containerd, if it runs.
pub async fn stop(config: &EngineConfig) -> Result<Stopped> {
    Ok(if ManagedContainerd::new(&config.root).stop().await? {
        Stopped::Stopped
    } else {
        Stopped::WasNotRunning
    })
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stopped::Stopped => "rbuild's own containerd: stopped",
            Stopped::WasNotRunning => {
                "rbuild's own containerd was not running (a system containerd is never stopped by rbuild)"
            }
        })
    }
}

async fn system_answers(config: &EngineConfig) -> bool {
    Containerd::connect(&config.address, &config.namespace)
        .await
        .is_ok()
}
