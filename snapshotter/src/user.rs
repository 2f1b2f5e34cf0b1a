//! Resolving a container user (`""`, `1000`, `1000:1000`, `app`, `app:staff`)
//! to numeric ids with the image's own `/etc/passwd` and `/etc/group`, as
//! Docker does: runc needs numbers.

/// Numeric identity of a step's process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// Whether resolving `user` needs the container's passwd/group files.
pub fn needs_lookup(user: &str) -> bool {
    let (u, g) = split(user);
    !(u.is_empty() || u == "root" || u.parse::<u32>().is_ok())
        || g.is_some_and(|g| g.parse::<u32>().is_err())
        || (u.parse::<u32>().is_ok_and(|n| n != 0) && g.is_none())
}

fn split(user: &str) -> (&str, Option<&str>) {
    match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    }
}

/// Resolves `user` against passwd and group file contents (empty when the
/// image has none).
pub fn resolve(user: &str, passwd: &str, group: &str) -> Result<ResolvedUser, String> {
    let (u, g) = split(user);
    let entries: Vec<Vec<&str>> = passwd
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .collect();
    let (uid, primary_gid, name) = if u.is_empty()
        || (u == "root" && !entries.iter().any(|f| f[0] == "root"))
    {
        (0, 0, Some("root".to_string()))
    } else if let Ok(n) = u.parse::<u32>() {
        let e = entries.iter().find(|f| f[2].parse() == Ok(n));
        (
            n,
            e.and_then(|f| f[3].parse().ok()).unwrap_or(0),
            e.map(|f| f[0].to_string()),
        )
    } else {
        let e = entries.iter().find(|f| f[0] == u).ok_or_else(|| {
            format!("user {u:?} is not in the container's /etc/passwd; use a numeric uid or add the user first")
        })?;
        let uid = e[2]
            .parse()
            .map_err(|_| format!("bad uid for {u:?} in /etc/passwd"))?;
        (uid, e[3].parse().unwrap_or(0), Some(u.to_string()))
    };
    let groups: Vec<Vec<&str>> = group
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 3)
        .collect();
    let gid = match g {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| format!("group {g:?} is not in the container's /etc/group"))?,
        },
    };
    // Supplementary groups: those listing the user by name (only when no group was forced).
    let mut additional_gids = Vec::new();
    if g.is_none()
        && let Some(name) = name
    {
        for f in &groups {
            let members = f.get(3).copied().unwrap_or("");
            if members.split(',').any(|m| m == name)
                && let Ok(n) = f[2].parse::<u32>()
                && n != gid
            {
                additional_gids.push(n);
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

/// Resolves `user` with the passwd and group files of a root filesystem
/// mounted at `rootfs` (read only when the spec has names).
pub fn resolve_in_rootfs(user: &str, rootfs: &std::path::Path) -> Result<ResolvedUser, String> {
    let (passwd, group) = if needs_lookup(user) {
        let read = |p: &str| std::fs::read_to_string(rootfs.join(p)).unwrap_or_default();
        (read("etc/passwd"), read("etc/group"))
    } else {
        (String::new(), String::new())
    };
    resolve(user, &passwd, &group)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:app\napp:x:1001:\nnogroup:x:65534:\n";

    #[test]
    fn numeric_and_named_users() {
        let r = |u| resolve(u, PASSWD, GROUP).unwrap();
        assert_eq!(r("").uid, 0);
        assert_eq!(r("1000").gid, 1001);
        assert_eq!(r("1234").gid, 0);
        assert_eq!(r("1000:7").gid, 7);
        let app = r("app");
        assert_eq!(
            (app.uid, app.gid, app.additional_gids),
            (1000, 1001, vec![50])
        );
        assert_eq!(r("app:staff").gid, 50);
        assert_eq!(r("nobody").uid, 65534);
    }

    #[test]
    fn unknown_names_are_clear_errors() {
        let e = resolve("ghost", PASSWD, GROUP).unwrap_err();
        assert!(e.contains("ghost") && e.contains("/etc/passwd"), "{e}");
        let e = resolve("app:ghosts", PASSWD, GROUP).unwrap_err();
        assert!(e.contains("ghosts"), "{e}");
    }

    #[test]
    fn lookup_only_when_needed() {
        assert!(!needs_lookup(""));
        assert!(!needs_lookup("root"));
        assert!(!needs_lookup("0"));
        assert!(!needs_lookup("1000:1000"));
        assert!(needs_lookup("1000"));
        assert!(needs_lookup("app"));
        assert!(needs_lookup("1000:staff"));
    }
}
