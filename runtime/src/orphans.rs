//! What killed rbuild processes leave running: containers and tasks whose
//! owner is gone, and the processes behind them that containerd may no
//! longer know of — `containerd-shim-runc-v2` processes of the namespace
//! and step processes in the namespace's cgroups (`/NAMESPACE/ID`, see
//! spec.rs). Finding them (for `rbuild cache verify`) and stopping them
//! (at the start of the next run).
//!
//! A shim outlives its container when rbuild dies while containerd is
//! starting the task: containerd has started the shim, the create is cut
//! short, and no task record points at the shim any more. Deleting the
//! container record then leaves the shim (and whatever it started)
//! running for good; so after the records, the processes are swept too.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use rbuild_containerd::containerd_client::services::v1::{ListContainersRequest, ListTasksRequest};
use rbuild_containerd::{Containerd, OWNER_LABEL, Owner};
use rustix::process::{Pid, Signal, kill_process};

use crate::Error;
use crate::task::ID_PREFIX;

const SHIM: &str = "containerd-shim-runc-v2";
/// Where containerd 1.6 keeps a v2 task's bundle (its rootfs mount, the shim's cwd).
const BUNDLES: &str = "/run/containerd/io.containerd.runtime.v2.task";

/// Something of a run that is gone, still there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leftover {
    /// `container`, `task`, `shim`, `step process`.
    pub kind: &'static str,
    /// Its id (a container id; a pid for processes).
    pub name: String,
    /// Why it is a leftover.
    pub why: String,
}

impl fmt::Display for Leftover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ({})", self.kind, self.name, self.why)
    }
}

/// What the next run stopped.
#[derive(Debug, Default)]
pub struct Removed {
    pub containers: usize,
    pub shims: usize,
    pub processes: usize,
}

/// The containers of the namespace, by id: whether their owner may still run.
async fn containers(ctd: &Containerd) -> Result<HashMap<String, Option<Owner>>, Error> {
    let resp = ctd
        .containers()
        .list(ctd.request(ListContainersRequest { filters: vec![] }))
        .await
        .map_err(|s| Error::rpc("list containers", ctd.namespace(), s))?;
    Ok(resp
        .into_inner()
        .containers
        .into_iter()
        .map(|c| {
            let owner = c.labels.get(OWNER_LABEL).and_then(|l| Owner::parse(l));
            (c.id, owner)
        })
        .collect())
}

/// Why a process serving container `id` is a leftover, if it is one: the
/// container is gone, or its owner is.
fn orphaned(id: &str, containers: &HashMap<String, Option<Owner>>) -> Option<String> {
    if !id.starts_with(ID_PREFIX) {
        return None;
    }
    match containers.get(id) {
        None => Some(format!("its container {id} is gone")),
        Some(Some(owner)) if !owner.is_alive() => Some(format!(
            "container {id} belongs to rbuild process {}, which is gone",
            owner.pid()
        )),
        Some(_) => None,
    }
}

/// Containers, tasks, shims and step processes of rbuild processes that
/// are gone. Only looks.
pub async fn find(ctd: &Containerd) -> Result<Vec<Leftover>, Error> {
    let containers = containers(ctd).await?;
    let mut out = Vec::new();
    for (id, owner) in &containers {
        if let Some(o) = owner
            && !o.is_alive()
        {
            out.push(Leftover {
                kind: "container",
                name: id.clone(),
                why: format!("its rbuild process {} is gone", o.pid()),
            });
        }
    }
    for t in list_tasks(ctd).await? {
        let id = task_container(&t);
        if let Some(why) = orphaned(&id, &containers) {
            out.push(Leftover {
                kind: "task",
                name: id,
                why,
            });
        }
    }
    for (pid, id) in shims(ctd.namespace()) {
        if let Some(why) = orphaned(&id, &containers) {
            out.push(Leftover {
                kind: "shim",
                name: pid.to_string(),
                why: format!("{SHIM} of {id}: {why}"),
            });
        }
    }
    for (pid, id) in step_processes(ctd.namespace()) {
        if let Some(why) = orphaned(&id, &containers) {
            out.push(Leftover {
                kind: "step process",
                name: pid.to_string(),
                why: format!("{} in {id}: {why}", command_name(pid)),
            });
        }
    }
    out.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    Ok(out)
}

