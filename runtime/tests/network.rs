//! rbuild's container network on the real CNI plugins and the real kernel:
//! namespaces on a bridge of the test's own (own name, own subnet, own
//! state directory), what they reach and what they do not, and that
//! destroying or sweeping them leaves nothing behind.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rbuild_runtime::network::{self, Network, NetworkConfig, Networks};

/// A bridge, subnet and state directory for test `n` of this process.
fn config(n: u8) -> (NetworkConfig, tempfile::TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("rbuild-net-test-")
        .tempdir()
        .unwrap();
    let config = NetworkConfig {
        bridge: format!("rbt{}n{n}", std::process::id() % 100_000),
        subnet: Some(format!("10.201.{}.0/24", 10 + n).parse().unwrap()),
        run_dir: dir.path().to_path_buf(),
        plugin_dir: network::DEFAULT_PLUGIN_DIR.into(),
        pool_size: 0,
    };
    (config, dir)
}

/// Removes the test's bridge when the test ends.
struct Bridge(String);
impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

/// Runs `f` on a thread inside the namespace at `netns`; sockets made
/// there stay in it.
fn in_netns<T: Send + 'static>(netns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(netns).unwrap();
    std::thread::spawn(move || {
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap();
        f()
    })
    .join()
    .unwrap()
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    TcpStream::connect_timeout(&addr, Duration::from_secs(3))
}

/// An echo of one line on `listener`, in the background.
fn serve_once(listener: TcpListener) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
    })
}

fn round_trip(mut s: TcpStream) -> Vec<u8> {
    s.write_all(b"hello").unwrap();
    let mut buf = vec![0u8; 5];
    s.read_exact(&mut buf).unwrap();
    buf
}

/// The veths enslaved to `bridge` (asserting that `ip` itself succeeded).
fn veths(bridge: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show", "master", bridge])
        .output()
        .unwrap();
    if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("does not exist") {
        return Vec::new();
    }
    assert!(out.status.success(), "ip link: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap().to_string())
        .collect()
}

fn mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*path.to_string_lossy()))
}

/// The host's own address on its default route's interface.
fn host_address() -> Ipv4Addr {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    probe.connect("192.0.2.1:9").unwrap();
    match probe.local_addr().unwrap().ip() {
        std::net::IpAddr::V4(ip) => ip,
        other => panic!("no IPv4 host address: {other}"),
    }
}

#[tokio::test]
async fn two_namespaces_on_the_bridge_reach_each_other_over_tcp() {
    let (config, _dir) = config(1);
    let _bridge = Bridge(config.bridge.clone());
    let net = Network::open(config).unwrap();
    let a = net.create().await.unwrap();
    let b = net.create().await.unwrap();
    assert_ne!(a.ip, b.ip);
    assert_eq!(a.gateway, net.subnet().gateway());

    let listener = in_netns(&a.netns, || TcpListener::bind("0.0.0.0:7000").unwrap());
    let server = serve_once(listener);
    let target = SocketAddr::from((a.ip, 7000));
    let stream = in_netns(&b.netns, move || connect(target));
    assert_eq!(round_trip(stream.expect("b reaches a")), b"hello");
    server.join().unwrap();
    net.check(&a)
        .await
        .expect("CNI CHECK passes on a live namespace");

    net.destroy(&a).await.unwrap();
    net.destroy(&b).await.unwrap();
}

#[tokio::test]
async fn a_namespace_reaches_the_hosts_address_but_not_its_loopback() {
    let (config, _dir) = config(2);
    let _bridge = Bridge(config.bridge.clone());
    let net = Network::open(config).unwrap();
    let a = net.create().await.unwrap();

    let host = host_address();
    let outside = TcpListener::bind((host, 0)).unwrap();
    let outside_addr = outside.local_addr().unwrap();
    let server = serve_once(outside);
    let stream = in_netns(&a.netns, move || connect(outside_addr));
    assert_eq!(
        round_trip(stream.expect("the namespace reaches the host's eth0 address through NAT")),
        b"hello"
    );
    server.join().unwrap();

    let local = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = local.local_addr().unwrap().port();
    let gateway = a.gateway;
    let (own_loopback, via_gateway) = in_netns(&a.netns, move || {
        (
            connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_ok(),
            connect(SocketAddr::from((gateway, port))).is_ok(),
        )
    });
    assert!(!own_loopback, "127.0.0.1 in the namespace is its own");
    assert!(
        !via_gateway,
        "the host's loopback listener is not reachable"
    );
    drop(local);
    net.destroy(&a).await.unwrap();
}

#[tokio::test]
async fn destroying_a_namespace_leaves_no_file_mount_veth_or_reservation() {
    let (config, dir) = config(3);
    let bridge = config.bridge.clone();
    let _bridge = Bridge(bridge.clone());
    let net = Network::open(config).unwrap();
    let a = net.create().await.unwrap();
    assert!(a.netns.exists() && mounted(&a.netns));
    assert_eq!(
        veths(&bridge).len(),
        1,
        "the namespace's veth is on the bridge"
    );
    let ipam = dir.path().join("ipam").join(format!("rbuild-{bridge}"));
    assert!(
        ipam.join(a.ip.to_string()).exists(),
        "host-local reserved its IP"
    );

    net.destroy(&a).await.unwrap();
    assert!(!a.netns.exists(), "no namespace file");
    assert!(!mounted(&a.netns), "no mount");
    assert_eq!(veths(&bridge), Vec::<String>::new(), "no veth");
    assert!(!ipam.join(a.ip.to_string()).exists(), "no IP reservation");
    net.destroy(&a).await.expect("destroy is idempotent");
}

