//! Snapshots in containerd's overlayfs snapshotter: the handful of verbs the
//! engine needs (stat, prepare, commit, remove, label), and the sweep that
//! removes active snapshots left behind by a crashed rbuild.

use std::collections::HashMap;
use std::path::PathBuf;

use rbuild_containerd::containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, Info, ListSnapshotsRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest, UpdateSnapshotRequest, UsageRequest,
    ViewSnapshotRequest,
};
use rbuild_containerd::containerd_client::tonic::Code;
pub use rbuild_containerd::containerd_client::types::Mount;
use rbuild_containerd::{Containerd, LeaseId, OWNER_LABEL, Owner, SNAPSHOTTER};

use crate::Error;

/// The name of a committed snapshot: a step's result, an image layer's
/// chain ID. Committed snapshots are immutable and outlive a run.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SnapshotId(pub String);

/// The key of an active snapshot or a view: a tree being written, or one
/// mounted read-only, for the length of one operation. Never a committed
/// snapshot's name: committing turns an `ActiveKey` into a [`SnapshotId`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ActiveKey(pub String);

impl ActiveKey {
    /// A new unique key with a prefix that says what it is for
    /// (`rbuild-active-…`, `rbuild-view-…`, `rbuild-mount-…`).
    pub fn unique(prefix: &str) -> ActiveKey {
        ActiveKey(format!("{prefix}-{}", crate::unique_suffix()))
    }
}

impl std::fmt::Display for ActiveKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The writable directory of a snapshot's mounts and the directories below
/// it, topmost first (a snapshot without parent: its own directory, none).
pub fn overlay_dirs(mounts: &[Mount]) -> Option<(PathBuf, Vec<PathBuf>)> {
    let m = mounts.first()?;
    if m.r#type == "bind" {
        return Some((PathBuf::from(&m.source), Vec::new()));
    }
    let (upper, lowers) = overlay_options(m);
    Some((upper?, lowers))
}

/// An overlay mount's `upperdir` (none in a read-only view) and its
/// `lowerdir` list, topmost first.
pub fn overlay_options(m: &Mount) -> (Option<PathBuf>, Vec<PathBuf>) {
    let mut upper = None;
    let mut lowers = Vec::new();
    for o in &m.options {
        if let Some(u) = o.strip_prefix("upperdir=") {
            upper = Some(PathBuf::from(u));
        } else if let Some(l) = o.strip_prefix("lowerdir=") {
            lowers = l.split(':').map(PathBuf::from).collect();
        }
    }
    (upper, lowers)
}

/// containerd's snapshot kinds (`snapshots.Kind`).
const KIND_VIEW: i32 = 1;
const KIND_ACTIVE: i32 = 2;

pub async fn stat(ctd: &Containerd, name: &SnapshotId) -> Result<Option<Info>, Error> {
    let name = name.0.as_str();
    match ctd
        .snapshots()
        .stat(ctd.request(StatSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: name.to_string(),
        }))
        .await
    {
        Ok(r) => Ok(r.into_inner().info),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(rbuild_containerd::Error::rpc("stat snapshot", name, s).into()),
    }
}

/// Prepares an active (writable) snapshot `key` on top of `parent` (None: empty).
/// The snapshot carries this process as its owner, so a crash cannot orphan it for good.
pub async fn prepare(
    ctd: &Containerd,
    lease: &LeaseId,
    key: &ActiveKey,
    parent: Option<&SnapshotId>,
    mut labels: HashMap<String, String>,
) -> Result<Vec<Mount>, Error> {
    let (key, parent) = (key.0.as_str(), parent.map(|p| p.0.as_str()));
    labels.insert(OWNER_LABEL.into(), Owner::current().label());
    let resp = ctd
        .snapshots()
        .prepare(ctd.leased(
            PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.to_string(),
                parent: parent.unwrap_or_default().to_string(),
                labels,
            },
            lease,
        ))
        .await
        .map_err(|s| rbuild_containerd::Error::rpc("prepare snapshot", key, s))?;
    Ok(resp.into_inner().mounts)
}

/// A read-only view `key` of committed snapshot `parent`; remove it when done.
pub async fn view(
    ctd: &Containerd,
    lease: &LeaseId,
    key: &ActiveKey,
    parent: &SnapshotId,
) -> Result<Vec<Mount>, Error> {
    let (key, parent) = (key.0.as_str(), parent.0.as_str());
    let labels = HashMap::from([(OWNER_LABEL.to_string(), Owner::current().label())]);
    let resp = ctd
        .snapshots()
        .view(ctd.leased(
            ViewSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.to_string(),
                parent: parent.to_string(),
                labels,
            },
            lease,
        ))
        .await
        .map_err(|s| rbuild_containerd::Error::rpc("view snapshot", parent, s))?;
    Ok(resp.into_inner().mounts)
}

/// Commits active snapshot `key` as the read-only snapshot `name`.
pub async fn commit(
    ctd: &Containerd,
    lease: &LeaseId,
    key: &ActiveKey,
    name: &SnapshotId,
    labels: HashMap<String, String>,
) -> Result<(), Error> {
    let (key, name) = (key.0.as_str(), name.0.as_str());
    ctd.snapshots()
        .commit(ctd.leased(
            CommitSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                name: name.to_string(),
                key: key.to_string(),
                labels,
            },
            lease,
        ))
        .await
        .map_err(|s| rbuild_containerd::Error::rpc("commit snapshot", name, s))?;
    Ok(())
}

/// Removes an active snapshot or a view; one that is already gone is fine.
pub async fn remove(ctd: &Containerd, key: &ActiveKey) -> Result<(), Error> {
    remove_key(ctd, &key.0).await
}

