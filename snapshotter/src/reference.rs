//! Image references as users write them (`127.0.0.1:5000/busybox:latest`,
//! `alpine@sha256:…`), parsed and normalised.

use std::fmt;
use std::net::IpAddr;

use oci_client::Reference;

use crate::Error;

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    inner: Reference,
}

impl ImageRef {
    /// Parses the grammar of distribution's `reference` package and
    /// normalises as Docker does (`alpine` → `docker.io/library/alpine:latest`).
    ///
    /// By hand rather than with `oci_spec`'s parser: that one compiles a
    /// Unicode regex with a bounded repetition on first use, which cost about
    /// 40 ms, half of a fully cached run.
    pub fn parse(s: &str) -> Result<ImageRef, Error> {
        let inner = parse_reference(s.trim()).map_err(|reason| Error::InvalidReference {
            reference: s.to_string(),
            reason: reason.to_string(),
        })?;
        Ok(ImageRef { inner })
    }

    /// The registry host (with port) requests go to.
    pub fn registry(&self) -> &str {
        self.inner.resolve_registry()
    }

    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    pub fn tag(&self) -> Option<&str> {
        self.inner.tag()
    }

    pub fn digest(&self) -> Option<&str> {
        self.inner.digest()
    }

    /// The same repository at a digest.
    pub fn with_digest(&self, digest: &str) -> ImageRef {
        ImageRef {
            inner: self.inner.clone_with_digest(digest.to_string()),
        }
    }

    /// The same repository at a tag.
    pub fn with_tag(&self, tag: &str) -> ImageRef {
        ImageRef {
            inner: Reference::with_tag(
                self.inner.registry().to_string(),
                self.inner.repository().to_string(),
                tag.to_string(),
            ),
        }
    }

    pub fn as_oci(&self) -> &Reference {
        &self.inner
    }

    /// Whether the registry is on this machine, where plain HTTP is accepted
    /// without being asked (as Docker does for 127.0.0.0/8).
    pub fn is_loopback_registry(&self) -> bool {
        is_loopback_host(self.registry())
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.whole().fmt(f)
    }
}

const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// `name [":" tag] ["@" digest]`, each part checked against its grammar.
fn parse_reference(s: &str) -> Result<Reference, &'static str> {
    if s.is_empty() {
        return Err("repository name must have at least one component");
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    // A tag's colon comes after the last slash; one before it is a port's.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].find(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if !valid_name(name) {
        return Err("invalid reference format");
    }
    if let Some(tag) = tag
        && !valid_tag(tag)
    {
        return Err("invalid reference format");
    }
    if let Some(digest) = digest {
        check_digest(digest)?;
    }
    let (registry, repository) = split_domain(name);
    if repository.len() > NAME_TOTAL_LENGTH_MAX {
        return Err("repository name must not be more than 255 characters");
    }
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => {
            Reference::with_tag_and_digest(registry, repository, t.to_string(), d.to_string())
        }
        (None, Some(d)) => Reference::with_digest(registry, repository, d.to_string()),
        (t, None) => Reference::with_tag(registry, repository, t.unwrap_or("latest").to_string()),
    })
}

/// `[domain "/"] path-component ("/" path-component)*`: a first component
/// that is no valid path component must be a domain, and then not alone.
fn valid_name(name: &str) -> bool {
    let mut parts = name.split('/');
    let first = parts.next().unwrap_or("");
    let rest: Vec<&str> = parts.collect();
    let first_ok = valid_path_component(first) || (!rest.is_empty() && valid_domain(first));
    first_ok && rest.iter().all(|c| valid_path_component(c))
}

/// `[a-z0-9]+ (([._]|__|-*) [a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = c.as_bytes();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: one '.', one '_', "__", or any number of '-'.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// `label ("." label)* [":" port]`, a label `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?`.
fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
    };
    host.split('.').all(label_ok)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|x| x.is_ascii_digit()))
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
fn valid_tag(t: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b.iter().all(|x| word(*x) || *x == b'.' || *x == b'-')
}

/// `algorithm ":" hex`, with the hex as long as the algorithm's output.
fn check_digest(d: &str) -> Result<(), &'static str> {
    let Some((algorithm, hex)) = d.split_once(':') else {
        return Err("invalid reference format");
    };
    let algorithm_ok = !algorithm.is_empty()
        && algorithm.split(['+', '.', '_', '-']).all(|c| {
            let b = c.as_bytes();
            !b.is_empty() && b[0].is_ascii_alphabetic() && b.iter().all(u8::is_ascii_alphanumeric)
        });
    if !algorithm_ok || hex.len() < 32 || !hex.bytes().all(|x| x.is_ascii_hexdigit()) {
        return Err("invalid reference format");
    }
    let want = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err("unsupported digest algorithm"),
    };
    if hex.len() != want {
        return Err("invalid checksum digest length");
    }
    Ok(())
}

