//! Flattening: one committed snapshot's whole content copied into a new
//! snapshot without a parent, for stacks of overlay layers too deep to mount.
//!
//! Goes through containerd's Diff service (diff against nothing, apply to an
//! empty snapshot). Not for making image layers: that is `layer`.

use std::collections::HashMap;

use rbuild_containerd::containerd_client::services::v1::DiffRequest;
use rbuild_containerd::{Containerd, LeaseId};

use super::format::OCI_LAYER;
use crate::snapshots::{ActiveKey, SnapshotId};
use crate::{Error, content, snapshots, unique_suffix};

/// Writes the whole content of committed snapshot `snapshot` into a new
/// committed snapshot `name` without a parent, through containerd's Diff
/// service (a full, uncompressed tar of it, applied to an empty snapshot):
/// owners, modes, xattrs and hard links come across as containerd keeps
/// them. For snapshots whose stack of overlay layers got too deep to mount.
/// An existing `name` is taken as it is.
pub async fn flatten(
    ctd: &Containerd,
    lease: &LeaseId,
    snapshot: &SnapshotId,
    name: &SnapshotId,
) -> Result<(), Error> {
    if snapshots::hold(ctd, lease, name).await? {
        return Ok(());
    }
    let view_key = ActiveKey::unique("rbuild-flatten-view");
    let view = snapshots::view(ctd, lease, &view_key, snapshot).await?;
    let diffed = ctd
        .diff()
        .diff(ctd.leased(
            DiffRequest {
                left: Vec::new(),
                right: view,
                media_type: OCI_LAYER.into(),
                r#ref: format!("rbuild-flatten-{}", unique_suffix()),
                ..Default::default()
            },
            lease,
        ))
        .await
        .map_err(|s| rbuild_containerd::Error::rpc("flatten snapshot", &snapshot.0, s));
    let _ = snapshots::remove(ctd, &view_key).await;
    let tar = diffed?
        .into_inner()
        .diff
        .ok_or_else(|| Error::Export(format!("containerd returned no diff for {}", snapshot.0)))?;
    let active = ActiveKey::unique("rbuild-flatten");
    let mounts = snapshots::prepare(ctd, lease, &active, None, HashMap::new()).await?;
    let result = async {
        ctd.diff()
            .apply(ctd.leased(
                rbuild_containerd::containerd_client::services::v1::ApplyRequest {
                    diff: Some(rbuild_containerd::containerd_client::types::Descriptor {
                        media_type: tar.media_type.clone(),
                        digest: tar.digest.clone(),
                        size: tar.size,
                        annotations: HashMap::new(),
                    }),
                    mounts,
                    ..Default::default()
                },
                lease,
            ))
            .await
            .map_err(|s| rbuild_containerd::Error::rpc("flatten snapshot", &snapshot.0, s))?;
        snapshots::commit(ctd, lease, &active, name, HashMap::new()).await
    }
    .await;
    let _ = content::delete(ctd, &tar.digest).await;
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = snapshots::remove(ctd, &active).await;
            // Flattened at the same time by another step: as good.
            if snapshots::hold(ctd, lease, name).await? {
                Ok(())
            } else {
                Err(e)
            }
        }
    }
}
