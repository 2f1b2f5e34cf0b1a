//! Talking to OCI registries: resolving tags, fetching manifests and blobs,
//! with credentials from the Docker config and errors that name the image.
//!
//! Built on `oci-client`, which does the HTTP, token and basic auth and
//! digest verification. This module adds what rbuild decides: plain HTTP for
//! loopback registries and for hosts the user lists, where credentials come
//! from, and turning registry failures into messages a user can act on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE, OciDescriptor,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};

use crate::Error;
use crate::reference::ImageRef;

const MANIFEST_MEDIA_TYPES: &[&str] = &[
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
];

/// Registry settings a user can change.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Hosts (`host:port`) spoken to over plain HTTP besides loopback ones.
    pub insecure_hosts: Vec<String>,
    /// A file that exists once this state root has used an HTTPS registry:
    /// then `prewarm` builds the HTTPS client ahead of need. None: always.
    pub https_marker: Option<std::path::PathBuf>,
}

/// Clients for the registries a run talks to, one per host, with their credentials.
#[derive(Clone)]
pub struct Registry {
    options: RegistryOptions,
    clients: Arc<Mutex<HashMap<String, Host>>>,
    base: Arc<BaseClients>,
}

/// The HTTP clients hosts share (tokens and stored credentials are kept per
/// registry inside them). Building one loads the system's CA certificates
/// twice over inside `oci-client` (a plain-HTTP client needs them too: a
/// registry may redirect blob downloads to HTTPS storage): about 8 ms of
/// CPU, which `prewarm` takes off a fully cached run's path.
#[derive(Default)]
struct BaseClients {
    plain_http: OnceLock<Arc<Client>>,
    https: OnceLock<Arc<Client>>,
}

#[derive(Clone)]
struct Host {
    client: Arc<Client>,
    auth: RegistryAuth,
    /// Where the credentials came from, for error messages; None when anonymous.
    credential_source: Option<String>,
}

fn client_config(plain_http: bool) -> ClientConfig {
    ClientConfig {
        protocol: if plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(120)),
        user_agent: concat!("rbuild/", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    }
}

impl Registry {
    pub fn new(options: RegistryOptions) -> Registry {
        Registry {
            options,
            clients: Arc::default(),
            base: Arc::default(),
        }
    }

    /// Builds the shared clients on background threads now, so that the
    /// first registry request does not wait for them: the plain-HTTP one
    /// always, the HTTPS one when this state root has talked to an HTTPS
    /// registry before (runs that only use loopback or insecure registries
    /// need not spend the CPU on it).
    pub fn prewarm(&self) {
        let https = self
            .options
            .https_marker
            .as_ref()
            .is_none_or(|m| m.exists());
        for plain_http in [true, false] {
            if plain_http || https {
                let this = self.clone();
                std::thread::spawn(move || this.base_client(plain_http));
            }
        }
    }

    fn base_client(&self, plain_http: bool) -> Arc<Client> {
        let cell = if plain_http {
            &self.base.plain_http
        } else {
            &self.base.https
        };
        cell.get_or_init(|| {
            if !plain_http && let Some(marker) = &self.options.https_marker {
                let _ = std::fs::write(marker, b"");
            }
            Arc::new(Client::new(client_config(plain_http)))
        })
        .clone()
    }

    fn plain_http(&self, registry: &str) -> bool {
        crate::reference::is_loopback_host(registry)
            || self.options.insecure_hosts.iter().any(|h| h == registry)
    }

    fn host(&self, image: &ImageRef) -> Host {
        let registry = image.registry().to_string();
        let mut clients = self.clients.lock().expect("registry client map poisoned");
        clients
            .entry(registry.clone())
            .or_insert_with(|| {
                let (auth, credential_source) = credentials_for(&registry);
                Host {
                    client: self.base_client(self.plain_http(&registry)),
                    auth,
                    credential_source,
                }
            })
            .clone()
    }

    /// The digest a reference points at now (an index or a manifest), with one HEAD request.
    pub async fn resolve_digest(&self, image: &ImageRef) -> Result<String, Error> {
        if let Some(d) = image.digest() {
            return Ok(d.to_string());
        }
        let host = self.host(image);
        host.client
            .fetch_manifest_digest(image.as_oci(), &host.auth)
            .await
            .map_err(|e| self.classify(image, &host, e))
    }

    /// A manifest or index by digest, verified against it.
    pub async fn fetch_manifest(&self, image: &ImageRef, digest: &str) -> Result<Bytes, Error> {
        let host = self.host(image);
        let pinned = image.with_digest(digest);
        let (body, _) = host
            .client
            .pull_manifest_raw(pinned.as_oci(), &host.auth, MANIFEST_MEDIA_TYPES)
            .await
            .map_err(|e| self.classify(image, &host, e))?;
        Ok(body)
    }

