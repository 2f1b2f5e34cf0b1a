//! The remote step cache's format: step results in a repository of any OCI
//! registry, one manifest per step, found by a tag made from its key
//! (docs/remote-cache.md is the format's description for other tools).
//!
//! A lookup is one GET of `REPO:rbuild-step-KEY`, however large the cache:
//! there is no index document to download, merge or rewrite (BuildKit's
//! single cache manifest is what makes its export and import slow on big
//! builds). The manifest's annotations carry what a hit needs without any
//! blob (the step's exit code, its output's content identity, short
//! stdout/stderr); its first layer is the step's filesystem diff, fetched
//! only when something needs the step's files.
//!
//! Plain values only: the registry requests are the worker's
//! (`ImageWorker::cache_*`), the decisions the solver's (`solver::remote`).

pub mod volumes;

use base64::Engine as _;
use rbuild_snapshotter::{BlobDesc, ImageRef};
use serde_json::{Value, json};

use crate::key::CacheKey;

/// The version of this format; a manifest of another is a miss.
pub const FORMAT: &str = "1";
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const ARTIFACT_TYPE: &str = "application/vnd.rbuild.step.v1";
/// The step's filesystem diff: an OCI layer (zstd), real timestamps.
pub const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const STDOUT_TYPE: &str = "application/vnd.rbuild.step.stdout.v1";
pub const STDERR_TYPE: &str = "application/vnd.rbuild.step.stderr.v1";
/// The OCI empty descriptor (`{}`), the config of every entry.
pub const EMPTY_TYPE: &str = "application/vnd.oci.empty.v1+json";
pub const EMPTY_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
pub const EMPTY_BODY: &[u8] = b"{}";

/// Output up to this many bytes per stream goes in an annotation; longer, in a blob.
pub const INLINE_OUTPUT: usize = 16 << 10;

const A_FORMAT: &str = "dev.rbuild.step.format";
const A_KEY: &str = "dev.rbuild.step.key";
const A_OUTPUT: &str = "dev.rbuild.step.output";
const A_EXIT: &str = "dev.rbuild.step.exit-code";
const A_STDOUT: &str = "dev.rbuild.step.stdout";
const A_STDERR: &str = "dev.rbuild.step.stderr";
const A_DESCRIPTION: &str = "dev.rbuild.step.description";
const A_DURATION: &str = "dev.rbuild.step.duration-ms";
const A_VERSION: &str = "dev.rbuild.version";
const A_DIFF_ID: &str = "dev.rbuild.layer.diff-id";
pub const A_CREATED: &str = "org.opencontainers.image.created";
/// Every entry's tag starts so; `cache prune --remote` touches no other tag.
pub const TAG_PREFIX: &str = "rbuild-step-";

/// Where a step's entry is: its repository at the key's tag.
pub fn entry_ref(repo: &ImageRef, key: &CacheKey) -> ImageRef {
    repo.with_tag(&format!("{TAG_PREFIX}{}", key.to_hex()))
}

/// A cache repository as the user wrote it (without the `latest` a
/// parsed reference carries).
pub fn shown(repo: &ImageRef) -> String {
    format!("{}/{}", repo.as_oci().registry(), repo.repository())
}

/// A repository for `--cache-from`/`--cache-to`: `HOST[:PORT]/PATH`, no
/// tag or digest (the entries are its tags).
pub fn parse_repository(flag: &str, s: &str) -> Result<ImageRef, String> {
    let s = s.trim();
    let last = s.rsplit('/').next().unwrap_or(s);
    if !s.contains('/') || last.contains(':') || last.contains('@') {
        return Err(format!(
            "{flag} {s:?}: expected a repository such as registry.example.com/team/rbuild-cache \
             (no tag or digest: each cached step is a tag of it)"
        ));
    }
    let path = s.split_once('/').map_or("", |(_, p)| p);
    if path.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "{flag} {s:?}: a repository's path is lowercase in OCI registries (try {:?})",
            format!(
                "{}/{}",
                s.split('/').next().unwrap_or_default(),
                path.to_lowercase()
            )
        ));
    }
    ImageRef::parse(s).map_err(|e| format!("{flag} {s:?}: {e}"))
}

/// A stream of a step's output, as an entry holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stream {
    Inline(Vec<u8>),
    Blob(BlobDesc),
}

/// One step's entry, as read from (or written to) its manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: CacheKey,
    /// The content identity of the step's tree (what later keys are made of).
    pub output: String,
    pub exit_code: i64,
    pub stdout: Stream,
    pub stderr: Stream,
    pub description: String,
    pub duration_ms: u64,
    /// When it was pushed (RFC 3339).
    pub created: String,
    /// The filesystem diff and its uncompressed digest.
    pub layer: BlobDesc,
    pub diff_id: String,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn descriptor(d: &BlobDesc, annotations: Option<Value>) -> Value {
    let mut v = json!({"mediaType": d.media_type, "digest": d.digest, "size": d.size});
    if let Some(a) = annotations {
        v["annotations"] = a;
    }
    v
}

