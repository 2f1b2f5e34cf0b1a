//! Which private subnet rbuild's bridge uses: the first candidate that
//! overlaps no route of the host (so that a namespace can still reach
//! everything the host reaches), read from `/proc/net/route`.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network, `address/prefix`, with the host bits zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn new(address: Ipv4Addr, prefix: u8) -> Subnet {
        let prefix = prefix.min(32);
        Subnet {
            network: Ipv4Addr::from(u32::from(address) & mask(prefix)),
            prefix,
        }
    }

    pub fn overlaps(&self, other: &Subnet) -> bool {
        let m = mask(self.prefix.min(other.prefix));
        u32::from(self.network) & m == u32::from(other.network) & m
    }

    /// The first address after the network's own: the bridge's (the gateway).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix as u32)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = String;

    fn from_str(s: &str) -> Result<Subnet, String> {
        let bad = || format!("{s:?} is not an IPv4 subnet such as 10.88.0.0/16");
        let (addr, prefix) = s.trim().split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(format!(
                "subnet {s}: the prefix must be between /8 and /30 (a bridge needs room for namespaces)"
            ));
        }
        Ok(Subnet::new(addr, prefix))
    }
}

/// One row of the host's IPv4 routing table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub device: String,
    pub destination: Subnet,
}

/// The host's IPv4 routes (`/proc/net/route`); the default route is left
/// out: it overlaps everything and says nothing about local networks.
pub fn host_routes() -> std::io::Result<Vec<Route>> {
    Ok(parse_routes(&std::fs::read_to_string("/proc/net/route")?))
}

fn parse_routes(table: &str) -> Vec<Route> {
    let mut out = Vec::new();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        // Destination and Mask are little-endian hex words.
        let (Ok(dest), Ok(mask)) = (u32::from_str_radix(f[1], 16), u32::from_str_radix(f[7], 16))
        else {
            continue;
        };
        let prefix = u32::from_be(mask).leading_ones() as u8;
        if prefix == 0 {
            continue;
        }
        out.push(Route {
            device: f[0].to_string(),
            destination: Subnet::new(Ipv4Addr::from(u32::from_be(dest)), prefix),
        });
    }
    out
}

/// Where rbuild looks for a free subnet, in order: 10.88.0.0/16 upwards
/// to 10.99.0.0/16, then 172.30.0.0/24 to 172.30.255.0/24.
pub fn candidates() -> impl Iterator<Item = Subnet> {
    (88..100u8)
        .map(|b| Subnet::new(Ipv4Addr::new(10, b, 0, 0), 16))
        .chain((0..=255u8).map(|c| Subnet::new(Ipv4Addr::new(172, 30, c, 0), 24)))
}

/// The first candidate that overlaps no route except those of `bridge`
/// itself (whose route is the subnet rbuild chose before).
pub fn choose(
    routes: &[Route],
    bridge: &str,
    mut candidates: impl Iterator<Item = Subnet>,
) -> Option<Subnet> {
    candidates.find(|c| {
        !routes
            .iter()
            .any(|r| r.device != bridge && r.destination.overlaps(c))
    })
}

/// The routes (of devices other than `bridge`) that `subnet` overlaps.
pub fn conflicts<'a>(routes: &'a [Route], bridge: &str, subnet: &Subnet) -> Vec<&'a Route> {
    routes
        .iter()
        .filter(|r| r.device != bridge && r.destination.overlaps(subnet))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
";

    #[test]
    fn routes_are_read_from_the_kernel_table_without_the_default() {
        assert_eq!(
            parse_routes(TABLE),
            [Route {
                device: "eth0".into(),
                destination: "192.0.2.0/24".parse().unwrap()
            }]
        );
    }

    #[test]
    fn a_subnet_that_overlaps_a_route_is_skipped() {
        let route = |dev: &str, s: &str| Route {
            device: dev.into(),
            destination: s.parse().unwrap(),
        };
        let routes = [
            route("eth0", "192.0.2.0/24"),
            // A VPN's wide route covers 10.88/16; a /24 inside 10.89 too.
            route("tun0", "10.80.0.0/12"),
            route("wg0", "10.96.5.0/24"),
        ];
        let chosen = choose(&routes, "rbuild0", candidates()).unwrap();
        // 10.80.0.0/12 is 10.80–10.95; 10.96 has a /24 in use.
        assert_eq!(chosen, "10.97.0.0/16".parse().unwrap());
        // The bridge's own route is the earlier choice, not a conflict.
        let mine = [route("rbuild0", "10.88.0.0/16")];
        assert_eq!(
            choose(&mine, "rbuild0", candidates()).unwrap(),
            "10.88.0.0/16".parse().unwrap()
        );
        assert_eq!(
            choose(&mine, "other0", candidates()).unwrap(),
            "10.89.0.0/16".parse().unwrap()
        );
        let all = [route("tun0", "10.0.0.0/8"), route("tun1", "172.16.0.0/12")];
        assert_eq!(choose(&all, "rbuild0", candidates()), None);
        assert_eq!(
            conflicts(&routes, "rbuild0", &"10.90.0.0/16".parse().unwrap()).len(),
            1
        );
    }

    #[test]
    fn a_subnet_is_parsed_with_a_clear_error() {
        assert_eq!(
            "10.88.7.9/16".parse::<Subnet>().unwrap().to_string(),
            "10.88.0.0/16"
        );
        assert!(
            "10.88.0.0"
                .parse::<Subnet>()
                .unwrap_err()
                .contains("not an IPv4 subnet")
        );
        assert!("10.0.0.0/31".parse::<Subnet>().unwrap_err().contains("/30"));
    }
}
