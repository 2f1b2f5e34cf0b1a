//! Image references as users write them (`127.0.0.1:5000/busybox:latest`,
//! `alpine@sha256:…`), parsed and normalised.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use oci_client::Reference;

use crate::Error;

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    inner: Reference,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef, Error> {
        let inner = Reference::from_str(s.trim()).map_err(|e| Error::InvalidReference {
            reference: s.to_string(),
            reason: e.to_string(),
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