impl Entry {
    /// The manifest's JSON (an OCI image manifest with an artifact type).
    pub fn manifest(&self) -> String {
        let mut annotations = json!({
            A_FORMAT: FORMAT,
            A_KEY: self.key.to_hex(),
            A_OUTPUT: self.output,
            A_EXIT: self.exit_code.to_string(),
            A_DESCRIPTION: self.description,
            A_DURATION: self.duration_ms.to_string(),
            A_VERSION: env!("CARGO_PKG_VERSION"),
            A_CREATED: self.created,
        });
        let mut layers = vec![descriptor(
            &self.layer,
            Some(json!({ A_DIFF_ID: self.diff_id })),
        )];
        for (name, stream) in [(A_STDOUT, &self.stdout), (A_STDERR, &self.stderr)] {
            match stream {
                Stream::Inline(bytes) if !bytes.is_empty() => {
                    annotations[name] = Value::String(b64().encode(bytes));
                }
                Stream::Inline(_) => {}
                Stream::Blob(d) => layers.push(descriptor(d, None)),
            }
        }
        let config = BlobDesc {
            media_type: EMPTY_TYPE.into(),
            digest: EMPTY_DIGEST.into(),
            size: EMPTY_BODY.len() as i64,
        };
        json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "artifactType": ARTIFACT_TYPE,
            "config": descriptor(&config, None),
            "layers": layers,
            "annotations": annotations,
        })
        .to_string()
    }

    /// Reads an entry's manifest; an error (a miss) when it is not one of
    /// this format, or is another key's.
    pub fn parse(body: &[u8], key: &CacheKey) -> Result<Entry, String> {
        let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        let a = &v["annotations"];
        let text = |name: &str| a[name].as_str().map(str::to_string);
        let need = |name: &str| text(name).ok_or_else(|| format!("no {name} annotation"));
        if v["artifactType"].as_str() != Some(ARTIFACT_TYPE) {
            return Err(format!(
                "not an rbuild step (artifactType {})",
                v["artifactType"]
            ));
        }
        let format = need(A_FORMAT)?;
        if format != FORMAT {
            return Err(format!("format {format}, this rbuild reads {FORMAT}"));
        }
        if need(A_KEY)? != key.to_hex() {
            return Err(format!("it is the entry of key {}", need(A_KEY)?));
        }
        let desc = |d: &Value| -> Result<BlobDesc, String> {
            let digest = d["digest"].as_str().ok_or("a layer without a digest")?;
            if !digest.starts_with("sha256:") || digest.len() != 71 {
                return Err(format!("bad digest {digest}"));
            }
            Ok(BlobDesc {
                media_type: d["mediaType"].as_str().unwrap_or_default().to_string(),
                digest: digest.to_string(),
                size: d["size"].as_i64().ok_or("a layer without a size")?,
            })
        };
        let layers = v["layers"].as_array().ok_or("no layers")?;
        let first = layers.first().ok_or("no filesystem layer")?;
        let layer = desc(first)?;
        if layer.media_type != LAYER_TYPE {
            return Err(format!("filesystem layer of type {}", layer.media_type));
        }
        let diff_id = first["annotations"][A_DIFF_ID]
            .as_str()
            .ok_or("the filesystem layer has no diff-id annotation")?
            .to_string();
        let stream = |annotation: &str, media_type: &str| -> Result<Stream, String> {
            if let Some(d) = layers.iter().skip(1).find(|d| d["mediaType"] == media_type) {
                return Ok(Stream::Blob(desc(d)?));
            }
            match text(annotation) {
                Some(t) => b64()
                    .decode(t)
                    .map(Stream::Inline)
                    .map_err(|e| format!("{annotation}: {e}")),
                None => Ok(Stream::Inline(Vec::new())),
            }
        };
        Ok(Entry {
            key: *key,
            output: need(A_OUTPUT)?,
            exit_code: need(A_EXIT)?
                .parse()
                .map_err(|e| format!("{A_EXIT}: {e}"))?,
            stdout: stream(A_STDOUT, STDOUT_TYPE)?,
            stderr: stream(A_STDERR, STDERR_TYPE)?,
            description: text(A_DESCRIPTION).unwrap_or_default(),
            duration_ms: text(A_DURATION)
                .and_then(|d| d.parse().ok())
                .unwrap_or_default(),
            created: need(A_CREATED)?,
            layer,
            diff_id,
        })
    }
}

/// When an entry's manifest says it was pushed, for pruning (None: not an entry).
pub fn created_of(body: &[u8]) -> Option<std::time::SystemTime> {
    let v: Value = serde_json::from_slice(body).ok()?;
    if v["artifactType"].as_str() != Some(ARTIFACT_TYPE) {
        return None;
    }
    humantime::parse_rfc3339(v["annotations"][A_CREATED].as_str()?).ok()
}

/// What `rbuild cache prune --remote` did.
#[derive(Debug, Default)]
pub struct Pruned {
    pub repo: String,
    pub removed: usize,
    pub kept: usize,
    pub other_tags: usize,
}

