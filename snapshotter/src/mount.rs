//! Mounting a snapshot on the host, for the file operations that happen
//! outside a container (reading `/etc/passwd` to resolve a user name, and
//! later copying files in and out). The mount is undone when the guard drops.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rbuild_containerd::containerd_client::types::Mount;

use crate::Error;

/// A snapshot mounted at a host directory; unmounted (and the directory
/// removed) on drop.
pub struct MountedSnapshot {
    target: PathBuf,
    mounted: bool,
}

impl MountedSnapshot {
    /// Mounts `mounts` (as containerd returned them) at `target`, read-only
    /// when `readonly`. `target` is created and must not be in use.
    pub fn mount(mounts: &[Mount], target: &Path, readonly: bool) -> Result<Self, Error> {
        std::fs::create_dir_all(target).map_err(|e| Error::io("create mount point", target, e))?;
        let mut guard = MountedSnapshot {
            target: target.to_path_buf(),
            mounted: false,
        };
        for m in mounts {
            mount_one(m, target, readonly)?;
            guard.mounted = true;
        }
        Ok(guard)
    }

    pub fn path(&self) -> &Path {
        &self.target
    }
}

impl Drop for MountedSnapshot {
    fn drop(&mut self) {
        if self.mounted {
            let c = cstr(&self.target);
            // SAFETY: c is a valid path; MNT_DETACH cannot fail on a busy mount.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(&self.target);
    }
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

fn mount_one(m: &Mount, target: &Path, readonly: bool) -> Result<(), Error> {
    let mut flags: libc::c_ulong = 0;
    let mut data = Vec::new();
    for opt in &m.options {
        match opt.as_str() {
            "ro" => flags |= libc::MS_RDONLY,
            "rw" => {}
            "bind" => flags |= libc::MS_BIND,
            "rbind" => flags |= libc::MS_BIND | libc::MS_REC,
            "nosuid" => flags |= libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            other => data.push(other),
        }
    }
    if readonly {
        flags |= libc::MS_RDONLY;
    }
    let source = CString::new(m.source.as_bytes()).expect("source without NUL");
    let fstype = CString::new(m.r#type.as_bytes()).expect("type without NUL");
    let data = CString::new(data.join(",")).expect("options without NUL");
    let tgt = cstr(target);
    let is_bind = flags & libc::MS_BIND != 0;
    // SAFETY: all pointers are valid NUL-terminated strings for the call's duration.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            tgt.as_ptr(),
            if is_bind {
                std::ptr::null()
            } else {
                fstype.as_ptr()
            },
            flags & !(if is_bind { libc::MS_RDONLY } else { 0 }),
            if is_bind {
                std::ptr::null()
            } else {
                data.as_ptr().cast()
            },
        )
    };
    if rc != 0 {
        return Err(Error::io(
            "mount snapshot at",
            target,
            std::io::Error::last_os_error(),
        ));
    }
    // A bind mount only becomes read-only through a remount.
    if is_bind && flags & libc::MS_RDONLY != 0 {
        // SAFETY: as above.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                tgt.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(Error::io(
                "remount read-only",
                target,
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}