/// Docker's normalisation: no domain means Docker Hub, and a one-part Hub
/// repository lives under `library/`.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut rest) = match name.split_once('/') {
        Some((left, right)) if left.contains('.') || left.contains(':') || left == "localhost" => {
            (left.to_string(), right.to_string())
        }
        _ => ("docker.io".to_string(), name.to_string()),
    };
    if domain == "index.docker.io" {
        domain = "docker.io".to_string();
    }
    if domain == "docker.io" && !rest.contains('/') {
        rest = format!("library/{rest}");
    }
    (domain, rest)
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
pub fn is_loopback_host(host_port: &str) -> bool {
    let host = if let Some(rest) = host_port.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        host_port.rsplit_once(':').map_or(host_port, |(h, _)| h)
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn parses_and_normalises() {
        let r = ImageRef::parse("127.0.0.1:5000/busybox:latest").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "busybox");
        assert_eq!(r.tag(), Some("latest"));
        assert_eq!(r.to_string(), "127.0.0.1:5000/busybox:latest");
        let hub = ImageRef::parse("alpine").unwrap();
        assert_eq!(hub.repository(), "library/alpine");
        assert_eq!(hub.tag(), Some("latest"));
        let d = format!("sha256:{}", "a".repeat(64));
        let pinned = ImageRef::parse(&format!("localhost:5000/x@{d}")).unwrap();
        assert_eq!(pinned.digest(), Some(d.as_str()));
    }

    #[test]
    fn rejects_garbage_with_the_reference_named() {
        let err = ImageRef::parse("Not A Reference!").unwrap_err().to_string();
        assert!(err.contains("Not A Reference!"), "{err}");
    }

    /// The same results as `oci_spec`'s regex-based parser, which this replaces.
    #[test]
    fn agrees_with_the_distribution_grammar() {
        let d256 = format!("sha256:{}", "f".repeat(64));
        let cases = [
            "busybox".to_string(),
            "test.com:tag".into(),
            "test.com:5000".into(),
            "test.com/repo:tag".into(),
            "test:5000/repo".into(),
            "test:5000/repo:tag".into(),
            format!("test:5000/repo@{d256}"),
            format!("test:5000/repo:tag@{d256}"),
            "lowercase:Uppercase".into(),
            "sub-dom1.foo.com/bar/baz/quux:some-long-tag".into(),
            "b.gcr.io/test.example.com/my-app:test.example.com".into(),
            "xn--n3h.com/myimage:xn--n3h.com".into(),
            "foo_bar.com:8080".into(),
            "foo/foo_bar.com:8080".into(),
            "opensuse/leap:15.3".into(),
            "a/b__c/d---e/f.g_h".into(),
            "index.docker.io/alpine".into(),
            "localhost/x".into(),
            "Uppercase/lowercase:tag".into(),
            format!("x/y:{}", "t".repeat(128)),
            // invalid ones
            ":justtag".into(),
            format!("@{d256}"),
            "repo@sha256:ffffffffffffffffffffffffffffffffff".into(),
            format!("validname@invaliddigest:{}", "f".repeat(64)),
            "Uppercase:tag".into(),
            "test:5000/Uppercase/lowercase:tag".into(),
            "a".repeat(256),
            "aa/asdf$$^/aa".into(),
            "a//b".into(),
            "a/b/".into(),
            "a_-b".into(),
            "a___b".into(),
            "-a/b".into(),
            "a.-b.com/x".into(),
            "host:port/x".into(),
            format!("x/y:{}", "t".repeat(129)),
            "x:.tag".into(),
            "x:ta g".into(),
            "x y".into(),
            "x@sha256:zz".into(),
            format!("x@SHA256:{}", "f".repeat(64)),
            format!("x@sha256+b64:{}", "f".repeat(64)),
        ];
        for case in &cases {
            let ours = parse_reference(case).map(|r| r.whole());
            let theirs = Reference::from_str(case).map(|r| r.whole());
            assert_eq!(
                ours.is_ok(),
                theirs.is_ok(),
                "{case}: {ours:?} vs {theirs:?}"
            );
            if let (Ok(a), Ok(b)) = (&ours, &theirs) {
                assert_eq!(a, b, "{case}");
            }
        }
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback_host("127.0.0.1:5000"));
        assert!(is_loopback_host("localhost:5000"));
        assert!(is_loopback_host("localhost"));
        assert!(is_loopback_host("[::1]:5000"));
        assert!(!is_loopback_host("registry.example.com:5000"));
        assert!(!is_loopback_host("10.0.0.1:5000"));
    }
}
