//! The connection to containerd: one gRPC channel, one namespace, the
//! headers (namespace, lease) every request must carry, and leases.
//!
//! Everything in rbuild that speaks to containerd goes through [`Containerd`],
//! so that no request can forget its namespace or lease. What the requests
//! say (snapshots, content, tasks) belongs to snapshotter/ and runtime/.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::{
    AddResourceRequest, CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest,
    Lease as LeaseProto, ListRequest as ListLeasesRequest, ListResourcesRequest, Resource,
    containers_client::ContainersClient, content_client::ContentClient, diff_client::DiffClient,
    images_client::ImagesClient, leases_client::LeasesClient,
    snapshots::snapshots_client::SnapshotsClient, tasks_client::TasksClient,
    version_client::VersionClient,
};
use containerd_client::tonic::{self, Code, Request, metadata::MetadataValue, transport::Channel};

use crate::Error;

/// The snapshotter rbuild uses for every snapshot (see DESIGN.md, invariant 3).
pub const SNAPSHOTTER: &str = "overlayfs";

/// A label that makes containerd's garbage collector keep an object.
pub const GC_ROOT_LABEL: &str = "containerd.io/gc.root";
/// Lease label: containerd deletes the lease (and releases what it holds) after this time.
const GC_EXPIRE_LABEL: &str = "containerd.io/gc.expire";

/// A connection to containerd, bound to one namespace.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    namespace: String,
    address: PathBuf,
}

/// The id of a containerd lease: resources created under it are kept until it is deleted.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LeaseId(pub String);

impl Containerd {
    /// Connects to containerd's gRPC socket and checks that it answers.
    pub async fn connect(address: &Path, namespace: &str) -> Result<Self, Error> {
        let connect_error = |reason: String| Error::Connect {
            address: address.to_path_buf(),
            reason,
        };
        if !address.exists() {
            return Err(connect_error("the socket does not exist".into()));
        }
        let channel = containerd_client::connect(address)
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        let conn = Containerd {
            channel,
            namespace: namespace.to_string(),
            address: address.to_path_buf(),
        };
        VersionClient::new(conn.channel.clone())
            .version(())
            .await
            .map_err(|e| connect_error(e.message().to_string()))?;
        Ok(conn)
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn address(&self) -> &Path {
        &self.address
    }

    /// Wraps a message in a request carrying the namespace header.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut req = Request::new(message);
        req.metadata_mut().insert(
            "containerd-namespace",
            MetadataValue::try_from(self.namespace.as_str()).expect("namespace is ASCII"),
        );
        req
    }

    /// Wraps a message in a request carrying the namespace and lease headers:
    /// whatever the request creates is held by the lease.
    pub fn leased<T>(&self, message: T, lease: &LeaseId) -> Request<T> {
        let mut req = self.request(message);
        req.metadata_mut().insert(
            "containerd-lease",
            MetadataValue::try_from(lease.0.as_str()).expect("lease id is ASCII"),
        );
        req
    }

    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }
    pub fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }
    pub fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }
    pub fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }
    pub fn diff(&self) -> DiffClient<Channel> {
        DiffClient::new(self.channel.clone())
    }
    pub fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }
    pub fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel.clone())
    }

    /// Creates a lease that containerd itself expires after `ttl`, so that a
    /// crashed rbuild cannot pin resources forever.
    pub async fn create_lease(
        &self,
        id: &str,
        ttl: Duration,
        mut labels: HashMap<String, String>,
    ) -> Result<LeaseId, Error> {
        let expire = SystemTime::now() + ttl;
        labels.insert(GC_EXPIRE_LABEL.into(), rfc3339(expire));
        self.leases()
            .create(self.request(CreateLeaseRequest {
                id: id.to_string(),
                labels,
            }))
            .await
            .map_err(|s| Error::rpc("create lease", id, s))?;
        Ok(LeaseId(id.to_string()))
    }

    /// Deletes a lease; with `sync`, containerd collects what it released before answering.
    pub async fn delete_lease(&self, lease: &LeaseId, sync: bool) -> Result<(), Error> {
        match self
            .leases()
            .delete(self.request(DeleteLeaseRequest {
                id: lease.0.clone(),
                sync,
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(Error::rpc("delete lease", &lease.0, s)),
        }
    }

    /// Leases in this namespace matching a containerd filter (e.g. `labels."rbuild.owner"`).
    pub async fn list_leases(&self, filter: &str) -> Result<Vec<LeaseProto>, Error> {
        let resp = self
            .leases()
            .list(self.request(ListLeasesRequest {
                filters: vec![filter.to_string()],
            }))
            .await
            .map_err(|s| Error::rpc("list leases", filter, s))?;
        Ok(resp.into_inner().leases)
    }
}

impl Containerd {
    /// What a lease holds: (resource id, type), e.g. a snapshot's name and
    /// `snapshots/overlayfs`.
    pub async fn lease_resources(&self, lease: &LeaseId) -> Result<Vec<(String, String)>, Error> {
        let resp = self
            .leases()
            .list_resources(self.request(ListResourcesRequest {
                id: lease.0.clone(),
            }))
            .await
            .map_err(|s| Error::rpc("list lease resources", &lease.0, s))?;
        Ok(resp
            .into_inner()
            .resources
            .into_iter()
            .map(|r| (r.id, r.r#type))
            .collect())
    }

    /// Adds an existing object to a lease (`type` as in [`Containerd::lease_resources`]).
    pub async fn add_lease_resource(
        &self,
        lease: &LeaseId,
        id: &str,
        r#type: &str,
    ) -> Result<(), Error> {
        self.leases()
            .add_resource(self.request(AddResourceRequest {
                id: lease.0.clone(),
                resource: Some(Resource {
                    id: id.to_string(),
                    r#type: r#type.to_string(),
                }),
            }))
            .await
            .map_err(|s| Error::rpc("add to lease", id, s))?;
        Ok(())
    }
}

/// Formats a time as RFC 3339 in UTC to the second, the form containerd's
/// labels expect. A time before the epoch is written as the epoch.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t.max(SystemTime::UNIX_EPOCH)).to_string()
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::Rpc {
            op: "containerd request",
            subject: String::new(),
            code: status.code(),
            message: status.message().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }
}
