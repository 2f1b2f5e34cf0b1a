//! A step's captured output, bounded: up to [`INLINE_MAX`] bytes per stream
//! are kept whole (in memory, then in the index); beyond that the whole
//! stream goes to a content-addressed file under the state root
//! (`ROOT/outputs/BLAKE3`), and what the index keeps, and `stdout()`
//! returns, is its first and last [`HEAD_TAIL`] bytes with a line between
//! them that says how much was left out and where all of it is.
//!
//! Memory stays bounded whatever a step prints: the head, a tail buffer
//! and one chunk. What is captured has been scrubbed of secrets already
//! (by `secrets::StreamScrubber`, which holds back a secret split over two
//! reads), so no plaintext reaches the file. Files are removed when the
//! last entry that names them is pruned (`gc::prune`).

use std::io::Write;
use std::path::{Path, PathBuf};

/// Output up to this many bytes per stream is kept whole in the index.
pub const INLINE_MAX: usize = 1 << 20;

/// Beyond [`INLINE_MAX`], the index keeps this many bytes of the start and of the end.
pub const HEAD_TAIL: usize = 512 << 10;

/// The name of a stored output file: the blake3 digest of its bytes, in hex.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OutputFile(pub String);

/// How a stream being written is named in `ROOT/outputs/tmp`, before the
/// writing process's tag (see [`rbuild_containerd::Owner::file_tag`]).
const TMP_PREFIX: &str = "output-";

/// Where output files live: `ROOT/outputs`.
#[derive(Clone, Debug)]
pub struct OutputStore {
    dir: PathBuf,
}

impl OutputStore {
    pub fn new(state_root: &Path) -> OutputStore {
        OutputStore {
            dir: state_root.join("outputs"),
        }
    }

    pub fn path(&self, file: &OutputFile) -> PathBuf {
        self.dir.join(&file.0)
    }

    /// Removes a stored output; one already gone is fine.
    pub fn remove(&self, file: &OutputFile) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(file)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Removes the half-written output files of rbuild processes that are
    /// gone (a `kill -9` mid-step leaves them in `ROOT/outputs/tmp`);
    /// returns how many.
    pub fn remove_orphans(&self) -> usize {
        let mut removed = 0;
        for entry in std::fs::read_dir(self.dir.join("tmp"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name();
            let owner = name
                .to_str()
                .and_then(|n| n.strip_prefix(TMP_PREFIX))
                .and_then(rbuild_containerd::Owner::parse_file_tag);
            if owner.is_some_and(|(o, _)| !o.is_alive())
                && std::fs::remove_file(entry.path()).is_ok()
            {
                removed += 1;
            }
        }
        removed
    }

    /// A capture of one stream.
    pub fn capture(&self) -> Capture {
        Capture {
            dir: self.dir.clone(),
            head: Vec::new(),
            tail: Vec::new(),
            total: 0,
            spill: None,
            error: None,
        }
    }
}

/// What was kept of one stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredOutput {
    /// The whole output, or its head and tail with a line between them.
    pub text: Vec<u8>,
    /// The file with all of it, when it was longer than [`INLINE_MAX`].
    pub file: Option<OutputFile>,
}

struct Spill {
    file: std::io::BufWriter<tempfile::NamedTempFile>,
    hasher: blake3::Hasher,
}

/// One stream being captured; see the module comment.
pub struct Capture {
    dir: PathBuf,
    head: Vec<u8>,
    /// The latest bytes, between `HEAD_TAIL` and twice that once spilled.
    tail: Vec<u8>,
    total: u64,
    spill: Option<Spill>,
    /// The first write error; reported by `finish`.
    error: Option<std::io::Error>,
}