async fn remove_key(ctd: &Containerd, key: &str) -> Result<(), Error> {
    match ctd
        .snapshots()
        .remove(ctd.request(RemoveSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.to_string(),
        }))
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::NotFound => Ok(()),
        Err(s) => Err(rbuild_containerd::Error::rpc("remove snapshot", key, s).into()),
    }
}

/// Sets labels on a snapshot, leaving its other labels alone.
pub async fn set_labels(
    ctd: &Containerd,
    name: &SnapshotId,
    labels: HashMap<String, String>,
) -> Result<(), Error> {
    let name = name.0.as_str();
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    ctd.snapshots()
        .update(ctd.request(UpdateSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            info: Some(Info {
                name: name.to_string(),
                labels,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths }),
        }))
        .await
        .map_err(|s| rbuild_containerd::Error::rpc("label snapshot", name, s))?;
    Ok(())
}

/// Bytes a snapshot adds to its parent (containerd measures its own layer).
pub async fn usage(ctd: &Containerd, name: &SnapshotId) -> Result<i64, Error> {
    let name = name.0.as_str();
    let resp = ctd
        .snapshots()
        .usage(ctd.request(UsageRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: name.to_string(),
        }))
        .await
        .map_err(|s| rbuild_containerd::Error::rpc("measure snapshot", name, s))?;
    Ok(resp.into_inner().size)
}

/// Removes labels from a snapshot.
pub async fn remove_labels(
    ctd: &Containerd,
    name: &SnapshotId,
    keys: &[&str],
) -> Result<(), Error> {
    let name = name.0.as_str();
    let paths = keys.iter().map(|k| format!("labels.{k}")).collect();
    match ctd
        .snapshots()
        .update(ctd.request(UpdateSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            info: Some(Info {
                name: name.to_string(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths }),
        }))
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::NotFound => Ok(()),
        Err(s) => Err(rbuild_containerd::Error::rpc("unlabel snapshot", name, s).into()),
    }
}

/// Snapshots matching a containerd filter, e.g. `labels."rbuild.key"`.
pub async fn list(ctd: &Containerd, filter: &str) -> Result<Vec<Info>, Error> {
    let mut stream = ctd
        .snapshots()
        .list(ctd.request(ListSnapshotsRequest {
            snapshotter: SNAPSHOTTER.into(),
            filters: vec![filter.to_string()],
        }))
        .await
        .map_err(|s| rbuild_containerd::Error::rpc("list snapshots", filter, s))?
        .into_inner();
    let mut out = Vec::new();
    while let Some(page) = stream
        .message()
        .await
        .map_err(|s| rbuild_containerd::Error::rpc("list snapshots", filter, s))?
    {
        out.extend(page.info);
    }
    Ok(out)
}

/// Removes active snapshots whose owning rbuild process is gone. Returns
/// how many were removed.
pub async fn remove_orphans(ctd: &Containerd) -> Result<usize, Error> {
    let mut removed = 0;
    for info in list(ctd, &format!("labels.\"{OWNER_LABEL}\"")).await? {
        let dead = info
            .labels
            .get(OWNER_LABEL)
            .and_then(|l| Owner::parse(l))
            .is_some_and(|o| !o.is_alive());
        if dead && (info.kind == KIND_ACTIVE || info.kind == KIND_VIEW) {
            remove_key(ctd, &info.name).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// A committed or active snapshot as a listing shows it.
#[derive(Clone, Debug)]
pub struct Listed {
    pub name: SnapshotId,
    pub committed: bool,
    pub labels: HashMap<String, String>,
}

/// Snapshots that carry `label` (any value).
pub async fn list_labelled(ctd: &Containerd, label: &str) -> Result<Vec<Listed>, Error> {
    Ok(list(ctd, &format!("labels.\"{label}\""))
        .await?
        .into_iter()
        .map(|i| Listed {
            committed: i.kind != KIND_ACTIVE && i.kind != KIND_VIEW,
            name: SnapshotId(i.name),
            labels: i.labels,
        })
        .collect())
}

/// Active snapshots and views whose owning rbuild process is gone: (key, pid).
pub async fn orphans(ctd: &Containerd) -> Result<Vec<(String, u32)>, Error> {
    let mut out = Vec::new();
    for info in list(ctd, &format!("labels.\"{OWNER_LABEL}\"")).await? {
        let owner = info.labels.get(OWNER_LABEL).and_then(|l| Owner::parse(l));
        if let Some(o) = owner
            && !o.is_alive()
            && (info.kind == KIND_ACTIVE || info.kind == KIND_VIEW)
        {
            out.push((info.name, o.pid()));
        }
    }
    Ok(out)
}

/// Holds an existing snapshot with `lease` too (one another run committed,
/// whose own lease may be about to go).
pub async fn lease(ctd: &Containerd, lease: &LeaseId, name: &SnapshotId) -> Result<(), Error> {
    ctd.add_lease_resource(lease, &name.0, &format!("snapshots/{SNAPSHOTTER}"))
        .await?;
    Ok(())
}

/// Whether committed snapshot `name` exists, held by `lease` from now on.
/// The lease is taken before the look, so that a snapshot found is a
/// snapshot kept: one with no other reference (a pruned step's, a removed
/// image's) can otherwise be collected by containerd's GC, which any
/// deletion in any namespace sets off, between the look and its use.
pub async fn hold(ctd: &Containerd, lease: &LeaseId, name: &SnapshotId) -> Result<bool, Error> {
    self::lease(ctd, lease, name).await?;
    Ok(stat(ctd, name).await?.is_some())
}