/// Stops everything [`find`] reports: containers and their tasks through
/// containerd, then shims and step processes it does not know of any more.
pub async fn remove(ctd: &Containerd) -> Result<Removed, Error> {
    let mut removed = Removed {
        containers: crate::task::remove_orphan_containers(ctd).await?,
        ..Removed::default()
    };
    let containers = containers(ctd).await?;
    let mut stopped = Vec::new();
    for (pid, id) in shims(ctd.namespace()) {
        if orphaned(&id, &containers).is_none() {
            continue;
        }
        // The shim's own cleanup (what containerd runs after a shim died):
        // `runc delete --force` of the container and the rootfs unmounted.
        let bundle = Path::new(BUNDLES).join(ctd.namespace()).join(&id);
        if bundle.is_dir() {
            let status = tokio::process::Command::new(SHIM)
                .args(["-namespace", ctd.namespace(), "-id", &id, "-address"])
                .arg(ctd.address())
                .arg("-bundle")
                .arg(&bundle)
                .arg("delete")
                .current_dir(&bundle)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .await;
            tracing::debug!(id, ?status, "ran the orphaned shim's delete");
        }
        signal_kill(pid);
        removed.shims += 1;
        stopped.push(id);
    }
    // containerd drops a task whose shim died once it notices the shim's
    // connection close; until then it still lists it.
    for _ in 0..200 {
        if stopped.is_empty() {
            break;
        }
        let tasks = list_tasks(ctd).await?;
        stopped.retain(|id| tasks.iter().any(|t| &task_container(t) == id));
        if !stopped.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    // What runc's delete did not reach (a process whose shim was gone).
    for (pid, id) in step_processes(ctd.namespace()) {
        if orphaned(&id, &containers).is_some() {
            signal_kill(pid);
            removed.processes += 1;
        }
    }
    Ok(removed)
}

/// Every task of the namespace.
async fn list_tasks(
    ctd: &Containerd,
) -> Result<Vec<rbuild_containerd::containerd_client::types::v1::Process>, Error> {
    Ok(ctd
        .tasks()
        .list(ctd.request(ListTasksRequest {
            filter: String::new(),
        }))
        .await
        .map_err(|s| Error::rpc("list tasks", ctd.namespace(), s))?
        .into_inner()
        .tasks)
}

/// The container a listed task runs in: containerd 1.6 lists an init
/// process under its container's id and leaves `container_id` empty.
fn task_container(t: &rbuild_containerd::containerd_client::types::v1::Process) -> String {
    if t.container_id.is_empty() {
        t.id.clone()
    } else {
        t.container_id.clone()
    }
}

fn signal_kill(pid: u32) {
    if let Some(pid) = Pid::from_raw(pid as i32) {
        let _ = kill_process(pid, Signal::KILL);
    }
}

fn proc_pids() -> impl Iterator<Item = (u32, PathBuf)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path())))
}

/// `containerd-shim-runc-v2 -namespace NS -id ID ...` processes of `namespace`:
/// (pid, task id).
pub fn shims(namespace: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for (pid, dir) in proc_pids() {
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if !args.first().is_some_and(|a| a.ends_with(SHIM.as_bytes())) {
            continue;
        }
        let value = |flag: &str| {
            args.iter()
                .position(|a| *a == flag.as_bytes())
                .and_then(|i| args.get(i + 1))
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        if value("-namespace").as_deref() == Some(namespace)
            && let Some(id) = value("-id")
        {
            out.push((pid, id));
        }
    }
    out
}

/// Processes in a step container's cgroup (`/NAMESPACE/ID`): (pid, container id).
pub fn step_processes(namespace: &str) -> Vec<(u32, String)> {
    let prefix = format!("/{namespace}/");
    let mut out = Vec::new();
    for (pid, dir) in proc_pids() {
        let Ok(cgroups) = std::fs::read_to_string(dir.join("cgroup")) else {
            continue;
        };
        // `hierarchy:controllers:path`, one line per hierarchy.
        let id = cgroups.lines().find_map(|l| {
            let path = l.splitn(3, ':').nth(2)?;
            let id = path.strip_prefix(&prefix)?.split('/').next()?;
            Some(id.to_string())
        });
        if let Some(id) = id {
            out.push((pid, id));
        }
    }
    out
}

fn command_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_orphaned_when_its_container_or_owner_is_gone() {
        let mut containers = HashMap::new();
        containers.insert("rbuild-live".to_string(), Some(Owner::current()));
        let gone = Owner::parse("another-boot/1/1").unwrap();
        containers.insert("rbuild-dead".to_string(), Some(gone));
        assert_eq!(orphaned("rbuild-live", &containers), None);
        assert!(
            orphaned("rbuild-dead", &containers)
                .unwrap()
                .contains("is gone")
        );
        assert!(
            orphaned("rbuild-missing", &containers)
                .unwrap()
                .contains("container rbuild-missing is gone")
        );
        assert_eq!(
            orphaned("not-ours", &containers),
            None,
            "only rbuild's containers"
        );
    }
}
