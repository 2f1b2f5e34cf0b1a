//! The reproducible form of a layer tar: every entry copied with its
//! timestamps at the Unix epoch (unless real ones were asked for), then
//! compressed, hashing both the uncompressed and the compressed stream.
//!
//! Pure file-to-file work on a blocking thread; where the tar comes from
//! and where the result goes (the content store) is `layer`'s business.

use std::io::{BufReader, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};

use super::format::Compression;
use crate::Error;

/// A sha256 hasher shared by writers in a pipeline of writers.
#[derive(Clone, Default)]
struct Hashed(Arc<Mutex<(Sha256, u64)>>);

impl Hashed {
    fn finish(&self) -> (String, u64) {
        let g = self.0.lock().unwrap();
        (
            format!("sha256:{}", hex::encode(g.0.clone().finalize())),
            g.1,
        )
    }
}

struct HashingWriter<W: Write> {
    inner: W,
    hash: Hashed,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        let mut g = self.hash.0.lock().unwrap();
        g.0.update(&buf[..n]);
        g.1 += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Rewrites a layer tar (timestamps to the epoch when `epoch`) and
/// compresses it. Returns (uncompressed digest, compressed digest, size).
pub(super) fn rewrite_layer(
    input: &Path,
    output: &Path,
    compression: Compression,
    epoch: bool,
) -> Result<(String, String, u64), Error> {
    let out = std::fs::File::create(output).map_err(|e| Error::io("create", output, e))?;
    let compressed = Hashed::default();
    let sink = HashingWriter {
        inner: std::io::BufWriter::with_capacity(1 << 20, out),
        hash: compressed.clone(),
    };
    let uncompressed = Hashed::default();
    let io = |e: std::io::Error| Error::io("write layer", output, e);
    match compression {
        Compression::Gzip => {
            let enc = flate2::write::GzEncoder::new(sink, flate2::Compression::default());
            let enc = copy_entries(input, enc, &uncompressed, epoch)?;
            enc.finish().map_err(io)?.flush().map_err(io)?;
        }
        Compression::Zstd => {
            let enc = zstd::stream::write::Encoder::new(sink, 3).map_err(io)?;
            let enc = copy_entries(input, enc, &uncompressed, epoch)?;
            enc.finish().map_err(io)?.flush().map_err(io)?;
        }
        Compression::Uncompressed => {
            copy_entries(input, sink, &uncompressed, epoch)?
                .flush()
                .map_err(io)?;
        }
    }
    let (diff_id, _) = uncompressed.finish();
    let (digest, size) = compressed.finish();
    Ok((diff_id, digest, size))
}

/// A directory of the host (a cache volume) as a zstd layer in `output`,
/// its real times, owners and modes kept. Returns (uncompressed digest,
/// compressed digest, size), as [`rewrite_layer`] does.
pub fn pack_dir(dir: &Path, output: &Path) -> Result<(String, String, u64), Error> {
    let out = std::fs::File::create(output).map_err(|e| Error::io("create", output, e))?;
    let compressed = Hashed::default();
    let uncompressed = Hashed::default();
    let io = |e: std::io::Error| Error::io("write layer", output, e);
    let enc = zstd::stream::write::Encoder::new(
        HashingWriter {
            inner: std::io::BufWriter::with_capacity(1 << 20, out),
            hash: compressed.clone(),
        },
        3,
    )
    .map_err(io)?;
    let tar = HashingWriter {
        inner: enc,
        hash: uncompressed.clone(),
    };
    let tar = crate::overlay_diff::write_layer(&[dir.to_path_buf()], tar)
        .map_err(|e| Error::io("pack", dir, e))?;
    tar.inner.finish().map_err(io)?.flush().map_err(io)?;
    let (diff_id, _) = uncompressed.finish();
    let (digest, size) = compressed.finish();
    Ok((diff_id, digest, size))
}

/// Copies the entries of a tar into `out`, optionally with every timestamp
/// at the epoch (PAX time records dropped, GNU atime/ctime zeroed). Long
/// names and links, xattrs and other PAX records are kept.
fn copy_entries<W: Write>(
    input: &Path,
    out: W,
    uncompressed: &Hashed,
    epoch: bool,
) -> Result<W, Error> {
    let io = |e: std::io::Error| Error::io("rewrite layer", input, e);
    let f = std::fs::File::open(input).map_err(io)?;
    let mut archive = tar::Archive::new(BufReader::with_capacity(1 << 20, f));
    let mut builder = tar::Builder::new(HashingWriter {
        inner: out,
        hash: uncompressed.clone(),
    });
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        let mut records: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(exts) = entry.pax_extensions().map_err(io)? {
            for ext in exts {
                let ext = ext.map_err(io)?;
                let key = ext
                    .key()
                    .map_err(|_| io(std::io::Error::other("bad PAX key")))?;
                let time = matches!(key, "mtime" | "atime" | "ctime");
                if matches!(key, "path" | "linkpath") || (epoch && time) {
                    continue;
                }
                records.push((key.to_string(), ext.value_bytes().to_vec()));
            }
        }
        let path = entry.path_bytes().into_owned();
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let mut header = entry.header().clone();
        set_name_field(&mut header, 0, &path, "path", &mut records);
        if let Some(link) = &link {
            set_name_field(&mut header, 157, link, "linkpath", &mut records);
        }
        let gnu = &header.as_bytes()[257..265] == b"ustar  \0";
        let bytes = header.as_mut_bytes();
        if gnu {
            if epoch {
                bytes[345..369].fill(0); // GNU atime, ctime
            }
        } else {
            bytes[345..500].fill(0); // ustar prefix: the full path is in name or PAX
        }
        if epoch {
            header.set_mtime(0);
        }
        header.set_cksum();
        builder
            .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .map_err(io)?;
        builder.append(&header, &mut entry).map_err(io)?;
    }
    builder.into_inner().map_err(io).map(|w| w.inner)
}