impl std::fmt::Display for Pruned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "remote cache {}: removed {} entr{}, kept {}",
            self.repo,
            self.removed,
            if self.removed == 1 { "y" } else { "ies" },
            self.kept
        )?;
        if self.other_tags > 0 {
            write!(f, " ({} other tags left alone)", self.other_tags)?;
        }
        write!(
            f,
            "; the registry frees their blobs when it garbage-collects \
             (distribution: `registry garbage-collect CONFIG`)"
        )
    }
}

/// Removes the entries of `repo` pushed before `cutoff` (their manifests;
/// tags that are not entries are left alone).
pub async fn prune(
    registry: &rbuild_snapshotter::Registry,
    repo: &ImageRef,
    cutoff: std::time::SystemTime,
) -> Result<Pruned, rbuild_snapshotter::Error> {
    use futures::StreamExt;
    let tags = registry.all_tags(repo).await?;
    let mut pruned = Pruned {
        repo: shown(repo),
        ..Pruned::default()
    };
    let entries: Vec<String> = tags
        .iter()
        .filter(|t| t.starts_with(TAG_PREFIX))
        .cloned()
        .collect();
    pruned.other_tags = tags.len() - entries.len();
    let mut results = futures::stream::iter(entries.into_iter().map(|tag| async move {
        let at = repo.with_tag(&tag);
        let Some((body, digest)) = registry.manifest_if_tagged(&at).await? else {
            return Ok(false);
        };
        match created_of(&body) {
            Some(t) if t < cutoff => {
                registry.delete_manifest(repo, &digest).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }))
    .buffer_unordered(8);
    while let Some(r) = results.next().await {
        match r {
            Ok(true) => pruned.removed += 1,
            Ok(false) => pruned.kept += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyBuilder;

    fn key(s: &str) -> CacheKey {
        let mut k = KeyBuilder::new("test");
        k.field("s", s);
        k.finish()
    }

    fn entry(stdout: Stream) -> Entry {
        Entry {
            key: key("a"),
            output: "out-1".into(),
            exit_code: 3,
            stdout,
            stderr: Stream::Inline(b"warn\n".to_vec()),
            description: "exec sh -c 'echo hi'".into(),
            duration_ms: 120,
            created: "2026-12-03T12:00:00Z".into(),
            layer: BlobDesc {
                media_type: LAYER_TYPE.into(),
                digest: format!("sha256:{}", "1".repeat(64)),
                size: 10,
            },
            diff_id: format!("sha256:{}", "2".repeat(64)),
        }
    }

    #[test]
    fn an_entry_reads_back_as_written() {
        for stdout in [
            Stream::Inline(vec![0, 159, 146, 150, b'\n']),
            Stream::Inline(Vec::new()),
            Stream::Blob(BlobDesc {
                media_type: STDOUT_TYPE.into(),
                digest: format!("sha256:{}", "3".repeat(64)),
                size: 1 << 20,
            }),
        ] {
            let e = entry(stdout);
            let back = Entry::parse(e.manifest().as_bytes(), &e.key).unwrap();
            assert_eq!(back, e);
        }
    }

    #[test]
    fn another_keys_or_formats_entry_is_a_miss() {
        let e = entry(Stream::Inline(b"x".to_vec()));
        let err = Entry::parse(e.manifest().as_bytes(), &key("b")).unwrap_err();
        assert!(err.contains("entry of key"), "{err}");
        let other = e.manifest().replace(
            r#""dev.rbuild.step.format":"1""#,
            r#""dev.rbuild.step.format":"9""#,
        );
        assert!(
            Entry::parse(other.as_bytes(), &e.key)
                .unwrap_err()
                .contains("format 9")
        );
        let image = e
            .manifest()
            .replace(ARTIFACT_TYPE, "application/vnd.example");
        assert!(Entry::parse(image.as_bytes(), &e.key).is_err());
        let bad = e.manifest().replace(&"1".repeat(64), "zz");
        assert!(
            Entry::parse(bad.as_bytes(), &e.key)
                .unwrap_err()
                .contains("bad digest")
        );
    }

    #[test]
    fn a_repository_is_asked_for_without_a_tag() {
        let r = parse_repository("--cache-to", "127.0.0.1:5000/team/cache").unwrap();
        assert_eq!(
            entry_ref(&r, &key("a")).to_string(),
            format!(
                "127.0.0.1:5000/team/cache:rbuild-step-{}",
                key("a").to_hex()
            )
        );
        let upper = parse_repository("--cache-to", "127.0.0.1:5000/Team/Cache").unwrap_err();
        assert!(
            upper.contains("lowercase") && upper.contains("127.0.0.1:5000/team/cache"),
            "{upper}"
        );
        for bad in ["127.0.0.1:5000/cache:main", "cache", "reg/cache@sha256:00"] {
            let e = parse_repository("--cache-to", bad).unwrap_err();
            assert!(e.contains("--cache-to") && e.contains("repository"), "{e}");
        }
    }

    #[test]
    fn created_is_read_for_pruning() {
        let e = entry(Stream::Inline(Vec::new()));
        let t = created_of(e.manifest().as_bytes()).unwrap();
        assert_eq!(
            humantime::format_rfc3339(t).to_string(),
            "2026-12-03T12:00:00Z"
        );
        assert!(created_of(b"{}").is_none());
    }
}
