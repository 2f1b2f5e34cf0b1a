//! Secrets (DESIGN.md invariant 4): resolving `env:`, `file:` and `cmd:`
//! sources and `set_secret` values, and scrubbing every known value out of
//! whatever the engine stores or shows (step output, errors, progress).
//!
//! Plaintext lives only in this process's memory, in the runtime spec of
//! the container that uses it (as an environment variable), and in a
//! tmpfs file for mounted secrets. Cache keys use a secret's *name*, never
//! its value: a changed value does not re-run a step (as in BuildKit and
//! Dagger); rename the secret to force one.
//!
//! How a source's bytes become the value is the declaring pipeline's API
//! version's rule ([`Rule`]): from API 0.3 on, `env:`, `file:` and `cmd:`
//! alike drop one trailing newline (`\n` or `\r\n`), as Docker's
//! `--password-stdin` and a shell's `$(...)` do, so a token file written
//! with `echo` is the token; before, only `cmd:` did.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::graph::SecretDef;

/// What replaces a secret value in output.
pub const MASK: &[u8] = b"***";

/// A resolved secret.
pub struct SecretValue {
    pub name: String,
    plaintext: Vec<u8>,
    /// Whether API 0.3's rule read it differently from the older one (an
    /// `env:` or `file:` source with a newline dropped).
    trimmed: bool,
}

impl SecretValue {
    /// What a cache key holds of it: its name, and whether its source was
    /// read by API 0.3's rule where that differs, so that a step of a 0.2
    /// pipeline and of a 0.3 one never share a result made with another
    /// value.
    pub fn key_id(&self) -> String {
        if self.trimmed {
            format!("{}\0one-trailing-newline-dropped", self.name)
        } else {
            self.name.clone()
        }
    }

    pub fn plaintext(&self) -> &[u8] {
        &self.plaintext
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({:?})", self.name)
    }
}

/// How a source's bytes become a secret's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// API 0.1 and 0.2: `cmd:` drops one trailing newline, `env:` and
    /// `file:` are taken as they are.
    CmdTrims,
    /// From API 0.3: every source drops one trailing newline.
    AllTrim,
}

impl Rule {
    pub fn of(api: crate::api::Api) -> Rule {
        if api >= crate::api::SECRETS_DROP_ONE_NEWLINE {
            Rule::AllTrim
        } else {
            Rule::CmdTrims
        }
    }
}

/// `v` without one trailing `\n` (or `\r\n`).
fn drop_one_newline(mut v: Vec<u8>) -> Vec<u8> {
    if v.last() == Some(&b'\n') {
        v.pop();
        if v.last() == Some(&b'\r') {
            v.pop();
        }
    }
    v
}

#[derive(Default)]
pub struct Secrets {
    resolved: Mutex<HashMap<(SecretDef, Rule), Arc<SecretValue>>>,
    /// Every value seen this session, longest first, for scrubbing.
    values: RwLock<Vec<Vec<u8>>>,
}

impl Secrets {
    /// Resolves a secret once per session. Errors name the secret and
    /// never contain its value.
    pub fn resolve(&self, def: &SecretDef, rule: Rule) -> Result<Arc<SecretValue>, String> {
        let id = (def.clone(), rule);
        if let Some(v) = self.resolved.lock().unwrap().get(&id) {
            return Ok(v.clone());
        }
        let plaintext = match (&def.plaintext, &def.uri) {
            (Some(p), _) => p.clone().into_bytes(),
            (None, Some(uri)) => read_source(uri, rule)?,
            (None, None) => {
                return Err(format!(
                    "secret {:?} has neither a value nor a source",
                    def.name
                ));
            }
        };
        let trimmed = rule == Rule::AllTrim
            && def.plaintext.is_none()
            && def
                .uri
                .as_deref()
                .is_some_and(|u| u.starts_with("env:") || u.starts_with("file:"));
        let value = Arc::new(SecretValue {
            name: def.name.clone(),
            plaintext,
            trimmed,
        });
        if !value.plaintext.is_empty() {
            let mut values = self.values.write().unwrap();
            if !values.contains(&value.plaintext) {
                values.push(value.plaintext.clone());
                values.sort_by_key(|v| std::cmp::Reverse(v.len()));
            }
        }
        self.resolved.lock().unwrap().insert(id, value.clone());
        Ok(value)
    }

