//! rbuild's own container network: a CNI bridge with NAT to the outside
//! ([`cni`]), in a private subnet that overlaps none of the host's routes
//! ([`subnet`]), and network namespaces pinned as files ([`netns`]), kept
//! warm in a pool ([`pool`]), with their name resolution files ([`hosts`]).
//!
//! A step without services never comes here: it shares the host's network
//! as before. What a killed run leaves (namespaces, their veths and NAT
//! rules, IP reservations) carries its owner's tag and is swept by the next
//! run ([`remove_orphans`]); `rbuild cache verify` lists it ([`find_orphans`]).

pub mod cni;
pub mod hosts;
pub mod netns;
pub mod pool;
pub mod subnet;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use rbuild_containerd::Owner;
use serde_json::{Value, json};

use crate::Error;
use crate::orphans::Leftover;
pub use pool::Networks;
pub use subnet::Subnet;

/// Where rbuild's networks live unless told otherwise (goes with the boot,
/// as the namespaces and the bridge do).
pub const DEFAULT_RUN_DIR: &str = "/run/rbuild";
pub const DEFAULT_BRIDGE: &str = "rbuild0";
pub const DEFAULT_PLUGIN_DIR: &str = "/usr/lib/cni";
pub const DEFAULT_POOL_SIZE: usize = 2;

/// A network namespace of rbuild's own on its CNI bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// The namespace's name (also its CNI container id).
    pub id: String,
    /// The pinned namespace file, for a container spec's network namespace.
    pub netns: PathBuf,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
}

/// How the bridge network is set up.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    pub bridge: String,
    /// None: the first free candidate (see [`subnet::candidates`]), kept
    /// for the bridge's lifetime.
    pub subnet: Option<Subnet>,
    /// Namespaces (`netns/`), IP reservations (`ipam/`), the subnet chosen.
    pub run_dir: PathBuf,
    pub plugin_dir: PathBuf,
    /// Namespaces kept prepared.
    pub pool_size: usize,
}

impl NetworkConfig {
    /// The defaults, changed by `RBUILD_BRIDGE`, `RBUILD_NETWORK_SUBNET`,
    /// `RBUILD_NETNS_POOL`, `RBUILD_CNI_PATH`, `RBUILD_NETWORK_DIR`.
    pub fn from_env() -> Result<NetworkConfig, Error> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let subnet = match var("RBUILD_NETWORK_SUBNET") {
            Some(s) => Some(
                s.parse()
                    .map_err(|e| Error::Network(format!("RBUILD_NETWORK_SUBNET: {e}")))?,
            ),
            None => None,
        };
        let pool_size = match var("RBUILD_NETNS_POOL") {
            Some(n) => n.parse().map_err(|_| {
                Error::Network(format!(
                    "RBUILD_NETNS_POOL={n:?} is not a number of namespaces"
                ))
            })?,
            None => DEFAULT_POOL_SIZE,
        };
        Ok(NetworkConfig {
            bridge: var("RBUILD_BRIDGE").unwrap_or_else(|| DEFAULT_BRIDGE.into()),
            subnet,
            run_dir: var("RBUILD_NETWORK_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| DEFAULT_RUN_DIR.into()),
            plugin_dir: var("RBUILD_CNI_PATH")
                .map(PathBuf::from)
                .unwrap_or_else(|| DEFAULT_PLUGIN_DIR.into()),
            pool_size,
        })
    }

    pub fn netns_dir(&self) -> PathBuf {
        self.run_dir.join("netns")
    }
}

/// The bridge network, ready to attach namespaces to.
pub struct Network {
    config: NetworkConfig,
    subnet: Subnet,
    bridge: cni::Conflist,
    loopback: cni::Conflist,
}

/// What is recorded beside a namespace file: how to take it off its
/// network again, even from another process.
fn record_path(netns: &Path) -> PathBuf {
    netns.with_extension("json")
}

