//! Cache volumes carried through a registry, by name:
//! `rbuild cache volumes push NAME REPO` and `… pull NAME REPO` (a CI job
//! pulls before its run and, on the branch that writes the cache, pushes
//! after). A volume's entry is the tag `rbuild-volume-<blake3(NAME)>` of
//! the same repository as the step cache: one zstd layer of the volume's
//! directory (real times, owners and modes: cargo's `target/` fingerprints
//! stay valid), in a manifest like a step's (docs/remote-cache.md).

use rbuild_snapshotter::{BlobDesc, ImageRef, Registry, unpack};
use serde_json::{Value, json};

use super::{EMPTY_BODY, EMPTY_DIGEST, EMPTY_TYPE, LAYER_TYPE, MANIFEST_TYPE, shown};
use crate::volumes::Volumes;

pub const VOLUME_TYPE: &str = "application/vnd.rbuild.volume.v1";
const A_NAME: &str = "dev.rbuild.volume.name";
const A_DIFF_ID: &str = "dev.rbuild.layer.diff-id";

/// Where volume `name`'s entry is.
pub fn volume_ref(repo: &ImageRef, name: &str) -> ImageRef {
    let h = blake3::hash(name.as_bytes()).to_hex();
    repo.with_tag(&format!("rbuild-volume-{}", &h[..32]))
}

fn manifest(name: &str, layer: &BlobDesc, diff_id: &str) -> String {
    json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "artifactType": VOLUME_TYPE,
        "config": {"mediaType": EMPTY_TYPE, "digest": EMPTY_DIGEST, "size": EMPTY_BODY.len()},
        "layers": [{
            "mediaType": layer.media_type, "digest": layer.digest, "size": layer.size,
            "annotations": {A_DIFF_ID: diff_id},
        }],
        "annotations": {
            A_NAME: name,
            super::A_CREATED: rbuild_containerd::rfc3339(std::time::SystemTime::now()),
            "dev.rbuild.version": env!("CARGO_PKG_VERSION"),
        },
    })
    .to_string()
}

/// The layer and diff ID of volume `name`'s manifest.
fn parse(body: &[u8], name: &str) -> Result<(BlobDesc, String), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if v["artifactType"] != VOLUME_TYPE || v["annotations"][A_NAME] != name {
        return Err(format!("not the entry of cache volume {name:?}"));
    }
    let l = &v["layers"][0];
    let digest = l["digest"].as_str().unwrap_or_default();
    if l["mediaType"] != LAYER_TYPE || !digest.starts_with("sha256:") || digest.len() != 71 {
        return Err("its layer is not a zstd layer with a sha256 digest".into());
    }
    Ok((
        BlobDesc {
            media_type: LAYER_TYPE.into(),
            digest: digest.to_string(),
            size: l["size"].as_i64().ok_or("its layer has no size")?,
        },
        l["annotations"][A_DIFF_ID]
            .as_str()
            .ok_or("its layer has no diff-id")?
            .to_string(),
    ))
}

/// Pushes volume `name`'s primary instance; returns what to tell the user.
pub async fn push(
    registry: &Registry,
    volumes: &Volumes,
    name: &str,
    repo: &ImageRef,
) -> Result<String, String> {
    let held = volumes.take_primary(name)?;
    let scratch = volumes.scratch();
    std::fs::create_dir_all(&scratch).map_err(|e| format!("create {}: {e}", scratch.display()))?;
    let file = tempfile::NamedTempFile::new_in(&scratch).map_err(|e| e.to_string())?;
    let (dir, out) = (held.path.clone(), file.path().to_path_buf());
    let (diff_id, digest, size) =
        tokio::task::spawn_blocking(move || rbuild_snapshotter::export::pack_dir(&dir, &out))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    drop(held);
    let at = volume_ref(repo, name);
    let fail = |e: rbuild_snapshotter::Error| {
        format!("pushing cache volume {name:?} to {}: {e}", shown(repo))
    };
    registry
        .push_file(&at, file.path(), &digest, size)
        .await
        .map_err(fail)?;
    registry.push_bytes(&at, EMPTY_BODY).await.map_err(fail)?;
    let layer = BlobDesc {
        media_type: LAYER_TYPE.into(),
        digest,
        size: size as i64,
    };
    registry
        .push_manifest(&at, &manifest(name, &layer, &diff_id), MANIFEST_TYPE)
        .await
        .map_err(fail)?;
    Ok(format!(
        "pushed cache volume {name:?} to {} ({})",
        shown(repo),
        crate::gc::human_bytes(size)
    ))
}