    /// A small blob (an image config) in memory, digest verified.
    pub async fn fetch_blob(
        &self,
        image: &ImageRef,
        desc: &OciDescriptor,
    ) -> Result<Vec<u8>, Error> {
        let host = self.host(image);
        self.authenticate(image, &host).await?;
        let mut out = Vec::with_capacity(desc.size.max(0) as usize);
        host.client
            .pull_blob(image.as_oci(), desc, &mut out)
            .await
            .map_err(|e| self.classify(image, &host, e))?;
        Ok(out)
    }

    /// A blob as a stream; the stream fails at its end if the digest does not match.
    pub async fn blob_stream(
        &self,
        image: &ImageRef,
        desc: &OciDescriptor,
    ) -> Result<BoxStream<'static, std::io::Result<Bytes>>, Error> {
        let host = self.host(image);
        self.authenticate(image, &host).await?;
        let sized = host
            .client
            .pull_blob_stream(image.as_oci(), desc)
            .await
            .map_err(|e| self.classify(image, &host, e))?;
        Ok(sized.stream)
    }

    /// Uses these credentials for `registry` from now on (instead of the Docker config's).
    pub fn set_credentials(&self, registry: &str, username: &str, password: &str) {
        let probe = ImageRef::parse(&format!("{registry}/x")).ok();
        let mut host = probe.as_ref().map(|p| self.host(p));
        if let Some(h) = host.as_mut() {
            // A client of its own: no token from other credentials is reused.
            h.client = Arc::new(Client::new(client_config(self.plain_http(registry))));
            h.auth = RegistryAuth::Basic(username.to_string(), password.to_string());
            h.credential_source = Some(format!("user {username:?} from with_registry_auth"));
            self.clients
                .lock()
                .expect("registry client map poisoned")
                .insert(registry.to_string(), h.clone());
        }
    }

    /// Whether the registry has a blob in `image`'s repository.
    pub async fn blob_exists(&self, image: &ImageRef, digest: &str) -> Result<bool, Error> {
        let host = self.host(image);
        self.authenticate(image, &host).await?;
        // Existence is checked with push rights: a repository that does not
        // exist yet is then a plain "no", not a denial.
        let _ = host
            .client
            .auth(image.as_oci(), &host.auth, RegistryOperation::Push)
            .await;
        host.client
            .blob_exists(image.as_oci(), digest)
            .await
            .map_err(|e| classify_push(image, host.credential_source.as_deref(), e))
    }

    /// Asks the registry to mount a blob from another repository of it; false when it would not.
    pub async fn mount_blob(&self, image: &ImageRef, from: &ImageRef, digest: &str) -> bool {
        if from.registry() != image.registry() || from.repository() == image.repository() {
            return false;
        }
        let host = self.host(image);
        let _ = self.authenticate(image, &host).await;
        host.client
            .mount_blob(image.as_oci(), from.as_oci(), digest)
            .await
            .is_ok()
    }

    /// Uploads a blob from a stream.
    pub async fn push_blob<S>(
        &self,
        image: &ImageRef,
        digest: &str,
        size: u64,
        data: S,
    ) -> Result<(), Error>
    where
        S: futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        use futures::StreamExt;
        let host = self.host(image);
        self.authenticate(image, &host).await?;
        host.client
            .push_blob_stream(
                image.as_oci(),
                data.map(|r| r.map_err(OciDistributionError::IoError)),
                digest,
                Some(size),
            )
            .await
            .map(|_| ())
            .map_err(|e| classify_push(image, host.credential_source.as_deref(), e))
    }

    /// Uploads a manifest under `image`'s tag.
    pub async fn push_manifest(
        &self,
        image: &ImageRef,
        body: &str,
        media_type: &str,
    ) -> Result<(), Error> {
        let host = self.host(image);
        self.authenticate(image, &host).await?;
        let content_type = media_type.parse().map_err(|_| Error::Registry {
            reference: image.to_string(),
            reason: format!("bad media type {media_type}"),
        })?;
        host.client
            .push_manifest_raw(image.as_oci(), body.as_bytes().to_vec(), content_type)
            .await
            .map(|_| ())
            .map_err(|e| classify_push(image, host.credential_source.as_deref(), e))
    }

    /// Blob requests do not log in by themselves; manifest requests do.
    async fn authenticate(&self, image: &ImageRef, host: &Host) -> Result<(), Error> {
        host.client
            .store_auth_if_needed(image.registry(), &host.auth)
            .await;
        Ok(())
    }

    /// Names of the tags in a repository, to explain a missing tag.
    async fn tags(&self, image: &ImageRef, host: &Host) -> Option<Vec<String>> {
        host.client
            .auth(image.as_oci(), &host.auth, RegistryOperation::Pull)
            .await
            .ok()?;
        host.client
            .list_tags(image.as_oci(), &host.auth, Some(20), None)
            .await
            .ok()
            .map(|t| t.tags)
    }

    fn classify(&self, image: &ImageRef, host: &Host, err: OciDistributionError) -> Error {
        classify(image, host.credential_source.as_deref(), err)
    }

    /// Turns a "not found" into "no such repository" or "no such tag", by
    /// asking the registry for the repository's tags.
    pub async fn explain_not_found(&self, image: &ImageRef, err: Error) -> Error {
        let Error::ImageNotFound { reference, .. } = &err else {
            return err;
        };
        let host = self.host(image);
        let detail = match (self.tags(image, &host).await, image.tag()) {
            (Some(tags), Some(tag)) if !tags.is_empty() => format!(
                "repository {} exists but has no tag {tag:?} (tags: {})",
                image.repository(),
                tags.join(", ")
            ),
            (Some(_), _) | (None, _) => format!(
                "registry {} has no repository {}",
                image.registry(),
                image.repository()
            ),
        };
        Error::ImageNotFound {
            reference: reference.clone(),
            detail,
        }
    }

    /// Whether `registry` (host:port) answers the distribution API's version
    /// check, `GET /v2/`, over the scheme and TLS a pull would use: 200, or
    /// 401 (it wants credentials), is a registry.
    pub async fn ping(&self, registry: &str, timeout: Duration) -> Result<(), PingError> {
        let plain_http = self.plain_http(registry);
        let url = format!(
            "{}://{registry}/v2/",
            if plain_http { "http" } else { "https" }
        );
        let hint = if plain_http {
            ""
        } else {
            " (a registry that speaks plain HTTP must be listed with --insecure-registry)"
        };
        let unreachable = |e: &reqwest::Error| PingError::Unreachable {
            url: url.clone(),
            reason: root_cause(e),
            hint,
        };
        let client = reqwest::Client::builder()
            .user_agent(concat!("rbuild/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            .build()
            .map_err(|e| unreachable(&e))?;
        match client.get(&url).send().await {
            Ok(answer) if matches!(answer.status().as_u16(), 200 | 401) => Ok(()),
            Ok(answer) => Err(PingError::Unexpected {
                url: url.clone(),
                status: answer.status().to_string(),
            }),
            Err(e) if e.is_timeout() => Err(PingError::Timeout {
                url: url.clone(),
                timeout,
            }),
            Err(e) => Err(unreachable(&e)),
        }
    }
}

/// Why a registry did not answer [`Registry::ping`] as a registry does.
#[derive(Debug, thiserror::Error)]
pub enum PingError {
    #[error("cannot connect to {url}: {reason}; is the registry running?{hint}")]
    Unreachable {
        url: String,
        reason: String,
        hint: &'static str,
    },
    #[error("no answer from {url} within {} s", .timeout.as_secs())]
    Timeout { url: String, timeout: Duration },
    #[error("unexpected answer from {url}: {status}")]
    Unexpected { url: String, status: String },
}

/// Credentials for a registry from `$DOCKER_CONFIG/config.json` or
/// `~/.docker/config.json`, helpers included; anonymous when there are none.
fn credentials_for(registry: &str) -> (RegistryAuth, Option<String>) {
    let server = match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => "https://index.docker.io/v1/",
        other => other,
    };
    let source = std::env::var("DOCKER_CONFIG")
        .map(|d| format!("{d}/config.json"))
        .unwrap_or_else(|_| "~/.docker/config.json".to_string());
    match docker_credential::get_credential(server) {
        Ok(docker_credential::DockerCredential::UsernamePassword(user, pass)) => (
            RegistryAuth::Basic(user.clone(), pass),
            Some(format!("user {user:?} from {source}")),
        ),
        Ok(docker_credential::DockerCredential::IdentityToken(token)) => (
            RegistryAuth::Bearer(token),
            Some(format!("identity token from {source}")),
        ),
        Err(e) => {
            tracing::debug!(registry, error = %e, "no registry credentials; pulling anonymously");
            (RegistryAuth::Anonymous, None)
        }
    }
}

