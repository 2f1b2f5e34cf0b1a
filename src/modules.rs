//! Running a module's function for another pipeline: the module is built,
//! its functions are listed (under its own API version), and the function
//! runs as the module's own process against a session of its own, handing
//! its result back (`module.return`). A call is remembered in the index by
//! its content key: the module's source (its build stamp), the function,
//! and the arguments (text as given, values by handle), so an unchanged
//! call starts no process at all.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use rbuild_sdk::wire::{self, Action, ArgKind, CallSpec, ReturnedDef};
use tokio::io::AsyncBufReadExt;

use crate::api::Api;
use crate::functions::{self, shown};
use crate::graph::ModuleCallDef;
use crate::index::ModuleCallRecord;
use crate::session::Session;
use crate::solver::modules::{Called, article};
use crate::solver::{SolveError, Solver, Worker};

/// The protocol a module's SDK must speak to be called (`module.return`).
const MODULE_PROTOCOL: u32 = 3;

/// How many module processes may be running at once in a run: a module
/// that calls itself runs into this rather than forever.
const MAX_RUNNING: usize = 32;

static RUNNING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The functions each module build lists (by build stamp), in this process.
static LISTINGS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<String, Arc<functions::Described>>>,
> = std::sync::LazyLock::new(Default::default);

/// Runs `call` (its text arguments and its values' `(kind, handle)`s) or
/// answers it from the index.
pub async fn run<W: Worker>(
    solver: &Arc<Solver<W>>,
    call: &ModuleCallDef,
    text: BTreeMap<String, String>,
    values: BTreeMap<String, (&'static str, String)>,
) -> Result<Called, SolveError> {
    let invalid = |m: String| SolveError::Invalid(m);
    let cache = solver
        .pipelines()
        .ok_or_else(|| invalid("module calls are not available here".into()))?
        .to_path_buf();
    let path = Path::new(&call.path).to_path_buf();
    let what = format!("module {}: {}", call.path, call.function);
    let built = {
        let (path, cache) = (path.clone(), cache.clone());
        tokio::task::spawn_blocking(move || crate::pipeline::build(&path, &cache))
            .await
            .map_err(|e| SolveError::Internal(format!("module build task: {e}")))?
            .map_err(|e| invalid(format!("module {}: {e:#}", call.path)))?
    };
    let api = built.declared.api();
    let key = call_key(&built.stamp, call, &text, &values);
    if let Some(rec) = solver.index().get_module_call(&key)? {
        if let (Some(api), Ok(returned)) = (
            Api::parse(&rec.api),
            serde_json::from_str::<ReturnedDef>(&rec.returned),
        ) {
            solver.progress().info(&format!("{what} CACHED"));
            return Ok(Called {
                returned,
                api,
                what,
            });
        }
    }

    // The listing is the module's own, read under its own version; one
    // build of a module lists the same functions, so it is asked once.
    let listed = LISTINGS
        .lock()
        .expect("listings lock poisoned")
        .get(&built.stamp)
        .cloned();
    let described = match listed {
        Some(d) => d,
        None => {
            let d = Arc::new(
                functions::list(&built, &path)
                    .await
                    .map_err(|e| invalid(format!("{e:#}")))?,
            );
            LISTINGS
                .lock()
                .expect("listings lock poisoned")
                .insert(built.stamp.clone(), d.clone());
            d
        }
    };
    if described.protocol < MODULE_PROTOCOL {
        return Err(invalid(format!(
            "module {} speaks protocol {} (rbuild-sdk too old to be called as a module; it needs protocol {MODULE_PROTOCOL}): upgrade its rbuild-sdk to {}",
            call.path,
            described.protocol,
            wire::SDK_VERSION
        )));
    }
    let f = described.function(&call.function).ok_or_else(|| {
        let names: Vec<String> = described
            .functions
            .iter()
            .map(|f| shown(&f.name, api))
            .collect();
        invalid(format!(
            "module {} has no function {:?} (under its API {api} it has: {})",
            call.path,
            call.function,
            names.join(", ")
        ))
    })?;
    let mut spec = CallSpec {
        function: f.name.clone(),
        action: Action::Return,
        ..CallSpec::default()
    };
    let given = text.keys().chain(values.keys());
    for name in given {
        let decl = f
            .args
            .iter()
            .find(|a| &shown(&a.name, api) == name)
            .ok_or_else(|| invalid(format!("{what}: unknown argument {name:?}")))?;
        let wants_value = matches!(
            decl.kind,
            ArgKind::Directory | ArgKind::File | ArgKind::Container | ArgKind::Secret
        );
        match (text.get(name), values.get(name)) {
            (Some(t), _) if !wants_value => {
                spec.args.insert(decl.name.clone(), t.clone());
            }
            (_, Some((kind, handle))) if *kind == decl.kind.as_str() => {
                spec.values.insert(decl.name.clone(), handle.clone());
            }
            (t, v) => {
                let got = if t.is_some() {
                    "text"
                } else {
                    v.map_or("nothing", |(k, _)| k)
                };
                return Err(invalid(format!(
                    "{what}: argument {name:?} takes {}, not {got}",
                    article(decl.kind.as_str())
                )));
            }
        }
    }
    for a in &f.args {
        let given = spec.args.contains_key(&a.name) || spec.values.contains_key(&a.name);
        if given || a.default.is_some() {
            continue;
        }
        match &a.default_path {
            Some(d) => {
                let at = functions::default_path_in(&path, d)
                    .map_err(|e| invalid(format!("{what}: {e:#}")))?;
                spec.args.insert(a.name.clone(), at.display().to_string());
            }
            None => {
                return Err(invalid(format!(
                    "{what}: missing argument {:?} ({}: {})",
                    shown(&a.name, api),
                    a.kind.as_str(),
                    a.doc
                )));
            }
        }
    }

    if RUNNING.fetch_add(1, Ordering::SeqCst) >= MAX_RUNNING {
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        return Err(invalid(format!(
            "{what}: more than {MAX_RUNNING} module calls running at once: does a module call itself?"
        )));
    }
    let ran = run_process(solver, &built, &spec, api, &what).await;
    RUNNING.fetch_sub(1, Ordering::SeqCst);
    let (returned, evaluated) = ran?;
    let json = serde_json::to_string(&returned).unwrap_or_default();
    // Remembered only when the result depends on nothing but the call: a
    // module that asked the engine for anything may have built on what it
    // saw; and never with a secret's plaintext in it.
    let has_plaintext = serde_json::from_str::<serde_json::Value>(&json)
        .map(|v| holds_plaintext(&v))
        .unwrap_or(true);
    if !evaluated && !has_plaintext {
        let rec = ModuleCallRecord {
            api: api.to_string(),
            returned: json,
        };
        if let Err(e) = solver.index().put_module_call(&key, &rec) {
            tracing::warn!(error = %e, "module call not remembered");
        }
    }
    Ok(Called {
        returned,
        api,
        what,
    })
}

/// Runs the module's process for `spec`: its result, and whether it asked
/// the engine to evaluate anything.
async fn run_process<W: Worker>(
    solver: &Arc<Solver<W>>,
    built: &crate::pipeline::Built,
    spec: &CallSpec,
    api: Api,
    what: &str,
) -> Result<(ReturnedDef, bool), SolveError> {
    let internal = |m: String| SolveError::Internal(m);
    let _in_use = crate::pipeline::hold(&built.executable);
    let (session, capture) = Session::start_module(solver.clone(), api)
        .map_err(|e| internal(format!("{what}: start its session: {e}")))?;
    let progress = solver.progress().clone();
    let no = progress.started(&format!("{what} (API {api})"));
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&built.executable)
        .envs(session.env())
        .env(
            wire::CALL_ENV,
            serde_json::to_string(spec).unwrap_or_default(),
        )
        .env(rbuild_sdk::PIPELINE_DIR_ENV, &built.dir)
        .env_remove(wire::LIST_ENV)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| internal(format!("{what}: start {}: {e}", built.executable.display())))?;
    let relay = |from: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>, keep: bool| {
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut kept = Vec::new();
            let Some(from) = from else { return kept };
            let mut lines = tokio::io::BufReader::new(from).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                progress.output(no, crate::progress::Stream::Stderr, &line);
                if keep {
                    kept.push(line);
                }
            }
            kept
        })
    };
    let out = relay(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        false,
    );
    let err = relay(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        true,
    );
    let status = tokio::select! {
        s = child.wait() => s.map_err(|e| internal(format!("{what}: {e}")))?,
        _ = solver.cancel().cancelled() => {
            let _ = child.kill().await;
            return Err(SolveError::Cancelled);
        }
    };
    let _ = out.await;
    let stderr = err.await.unwrap_or_default();
    drop(session);
    let returned = capture
        .returned
        .lock()
        .expect("capture lock poisoned")
        .take();
    let millis = started.elapsed().as_millis();
    match (status.success(), returned) {
        (true, Some(r)) => {
            progress.finished(no, millis, &format!("returned {}", article(r.kind())));
            Ok((r, capture.evaluated.load(Ordering::SeqCst)))
        }
        (ok, _) => {
            let tail: Vec<&str> = stderr
                .iter()
                .rev()
                .take(10)
                .rev()
                .map(String::as_str)
                .collect();
            let reason = if ok {
                "exited without returning its result".to_string()
            } else {
                format!("failed ({status})")
            };
            progress.failed(no, what, &reason, tail.join("\n").as_bytes());
            let mut message = format!("{what} {reason}");
            if !tail.is_empty() {
                message.push_str(":\n");
                message.push_str(&tail.join("\n"));
            }
            Err(SolveError::Invalid(message))
        }
    }
}