/// Puts `value` in a 100-byte name field at `at`, or — when it does not
/// fit — its start there and the whole in a PAX record.
fn set_name_field(
    header: &mut tar::Header,
    at: usize,
    value: &[u8],
    pax_key: &str,
    records: &mut Vec<(String, Vec<u8>)>,
) {
    let field = &mut header.as_mut_bytes()[at..at + 100];
    field.fill(0);
    if value.len() <= 100 {
        field[..value.len()].copy_from_slice(value);
    } else {
        field.copy_from_slice(&value[..100]);
        records.push((pax_key.to_string(), value.to_vec()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data of the PAX header in front of the first entry of a tar.
    fn first_pax_data(tar: &[u8]) -> Vec<u8> {
        let header = tar::Header::from_byte_slice(&tar[..512]);
        assert_eq!(header.entry_type(), tar::EntryType::XHeader);
        let size = header.entry_size().unwrap() as usize;
        tar[512..512 + size].to_vec()
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let long = "x".repeat(101);
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("SCHILY.xattr.user.a", &b"b"[..])])
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, &long, &b"x"[..]).unwrap();
        let input = dir.path().join("in.tar");
        std::fs::write(&input, b.into_inner().unwrap()).unwrap();
        let output = dir.path().join("out.tar");
        rewrite_layer(&input, &output, Compression::Uncompressed, true).unwrap();
        let data = String::from_utf8(first_pax_data(&std::fs::read(&output).unwrap())).unwrap();
        let records: Vec<&str> = data.split_inclusive('\n').collect();
        assert_eq!(records[0], "25 SCHILY.xattr.user.a=b\n");
        assert_eq!(records[1], format!("111 path={long}\n"));
        for r in records {
            let (len, _) = r.split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), r.len());
        }
    }

    fn tar_with(entries: &[(&str, &[u8], u64)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data, mtime) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(*mtime);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn rewritten_layers_depend_on_content_only() {
        let dir = tempfile::tempdir().unwrap();
        let long = format!("dir/{}", "n".repeat(150));
        let a = tar_with(&[("a.txt", b"same", 1000), (&long, b"x", 5)]);
        let b = tar_with(&[("a.txt", b"same", 2000), (&long, b"x", 9)]);
        let digest = |tar: &[u8], name: &str, comp| {
            let input = dir.path().join(format!("{name}.tar"));
            std::fs::write(&input, tar).unwrap();
            let output = dir.path().join(format!("{name}.out"));
            rewrite_layer(&input, &output, comp, true).unwrap()
        };
        for comp in [
            Compression::Gzip,
            Compression::Zstd,
            Compression::Uncompressed,
        ] {
            let (da, ca, _) = digest(&a, "a", comp);
            let (db, cb, _) = digest(&b, "b", comp);
            assert_eq!((da, ca), (db, cb), "{comp:?}: only mtimes differ");
        }
        // The long name survives the rewrite.
        let out = dir.path().join("a.out");
        let mut archive = tar::Archive::new(std::fs::File::open(&out).unwrap());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["a.txt".to_string(), long]);
    }
}
