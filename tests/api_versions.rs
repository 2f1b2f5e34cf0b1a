//! What a declared API version changes, on real containerd, CNI and the
//! test registry: the same pipeline declaring 0.1 and 0.2 on the same
//! engine (fixtures/pipelines/versions.rs; the README's API versions table).

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::*;

/// The pipeline declaring `api`, written into the test's directory.
fn pipeline_declaring(env: &TestEnv, api: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo_root().join("fixtures/pipelines/versions.rs")).unwrap();
    let declared = text.replace("//! api = \"0.1\"", &format!("//! api = \"{api}\""));
    assert!(declared.contains(&format!("//! api = \"{api}\"")));
    let path = env.dir.path().join(format!("versions-{api}.rs"));
    std::fs::write(&path, declared).unwrap();
    path
}

/// The published image's config, as the registry serves it
/// (`reference` is `repo:tag@digest`; skopeo takes one of the two).
fn image_config(reference: &str) -> serde_json::Value {
    let (tagged, digest) = reference.split_once('@').unwrap();
    let repo = tagged.rsplit_once(':').unwrap().0;
    let out = stdout_of(
        Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--config"])
            .arg(format!("docker://{repo}@{digest}")),
    );
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["config"].clone()
}

/// The host's network interfaces, as a step on its network sees them.
fn host_interfaces() -> BTreeSet<String> {
    std::fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, _)| n.trim().to_string())
        .collect()
}

#[test]
fn the_same_pipeline_under_api_0_1_and_0_2_differs_exactly_as_documented() {
    let env = TestEnv::new("api-versions");
    let old = env
        .run(&pipeline_declaring(&env, "0.1"), &[&repo("old")])
        .ok()
        .fields();
    let new = env
        .run(&pipeline_declaring(&env, "0.2"), &[&repo("new")])
        .ok()
        .fields();

    // with_entrypoint: 0.1 keeps the base image's default args, 0.2 resets them.
    assert_eq!(old["ran"], "entry sh");
    assert_eq!(new["ran"], "entry");
    let (old_config, new_config) = (
        image_config(&old["published"]),
        image_config(&new["published"]),
    );
    assert_eq!(
        old_config["Entrypoint"],
        serde_json::json!(["echo", "entry"])
    );
    assert_eq!(old_config["Cmd"], serde_json::json!(["sh"]), "{old_config}");
    assert_eq!(
        new_config["Entrypoint"],
        serde_json::json!(["echo", "entry"])
    );
    assert!(
        new_config
            .get("Cmd")
            .is_none_or(|c| c.is_null() || c == &serde_json::json!([])),
        "{new_config}"
    );

    // A step without bindings: 0.1 on the host's network, 0.2 in a
    // namespace of its own (its own hostname, only lo and eth0).
    let (old_host, old_ifaces) = old["network"].split_once(' ').unwrap();
    let (new_host, new_ifaces) = new["network"].split_once(' ').unwrap();
    let set = |s: &str| {
        s.split_whitespace()
            .map(String::from)
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(set(old_ifaces), host_interfaces(), "{}", old["network"]);
    assert!(!old_host.starts_with("step-"), "{old_host}");
    assert!(new_host.starts_with("step-"), "{new_host}");
    assert_eq!(set(new_ifaces), set("eth0 lo"), "{}", new["network"]);

    // Each is cached under its own version: a second run runs nothing.
    for api in ["0.1", "0.2"] {
        let again = env
            .run(&pipeline_declaring(&env, api), &[&repo("again")])
            .ok();
        assert_eq!(again.ran(), 0, "API {api}: {}", again.stderr);
    }
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}