    /// `bytes` with every secret value replaced by `***`.
    pub fn scrub(&self, bytes: &[u8]) -> Vec<u8> {
        scrub_with(&self.values.read().unwrap(), bytes)
    }

    pub fn scrub_str(&self, s: &str) -> String {
        String::from_utf8_lossy(&self.scrub(s.as_bytes())).into_owned()
    }
}

/// Scrubs a stream of output chunks: a secret value split across chunks is
/// held back until it is complete, then masked like any other.
pub struct StreamScrubber {
    secrets: Arc<Secrets>,
    pending: Vec<u8>,
}

impl StreamScrubber {
    pub fn new(secrets: Arc<Secrets>) -> StreamScrubber {
        StreamScrubber {
            secrets,
            pending: Vec::new(),
        }
    }

    /// What of `chunk` (and what was held back) can be shown now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(chunk);
        let scrubbed = self.secrets.scrub(&self.pending);
        // Hold back the longest end that could be the start of a secret.
        let values = self.secrets.values.read().unwrap();
        let longest = values.first().map_or(0, Vec::len);
        let held = (1..=scrubbed.len().min(longest.saturating_sub(1)))
            .rev()
            .find(|&k| {
                let tail = &scrubbed[scrubbed.len() - k..];
                values.iter().any(|v| v.len() > k && v.starts_with(tail))
            })
            .unwrap_or(0);
        self.pending = scrubbed[scrubbed.len() - held..].to_vec();
        scrubbed[..scrubbed.len() - held].to_vec()
    }

    /// Whatever was held back, at the end of the stream.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}

fn scrub_with(values: &[Vec<u8>], bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for v in values {
        if out.len() < v.len() {
            continue;
        }
        let mut next = Vec::with_capacity(out.len());
        let mut i = 0;
        while i < out.len() {
            if out[i..].starts_with(v) {
                next.extend_from_slice(MASK);
                i += v.len();
            } else {
                next.push(out[i]);
                i += 1;
            }
        }
        out = next;
    }
    out
}

