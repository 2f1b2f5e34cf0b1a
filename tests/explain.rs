//! Why steps run (issue 17): `--expect-cached`, the CI check that a warm
//! runner really is warm.

mod common;

use common::{BUSYBOX, Outcome, TestEnv, steps_pipeline};

fn run(env: &TestEnv, flags: &[&str], last: &str) -> Outcome {
    let mut cmd = env.command();
    cmd.args(["--progress", "plain"])
        .args(flags)
        .arg("run")
        .arg(steps_pipeline())
        .arg("--");
    cmd.args([
        format!("from={BUSYBOX}"),
        "exec=head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /rand".to_string(),
        format!("exec={last}"),
        "print=stdout".to_string(),
    ]);
    Outcome::from(cmd.output().unwrap())
}

#[test]
fn expect_cached_passes_a_warm_run_and_refuses_to_run_a_miss() {
    let env = TestEnv::new("expect-cached");
    let warm = run(&env, &[], "echo ran=$(cat /rand)").ok();
    let again = run(&env, &["--expect-cached"], "echo ran=$(cat /rand)").ok();
    assert_eq!(again.stdout, warm.stdout);
    assert_eq!(again.cached(), 2, "{}", again.stderr);

    // One change: the run fails before that step runs, naming it.
    let refused = Outcome::from(
        env.command()
            .env("RBUILD_EXPECT_CACHED", "true")
            .args(["--progress", "plain", "run"])
            .arg(steps_pipeline())
            .arg("--")
            .args([
                format!("from={BUSYBOX}"),
                "exec=head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /rand".to_string(),
                "exec=echo RAN-THE-CHANGED-STEP".to_string(),
                "print=stdout".to_string(),
            ])
            .output()
            .unwrap(),
    );
    assert_ne!(refused.code, 0, "{}", refused.stderr);
    assert!(
        refused.stderr.contains(
            "--expect-cached: exec sh -c 'echo RAN-THE-CHANGED-STEP' is not in the cache"
        ),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("nothing was run"),
        "{}",
        refused.stderr
    );
    assert!(
        !refused.stdout.contains("RAN-THE-CHANGED-STEP\n")
            && !refused.stderr.contains("| RAN-THE-CHANGED-STEP"),
        "the step ran: {}",
        refused.stderr
    );
    // And nothing was recorded: without the flag it runs now.
    let ran = run(&env, &[], "echo RAN-THE-CHANGED-STEP").ok();
    assert!(
        ran.stderr.contains("| RAN-THE-CHANGED-STEP"),
        "{}",
        ran.stderr
    );
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

/// `rbuild run steps.rs -- ARGS` with plain progress (`extra`: more flags before `run`).
fn steps(env: &TestEnv, extra: &[&str], args: &[String]) -> Outcome {
    steps_with(env, extra, args, &[])
}

/// [`steps`] with environment variables `vars` set.
fn steps_with(env: &TestEnv, extra: &[&str], args: &[String], vars: &[(&str, &str)]) -> Outcome {
    Outcome::from(
        env.command()
            .args(["--progress", "plain"])
            .args(extra)
            .arg("run")
            .arg(steps_pipeline())
            .arg("--")
            .args(args)
            .envs(vars.iter().copied())
            .output()
            .unwrap(),
    )
}

/// The `cache miss:` reasons of a plain run, in order.
fn misses(out: &Outcome) -> Vec<String> {
    out.stderr
        .lines()
        .filter_map(|l| l.split_once("   cache miss: ").map(|(_, r)| r.to_string()))
        .collect()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_changed_env_value_is_named_in_every_progress_mode_and_explain_compares_part_by_part() {
    let env = TestEnv::new("explain-env");
    let with = |v: &str| {
        args(&[
            &format!("from={BUSYBOX}"),
            &format!("env=FOO={v}"),
            "exec=echo $FOO > /x",
            "print=stdout",
        ])
    };
    let first = steps(&env, &[], &with("1")).ok();
    assert_eq!(
        misses(&first),
        ["new step (no earlier run of it is recorded)"],
        "{}",
        first.stderr
    );
    let second = steps(&env, &[], &with("2")).ok();
    assert_eq!(
        misses(&second),
        [r#"env FOO changed: "1" → "2""#],
        "{}",
        second.stderr
    );
    // JSON: a `miss` event for the step, with the same reason.
    let third = Outcome::from(
        env.command()
            .args(["--progress", "json", "run"])
            .arg(steps_pipeline())
            .arg("--")
            .args(with("3"))
            .output()
            .unwrap(),
    )
    .ok();
    let events = common::events(&third.stderr);
    let miss: Vec<&serde_json::Value> = events.iter().filter(|e| e["event"] == "miss").collect();
    assert_eq!(miss.len(), 1, "{}", third.stderr);
    assert_eq!(miss[0]["reason"], r#"env FOO changed: "2" → "3""#);
    // And the key it replaced (the second run's step).
    assert_eq!(miss[0]["replaced"].as_str().map(str::len), Some(64));
    let step = miss[0]["step"].as_u64().unwrap();

    // `rbuild explain` lists the run's misses; with a step, every part.
    let listed = Outcome::from(env.command().arg("explain").output().unwrap()).ok();
    assert!(
        listed
            .stdout
            .contains(&format!("#{step} exec sh -c 'echo $FOO > /x'")),
        "{}",
        listed.stdout
    );
    assert!(
        listed
            .stdout
            .contains(r#"cache miss: env FOO changed: "2" → "3""#),
        "{}",
        listed.stdout
    );
    let one = Outcome::from(
        env.command()
            .args(["explain", "last", &step.to_string()])
            .output()
            .unwrap(),
    )
    .ok();
    for line in [
        r#"  ≠ env FOO: "2" → "3""#,
        r#"  = command: "sh -c 'echo $FOO > /x'""#,
        r#"  = workdir: "/""#,
        "  = input: image 127.0.0.1:5000/busybox:latest (sha256:",
    ] {
        assert!(one.stdout.contains(line), "{line:?} in\n{}", one.stdout);
    }
    // A bad run or step is a clear error.
    let bad = Outcome::from(env.command().args(["explain", "999"]).output().unwrap());
    assert_ne!(bad.code, 0);
    assert!(
        bad.stderr
            .contains("run 999 is not recorded (see `rbuild history`"),
        "{}",
        bad.stderr
    );
}

#[test]
fn a_host_file_whose_content_changed_with_size_and_mtime_kept_is_named() {
    let env = TestEnv::new("explain-host");
    let src = env.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), "hello\n").unwrap();
    std::fs::write(src.join("b.txt"), "same\n").unwrap();
    let run = || {
        steps(
            &env,
            &[],
            &args(&[
                &format!("from={BUSYBOX}"),
                &format!("host={}:/src", src.display()),
                "exec=cat /src/a.txt",
                "print=stdout",
            ]),
        )
        .ok()
    };
    assert_eq!(run().stdout, "hello\n");
    // The same size and the same mtime: only the content differs.
    let file = src.join("a.txt");
    let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
    std::fs::write(&file, "jello\n").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let changed = run();
    assert_eq!(changed.stdout, "jello\n", "{}", changed.stderr);
    let reasons = misses(&changed);
    assert_eq!(
        reasons[0],
        format!("host directory {}: changed a.txt (content)", src.display()),
        "{}",
        changed.stderr
    );
    assert!(
        reasons[1].contains("changed (see that step's reason)"),
        "{reasons:?}"
    );
    assert_eq!(reasons.len(), 2, "{}", changed.stderr);
}

#[test]
fn a_base_tag_that_moved_names_its_old_and_new_digests() {
    let env = TestEnv::new("explain-base");
    let tag = common::repo("explain-base");
    let point = |image: &str| {
        let status = std::process::Command::new("skopeo")
            .args([
                "copy",
                "-q",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
            ])
            .arg(format!("docker://127.0.0.1:5000/{image}"))
            .arg(format!("docker://{tag}"))
            .status()
            .unwrap();
        assert!(status.success());
        common::stdout_of(
            std::process::Command::new("skopeo")
                .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
                .arg(format!("docker://{tag}")),
        )
        .trim()
        .to_string()
    };
    let run = || {
        steps(
            &env,
            &[],
            &args(&[&format!("from={tag}"), "exec=echo hi", "print=stdout"]),
        )
        .ok()
    };
    let old = point("busybox:latest");
    run();
    let new = point("busybox-env:latest");
    assert_ne!(old, new);
    let moved = run();
    let short = |d: &str| d[..19].to_string();
    // The image's own env changed with it; the image is named first.
    let reasons = misses(&moved);
    assert_eq!(reasons.len(), 1, "{}", moved.stderr);
    assert!(
        reasons[0].starts_with(&format!(
            "base image {tag} changed: {} → {}",
            short(&old),
            short(&new)
        )),
        "{}",
        moved.stderr
    );
}

#[test]
fn a_pruned_result_says_when_and_a_step_after_one_that_ran_again_differently_says_so() {
    let env = TestEnv::new("explain-prune");
    let list = args(&[
        &format!("from={BUSYBOX}"),
        "exec=head -c 8 /dev/urandom | od -An -tx1 > /rand",
        "exec=cat /rand",
        "print=stdout",
    ]);
    let first = steps(&env, &[], &list).ok();
    let pruned = Outcome::from(
        env.command()
            .args(["cache", "prune", "--all"])
            .output()
            .unwrap(),
    )
    .ok();
    assert!(!pruned.stdout.is_empty());
    let again = steps(&env, &[], &list).ok();
    assert_ne!(again.stdout, first.stdout, "random bytes: it ran again");
    let reasons = misses(&again);
    assert_eq!(reasons.len(), 2, "{}", again.stderr);
    assert!(
        reasons[0].starts_with(
            "same definition as before, but its cached result was pruned (rbuild cache prune) at 20"
        ),
        "{reasons:?}"
    );
    assert_eq!(
        reasons[1],
        "its input \"exec sh -c 'head -c 8 /dev/urandom | od -An -tx1 > /rand'\" ran again and \
         produced different output"
    );
}

#[test]
fn expect_cached_names_the_reason_of_the_first_miss() {
    let env = TestEnv::new("expect-cached-why");
    let with = |cmd: &str| {
        args(&[
            &format!("from={BUSYBOX}"),
            &format!("exec={cmd}"),
            "print=stdout",
        ])
    };
    steps(&env, &[], &with("echo one")).ok();
    let refused = steps(&env, &["--expect-cached"], &with("echo two"));
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains(
            r#"cache miss: the command changed: "sh -c 'echo one'" → "sh -c 'echo two'""#
        ),
        "{}",
        refused.stderr
    );
}

#[test]
fn a_run_exports_its_trace_to_an_otlp_receiver() {
    let receiver = rbuild_trace::receiver::Receiver::spawn();
    let env = TestEnv::new("explain-otlp");
    let with = |v: &str| {
        args(&[
            &format!("from={BUSYBOX}"),
            "exec=echo base > /base",
            &format!("env=V={v}"),
            "exec=echo $V",
            "print=stdout",
        ])
    };
    steps(&env, &[], &with("1")).ok();
    // With a remote cache to push to: the push is a phase of its step.
    let repo = common::repo("explain-otlp");
    let repo = repo.trim_end_matches(":1");
    let out = steps_with(
        &env,
        &["--cache-to", repo],
        &with("2"),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint),
            ("OTEL_SERVICE_NAME", "rbuild-explain-test"),
        ],
    )
    .ok();
    let spans = receiver.wait_for_spans(4, std::time::Duration::from_secs(20));
    let root = spans
        .iter()
        .find(|s| s.name.starts_with("rbuild run"))
        .unwrap_or_else(|| panic!("no root span in {spans:#?}\n{}", out.stderr));
    assert_eq!(root.service_name, "rbuild-explain-test");
    let step = |cmd: &str| {
        spans
            .iter()
            .find(|s| s.name == format!("exec sh -c '{cmd}'"))
            .unwrap_or_else(|| panic!("no span for {cmd} in {spans:#?}"))
    };
    let cached = step("echo base > /base");
    assert_eq!(cached.attributes["rbuild.cache.status"], "cached");
    assert!(!cached.attributes.contains_key("rbuild.miss.reason"));
    let ran = step("echo $V");
    assert_eq!(ran.attributes["rbuild.cache.status"], "ran");
    assert_eq!(
        ran.attributes["rbuild.miss.reason"],
        r#"env V changed: "1" → "2""#
    );
    assert_eq!(ran.attributes["rbuild.cache.key"].len(), 64);
    for s in [cached, ran] {
        assert_eq!(s.trace_id, root.trace_id);
        assert_eq!(s.parent_span_id, root.span_id);
        assert!(s.start_unix_nano >= root.start_unix_nano && s.end_unix_nano <= root.end_unix_nano);
    }
    // Its commit and its push to the remote cache are child spans of the
    // step that ran.
    for phase in ["commit", "push"] {
        assert!(
            spans
                .iter()
                .any(|s| s.name == phase && s.parent_span_id == ran.span_id),
            "no {phase} under the step in {spans:#?}"
        );
    }

    // The same over gRPC (the receiver serves both on one port): a cached run.
    let before = receiver.requests().len();
    steps_with(
        &env,
        &[],
        &with("2"),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    )
    .ok();
    let requests = receiver.requests();
    assert_eq!(requests.len(), before + 1, "{requests:#?}");
    assert_eq!(requests[before].protocol, "grpc");
    let cached: Vec<_> = receiver
        .spans()
        .into_iter()
        .filter(|s| s.name == "exec sh -c 'echo $V'")
        .collect();
    assert_eq!(cached.len(), 2);
    assert_eq!(cached[1].attributes["rbuild.cache.status"], "cached");
}

