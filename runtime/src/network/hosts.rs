//! The name resolution files of a container in its own namespace:
//! `/etc/hosts` (localhost, its own name, the aliases of the services it
//! is bound to) and `/etc/resolv.conf` (the host's, without loopback
//! nameservers, which mean nothing inside the namespace — Docker's rule).

use std::net::Ipv4Addr;

/// `/etc/hosts` of a container named `hostname` at `ip`, with `aliases`.
pub fn hosts_file(hostname: &str, ip: Ipv4Addr, aliases: &[(String, Ipv4Addr)]) -> String {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n",
    );
    out.push_str(&format!("{ip}\t{hostname}\n"));
    for (alias, ip) in aliases {
        out.push_str(&format!("{ip}\t{alias}\n"));
    }
    out
}

/// `/etc/resolv.conf` for a namespace, from the host's: loopback
/// nameservers (a local stub resolver such as systemd-resolved's
/// 127.0.0.53) cannot be reached from inside, so they are dropped; when
/// none remain, public resolvers are not invented: the host's file is kept
/// as it is (and the failure, if any, is the host's configuration).
pub fn resolv_conf(host: &str) -> String {
    let is_loopback = |line: &str| {
        let mut f = line.split_whitespace();
        f.next() == Some("nameserver")
            && f.next().is_some_and(|a| {
                a.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
            })
    };
    let kept: Vec<&str> = host.lines().filter(|l| !is_loopback(l)).collect();
    if !kept
        .iter()
        .any(|l| l.trim_start().starts_with("nameserver"))
    {
        return host.to_string();
    }
    let mut out = kept.join("\n");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_has_localhost_the_own_name_then_the_aliases() {
        let h = hosts_file(
            "step-1",
            Ipv4Addr::new(10, 88, 0, 5),
            &[("db".into(), Ipv4Addr::new(10, 88, 0, 6))],
        );
        let lines: Vec<&str> = h.lines().collect();
        assert_eq!(lines[0], "127.0.0.1\tlocalhost");
        assert!(lines.contains(&"10.88.0.5\tstep-1"));
        assert_eq!(lines.last(), Some(&"10.88.0.6\tdb"));
    }

    #[test]
    fn loopback_nameservers_are_dropped_unless_none_would_remain() {
        let host = "search corp\nnameserver 127.0.0.53\nnameserver 10.255.255.53\noptions edns0\n";
        assert_eq!(
            resolv_conf(host),
            "search corp\nnameserver 10.255.255.53\noptions edns0\n"
        );
        let only_local = "nameserver 127.0.0.53\nnameserver ::1\n";
        assert_eq!(resolv_conf(only_local), only_local);
    }
}