fn read_source(uri: &str, rule: Rule) -> Result<Vec<u8>, String> {
    let (scheme, rest) = uri.split_once(':').ok_or_else(|| {
        format!("secret source {uri:?}: expected env:NAME, file:PATH or cmd:COMMAND")
    })?;
    let value = match scheme {
        "env" => std::env::var_os(rest)
            .map(std::os::unix::ffi::OsStringExt::into_vec)
            .ok_or_else(|| format!("secret {uri}: environment variable {rest} is not set"))?,
        "file" => {
            std::fs::read(rest).map_err(|e| format!("secret {uri}: cannot read {rest}: {e}"))?
        }
        "cmd" => {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(rest)
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .output()
                .map_err(|e| format!("secret {uri}: cannot run the command: {e}"))?;
            if !out.status.success() {
                // stdout would be the secret; only stderr is shown.
                return Err(format!(
                    "secret {uri}: the command failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            // Like $(...) in a shell: one trailing newline is not part of the value.
            return Ok(drop_one_newline(out.stdout));
        }
        other => {
            return Err(format!(
                "secret source {uri:?}: unknown kind {other:?}; use env:NAME, file:PATH or cmd:COMMAND"
            ));
        }
    };
    Ok(match rule {
        Rule::AllTrim => drop_one_newline(value),
        Rule::CmdTrims => value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: Rule = Rule::CmdTrims;

    fn def(name: &str, uri: Option<&str>, plaintext: Option<&str>) -> SecretDef {
        SecretDef {
            name: name.into(),
            uri: uri.map(String::from),
            plaintext: plaintext.map(String::from),
        }
    }

    #[test]
    fn resolves_each_source() {
        let s = Secrets::default();
        unsafe { std::env::set_var("RBUILD_TEST_SECRET_ENV", "from-env") };
        let v = s
            .resolve(&def("e", Some("env:RBUILD_TEST_SECRET_ENV"), None), OLD)
            .unwrap();
        assert_eq!(v.plaintext(), b"from-env");
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "from-file\n").unwrap();
        let v = s
            .resolve(
                &def("f", Some(&format!("file:{}", f.path().display())), None),
                OLD,
            )
            .unwrap();
        assert_eq!(v.plaintext(), b"from-file\n");
        let v = s
            .resolve(&def("c", Some("cmd:echo from-cmd"), None), OLD)
            .unwrap();
        assert_eq!(v.plaintext(), b"from-cmd");
        let v = s.resolve(&def("p", None, Some("plain")), OLD).unwrap();
        assert_eq!(v.plaintext(), b"plain");
    }

    #[test]
    fn from_api_0_3_every_source_drops_one_trailing_newline() {
        let s = Secrets::default();
        unsafe { std::env::set_var("RBUILD_TEST_SECRET_NL", "tok\n") };
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "tok\r\n").unwrap();
        let file = format!("file:{}", f.path().display());
        let two = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(two.path(), "tok\n\n").unwrap();
        let two = format!("file:{}", two.path().display());
        for (uri, old, new) in [
            ("env:RBUILD_TEST_SECRET_NL", &b"tok\n"[..], &b"tok"[..]),
            (file.as_str(), b"tok\r\n", b"tok"),
            ("cmd:echo tok", b"tok", b"tok"),
            (two.as_str(), b"tok\n\n", b"tok\n"),
        ] {
            let d = def("n", Some(uri), None);
            assert_eq!(
                s.resolve(&d, Rule::CmdTrims).unwrap().plaintext(),
                old,
                "{uri}"
            );
            assert_eq!(
                s.resolve(&d, Rule::AllTrim).unwrap().plaintext(),
                new,
                "{uri}"
            );
        }
        assert_eq!(Rule::of(crate::api::CURRENT), Rule::AllTrim);
        assert_eq!(Rule::of(crate::api::UNDECLARED), Rule::CmdTrims);
    }

    #[test]
    fn errors_name_the_secret_not_the_value() {
        let s = Secrets::default();
        let e = s
            .resolve(&def("x", Some("env:RBUILD_NO_SUCH_VAR"), None), OLD)
            .unwrap_err();
        assert!(e.contains("RBUILD_NO_SUCH_VAR"), "{e}");
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "hunter2").unwrap();
        let cmd = format!("cmd:cat {}; exit 3", f.path().display());
        let e = s.resolve(&def("x", Some(&cmd), None), OLD).unwrap_err();
        assert!(
            e.contains("exit status: 3") && !e.contains("hunter2"),
            "{e}"
        );
        let e = s
            .resolve(&def("x", Some("vault:thing"), None), OLD)
            .unwrap_err();
        assert!(e.contains("env:NAME"), "{e}");
    }

    #[test]
    fn a_secret_split_across_chunks_is_still_masked() {
        let s = Arc::new(Secrets::default());
        s.resolve(&def("a", None, Some("hunter2")), OLD).unwrap();
        let mut st = StreamScrubber::new(s);
        let mut out = Vec::new();
        for chunk in [&b"token=hun"[..], b"ter", b"2 and hu", b"nt", b"er! ok"] {
            out.extend(st.push(chunk));
        }
        out.extend(st.finish());
        assert_eq!(String::from_utf8(out).unwrap(), "token=*** and hunter! ok");
    }

    #[test]
    fn scrubs_every_occurrence_longest_first() {
        let s = Secrets::default();
        s.resolve(&def("a", None, Some("hunter2")), OLD).unwrap();
        s.resolve(&def("b", None, Some("hunter2-extended")), OLD)
            .unwrap();
        let out = s.scrub(b"pw=hunter2 long=hunter2-extended end hunter2");
        assert_eq!(out, b"pw=*** long=*** end ***".to_vec());
        assert_eq!(s.scrub(b"nothing here"), b"nothing here".to_vec());
    }
}