#[test]
fn the_report_renders_every_step_in_headless_chromium() {
    let env = TestEnv::new("explain-report");
    steps(
        &env,
        &[],
        &args(&[
            &format!("from={BUSYBOX}"),
            "branch=echo a > /out",
            "branch=echo b > /out",
            "exec=cat /branch0 /branch1",
            "print=stdout",
        ]),
    )
    .ok();
    let page = env.dir.path().join("report.html");
    let wrote = Outcome::from(
        env.command()
            .args(["report", "-o"])
            .arg(&page)
            .output()
            .unwrap(),
    )
    .ok();
    assert!(wrote.stderr.contains("wrote "), "{}", wrote.stderr);
    let html = std::fs::read_to_string(&page).unwrap();
    let data = html
        .split("<script id=\"rbuild-data\" type=\"application/json\">")
        .nth(1)
        .and_then(|rest| rest.split("</script>").next())
        .unwrap();
    let data: serde_json::Value = serde_json::from_str(data).unwrap();
    let steps = data["steps"].as_array().unwrap();
    assert!(steps.len() >= 6, "{data:#}");
    assert!(steps.iter().any(|s| s["critical"] == true));

    let chromium = |extra: &[&str]| {
        let out = std::process::Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu"])
            .args(["--enable-logging=stderr", "--v=0"])
            .args(extra)
            .arg(format!("file://{}", page.display()))
            .output()
            .expect("chromium (make setup installs it)");
        Outcome::from(out)
    };
    let dom = chromium(&["--dump-dom"]);
    let rendered = dom
        .stdout
        .split("data-rendered=\"")
        .nth(1)
        .and_then(|r| r.split('"').next());
    assert_eq!(
        rendered,
        Some(steps.len().to_string().as_str()),
        "{}",
        dom.stderr
    );
    // (The page's script names the attribute too: look for it set.)
    assert!(
        !dom.stdout.contains("data-script-error=\""),
        "{}",
        dom.stdout
    );
    assert!(
        !dom.stderr.contains("Uncaught") && !dom.stderr.contains("rbuild report: script error"),
        "{}",
        dom.stderr
    );
    assert_eq!(
        dom.stdout.matches("data-step=\"").count(),
        steps.len(),
        "one row per step"
    );
    for s in steps {
        assert!(
            dom.stdout.contains(&format!("data-step=\"{}\"", s["no"])),
            "{s}"
        );
    }
    // A picture to look at (target/tmp/report.png).
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("report.png");
    chromium(&[
        "--window-size=1400,1000",
        &format!("--screenshot={}", shot.display()),
    ]);
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
}