/// Replaces volume `name` with its entry in `repo`; a repository without
/// one leaves the volume as it is (the first run of a fleet).
pub async fn pull(
    registry: &Registry,
    volumes: &Volumes,
    name: &str,
    repo: &ImageRef,
) -> Result<String, String> {
    let at = volume_ref(repo, name);
    let fail = |e: rbuild_snapshotter::Error| {
        format!("pulling cache volume {name:?} from {}: {e}", shown(repo))
    };
    let Some((body, _)) = registry.manifest_if_tagged(&at).await.map_err(fail)? else {
        return Ok(format!(
            "no cache volume {name:?} in {} yet: left as it is",
            shown(repo)
        ));
    };
    let (layer, diff_id) = parse(&body, name)?;
    let scratch = volumes.scratch();
    std::fs::create_dir_all(&scratch).map_err(|e| format!("create {}: {e}", scratch.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix("volume-")
        .tempdir_in(&scratch)
        .map_err(|e| e.to_string())?;
    let root = tmp.path().join("data");
    std::fs::create_dir(&root).map_err(|e| e.to_string())?;
    let stream = registry
        .blob_stream(&at, &layer.as_oci_client(), "volume")
        .await
        .map_err(fail)?;
    let target = unpack::Target {
        root: root.clone(),
        lowers: Vec::new(),
    };
    let applied = rbuild_snapshotter::content::read_blocking(stream, move |reader| {
        unpack::apply(
            reader,
            unpack::Compression::Zstd,
            &target,
            unpack::max_layer_size(),
        )
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("cache volume {name:?} from {}: {e}", shown(repo)))?;
    if applied != diff_id {
        return Err(format!(
            "cache volume {name:?} from {}: its layer unpacked to {applied}, not {diff_id}; left as it was",
            shown(repo)
        ));
    }
    let held = volumes.take_primary(name)?;
    volumes
        .replace(&held, &root)
        .map_err(|e| format!("cache volume {name:?}: {e}"))?;
    Ok(format!(
        "pulled cache volume {name:?} from {} ({})",
        shown(repo),
        crate::gc::human_bytes(layer.size.max(0) as u64)
    ))
}

/// A volume entry's layer, for tests of the format.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_volume_entry_reads_back_and_names_its_volume() {
        let layer = BlobDesc {
            media_type: LAYER_TYPE.into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            size: 5,
        };
        let m = manifest("cargo-target", &layer, "sha256:x");
        assert_eq!(
            parse(m.as_bytes(), "cargo-target").unwrap(),
            (layer, "sha256:x".into())
        );
        assert!(parse(m.as_bytes(), "other").is_err());
        let repo = ImageRef::parse("127.0.0.1:5000/team/cache").unwrap();
        assert_ne!(volume_ref(&repo, "a"), volume_ref(&repo, "b"));
        assert!(
            volume_ref(&repo, "a")
                .to_string()
                .contains(":rbuild-volume-")
        );
    }

    #[test]
    fn pack_and_unpack_keep_a_volume_whole() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("release/deps")).unwrap();
        std::fs::write(src.path().join("release/deps/libx.rlib"), b"rlib").unwrap();
        let when =
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let f = std::fs::File::options()
            .write(true)
            .open(src.path().join("release/deps/libx.rlib"))
            .unwrap();
        f.set_modified(when).unwrap();
        let out = tempfile::NamedTempFile::new().unwrap();
        let (diff_id, _, _) = rbuild_snapshotter::export::pack_dir(src.path(), out.path()).unwrap();
        let dest = tempfile::tempdir().unwrap();
        let target = unpack::Target {
            root: dest.path().to_path_buf(),
            lowers: Vec::new(),
        };
        let applied = unpack::apply(
            std::fs::File::open(out.path()).unwrap(),
            unpack::Compression::Zstd,
            &target,
            1 << 30,
        )
        .unwrap();
        assert_eq!(applied, diff_id);
        let back = dest.path().join("release/deps/libx.rlib");
        assert_eq!(std::fs::read(&back).unwrap(), b"rlib");
        assert_eq!(std::fs::metadata(&back).unwrap().modified().unwrap(), when);
    }
}