/// The content key of a call: what the module is (its build stamp, which
/// covers rbuild's version, the SDK and every source file), which
/// function, and the arguments.
fn call_key(
    stamp: &str,
    call: &ModuleCallDef,
    text: &BTreeMap<String, String>,
    values: &BTreeMap<String, (&'static str, String)>,
) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"rbuild-module-call/1\0");
    h.update(stamp.as_bytes());
    h.update(b"\0");
    h.update(call.function.as_bytes());
    for (k, v) in text {
        h.update(format!("\0text\0{k}\0{}\0", v.len()).as_bytes());
        h.update(v.as_bytes());
    }
    for (k, (kind, handle)) in values {
        h.update(format!("\0{kind}\0{k}\0{handle}").as_bytes());
    }
    h.finalize().to_hex().to_string()
}

/// Whether a returned definition carries a secret's plaintext
/// (`set_secret`).
fn holds_plaintext(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Object(m) => m
            .iter()
            .any(|(k, v)| (k == "plaintext" && !v.is_null()) || holds_plaintext(v)),
        serde_json::Value::Array(a) => a.iter().any(holds_plaintext),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_key_changes_with_the_source_the_function_and_each_argument() {
        let call = |f: &str| ModuleCallDef {
            path: "/m".into(),
            function: f.into(),
            args: Default::default(),
        };
        let text = |v: &str| BTreeMap::from([("a".to_string(), v.to_string())]);
        let none = BTreeMap::new();
        let no_values: BTreeMap<String, (&'static str, String)> = BTreeMap::new();
        let base = call_key("s1", &call("f"), &text("1"), &no_values);
        assert_eq!(base, call_key("s1", &call("f"), &text("1"), &no_values));
        assert_ne!(base, call_key("s2", &call("f"), &text("1"), &no_values));
        assert_ne!(base, call_key("s1", &call("g"), &text("1"), &no_values));
        assert_ne!(base, call_key("s1", &call("f"), &text("2"), &no_values));
        let value = |h: &str| BTreeMap::from([("d".to_string(), ("directory", h.to_string()))]);
        assert_ne!(
            call_key("s1", &call("f"), &none, &value("h1")),
            call_key("s1", &call("f"), &none, &value("h2"))
        );
    }

    #[test]
    fn a_result_holding_a_secret_plaintext_is_seen() {
        let v = serde_json::json!({"kind": "container", "container": {"ops": [
            {"op": "with_secret_variable", "name": "T", "secret": {"name": "t", "uri": null, "plaintext": "s3cret"}}
        ]}});
        assert!(holds_plaintext(&v));
        let v = serde_json::json!({"secret": {"name": "t", "uri": "env:T", "plaintext": null}});
        assert!(!holds_plaintext(&v));
    }
}