/// A push error: denials say so (with the credentials used); the rest as for pulls.
fn classify_push(image: &ImageRef, credentials: Option<&str>, err: OciDistributionError) -> Error {
    match classify(image, credentials, err) {
        Error::Unauthorized {
            reference,
            registry,
            credentials,
        } => Error::PushDenied {
            reference,
            registry,
            credentials,
        },
        other => other,
    }
}

fn classify(image: &ImageRef, credentials: Option<&str>, err: OciDistributionError) -> Error {
    let reference = image.to_string();
    let registry = image.registry().to_string();
    let unauthorized = || Error::Unauthorized {
        reference: reference.clone(),
        registry: registry.clone(),
        credentials: credentials
            .map(|c| format!("the credentials used ({c}) were refused"))
            .unwrap_or_else(|| "no credentials were found for it".to_string()),
    };
    let not_found = |detail: String| Error::ImageNotFound {
        reference: reference.clone(),
        detail,
    };
    match err {
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => unauthorized(),
        OciDistributionError::ServerError {
            code: 401 | 403, ..
        } => unauthorized(),
        OciDistributionError::ServerError { code: 404, .. }
        | OciDistributionError::ImageManifestNotFoundError(_) => {
            not_found(format!("registry {registry} does not know it"))
        }
        OciDistributionError::RegistryError { ref envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                unauthorized()
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                not_found(err.to_string())
            } else {
                Error::Registry {
                    reference,
                    reason: err.to_string(),
                }
            }
        }
        OciDistributionError::RequestError(ref e)
            if e.status()
                .is_some_and(|s| s.as_u16() == 401 || s.as_u16() == 403) =>
        {
            unauthorized()
        }
        OciDistributionError::RequestError(ref e)
            if e.status().is_some_and(|s| s.as_u16() == 404) =>
        {
            not_found(format!("registry {registry} does not know it"))
        }
        OciDistributionError::RequestError(ref e) if e.is_connect() || e.is_timeout() => {
            Error::RegistryUnreachable {
                reference,
                registry,
                reason: root_cause(e),
            }
        }
        other => Error::Registry {
            reference,
            reason: match &other {
                OciDistributionError::RequestError(e) => root_cause(e),
                _ => other.to_string(),
            },
        },
    }
}