/// Test `n`'s network with one namespace whose owner is gone (this pid
/// with another start time), the bridge removed when the guard drops.
async fn with_a_dead_owner(
    n: u8,
) -> (
    Network,
    network::Attachment,
    String,
    Bridge,
    tempfile::TempDir,
) {
    let (config, dir) = config(n);
    let bridge = config.bridge.clone();
    let guard = Bridge(bridge.clone());
    let net = Network::open(config).unwrap();
    let dead = net
        .create_owned_by(&format!("{}-1", std::process::id()))
        .await
        .unwrap();
    (net, dead, bridge, guard, dir)
}

#[tokio::test]
async fn a_dead_owners_namespace_is_found_and_swept() {
    let (net, dead, bridge, _bridge, dir) = with_a_dead_owner(4).await;
    let live = net.create().await.unwrap();

    let found = network::find_orphans(dir.path());
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].name.contains(&dead.id) && found[0].why.contains("is gone"));

    let swept = network::remove_orphans(dir.path()).await.unwrap();
    assert_eq!(swept.namespaces, 1);
    assert!(!dead.netns.exists() && !mounted(&dead.netns));
    assert!(live.netns.exists(), "a live owner's namespace stays");
    assert_eq!(veths(&bridge).len(), 1, "only the live namespace's veth");
    assert!(network::find_orphans(dir.path()).is_empty());
    net.destroy(&live).await.unwrap();
}

#[tokio::test]
async fn a_dead_owners_namespace_already_unmounted_is_swept() {
    // Its owner was killed between unmounting it and removing the file and
    // record (or another run swept it at the same moment): a plain file,
    // no namespace, and a record. CNI DEL on the file fails ("unknown FS
    // magic"); the sweep must still finish and leave nothing.
    let (net, dead, bridge, _bridge, dir) = with_a_dead_owner(7).await;
    let record = dead.netns.with_extension("json");
    let recorded = std::fs::read(&record).unwrap();
    net.destroy(&dead).await.unwrap();
    std::fs::write(&dead.netns, b"").unwrap();
    std::fs::write(&record, recorded).unwrap();
    assert_eq!(network::find_orphans(dir.path()).len(), 1);

    let swept = network::remove_orphans(dir.path()).await.unwrap();
    assert_eq!(swept.namespaces, 1);
    assert!(!dead.netns.exists() && !record.exists());
    assert_eq!(veths(&bridge), Vec::<String>::new());
    let ipam = dir.path().join("ipam").join(format!("rbuild-{bridge}"));
    assert!(
        !ipam.join(dead.ip.to_string()).exists(),
        "no IP reservation"
    );
    assert!(network::find_orphans(dir.path()).is_empty());
}

#[tokio::test]
async fn the_pool_hands_out_prepared_namespaces_takes_them_back_and_refills() {
    let (mut config, _dir) = config(5);
    config.pool_size = 2;
    let bridge = config.bridge.clone();
    let _bridge = Bridge(bridge.clone());
    let pool = Networks::open(config).unwrap();
    pool.filled().await;
    let t = Instant::now();
    let pooled = pool.attach().await.unwrap();
    let from_pool = t.elapsed();
    assert_eq!(
        pool.ready(),
        1,
        "one taken; not refilled while one is ready"
    );
    let t = Instant::now();
    let fresh = pool.network().create().await.unwrap();
    let made = t.elapsed();
    eprintln!("attach from the pool: {from_pool:?}; a namespace made fresh: {made:?}");

    // Given back: into the pool while it has room, and handed out again.
    let reused = pooled.id.clone();
    pool.detach(pooled).await.unwrap();
    assert_eq!(pool.ready(), 2);
    let fresh_netns = fresh.netns.clone();
    pool.detach(fresh).await.unwrap();
    assert_eq!(pool.ready(), 2, "a full pool takes no more");
    let (x, y) = (pool.attach().await.unwrap(), pool.attach().await.unwrap());
    let ids = [x.id.clone(), y.id.clone()];
    for a in [x, y] {
        pool.detach(a).await.unwrap();
    }
    assert!(ids.contains(&reused), "{ids:?} hands out {reused} again");
    pool.shutdown().await;
    assert!(
        !fresh_netns.exists(),
        "the one a full pool did not take is destroyed"
    );
    assert_eq!(
        veths(&bridge),
        Vec::<String>::new(),
        "shutdown destroys the pooled ones"
    );
}

#[tokio::test]
async fn an_emptied_pool_is_refilled() {
    let (mut config, _dir) = config(6);
    config.pool_size = 2;
    let bridge = config.bridge.clone();
    let _bridge = Bridge(bridge.clone());
    let pool = Networks::open(config).unwrap();
    pool.filled().await;
    let a = pool.attach().await.unwrap();
    let b = pool.attach().await.unwrap();
    pool.filled().await;
    assert_eq!(pool.ready(), 2, "refilled once emptied");
    for x in [a, b] {
        pool.detach(x).await.unwrap();
    }
    pool.shutdown().await;
    assert_eq!(veths(&bridge), Vec::<String>::new());
}
