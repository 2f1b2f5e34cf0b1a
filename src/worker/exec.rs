//! Running a step's process: its mounts (snapshots, cache volumes, tmpfs,
//! secrets in RAM), its user, the container and task through
//! rbuild-runtime, the user's terminal for `-i` and `terminal()`, and the
//! commit of its result with the digest of what it changed (early cutoff).

use std::path::Path;
use std::time::Instant;

use super::*;

/// Early cutoff digests a step's changes only up to this many bytes of file
/// content; beyond, the result is identified by its key.
/// `RBUILD_CHANGES_DIGEST_MAX_BYTES` changes it (0 turns early cutoff off).
const CHANGES_DIGEST_BUDGET: u64 = 64 << 20;

fn changes_digest_budget() -> u64 {
    std::env::var("RBUILD_CHANGES_DIGEST_MAX_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CHANGES_DIGEST_BUDGET)
}

impl ContainerdWorker {
    /// Runs `shell.command` (or `run`'s own process, when the command is
    /// empty) on the user's terminal; one shell at a time.
    pub(super) async fn terminal(
        &self,
        mut run: ContainerRun,
        shell: &Interactive,
    ) -> Result<u32, SolveError> {
        let _one = self.terminal_lock.lock().await;
        if !shell.command.is_empty() {
            run.process.args = shell.command.clone();
        }
        run.process.terminal = Some(rbuild_runtime::terminal_size().unwrap_or((80, 24)));
        (shell.pause)(true);
        let result = rbuild_runtime::terminal::run_terminal(&self.ctd, run).await;
        (shell.pause)(false);
        result.map_err(SolveError::from)
    }

    /// The numeric user of a step, looked up in the root filesystem's own
    /// passwd/group when the spec has names. The root filesystem is mounted
    /// on the host only for that moment: it must not be mounted twice while
    /// the container runs.
    pub(super) fn step_user(
        &self,
        spec: &str,
        rootfs: &[Mount],
    ) -> Result<user::ResolvedUser, SolveError> {
        if !user::needs_lookup(spec) {
            return user::resolve(spec, "", "").map_err(SolveError::Invalid);
        }
        let mounted = MountedSnapshot::mount(rootfs, &self.mount_point(), true)?;
        user::resolve_in_rootfs(spec, mounted.path()).map_err(SolveError::Invalid)
    }

    /// What a container gets mounted besides its root filesystem (and the
    /// mount points runc may create for them, which must not end up in a
    /// result): its name resolution files, then `mounts` in order. What is
    /// opened for them is pushed onto `opened`, `volumes`, for the caller
    /// to close after the container.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn container_mounts(
        &self,
        labels: &HashMap<String, String>,
        mounts: &[MountRequest],
        network: Option<(&NetworkUse, &Path)>,
        who: &user::ResolvedUser,
        opened: &mut Vec<HostMount>,
        volumes: &mut Vec<VolumeUse>,
        secret_dir: Option<&Path>,
        cancel: &CancellationToken,
    ) -> Result<(Vec<ExtraMount>, Vec<String>), SolveError> {
        let mut extra = Vec::new();
        // Mount points runc creates when the image lacks them must not end up in results.
        let mut stub_targets: Vec<String> = ["/proc", "/dev", "/sys"].map(String::from).to_vec();
        match network {
            // The host's name resolution, since steps share its network.
            None => {
                for f in ["/etc/resolv.conf", "/etc/hosts"] {
                    if Path::new(f).exists() {
                        extra.push(bind(f, f, true));
                        stub_targets.push(f.to_string());
                    }
                }
            }
            // Its own hosts file (its name, the services' aliases) and the
            // host's resolvers that a namespace can reach.
            Some((net, dir)) => {
                let write = |name: &str, text: String| {
                    let path = dir.join(name);
                    std::fs::write(&path, text).map_err(|e| {
                        SolveError::Internal(format!("write {}: {e}", path.display()))
                    })?;
                    Ok::<_, SolveError>(path)
                };
                let hosts = write(
                    "hosts",
                    network::hosts::hosts_file(&net.hostname, net.attachment.ip, &net.hosts),
                )?;
                let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
                let resolv = write("resolv.conf", network::hosts::resolv_conf(&host_resolv))?;
                for (file, target) in [(hosts, "/etc/hosts"), (resolv, "/etc/resolv.conf")] {
                    extra.push(bind(&file.to_string_lossy(), target, true));
                    stub_targets.push(target.to_string());
                }
            }
        }
        for (n, m) in mounts.iter().enumerate() {
            stub_targets.push(m.target().to_string());
            match m {
                MountRequest::Snapshot {
                    target,
                    snapshot,
                    path,
                    file,
                } => {
                    let key = ActiveKey::unique("rbuild-mount");
                    let (mnt, _) = self
                        .writable(key, snapshot.as_ref(), labels.clone())
                        .await?;
                    let source = confine::resolve_in(mnt.path(), path);
                    opened.push(mnt);
                    let source = source
                        .map_err(|e| SolveError::Invalid(format!("mount at {target}: {e}")))?;
                    let meta = std::fs::metadata(&source).map_err(|_| {
                        SolveError::Invalid(format!(
                            "mount at {target}: {path} does not exist in the mounted value"
                        ))
                    })?;
                    if meta.is_dir() == *file {
                        return Err(SolveError::Invalid(format!(
                            "mount at {target}: {path} is {}",
                            if meta.is_dir() {
                                "a directory, not a file"
                            } else {
                                "a file, not a directory"
                            }
                        )));
                    }
                    extra.push(bind(&source.to_string_lossy(), target, false));
                }
                MountRequest::Cache {
                    target,
                    volume,
                    sharing,
                } => {
                    let v = self
                        .volumes
                        .acquire(volume, *sharing, cancel, || {
                            tracing::info!(volume = %volume, "waiting for a locked cache volume");
                        })
                        .await
                        .map_err(|e| match e {
                            crate::locks::Waited::Cancelled => SolveError::Cancelled,
                            crate::locks::Waited::Failed(e) => {
                                SolveError::Internal(format!("cache volume {volume}: {e}"))
                            }
                        })?;
                    extra.push(bind(&v.path.to_string_lossy(), target, false));
                    volumes.push(v);
                }
                MountRequest::Temp { target } => extra.push(ExtraMount {
                    destination: target.clone(),
                    kind: "tmpfs".into(),
                    source: "tmpfs".into(),
                    options: vec!["nosuid".into(), "nodev".into(), "mode=1777".into()],
                }),
                MountRequest::Secret {
                    target,
                    plaintext,
                    mode,
                } => {
                    let dir = secret_dir.ok_or_else(|| {
                        SolveError::Internal("a secret mount without a secret directory".into())
                    })?;
                    let file = dir.join(format!("secret-{n}"));
                    write_secret(dir, &file, plaintext, *mode, (who.uid, who.gid))
                        .map_err(|e| SolveError::Internal(format!("secret mount {target}: {e}")))?;
                    extra.push(bind(&file.to_string_lossy(), target, true));
                }
            }
        }
        Ok((extra, stub_targets))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn exec_in(
        &self,
        req: &ExecRequest,
        active: &ActiveKey,
        rootfs: &[Mount],
        opened: &mut Vec<HostMount>,
        volumes: &mut Vec<VolumeUse>,
        secret_dir: Option<&Path>,
        etc_dir: Option<&Path>,
        cancel: &CancellationToken,
    ) -> Result<ExecOutcome, SolveError> {
        let who = self.step_user(&req.user, rootfs)?;
        let labels = HashMap::from([(KEY_LABEL.to_string(), req.key.to_hex())]);
        let etc = match &req.network {
            Some(net) => Some((
                net,
                etc_dir.ok_or_else(|| {
                    SolveError::Internal(
                        "a namespaced step without a directory for its /etc files".into(),
                    )
                })?,
            )),
            None => None,
        };
        let (extra, stub_targets) = self
            .container_mounts(
                &labels,
                &req.mounts,
                etc,
                &who,
                opened,
                volumes,
                secret_dir,
                cancel,
            )
            .await?;
        let run = ContainerRun {
            id: format!("rbuild-{}-{}", req.key.short(), unique_suffix()),
            snapshot_key: active.0.clone(),
            rootfs: rootfs.to_vec(),
            process: process_as(who, &req.args, &req.env, &req.cwd),
            mounts: extra,
            labels: HashMap::from([(KEY_LABEL.to_string(), req.key.to_hex())]),
            io_dir: self.scratch.join("io"),
            output: req.output.clone(),
            stdin: req.stdin.clone(),
            network: network_mode(req.network.as_ref()),
        };
        if let TerminalUse::Shell(shell) = &req.terminal {
            let exit_code = self.terminal(run, shell).await? as i64;
            return Ok(ExecOutcome {
                exit_code,
                stdout: Vec::new(),
                stderr: Vec::new(),
                snapshot: None,
                changes: None,
                upper: None,
                full_filesystem: None,
                commit_ms: 0,
            });
        }
        let debug_run = ContainerRun {
            id: format!("rbuild-debug-{}-{}", req.key.short(), unique_suffix()),
            output: None,
            stdin: None,
            ..run.clone()
        };
        let gate = start_gate(req, etc_dir);
        let outcome = rbuild_runtime::task::run_gated(&self.ctd, run, gate, cancel)
            .await
            .map_err(|e| explain_start_failure(&req.args, e))?;
        let exit_code = outcome.exit_code as i64;
        if !req.expect.accepts(exit_code)
            && let TerminalUse::OnFailure(shell) = &req.terminal
        {
            // The failed step's own filesystem, environment and mounts,
            // once the user has seen what failed.
            (shell.before)(exit_code);
            let _ = self.terminal(debug_run, shell).await;
        }
        let mut changes = None;
        let mut snapshot = None;
        let mut upper_dir = None;
        let mut full_filesystem = None;
        if !req.expect.accepts(exit_code) {
            let mut written: Vec<(PathBuf, String)> = Vec::new();
            if let Some((upper, _)) = snapshots::overlay_dirs(rootfs) {
                written.push((upper, "the step's root filesystem".into()));
            }
            for (v, m) in volumes
                .iter()
                .zip(req.mounts.iter().filter_map(|m| match m {
                    MountRequest::Cache { volume, .. } => Some(volume),
                    _ => None,
                }))
            {
                written.push((v.path.clone(), format!("cache volume {m:?}")));
            }
            full_filesystem = written
                .iter()
                .find_map(|(path, what)| full_filesystem_note(path, what));
        }
        let mut commit_ms = 0;
        if req.expect.accepts(exit_code) {
            let committing = Instant::now();
            if let Some((upper, lowers)) = snapshots::overlay_dirs(rootfs) {
                upper_dir = Some(upper.clone());
                let started = Instant::now();
                let budget = changes_digest_budget();
                let digest = tokio::task::spawn_blocking(move || {
                    tree::remove_mount_stubs(&upper, &lowers, &stub_targets)?;
                    if budget == 0 {
                        return Ok(None);
                    }
                    tree::upper_digest(&upper, budget)
                })
                .await
                .map_err(|e| SolveError::Internal(format!("digest task: {e}")))??;
                tracing::debug!(
                    key = %req.key.short(),
                    ms = started.elapsed().as_millis(),
                    known = digest.is_some(),
                    "digested the step's changes"
                );
                changes = digest;
            }
            snapshot = Some(self.commit(active, &req.name, &req.key).await?);
            commit_ms = committing.elapsed().as_millis() as u64;
        }
        Ok(ExecOutcome {
            exit_code,
            stdout: outcome.stdout,
            stderr: outcome.stderr,
            snapshot,
            changes,
            upper: upper_dir,
            full_filesystem,
            commit_ms,
        })
    }

    /// Runs a step; see [`Worker::exec`].
    pub(super) async fn run_exec(
        &self,
        req: ExecRequest,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, SolveError> {
        let active = ActiveKey::unique(&format!("rbuild-active-{}", req.key.short()));
        let labels = HashMap::from([(KEY_LABEL.to_string(), req.key.to_hex())]);
        let rootfs = self.prepare(&active, req.parent.as_ref(), labels).await?;
        // Secrets for mounts live in RAM (/dev/shm), never on disk; only
        // a step that mounts one gets a directory.
        let secret_dir = if req
            .mounts
            .iter()
            .any(|m| matches!(m, MountRequest::Secret { .. }))
        {
            Some(
                super::secret_dirs::create(self.ctd.namespace())
                    .map_err(|e| SolveError::Internal(format!("create secret directory: {e}")))?,
            )
        } else {
            None
        };
        let etc_dir = match &req.network {
            Some(_) => Some(self.etc_dir()?),
            None => None,
        };
        let mut opened = Vec::new();
        let mut volumes = Vec::new();
        let result = self
            .exec_in(
                &req,
                &active,
                &rootfs,
                &mut opened,
                &mut volumes,
                secret_dir.as_ref().map(|d| d.path()),
                etc_dir.as_ref().map(|d| d.path()),
                &cancel,
            )
            .await;
        drop(volumes);
        drop(secret_dir);
        drop(etc_dir);
        for m in opened {
            self.close(m, false).await;
        }
        // Failed, cancelled or errored: the active snapshot must not outlive
        // the step. (Committed: it is no longer an active snapshot.)
        if !matches!(&result, Ok(o) if o.snapshot.is_some())
            && let Err(e) = snapshots::remove(&self.ctd, &active).await
        {
            tracing::warn!(error = %e, %active, "could not remove a step's snapshot");
        }
        result
    }
}

/// The container's network: the host's, or its namespace with its name.
pub(super) fn network_mode(network: Option<&NetworkUse>) -> NetworkMode {
    match network {
        None => NetworkMode::Host,
        Some(n) => NetworkMode::Namespace {
            path: n.attachment.netns.clone(),
            hostname: n.hostname.clone(),
        },
    }
}

/// "the filesystem holding PATH (WHAT) is full", when it has (almost) no
/// space or no inodes left: what a failed step most likely ran into.
fn full_filesystem_note(path: &Path, what: &str) -> Option<String> {
    // Below this, a write of any size is about to fail.
    const NEARLY_FULL: u64 = 1 << 20;
    let st = rustix::fs::statvfs(path).ok()?;
    let free = st.f_bavail * st.f_frsize;
    let no_inodes = st.f_files > 0 && st.f_favail == 0;
    (free < NEARLY_FULL || no_inodes).then(|| {
        format!(
            "the filesystem holding {} ({what}) is full ({} free of {}{}); \
             free space there (`rbuild cache prune` removes cached results) and run again",
            path.display(),
            crate::gc::human_bytes(free),
            crate::gc::human_bytes(st.f_blocks * st.f_frsize),
            if no_inodes { ", no inodes left" } else { "" },
        )
    })
}

fn bind(source: &str, target: &str, readonly: bool) -> ExtraMount {
    ExtraMount {
        destination: target.to_string(),
        kind: "bind".into(),
        source: source.to_string(),
        options: vec!["rbind".into(), if readonly { "ro" } else { "rw" }.into()],
    }
}

/// Writes a secret for a mount into the step's own secret directory: a new
/// file (`O_EXCL | O_NOFOLLOW`, mode 0600 until it is owned and complete),
/// so nothing already at `path` is written through.
fn write_secret(
    dir: &Path,
    path: &Path,
    plaintext: &[u8],
    mode: u32,
    owner: (u32, u32),
) -> Result<(), rbuild_snapshotter::Error> {
    let name = path.file_name().unwrap_or_default();
    confine::Dir::open_host(dir)?.replace_file(name, &mut &plaintext[..], mode, Some(owner))?;
    Ok(())
}

/// runc's "cannot exec" (no such binary, not executable, bad working
/// directory) comes back as a task error wrapped in four layers of context;
/// a user wants the command and the reason.
pub(super) fn explain_start_failure(args: &[String], err: rbuild_runtime::Error) -> SolveError {
    if let rbuild_runtime::Error::Containerd(rbuild_containerd::Error::Rpc { op, message, .. }) =
        &err
        && (*op == "create task" || *op == "start task")
        && let Some(reason) = message.split("unable to start container process: ").nth(1)
    {
        return SolveError::Invalid(format!(
            "cannot start {}: {}",
            crate::graph::shell_words(args),
            reason.trim_end_matches(": unknown")
        ));
    }
    err.into()
}

/// The process a step or a service runs: `args` as `who`, on no terminal.
pub(super) fn process_as(
    who: user::ResolvedUser,
    args: &[String],
    env: &[String],
    cwd: &str,
) -> ProcessSpec {
    ProcessSpec {
        args: args.to_vec(),
        env: env.to_vec(),
        cwd: cwd.to_string(),
        uid: who.uid,
        gid: who.gid,
        additional_gids: who.additional_gids,
        terminal: None,
    }
}

/// The runtime's start gate for a step bound to services: once they are
/// ready, their addresses go into the step's hosts file (bind-mounted into
/// the created task, so rewritten in place, not replaced) and the process
/// starts.
fn start_gate(
    req: &ExecRequest,
    etc_dir: Option<&Path>,
) -> Option<rbuild_runtime::task::StartGate> {
    let ready = req.start_gate.as_ref()?.take()?;
    let net = req.network.clone();
    let hosts_path = etc_dir.map(|d| d.join("hosts"));
    Some(Box::pin(async move {
        let hosts = ready.await?;
        if let (Some(net), Some(path)) = (net, hosts_path) {
            let text = network::hosts::hosts_file(&net.hostname, net.attachment.ip, &hosts);
            std::fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
        }
        Ok(())
    }))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    use super::*;

    #[test]
    fn a_secret_file_never_writes_through_what_is_at_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        let victim = host.path().join("victim");
        std::fs::write(&victim, "host bytes").unwrap();
        // An absolute symlink, a `..` chain, and the end of a 41-link chain.
        symlink(&victim, dir.path().join("secret-0")).unwrap();
        symlink(
            format!("{}{}", "../".repeat(10), victim.display()),
            dir.path().join("secret-1"),
        )
        .unwrap();
        for i in 0..41 {
            let to = if i == 40 {
                victim.display().to_string()
            } else {
                format!("l{}", i + 1)
            };
            symlink(to, dir.path().join(format!("l{i}"))).unwrap();
        }
        symlink("l0", dir.path().join("secret-2")).unwrap();
        for n in 0..3 {
            let file = dir.path().join(format!("secret-{n}"));
            write_secret(dir.path(), &file, b"s3cret", 0o400, (65534, 65534)).unwrap();
            let m = std::fs::symlink_metadata(&file).unwrap();
            assert!(m.is_file(), "secret-{n} is a file of its own");
            assert_eq!(m.permissions().mode() & 0o7777, 0o400);
            assert_eq!((m.uid(), m.gid()), (65534, 65534));
            assert_eq!(std::fs::read(&file).unwrap(), b"s3cret");
        }
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host bytes");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(".rbuild-"))
            .collect();
        assert!(names.is_empty(), "no temporary file is left: {names:?}");
    }
}
