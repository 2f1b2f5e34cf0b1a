//! Which rbuild process owns a containerd object.
//!
//! Containers, active snapshots and leases that rbuild creates carry an
//! `rbuild.owner` label naming the process (boot id, pid, process start
//! time). A later rbuild may clean up an object only when its owner is
//! provably gone: another boot, or no process with that pid and start time.
//! This is what makes cleanup after a `kill -9` safe while another rbuild
//! process is running on the same namespace.

use std::fs;

/// The label key that carries an [`Owner`].
pub const OWNER_LABEL: &str = "rbuild.owner";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    boot_id: String,
    pid: u32,
    start_time: u64,
}

impl Owner {
    /// The current process.
    pub fn current() -> Owner {
        let pid = std::process::id();
        Owner {
            boot_id: boot_id(),
            pid,
            start_time: process_start_time(pid).unwrap_or(0),
        }
    }

    /// The label value: `boot-id/pid/start-time`.
    pub fn label(&self) -> String {
        format!("{}/{}/{}", self.boot_id, self.pid, self.start_time)
    }

    pub fn parse(label: &str) -> Option<Owner> {
        let mut parts = label.rsplitn(3, '/');
        let start_time = parts.next()?.parse().ok()?;
        let pid = parts.next()?.parse().ok()?;
        let boot_id = parts.next()?.to_string();
        Some(Owner {
            boot_id,
            pid,
            start_time,
        })
    }

    /// Whether the owning process may still be running. Errs on the side of
    /// "alive" when it cannot tell.
    pub fn is_alive(&self) -> bool {
        if self.boot_id != boot_id() {
            return false;
        }
        match process_start_time(self.pid) {
            Some(t) => t == self.start_time,
            None => false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The owner in a file name (`pid-start-time`), for files that go with
    /// the boot: those on a tmpfs such as /dev/shm.
    pub fn file_tag(&self) -> String {
        format!("{}-{}", self.pid, self.start_time)
    }

    /// The owner of this boot that [`Owner::file_tag`] wrote at the start
    /// of `name`; the rest of the name after the tag's `-` is returned too.
    pub fn parse_file_tag(name: &str) -> Option<(Owner, &str)> {
        let mut parts = name.splitn(3, '-');
        let pid = parts.next()?.parse().ok()?;
        let start_time = parts.next()?.parse().ok()?;
        let rest = parts.next().unwrap_or("");
        Some((
            Owner {
                boot_id: boot_id(),
                pid,
                start_time,
            },
            rest,
        ))
    }
}

fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Field 22 of /proc/PID/stat: start time in clock ticks since boot.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; it ends at the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_process_is_alive_and_round_trips() {
        let me = Owner::current();
        assert!(me.start_time > 0);
        assert!(me.is_alive());
        assert_eq!(Owner::parse(&me.label()), Some(me.clone()));
        let name = format!("{}-rest-of-name", me.file_tag());
        assert_eq!(Owner::parse_file_tag(&name), Some((me, "rest-of-name")));
        assert_eq!(Owner::parse_file_tag("abc-1-x"), None);
    }

    #[test]
    fn other_boot_or_start_time_is_dead() {
        let me = Owner::current();
        let other_boot = Owner {
            boot_id: "not-this-boot".into(),
            ..me.clone()
        };
        assert!(!other_boot.is_alive());
        let reused_pid = Owner {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!reused_pid.is_alive());
    }
}