impl Network {
    /// Chooses (or finds the recorded) subnet; the bridge itself is made
    /// by the plugin with the first namespace.
    pub fn open(config: NetworkConfig) -> Result<Network, Error> {
        if config.bridge.is_empty()
            || config.bridge.len() > 15
            || !config
                .bridge
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(Error::Network(format!(
                "bridge name {:?}: a network interface name is 1 to 15 letters, digits, - or _ (RBUILD_BRIDGE)",
                config.bridge
            )));
        }
        for dir in [config.netns_dir(), config.run_dir.join("ipam")] {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
        }
        let subnet = choose_subnet(&config)?;
        let bridge = cni::bridge_conflist(
            &config.bridge,
            &subnet,
            &config.run_dir.join("ipam"),
            &config.plugin_dir,
        );
        let loopback = cni::loopback_conflist(&config.plugin_dir);
        tracing::debug!(bridge = config.bridge, %subnet, "network opened");
        Ok(Network {
            config,
            subnet,
            bridge,
            loopback,
        })
    }

    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// A new namespace of this process on the bridge.
    pub async fn create(&self) -> Result<Attachment, Error> {
        self.create_owned_by(&Owner::current().file_tag()).await
    }

    /// A new namespace named for `owner_tag` (tests make a dead owner's).
    #[doc(hidden)]
    pub async fn create_owned_by(&self, owner_tag: &str) -> Result<Attachment, Error> {
        let id = netns::new_name(owner_tag);
        let path = self.config.netns_dir().join(&id);
        let record = record_path(&path);
        // Recorded first: a run killed during ADD leaves what DEL needs.
        write_record(&record, &self.bridge, None)?;
        let made = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || netns::create(&path))
                .await
                .map_err(|e| Error::Network(format!("namespace task: {e}")))?
        };
        if let Err(e) = made {
            let _ = std::fs::remove_file(&record);
            return Err(e);
        }
        match self.add(&id, &path, &record).await {
            Ok((ip, gateway)) => Ok(Attachment {
                id,
                netns: path,
                ip,
                gateway,
            }),
            Err(e) => {
                let _ = remove_recorded(&path).await;
                Err(e)
            }
        }
    }

    async fn add(
        &self,
        id: &str,
        path: &Path,
        record: &Path,
    ) -> Result<(Ipv4Addr, Ipv4Addr), Error> {
        let lo = cni::Target {
            container_id: id,
            netns: path,
            ifname: "lo",
        };
        self.loopback.add(&lo).await?;
        let eth = cni::Target {
            container_id: id,
            netns: path,
            ifname: "eth0",
        };
        let result = self.bridge.add(&eth).await?;
        write_record(record, &self.bridge, Some(&result))?;
        cni::address_of(&result)
    }

    /// Whether the plugins still find the namespace as ADD left it.
    pub async fn check(&self, a: &Attachment) -> Result<(), Error> {
        let (_, result) = read_record(&record_path(&a.netns))?;
        let target = cni::Target {
            container_id: &a.id,
            netns: &a.netns,
            ifname: "eth0",
        };
        self.bridge
            .check(&target, result.as_ref().unwrap_or(&Value::Null))
            .await
    }

    /// CNI DEL, unmount, remove. Idempotent.
    pub async fn destroy(&self, a: &Attachment) -> Result<(), Error> {
        remove_recorded(&a.netns).await
    }
}

fn choose_subnet(config: &NetworkConfig) -> Result<Subnet, Error> {
    let routes =
        subnet::host_routes().map_err(|e| Error::io("read", Path::new("/proc/net/route"), e))?;
    let recorded_at = config.run_dir.join(format!("subnet-{}", config.bridge));
    let conflict = |s: &Subnet| {
        subnet::conflicts(&routes, &config.bridge, s)
            .iter()
            .map(|r| format!("{} (dev {})", r.destination, r.device))
            .collect::<Vec<_>>()
    };
    if let Some(s) = config.subnet {
        let c = conflict(&s);
        if !c.is_empty() {
            return Err(Error::Network(format!(
                "subnet {s} (RBUILD_NETWORK_SUBNET) overlaps the host's route to {}; choose another private subnet",
                c.join(", ")
            )));
        }
        write_subnet(&recorded_at, &s)?;
        return Ok(s);
    }
    if let Some(s) = std::fs::read_to_string(&recorded_at)
        .ok()
        .and_then(|t| t.parse::<Subnet>().ok())
        && conflict(&s).is_empty()
    {
        return Ok(s);
    }
    let s = subnet::choose(&routes, &config.bridge, subnet::candidates()).ok_or_else(|| {
        Error::Network(
            "no private subnet is free of the host's routes (tried 10.88.0.0/16–10.99.0.0/16 and 172.30.0.0/24–172.30.255.0/24); \
             set RBUILD_NETWORK_SUBNET to one that is"
                .into(),
        )
    })?;
    write_subnet(&recorded_at, &s)?;
    Ok(s)
}

fn write_subnet(path: &Path, s: &Subnet) -> Result<(), Error> {
    std::fs::write(path, format!("{s}\n")).map_err(|e| Error::io("record subnet", path, e))
}

fn write_record(path: &Path, list: &cni::Conflist, result: Option<&Value>) -> Result<(), Error> {
    let body = json!({
        "network": list.config,
        "pluginDir": list.plugin_dir,
        "result": result,
    });
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, body.to_string()).map_err(|e| Error::io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("write", path, e))
}

fn read_record(path: &Path) -> Result<(cni::Conflist, Option<Value>), Error> {
    let text = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    let v: Value = serde_json::from_slice(&text)
        .map_err(|e| Error::Network(format!("{}: {e}", path.display())))?;
    let list = cni::Conflist {
        config: v["network"].clone(),
        plugin_dir: v["pluginDir"]
            .as_str()
            .map(PathBuf::from)
            .unwrap_or_else(|| DEFAULT_PLUGIN_DIR.into()),
    };
    let result = Some(v["result"].clone()).filter(|r| !r.is_null());
    Ok((list, result))
}

