//! Talking to OCI registries: resolving tags, fetching manifests and blobs,
//! with credentials from the Docker config and errors that name the image.
//!
//! Built on `oci-client`, which does the HTTP, token and basic auth and
//! digest verification. This module adds what rbuild decides: plain HTTP for
//! loopback registries and for hosts the user lists, where credentials come
//! from, retries of transient failures, cancellation, and turning registry
//! failures into messages a user can act on.
//!
//! Retries ([`RetryPolicy`]): a 5xx (or 429) answer, a reset or closed
//! connection and a body that ends early are retried, 4 times by default
//! (`RBUILD_REGISTRY_RETRIES`), waiting 250 ms, 500 ms, 1 s, 2 s (doubling,
//! at most 4 s): about 4 s in all, enough for a registry restart or a
//! load balancer's hiccup, short enough that a registry that is really down
//! fails the run soon. A blob download that breaks off resumes where it
//! stopped (a `Range` request) and its digest is checked over the whole.
//! Not retried: 4xx answers (asking again changes nothing), a refused
//! connection (nothing listens there) and timeouts (each already waited
//! long). Every wait here ends when the run is cancelled.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use oci_client::client::BlobResponse;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE, OciDescriptor,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

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
    /// How transient failures are retried.
    pub retry: RetryPolicy,
    /// The run's cancellation: once cancelled, every request and every wait
    /// between retries ends with [`Error::Cancelled`].
    pub cancel: CancellationToken,
}

/// How often, and how patiently, transient registry failures are retried
/// (see the module's documentation for what counts as transient).
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub retries: u32,
    /// The wait before the first retry; it doubles for each next one.
    pub first_delay: Duration,
    pub max_delay: Duration,
}

/// Retries when `RBUILD_REGISTRY_RETRIES` does not say.
pub const DEFAULT_RETRIES: u32 = 4;

impl Default for RetryPolicy {
    /// 4 retries (or `RBUILD_REGISTRY_RETRIES`), from 250 ms, doubling, at most 4 s apart.
    fn default() -> RetryPolicy {
        RetryPolicy {
            retries: std::env::var("RBUILD_REGISTRY_RETRIES")
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(DEFAULT_RETRIES),
            first_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(4),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0-based).
    pub fn delay(&self, retry: u32) -> Duration {
        self.first_delay
            .saturating_mul(1u32 << retry.min(16))
            .min(self.max_delay)
    }
}

/// Clients for the registries a run talks to, one per host, with their credentials.
#[derive(Clone)]
pub struct Registry {
    options: RegistryOptions,
    clients: Arc<Mutex<HashMap<String, Host>>>,
    base: Arc<BaseClients>,
    /// Repositories (`registry/repository`) this client has logged in to
    /// for pushing, and blobs (`registry/repository@digest`) it knows they
    /// have: a run that pushes many blobs asks once (a token request per
    /// blob is what makes pushing to GHCR or GitLab slow).
    pushing: Arc<Mutex<std::collections::HashSet<String>>>,
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
            pushing: Arc::default(),
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
        self.retrying(image, &host, Direction::From, "resolving the tag", || {
            host.client
                .fetch_manifest_digest(image.as_oci(), &host.auth)
        })
        .await
    }

    /// A manifest or index by digest, verified against it.
    pub async fn fetch_manifest(&self, image: &ImageRef, digest: &str) -> Result<Bytes, Error> {
        let host = self.host(image);
        let pinned = image.with_digest(digest);
        let what = format!("fetching manifest {digest}");
        let (body, _) = self
            .retrying(image, &host, Direction::From, &what, || {
                host.client
                    .pull_manifest_raw(pinned.as_oci(), &host.auth, MANIFEST_MEDIA_TYPES)
            })
            .await?;
        Ok(body)
    }

