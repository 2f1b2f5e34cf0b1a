//! What `rbuild cache verify` asks of containerd and the host, and what the
//! next run's start removes: the leftovers of rbuild processes that are
//! gone (containers, tasks, shims, step processes, active snapshots, run
//! leases, secret directories, network namespaces), and the step snapshots as containerd has
//! them (GC-rooted or not, held by a live run or not).

use std::collections::HashSet;

use super::*;

impl ContainerdWorker {
    /// Where rbuild's network namespaces are: the configured place, else
    /// the environment's, else the default.
    fn network_dir(&self) -> PathBuf {
        match &self.network_config {
            Some(c) => c.run_dir.clone(),
            None => NetworkConfig::from_env()
                .map(|c| c.run_dir)
                .unwrap_or_else(|_| network::DEFAULT_RUN_DIR.into()),
        }
    }

    /// Run leases whose rbuild process is gone: (lease, pid).
    async fn dead_leases(&self) -> Result<Vec<(LeaseId, u32)>, SolveError> {
        let mut out = Vec::new();
        for l in self
            .ctd
            .list_leases(&format!("labels.\"{OWNER_LABEL}\""))
            .await?
        {
            let owner = l.labels.get(OWNER_LABEL).and_then(|o| Owner::parse(o));
            if let Some(o) = owner
                && !o.is_alive()
                && l.id.starts_with(LEASE_PREFIX)
            {
                out.push((LeaseId(l.id), o.pid()));
            }
        }
        Ok(out)
    }

    /// Removes what crashed or killed rbuild processes left behind:
    /// containers, their tasks, shims and processes; active snapshots and
    /// views; secret directories; and their leases (whose uncommitted
    /// results containerd then collects).
    pub async fn remove_orphans(&self) -> Result<(), SolveError> {
        let stopped = rbuild_runtime::orphans::remove(&self.ctd).await?;
        let secret_dirs = secret_dirs::remove_orphans(self.ctd.namespace());
        let snaps = snapshots::remove_orphans(&self.ctd).await?;
        // After the containers: a dead run's namespace is no longer in use.
        let netns = network::remove_orphans(&self.network_dir()).await?;
        let mut leases = 0;
        for (lease, _) in self.dead_leases().await? {
            self.ctd.delete_lease(&lease, false).await?;
            leases += 1;
        }
        if stopped.containers
            + stopped.shims
            + stopped.processes
            + secret_dirs
            + snaps
            + leases
            + netns.namespaces
            + netns.reservations
            > 0
        {
            tracing::info!(
                containers = stopped.containers,
                shims = stopped.shims,
                processes = stopped.processes,
                secret_dirs,
                snapshots = snaps,
                leases,
                network_namespaces = netns.namespaces,
                ip_reservations = netns.reservations,
                "removed leftovers of an interrupted run"
            );
        }
        Ok(())
    }

    /// Everything [`ContainerdWorker::remove_orphans`] would remove, described
    /// for a user ("container rbuild-… (its rbuild process 123 is gone)").
    pub async fn leftovers(&self) -> Result<Vec<String>, SolveError> {
        let mut out: Vec<String> = rbuild_runtime::orphans::find(&self.ctd)
            .await?
            .iter()
            .map(ToString::to_string)
            .collect();
        for (key, pid) in snapshots::orphans(&self.ctd).await? {
            out.push(format!(
                "active snapshot {key} (its rbuild process {pid} is gone)"
            ));
        }
        for (lease, pid) in self.dead_leases().await? {
            out.push(format!(
                "lease {} (its rbuild process {pid} is gone)",
                lease.0
            ));
        }
        out.extend(
            network::find_orphans(&self.network_dir())
                .iter()
                .map(ToString::to_string),
        );
        for (dir, pid) in secret_dirs::orphans(self.ctd.namespace()) {
            out.push(format!(
                "secret directory {} (its rbuild process {pid} is gone)",
                dir.display()
            ));
        }
        Ok(out)
    }

    /// Committed step snapshots (those with a cache key label), and
    /// whether each is a GC root.
    pub async fn step_snapshots(&self) -> Result<HashMap<SnapshotId, bool>, SolveError> {
        Ok(snapshots::list_labelled(&self.ctd, KEY_LABEL)
            .await?
            .into_iter()
            .filter(|s| s.committed)
            .map(|s| {
                let rooted = s.labels.contains_key(GC_ROOT_LABEL);
                (s.name, rooted)
            })
            .collect())
    }

    /// Snapshots the leases of runs still going hold (what they have not
    /// recorded yet).
    pub async fn held_by_live_runs(&self) -> Result<HashSet<SnapshotId>, SolveError> {
        let mut held = HashSet::new();
        for l in self
            .ctd
            .list_leases(&format!("labels.\"{OWNER_LABEL}\""))
            .await?
        {
            let alive = l
                .labels
                .get(OWNER_LABEL)
                .and_then(|o| Owner::parse(o))
                .is_some_and(|o| o.is_alive());
            if alive {
                for (id, kind) in self.ctd.lease_resources(&LeaseId(l.id)).await? {
                    if kind.starts_with("snapshots/") {
                        held.insert(SnapshotId(id));
                    }
                }
            }
        }
        Ok(held)
    }
}