impl Capture {
    /// Appends (scrubbed) bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.total += bytes.len() as u64;
        if self.spill.is_none() && self.head.len() + bytes.len() <= INLINE_MAX {
            self.head.extend_from_slice(bytes);
            return;
        }
        if self.spill.is_none() && self.error.is_none() {
            match self.start_spill() {
                Ok(s) => self.spill = Some(s),
                Err(e) => self.error = Some(e),
            }
        }
        if let Some(s) = &mut self.spill
            && self.error.is_none()
        {
            s.hasher.update(bytes);
            if let Err(e) = s.file.write_all(bytes) {
                self.error = Some(e);
            }
        }
        // The head keeps the first HEAD_TAIL bytes, the tail what follows.
        let mut rest = bytes;
        if self.head.len() > HEAD_TAIL {
            self.tail = self.head.split_off(HEAD_TAIL);
            self.head.shrink_to_fit();
        } else if self.head.len() < HEAD_TAIL {
            let n = (HEAD_TAIL - self.head.len()).min(rest.len());
            self.head.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        self.tail.extend_from_slice(rest);
        if self.tail.len() > 2 * HEAD_TAIL {
            self.tail.drain(..self.tail.len() - HEAD_TAIL);
        }
    }

    /// The file gets everything kept so far, then what follows.
    fn start_spill(&mut self) -> std::io::Result<Spill> {
        let tmp = self.dir.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        let mut file = std::io::BufWriter::with_capacity(
            256 << 10,
            tempfile::Builder::new()
                .prefix(&format!(
                    "{TMP_PREFIX}{}-",
                    rbuild_containerd::Owner::current().file_tag()
                ))
                .tempfile_in(&tmp)?,
        );
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.head);
        file.write_all(&self.head)?;
        Ok(Spill { file, hasher })
    }

    /// What was captured, for a step that failed: nothing is stored.
    pub fn discard(self) -> Vec<u8> {
        if self.spill.is_none() {
            return self.head;
        }
        let tail = &self.tail[self.tail.len().saturating_sub(HEAD_TAIL)..];
        let omitted = self.total - (self.head.len() + tail.len()) as u64;
        let mut text = self.head;
        text.extend_from_slice(
            format!("\n[rbuild: {omitted} bytes of output left out here]\n").as_bytes(),
        );
        text.extend_from_slice(tail);
        text
    }

    /// Everything captured, stored.
    pub fn finish(mut self) -> Result<StoredOutput, String> {
        let fail = |e: std::io::Error, dir: &Path| {
            format!(
                "store step output in {}: {e}{}",
                dir.display(),
                if e.kind() == std::io::ErrorKind::StorageFull {
                    " (free space there, for instance with `rbuild cache prune`)"
                } else {
                    ""
                }
            )
        };
        if let Some(e) = self.error.take() {
            return Err(fail(e, &self.dir));
        }
        let Some(spill) = self.spill.take() else {
            return Ok(StoredOutput {
                text: self.head,
                file: None,
            });
        };
        let name = OutputFile(spill.hasher.finalize().to_hex().to_string());
        let path = self.dir.join(&name.0);
        let tmp = spill
            .file
            .into_inner()
            .map_err(|e| fail(e.into_error(), &self.dir))?;
        // Content-addressed: the same bytes stored before are the same file.
        if !path.exists() {
            tmp.persist(&path).map_err(|e| fail(e.error, &self.dir))?;
        }
        let tail = &self.tail[self.tail.len().saturating_sub(HEAD_TAIL)..];
        let omitted = self.total - (self.head.len() + tail.len()) as u64;
        let mut text = self.head;
        text.extend_from_slice(
            format!(
                "\n[rbuild: {omitted} bytes of output left out here; all {} bytes are in {}]\n",
                self.total,
                path.display()
            )
            .as_bytes(),
        );
        text.extend_from_slice(tail);
        Ok(StoredOutput {
            text,
            file: Some(name),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn half_written_files_of_dead_runs_are_removed_and_ours_stay() {
        let root = tempfile::tempdir().unwrap();
        let store = OutputStore::new(root.path());
        let tmp = root.path().join("outputs/tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let ours = tmp.join(format!(
            "{TMP_PREFIX}{}-abc",
            rbuild_containerd::Owner::current().file_tag()
        ));
        // Beyond the kernel's largest pid (2^22): a process that is gone.
        let dead = tmp.join(format!("{TMP_PREFIX}4194305-1-abc"));
        let other = tmp.join("unrelated");
        for f in [&ours, &dead, &other] {
            std::fs::write(f, "x").unwrap();
        }
        assert_eq!(store.remove_orphans(), 1);
        assert!(ours.exists() && other.exists() && !dead.exists());
    }
    use crate::graph::SecretDef;
    use crate::secrets::{Secrets, StreamScrubber};

    #[test]
    fn small_output_is_kept_whole_and_no_file_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let store = OutputStore::new(dir.path());
        let mut c = store.capture();
        c.push(b"hello ");
        c.push(b"world\n");
        let out = c.finish().unwrap();
        assert_eq!(out.text, b"hello world\n");
        assert_eq!(out.file, None);
        assert!(!dir.path().join("outputs").exists());
    }

    #[test]
    fn big_output_goes_whole_to_a_content_addressed_file_and_head_and_tail_to_the_text() {
        let dir = tempfile::tempdir().unwrap();
        let store = OutputStore::new(dir.path());
        let mut all = Vec::new();
        let mut c = store.capture();
        for i in 0..100u32 {
            let chunk: Vec<u8> = (0..65_536u32).map(|j| ((i * 7 + j) % 251) as u8).collect();
            all.extend_from_slice(&chunk);
            c.push(&chunk);
        }
        let out = c.finish().unwrap();
        let file = out.file.clone().expect("a file");
        assert_eq!(file.0, blake3::hash(&all).to_hex().to_string());
        assert_eq!(std::fs::read(store.path(&file)).unwrap(), all);
        assert!(out.text.starts_with(&all[..HEAD_TAIL]));
        assert!(out.text.ends_with(&all[all.len() - HEAD_TAIL..]));
        let marker = String::from_utf8_lossy(&out.text[HEAD_TAIL..out.text.len() - HEAD_TAIL]);
        assert!(
            marker.contains(&format!(
                "{} bytes of output left out here; all {} bytes are in",
                all.len() - 2 * HEAD_TAIL,
                all.len()
            )),
            "{marker}"
        );
        assert!(out.text.len() < INLINE_MAX + 1000);
        // The same bytes again: the same file.
        let mut again = store.capture();
        again.push(&all);
        assert_eq!(again.finish().unwrap().file, Some(file.clone()));
        store.remove(&file).unwrap();
        store.remove(&file).unwrap();
        assert!(!store.path(&file).exists());
    }

    #[test]
    fn one_huge_write_still_keeps_the_first_and_last_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = OutputStore::new(dir.path());
        let mut c = store.capture();
        c.push(b"start");
        let big: Vec<u8> = (0..3 * INLINE_MAX).map(|i| (i % 253) as u8).collect();
        c.push(&big);
        let out = c.finish().unwrap();
        let mut all = b"start".to_vec();
        all.extend_from_slice(&big);
        assert!(out.text.starts_with(&all[..HEAD_TAIL]));
        assert!(out.text.ends_with(&all[all.len() - HEAD_TAIL..]));
    }

    #[test]
    fn a_secret_split_over_two_reads_is_scrubbed_in_the_stored_file_too() {
        let secrets = Arc::new(Secrets::default());
        secrets
            .resolve(
                &SecretDef {
                    name: "token".into(),
                    uri: None,
                    plaintext: Some("hunter2-very-secret".into()),
                },
                crate::secrets::Rule::AllTrim,
            )
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = OutputStore::new(dir.path());
        let mut scrubber = StreamScrubber::new(secrets);
        let mut c = store.capture();
        // Past the inline bound, with the secret split at a read boundary
        // (also right where the capture starts spilling to its file).
        let filler = vec![b'x'; INLINE_MAX - 6];
        for chunk in [&filler[..], b"hunter2-ve", b"ry-secret and more\n"] {
            c.push(&scrubber.push(chunk));
        }
        c.push(&scrubber.finish());
        let out = c.finish().unwrap();
        let stored = std::fs::read(store.path(out.file.as_ref().unwrap())).unwrap();
        for bytes in [&stored, &out.text] {
            let text = String::from_utf8_lossy(bytes);
            assert!(!text.contains("hunter2"), "plaintext kept");
            assert!(!text.contains("ry-secret"), "a piece of it kept");
            assert!(text.ends_with("*** and more\n"));
        }
    }
}
