//! Named kill points for the fault suite (tests/faults_kill.rs): a place in
//! the code where a test can have rbuild die by SIGKILL, as a `kill -9` or a
//! power cut would, without sleeping and hoping.
//!
//! `RBUILD_KILL_AT=NAME` makes the process print `rbuild: kill point NAME`
//! on stderr (so a test can tell where it died) and SIGKILL itself the
//! first time it reaches the point of that name. Compiled in only with
//! debug assertions (the binary the integration tests run); in a release
//! build [`kill_point`] is an empty function and the variable is ignored.
//!
//! It lives in rbuild-containerd because that is the one crate every other
//! rbuild crate (snapshotter, runtime, the binary) already depends on.

/// Dies here if `RBUILD_KILL_AT` names this point (debug builds only).
#[inline]
pub fn kill_point(name: &str) {
    #[cfg(debug_assertions)]
    if std::env::var_os("RBUILD_KILL_AT").is_some_and(|v| v == name) {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "rbuild: kill point {name}");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        // SIGKILL is not delivered synchronously to every thread at once.
        loop {
            std::thread::park();
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
