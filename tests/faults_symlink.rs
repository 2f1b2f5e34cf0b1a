//! The fault suite's hostile symlinks (DESIGN.md invariant 11), on real
//! containerd: a step plants symlinks to host paths in what it outputs,
//! and exports of it to the host never write through them. The host files
//! stand in a test directory of their own, as a user's files would.
//!
//! The choice for a symlink at an export destination is to replace it (as
//! a Dagger or BuildKit user expects an export to): the destination ends
//! up a regular file or directory holding the exported bytes, and what the
//! symlink pointed to is untouched.

mod common;

use std::fs;
use std::path::Path;

use common::*;

fn arg(op: &str, value: impl AsRef<str>) -> String {
    format!("{op}={}", value.as_ref())
}

fn steps(env: &TestEnv, args: &[String]) -> Outcome {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    env.steps(&args)
}

fn host_file(dir: &Path, name: &str, bytes: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn a_file_export_replaces_the_symlink_a_directory_export_planted() {
    let env = TestEnv::new("faults-symlink-file");
    let victim = host_file(env.dir.path(), "victim", "host bytes");
    let out = env.dir.path().join("out");
    let from = arg("from", BUSYBOX);
    let plant = arg(
        "exec",
        format!(
            "mkdir -p /out && echo report > /out/new.txt && ln -s {} /out/report.txt",
            victim.display()
        ),
    );
    let export_dir = arg("export_dir", format!("/out:{}", out.display()));
    // The first run puts the step's symlink on the host, as it was made.
    steps(&env, &[from.clone(), plant.clone(), export_dir.clone()]).ok();
    assert_eq!(
        fs::read_link(out.join("report.txt")).unwrap(),
        victim,
        "the directory export copied the symlink as a symlink"
    );
    // The second exports a file onto it.
    let export_file = arg(
        "export_file",
        format!("/out/new.txt:{}", out.join("report.txt").display()),
    );
    let run = steps(&env, &[from, plant, export_dir, export_file]).ok();
    assert!(run.stdout.contains("exported: "), "{}", run.stdout);
    assert_eq!(
        fs::read_to_string(&victim).unwrap(),
        "host bytes",
        "the export wrote through the symlink into the host file"
    );
    let m = fs::symlink_metadata(out.join("report.txt")).unwrap();
    assert!(m.is_file(), "the symlink was replaced by a regular file");
    assert_eq!(
        fs::read_to_string(out.join("report.txt")).unwrap(),
        "report\n"
    );
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

#[test]
fn a_directory_export_replaces_a_symlinked_subdirectory_it_planted() {
    let env = TestEnv::new("faults-symlink-dir");
    let victim_dir = env.dir.path().join("victim_dir");
    fs::create_dir(&victim_dir).unwrap();
    host_file(&victim_dir, "kept", "host bytes");
    let out = env.dir.path().join("out");
    let from = arg("from", BUSYBOX);
    // One step plants out/sub -> the host directory; the next exports a
    // real sub/ over it.
    let plant = arg(
        "exec",
        format!("mkdir -p /out && ln -s {} /out/sub", victim_dir.display()),
    );
    let export = arg("export_dir", format!("/out:{}", out.display()));
    let fill = arg(
        "exec",
        "rm /out/sub && mkdir -p /out/sub && echo x > /out/sub/x && echo k > /out/sub/kept",
    );
    let run = steps(&env, &[from, plant, export.clone(), fill, export]).ok();
    assert_eq!(
        run.stdout.matches("exported: ").count(),
        2,
        "{}",
        run.stdout
    );
    let mut names: Vec<_> = fs::read_dir(&victim_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["kept"], "the export wrote into the host directory");
    assert_eq!(
        fs::read_to_string(victim_dir.join("kept")).unwrap(),
        "host bytes"
    );
    assert!(!out.join("sub").is_symlink(), "the symlink was replaced");
    assert_eq!(fs::read_to_string(out.join("sub/x")).unwrap(), "x\n");
    assert_eq!(fs::read_to_string(out.join("sub/kept")).unwrap(), "k\n");
}

#[test]
fn exports_through_a_dot_dot_chain_or_41_links_stay_in_the_snapshot() {
    let env = TestEnv::new("faults-symlink-chain");
    let victim = host_file(env.dir.path(), "victim", "host bytes");
    let from = arg("from", BUSYBOX);
    // l0 -> l1 -> ... -> l40 -> the host file (41 links), and a `..`
    // chain climbing out of the root to the host file.
    let plant = arg(
        "exec",
        format!(
            "cd / && i=0; while [ $i -lt 40 ]; do ln -s l$((i+1)) l$i; i=$((i+1)); done; \
             ln -s {victim} l40; ln -s ../../../../../../../..{victim} /up",
            victim = victim.display()
        ),
    );
    let got = env.dir.path().join("got");
    let long = steps(
        &env,
        &[
            from.clone(),
            plant.clone(),
            arg("export_file", format!("/l0:{}", got.display())),
        ],
    );
    assert_ne!(long.code, 0, "{}", long.stderr);
    assert!(
        long.stderr.contains("\"/l0\"")
            && long.stderr.contains("too many levels of symbolic links"),
        "the error names the path and says why:\n{}",
        long.stderr
    );
    assert!(!got.exists(), "nothing was exported");
    // The `..` chain stops at the snapshot's root, where there is no such
    // file: the host's file is neither read nor exported.
    let up = steps(
        &env,
        &[
            from,
            plant,
            arg("export_file", format!("/up:{}", got.display())),
        ],
    );
    assert_ne!(up.code, 0, "{}", up.stderr);
    assert!(
        up.stderr.contains("no such file or directory"),
        "{}",
        up.stderr
    );
    assert!(
        !got.exists(),
        "the host file was read through the `..` chain"
    );
    assert_eq!(fs::read_to_string(&victim).unwrap(), "host bytes");
}