/// The innermost cause of an HTTP error ("Connection refused"), which is
/// what a user needs, rather than reqwest's outer "error sending request".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_https_client_is_prewarmed_only_where_one_was_used_before() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("https-registries-used");
        let registry = Registry::new(RegistryOptions {
            insecure_hosts: Vec::new(),
            https_marker: Some(marker.clone()),
        });
        registry.base_client(true);
        assert!(!marker.exists(), "a plain-HTTP client does not mark it");
        registry.base_client(false);
        assert!(marker.exists(), "an HTTPS client marks the state root");
    }

    /// A one-request HTTP server on loopback that answers with `status`.
    async fn answering(status: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = conn.read(&mut request).await;
            let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
            let _ = conn.write_all(answer.as_bytes()).await;
        });
        addr
    }

    #[tokio::test]
    async fn ping_takes_200_and_401_for_a_registry_and_names_anything_else() {
        let registry = Registry::new(RegistryOptions::default());
        let timeout = Duration::from_secs(5);
        for status in ["200 OK", "401 Unauthorized"] {
            let addr = answering(status).await;
            registry.ping(&addr, timeout).await.unwrap();
        }
        let addr = answering("404 Not Found").await;
        let e = registry.ping(&addr, timeout).await.unwrap_err().to_string();
        assert!(e.contains(&format!("http://{addr}/v2/")), "{e}");
        assert!(e.contains("404 Not Found"), "{e}");
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let e = registry.ping(&closed, timeout).await.unwrap_err();
        assert!(matches!(e, PingError::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains("is the registry running?"), "{e}");
    }

    fn busybox() -> ImageRef {
        ImageRef::parse("127.0.0.1:5000/busybox:latest").unwrap()
    }

    #[test]
    fn unauthorized_names_the_reference_and_the_credentials() {
        let e = classify(
            &busybox(),
            Some("user \"bob\" from /tmp/config.json"),
            OciDistributionError::UnauthorizedError { url: "u".into() },
        )
        .to_string();
        assert!(e.contains("127.0.0.1:5000/busybox:latest"), "{e}");
        assert!(e.contains("bob"), "{e}");
        assert!(e.contains("docker login 127.0.0.1:5000"), "{e}");
    }

    #[test]
    fn not_found_names_the_reference() {
        let e = classify(
            &busybox(),
            None,
            OciDistributionError::ServerError {
                code: 404,
                url: "u".into(),
                message: String::new(),
            },
        );
        assert!(matches!(e, Error::ImageNotFound { .. }));
        assert!(e.to_string().contains("127.0.0.1:5000/busybox:latest"));
    }
}