    /// A small blob (an image config) in memory, digest verified; one whose
    /// digest does not match is fetched once more before that is an error.
    pub async fn fetch_blob(
        &self,
        image: &ImageRef,
        desc: &OciDescriptor,
    ) -> Result<Vec<u8>, Error> {
        let host = self.host(image);
        self.authenticate(image, &host).await?;
        let what = format!("downloading blob {}", desc.digest);
        let mut mismatch = None;
        for _ in 0..2 {
            let out = self
                .retrying(image, &host, Direction::From, &what, || async {
                    let mut out = Vec::with_capacity(desc.size.max(0) as usize);
                    host.client
                        .pull_blob(image.as_oci(), desc, &mut out)
                        .await
                        .map(|()| out)
                })
                .await;
            match out {
                Err(Error::Registry { reason, .. }) if reason.contains("Invalid digest") => {
                    mismatch = Some(reason);
                }
                other => return other,
            }
        }
        let actual = mismatch
            .as_deref()
            .and_then(|r| r.rsplit("got ").next())
            .unwrap_or("other bytes")
            .to_string();
        Err(Error::DigestMismatch {
            what: "blob",
            digest: desc.digest.clone(),
            reference: image.to_string(),
            registry: image.registry().to_string(),
            actual,
        })
    }

    /// A blob as a stream. A download that breaks off for a transient
    /// reason resumes where it stopped (up to the retry limit); the stream
    /// fails at its end with [`Error::DigestMismatch`] if the bytes do not
    /// match the digest (the caller may fetch it once more). Errors in the
    /// stream are `io::Error`s wrapping this crate's [`Error`] (see
    /// [`Error::from_stream`]).
    pub async fn blob_stream(
        &self,
        image: &ImageRef,
        desc: &OciDescriptor,
        what: &'static str,
    ) -> Result<BoxStream<'static, std::io::Result<Bytes>>, Error> {
        let host = self.host(image);
        self.authenticate(image, &host).await?;
        let download = Download {
            registry: self.clone(),
            host,
            image: image.clone(),
            desc: desc.clone(),
            what,
            offset: 0,
            hasher: Sha256::new(),
            retries: 0,
            current: None,
            done: false,
        };
        // The first request is made now, so that a failure to start is this call's error.
        let mut download = download;
        download.open().await?;
        Ok(futures::stream::unfold(download, |mut d| async move {
            let item = d.next().await?;
            Some((item.map_err(std::io::Error::other), d))
        })
        .boxed())
    }

    /// Runs a registry request until it succeeds, fails for good, or the
    /// retries for transient failures are spent; cancellation ends it.
    async fn retrying<T, F, Fut>(
        &self,
        image: &ImageRef,
        host: &Host,
        direction: Direction,
        what: &str,
        mut request: F,
    ) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OciDistributionError>>,
    {
        let mut retry = 0;
        loop {
            let err = match self.cancellable(image, request()).await? {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let Some(reason) = transient(&err) else {
                return Err(match direction {
                    Direction::From => self.classify(image, host, err),
                    Direction::To => classify_push(image, host.credential_source.as_deref(), err),
                });
            };
            if retry >= self.options.retry.retries {
                return Err(Error::Transfer {
                    what: what.to_string(),
                    reference: image.to_string(),
                    direction: direction.word(),
                    registry: image.registry().to_string(),
                    reason,
                    attempts: retry + 1,
                });
            }
            tracing::warn!(image = %image, what, reason, retry = retry + 1, "registry request failed; retrying");
            self.backoff(image, retry).await?;
            retry += 1;
        }
    }

    /// Waits before retry number `retry`, or until the run is cancelled.
    async fn backoff(&self, image: &ImageRef, retry: u32) -> Result<(), Error> {
        let delay = self.options.retry.delay(retry);
        self.cancellable(image, tokio::time::sleep(delay)).await
    }

    /// `fut`, unless the run is cancelled first.
    async fn cancellable<T>(
        &self,
        image: &ImageRef,
        fut: impl Future<Output = T>,
    ) -> Result<T, Error> {
        tokio::select! {
            biased;
            _ = self.options.cancel.cancelled() => Err(Error::Cancelled {
                reference: image.to_string(),
                registry: image.registry().to_string(),
            }),
            v = fut => Ok(v),
        }
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
        let repo = format!("{}/{}", image.registry(), image.repository());
        let blob = format!("{repo}@{digest}");
        if self.knows(&blob) {
            return Ok(true);
        }
        let host = self.host(image);
        self.authenticate(image, &host).await?;
        // Existence is checked with push rights: a repository that does not
        // exist yet is then a plain "no", not a denial.
        if !self.knows(&repo) {
            let _ = self
                .cancellable(
                    image,
                    host.client
                        .auth(image.as_oci(), &host.auth, RegistryOperation::Push),
                )
                .await?;
            self.learn(repo);
        }
        let what = format!("checking for blob {digest}");
        let exists = self
            .retrying(image, &host, Direction::To, &what, || {
                host.client.blob_exists(image.as_oci(), digest)
            })
            .await?;
        if exists {
            self.learn(blob);
        }
        Ok(exists)
    }

    fn knows(&self, what: &str) -> bool {
        self.pushing
            .lock()
            .expect("push memo poisoned")
            .contains(what)
    }

    fn learn(&self, what: String) {
        self.pushing
            .lock()
            .expect("push memo poisoned")
            .insert(what);
    }

    /// Asks the registry to mount a blob from another repository of it; false when it would not.
    pub async fn mount_blob(&self, image: &ImageRef, from: &ImageRef, digest: &str) -> bool {
        if from.registry() != image.registry() || from.repository() == image.repository() {
            return false;
        }
        let host = self.host(image);
        let _ = self.authenticate(image, &host).await;
        self.cancellable(
            image,
            host.client
                .mount_blob(image.as_oci(), from.as_oci(), digest),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    }

    /// Uploads a blob from a stream that `open` makes (again for each retry).
    pub async fn push_blob<F, Fut, S>(
        &self,
        image: &ImageRef,
        digest: &str,
        size: u64,
        mut open: F,
    ) -> Result<(), Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<S, Error>>,
        S: futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        let host = self.host(image);
        self.authenticate(image, &host).await?;
        let what = format!("uploading blob {digest}");
        let mut retry = 0;
        loop {
            let data = open().await?;
            let pushed = self
                .retrying_once(image, &host, &what, retry, async {
                    host.client
                        .push_blob_stream(
                            image.as_oci(),
                            data.map(|r| r.map_err(OciDistributionError::IoError)),
                            digest,
                            Some(size),
                        )
                        .await
                        .map(|_| ())
                })
                .await?;
            match pushed {
                Some(()) => {
                    self.learn(format!(
                        "{}/{}@{digest}",
                        image.registry(),
                        image.repository()
                    ));
                    return Ok(());
                }
                None => retry += 1,
            }
        }
    }

    /// Uploads a blob from a file unless the repository has it; true when
    /// it was uploaded.
    pub async fn push_file(
        &self,
        image: &ImageRef,
        path: &std::path::Path,
        digest: &str,
        size: u64,
    ) -> Result<bool, Error> {
        if self.blob_exists(image, digest).await? {
            return Ok(false);
        }
        let open = || async {
            let f = tokio::fs::File::open(path)
                .await
                .map_err(|e| Error::io("read", path, e))?;
            Ok(tokio_util::io::ReaderStream::with_capacity(f, 1 << 20))
        };
        self.push_blob(image, digest, size, open).await?;
        Ok(true)
    }

    /// Uploads a small blob held in memory unless the repository has it;
    /// returns its digest.
    pub async fn push_bytes(
        &self,
        image: &ImageRef,
        bytes: impl Into<Bytes>,
    ) -> Result<String, Error> {
        let bytes: Bytes = bytes.into();
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if !self.blob_exists(image, &digest).await? {
            let size = bytes.len() as u64;
            self.push_blob(image, &digest, size, || {
                let b = bytes.clone();
                async move { Ok(futures::stream::iter([Ok::<_, std::io::Error>(b)])) }
            })
            .await?;
        }
        Ok(digest)
    }

    /// One attempt of a request whose input cannot be replayed by
    /// [`Registry::retrying`]: Some on success, None when the caller should
    /// try again (after the backoff, which this waits), an error when done.
    async fn retrying_once<T>(
        &self,
        image: &ImageRef,
        host: &Host,
        what: &str,
        retry: u32,
        request: impl Future<Output = Result<T, OciDistributionError>>,
    ) -> Result<Option<T>, Error> {
        let err = match self.cancellable(image, request).await? {
            Ok(v) => return Ok(Some(v)),
            Err(e) => e,
        };
        let Some(reason) = transient(&err) else {
            return Err(classify_push(image, host.credential_source.as_deref(), err));
        };
        if retry >= self.options.retry.retries {
            return Err(Error::Transfer {
                what: what.to_string(),
                reference: image.to_string(),
                direction: Direction::To.word(),
                registry: image.registry().to_string(),
                reason,
                attempts: retry + 1,
            });
        }
        tracing::warn!(image = %image, what, reason, retry = retry + 1, "registry upload failed; retrying");
        self.backoff(image, retry).await?;
        Ok(None)
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
        let content_type: reqwest::header::HeaderValue =
            media_type.parse().map_err(|_| Error::Registry {
                reference: image.to_string(),
                reason: format!("bad media type {media_type}"),
            })?;
        self.retrying(
            image,
            &host,
            Direction::To,
            "uploading the manifest",
            || {
                host.client.push_manifest_raw(
                    image.as_oci(),
                    body.as_bytes().to_vec(),
                    content_type.clone(),
                )
            },
        )
        .await
        .map(|_| ())
    }

    /// The manifest a tag points at, or None when the repository has no
    /// such tag (or no such repository): one GET, for lookups by a name
    /// known in advance (the remote step cache's keys). Not verified
    /// against a digest (a tag has none); what it names is, when fetched.
    /// Returns the manifest and its digest.
    pub async fn manifest_if_tagged(
        &self,
        image: &ImageRef,
    ) -> Result<Option<(Bytes, String)>, Error> {
        let host = self.host(image);
        let fetched = self
            .retrying(image, &host, Direction::From, "looking up the tag", || {
                host.client
                    .pull_manifest_raw(image.as_oci(), &host.auth, MANIFEST_MEDIA_TYPES)
            })
            .await;
        match fetched {
            Ok(found) => Ok(Some(found)),
            Err(Error::ImageNotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every tag of `image`'s repository (paged through; none for a
    /// repository that does not exist).
    pub async fn all_tags(&self, image: &ImageRef) -> Result<Vec<String>, Error> {
        let host = self.host(image);
        let _ = self
            .cancellable(
                image,
                host.client
                    .auth(image.as_oci(), &host.auth, RegistryOperation::Pull),
            )
            .await?;
        let mut tags: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        loop {
            let last = tags.last().cloned();
            let page = self
                .retrying(image, &host, Direction::From, "listing tags", || {
                    host.client
                        .list_tags(image.as_oci(), &host.auth, Some(1000), last.as_deref())
                })
                .await;
            let page = match page {
                Ok(p) => p.tags,
                Err(Error::ImageNotFound { .. }) if tags.is_empty() => return Ok(tags),
                Err(e) => return Err(e),
            };
            // Pages need not come sorted, and a registry may ignore `last`.
            let before = tags.len();
            for t in page {
                if seen.insert(t.clone()) {
                    tags.push(t);
                }
            }
            if tags.len() == before {
                return Ok(tags);
            }
        }
    }

    /// Deletes the manifest `digest` of `image`'s repository (and so every
    /// tag that points at it). A registry that does not allow deletes
    /// answers 405: an error that says so.
    pub async fn delete_manifest(&self, image: &ImageRef, digest: &str) -> Result<(), Error> {
        let host = self.host(image);
        let token = self
            .cancellable(
                image,
                host.client
                    .auth(image.as_oci(), &host.auth, RegistryOperation::Push),
            )
            .await?
            .ok()
            .flatten();
        let scheme = if self.plain_http(image.registry()) {
            "http"
        } else {
            "https"
        };
        let url = format!(
            "{scheme}://{}/v2/{}/manifests/{digest}",
            image.registry(),
            image.repository()
        );
        let failed = |reason: String| Error::Registry {
            reference: image.to_string(),
            reason,
        };
        let client = reqwest::Client::builder()
            .user_agent(concat!("rbuild/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| failed(root_cause(&e)))?;
        let mut request = client.delete(&url);
        request = match (&token, &host.auth) {
            (Some(t), _) => request.bearer_auth(t),
            (None, RegistryAuth::Basic(user, password)) => request.basic_auth(user, Some(password)),
            _ => request,
        };
        let answer = self
            .cancellable(image, request.send())
            .await?
            .map_err(|e| failed(format!("DELETE {url}: {}", root_cause(&e))))?;
        match answer.status().as_u16() {
            200..=299 | 404 => Ok(()),
            405 => Err(failed(format!(
                "registry {} does not allow deletes (HTTP 405 for DELETE {url}); \
                 distribution needs storage.delete.enabled: true",
                image.registry()
            ))),
            401 | 403 => Err(Error::PushDenied {
                reference: image.to_string(),
                registry: image.registry().to_string(),
                credentials: host
                    .credential_source
                    .clone()
                    .unwrap_or_else(|| "anonymous".into()),
            }),
            code => Err(failed(format!("DELETE {url}: HTTP {code}"))),
        }
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

/// Which way a transfer goes, for messages ("… of IMAGE from REGISTRY").
#[derive(Clone, Copy)]
enum Direction {
    From,
    To,
}

impl Direction {
    fn word(self) -> &'static str {
        match self {
            Direction::From => "from",
            Direction::To => "to",
        }
    }
}

/// What a failure was, when asking again may cure it: a 5xx or 429 answer,
/// a reset or closed connection, a body that ended early. None otherwise.
fn transient(err: &OciDistributionError) -> Option<String> {
    let status = match err {
        OciDistributionError::ServerError { code, .. } => Some(*code),
        OciDistributionError::RequestError(e) => e.status().map(|s| s.as_u16()),
        _ => None,
    };
    if let Some(code) = status {
        return (code == 429 || (500..600).contains(&code) && code != 501)
            .then(|| format!("the registry answered HTTP {code}"));
    }
    match err {
        OciDistributionError::RequestError(e) if e.is_timeout() || e.is_connect() => None,
        OciDistributionError::RequestError(e) => transient_io(e),
        OciDistributionError::IoError(e) => transient_io(e),
        _ => None,
    }
}

/// A connection that broke, found anywhere in an error's chain of causes.
fn transient_io(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            match io.kind() {
                K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
                    return Some("connection reset".into());
                }
                K::UnexpectedEof => {
                    return Some("connection closed before the end of the body".into());
                }
                _ => {}
            }
        }
        let text = err.to_string().to_ascii_lowercase();
        if text.contains("connection reset") {
            return Some("connection reset".into());
        }
        if text.contains("end of file before message length reached")
            || text.contains("connection closed before message completed")
            || text.contains("incomplete")
        {
            return Some("connection closed before the end of the body".into());
        }
        cur = err.source();
    }
    None
}

/// One blob download, resumed after transient failures (see [`Registry::blob_stream`]).
struct Download {
    registry: Registry,
    host: Host,
    image: ImageRef,
    desc: OciDescriptor,
    /// "layer", "blob": what the blob is, for messages.
    what: &'static str,
    /// Bytes handed on so far; a resumed request starts here.
    offset: u64,
    hasher: Sha256,
    retries: u32,
    /// The response being read, and how many of its bytes to skip (a
    /// registry that ignored the range sends the blob from the start).
    current: Option<(BoxStream<'static, std::io::Result<Bytes>>, u64)>,
    done: bool,
}

impl Download {
    fn fail(&self, reason: String) -> Error {
        Error::Transfer {
            what: format!("downloading {} {}", self.what, self.desc.digest),
            reference: self.image.to_string(),
            direction: "from",
            registry: self.image.registry().to_string(),
            reason,
            attempts: self.retries + 1,
        }
    }

    /// Waits, then lets the next `next` open a new request; an error once
    /// the retries are spent.
    async fn retry(&mut self, reason: String) -> Result<(), Error> {
        self.current = None;
        if self.retries >= self.registry.options.retry.retries {
            return Err(self.fail(reason));
        }
        tracing::warn!(image = %self.image, digest = %self.desc.digest, offset = self.offset, reason, "blob download broke off; resuming");
        self.registry.backoff(&self.image, self.retries).await?;
        self.retries += 1;
        Ok(())
    }

    /// Opens a request for the bytes from `offset` on (retrying transient failures).
    async fn open(&mut self) -> Result<(), Error> {
        loop {
            let client = self.host.client.clone();
            let request = async {
                if self.offset == 0 {
                    client
                        .pull_blob_stream(self.image.as_oci(), &self.desc)
                        .await
                        .map(|s| (s.stream, 0))
                } else {
                    match client
                        .pull_blob_stream_partial(
                            self.image.as_oci(),
                            &self.desc,
                            self.offset,
                            None,
                        )
                        .await?
                    {
                        BlobResponse::Partial(s) => Ok((s.stream, 0)),
                        BlobResponse::Full(s) => Ok((s.stream, self.offset)),
                    }
                }
            };
            match self.registry.cancellable(&self.image, request).await? {
                Ok(opened) => {
                    self.current = Some(opened);
                    return Ok(());
                }
                Err(e) => match transient(&e) {
                    Some(reason) => self.retry(reason).await?,
                    None => return Err(self.registry.classify(&self.image, &self.host, e)),
                },
            }
        }
    }

    /// The next chunk of the blob; None at its verified end.
    async fn next(&mut self) -> Option<Result<Bytes, Error>> {
        if self.done {
            return None;
        }
        let r = self.next_inner().await;
        if !matches!(r, Some(Ok(_))) {
            self.done = true;
        }
        r
    }

    async fn next_inner(&mut self) -> Option<Result<Bytes, Error>> {
        let want = u64::try_from(self.desc.size).ok().filter(|s| *s > 0);
        loop {
            if self.current.is_none()
                && let Err(e) = self.open().await
            {
                return Some(Err(e));
            }
            let (stream, skip) = self.current.as_mut().expect("opened");
            let item = match self.registry.cancellable(&self.image, stream.next()).await {
                Ok(item) => item,
                Err(e) => return Some(Err(e)),
            };
            match item {
                Some(Ok(mut bytes)) => {
                    if *skip > 0 {
                        let n = (*skip).min(bytes.len() as u64);
                        *skip -= n;
                        bytes = bytes.slice(n as usize..);
                        if bytes.is_empty() {
                            continue;
                        }
                    }
                    self.offset += bytes.len() as u64;
                    if want.is_some_and(|w| self.offset > w) {
                        return Some(Err(self.fail(format!(
                            "the registry sent more than the {} bytes the manifest declares",
                            self.desc.size
                        ))));
                    }
                    self.hasher.update(&bytes);
                    return Some(Ok(bytes));
                }
                // oci-client checks a whole response's digest itself; this
                // one checks what was handed on, resumed or not, below.
                Some(Err(e)) if is_digest_error(&e) => self.current = None,
                Some(Err(e)) => {
                    let Some(reason) = transient_io(&e) else {
                        return Some(Err(self.fail(root_cause(&e))));
                    };
                    if let Err(e) = self.retry(reason).await {
                        return Some(Err(e));
                    }
                    continue;
                }
                None => self.current = None,
            }
            // The response ended (or its own digest check failed).
            if let Some(w) = want
                && self.offset < w
            {
                let reason = format!(
                    "the registry's answer ended after {} of {w} bytes",
                    self.offset
                );
                if let Err(e) = self.retry(reason).await {
                    return Some(Err(e));
                }
                continue;
            }
            let actual = format!("sha256:{:x}", self.hasher.clone().finalize());
            if actual != self.desc.digest {
                return Some(Err(Error::DigestMismatch {
                    what: self.what,
                    digest: self.desc.digest.clone(),
                    reference: self.image.to_string(),
                    registry: self.image.registry().to_string(),
                    actual,
                }));
            }
            return None;
        }
    }
}

fn is_digest_error(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| {
        inner
            .downcast_ref::<oci_client::errors::DigestError>()
            .is_some()
    })
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
            ..RegistryOptions::default()
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

    /// A loopback HTTP server: the distribution API's `/v2/` probe gets a
    /// 200 without a challenge, every other request `answer(n)` for the
    /// n-th of them (None: never answered). Returns its address and how
    /// many requests other than probes it has seen.
    async fn scripted(
        answer: impl Fn(usize) -> Option<String> + Send + 'static,
    ) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 4096];
                let n = conn.read(&mut request).await.unwrap_or(0);
                let probe = request[..n].starts_with(b"GET /v2/ ");
                let reply = if probe {
                    Some(ANSWER_200.to_string())
                } else {
                    answer(count.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
                };
                match reply {
                    Some(a) => {
                        let _ = conn.write_all(a.as_bytes()).await;
                    }
                    None => {
                        tokio::spawn(async move {
                            let mut rest = [0u8; 64];
                            while conn.read(&mut rest).await.is_ok_and(|n| n > 0) {}
                        });
                    }
                }
            }
        });
        (addr, seen)
    }

    const ANSWER_503: &str =
        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    const ANSWER_200: &str = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

    fn quick(retries: u32, cancel: CancellationToken) -> Registry {
        Registry::new(RegistryOptions {
            retry: RetryPolicy {
                retries,
                first_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(1),
            },
            cancel,
            ..RegistryOptions::default()
        })
    }

    #[tokio::test]
    async fn server_errors_are_retried_up_to_the_limit_then_named() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let ok = format!(
            "HTTP/1.1 200 OK\r\ndocker-content-digest: {digest}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        let (addr, seen) =
            scripted(move |n| Some(if n < 2 { ANSWER_503.into() } else { ok.clone() })).await;
        let image = ImageRef::parse(&format!("{addr}/busybox:latest")).unwrap();
        let got = quick(2, CancellationToken::new())
            .resolve_digest(&image)
            .await
            .unwrap();
        assert_eq!(got, digest);
        assert!(seen.load(std::sync::atomic::Ordering::SeqCst) >= 3);

        let (addr, _) = scripted(|_| Some(ANSWER_503.into())).await;
        let image = ImageRef::parse(&format!("{addr}/busybox:latest")).unwrap();
        let e = quick(1, CancellationToken::new())
            .resolve_digest(&image)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "the registry answered HTTP 503 while resolving the tag of {image} from {addr} (gave up after 2 attempts"
            )),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_hung_request_ends_when_the_run_is_cancelled() {
        let (addr, seen) = scripted(|_| None).await;
        let image = ImageRef::parse(&format!("{addr}/busybox:latest")).unwrap();
        let cancel = CancellationToken::new();
        let registry = quick(0, cancel.clone());
        let request = tokio::spawn(async move { registry.resolve_digest(&image).await });
        // Cancelled once the server holds the request, not after some time.
        while seen.load(std::sync::atomic::Ordering::SeqCst) < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cancel.cancel();
        let e = request.await.unwrap().unwrap_err();
        assert!(matches!(e, Error::Cancelled { .. }), "{e}");
    }

    #[test]
    fn retry_delays_double_up_to_the_maximum() {
        let p = RetryPolicy {
            retries: 4,
            first_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(4),
        };
        let waits: Vec<u128> = (0..6).map(|r| p.delay(r).as_millis()).collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 4000]);
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