/// Takes a namespace off its network as its record says, unmounts and
/// removes it, then its record.
async fn remove_recorded(netns_path: &Path) -> Result<(), Error> {
    let record = record_path(netns_path);
    let id = netns_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut first_error = None;
    match read_record(&record) {
        Ok((list, result)) => {
            let target = cni::Target {
                container_id: &id,
                netns: netns_path,
                ifname: "eth0",
            };
            if let Err(e) = list.del(&target, result.as_ref()).await {
                // Not a namespace any more: its owner took it off the
                // network and unmounted it, then died before removing the
                // file, or another run sweeping it got there first (the
                // file may be gone by now too). The veth went with the
                // namespace; what is left outside it (the IP reservation,
                // firewall rules) goes by a DEL without one, as the CNI
                // spec allows.
                let gone = !netns::is_mounted(netns_path);
                let without = cni::Target {
                    netns: Path::new(""),
                    ..target
                };
                if !gone || list.del(&without, result.as_ref()).await.is_err() {
                    first_error = Some(e);
                }
            }
        }
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => first_error = Some(e),
    }
    let path = netns_path.to_path_buf();
    tokio::task::spawn_blocking(move || netns::destroy(&path))
        .await
        .map_err(|e| Error::Network(format!("namespace task: {e}")))??;
    match std::fs::remove_file(&record) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("remove", &record, e)),
    }
    first_error.map_or(Ok(()), Err)
}

/// What [`remove_orphans`] removed.
#[derive(Debug, Default)]
pub struct Swept {
    pub namespaces: usize,
    pub reservations: usize,
}

/// Removes the namespaces of dead owners under `run_dir` (taken off their
/// network: veth, NAT rules and IP reservation with them), and IP
/// reservations of dead owners that no namespace file accounts for.
pub async fn remove_orphans(run_dir: &Path) -> Result<Swept, Error> {
    let mut swept = Swept::default();
    let netns_dir = run_dir.join("netns");
    for (path, _) in netns::dead_in(&netns_dir) {
        remove_recorded(&path).await?;
        swept.namespaces += 1;
    }
    // A record without its namespace file (killed between the two).
    for (record, _) in dead_records(&netns_dir) {
        remove_recorded(&record.with_extension("")).await?;
        swept.namespaces += 1;
    }
    for (file, _, _) in dead_reservations(&run_dir.join("ipam")) {
        match std::fs::remove_file(&file) {
            Ok(()) => swept.reservations += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove IP reservation", &file, e)),
        }
    }
    Ok(swept)
}

/// Everything [`remove_orphans`] would remove, for `rbuild cache verify`.
pub fn find_orphans(run_dir: &Path) -> Vec<Leftover> {
    let netns_dir = run_dir.join("netns");
    let mut out = Vec::new();
    for (path, pid) in netns::dead_in(&netns_dir) {
        out.push(Leftover {
            kind: "network namespace",
            name: path.display().to_string(),
            why: format!("its rbuild process {pid} is gone"),
        });
    }
    for (record, pid) in dead_records(&netns_dir) {
        out.push(Leftover {
            kind: "network namespace record",
            name: record.display().to_string(),
            why: format!("its rbuild process {pid} is gone"),
        });
    }
    for (file, id, pid) in dead_reservations(&run_dir.join("ipam")) {
        out.push(Leftover {
            kind: "IP reservation",
            name: file.display().to_string(),
            why: format!("for namespace {id}, whose rbuild process {pid} is gone"),
        });
    }
    out
}

/// Records of dead owners whose namespace file is already gone.
fn dead_records(netns_dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(netns_dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        if let Some(owner) = netns::owner_of(stem)
            && !owner.is_alive()
            && !netns_dir.join(stem).exists()
        {
            out.push((path, owner.pid()));
        }
    }
    out.sort();
    out
}

/// host-local's reservation files (`ipam/NETWORK/IP`, holding the
/// container id) of dead owners whose namespace is gone: (file, id, pid).
fn dead_reservations(ipam_dir: &Path) -> Vec<(PathBuf, String, u32)> {
    let mut out = Vec::new();
    for network in std::fs::read_dir(ipam_dir).into_iter().flatten().flatten() {
        for entry in std::fs::read_dir(network.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = entry.path();
            let is_ip = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.parse::<Ipv4Addr>().is_ok());
            if !is_ip {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let id = text.lines().next().unwrap_or_default().trim().to_string();
            if let Some(owner) = netns::owner_of(&id)
                && !owner.is_alive()
                && !ipam_dir
                    .parent()
                    .unwrap_or(ipam_dir)
                    .join("netns")
                    .join(&id)
                    .exists()
            {
                out.push((path, id, owner.pid()));
            }
        }
    }
    out.sort();
    out
}
