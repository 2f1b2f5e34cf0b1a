//! The engine inside `rbuild run`: opens the index, connects to containerd,
//! cleans up after crashed runs, serves the pipeline's session, and stops
//! everything cleanly on exit, failure, Ctrl-C, SIGTERM or SIGHUP.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use rbuild_containerd::Containerd;
use rbuild_containerd::managed::ManagedContainerd;
use rbuild_snapshotter::{Registry, RegistryOptions, host_platform};
use tokio::signal::unix::{SignalKind, signal};

use crate::index::{Index, RunRecord};
use crate::pipeline;
use crate::progress::{Mode, Progress};
use crate::secrets::Secrets;
use crate::session::Session;
use crate::solver::{Solver, SolverConfig};
use crate::volumes::Volumes;
use crate::worker::ContainerdWorker;

/// What the engine is told by its caller (the command line, in
/// `commands::`): where its state is, which containerd, how many jobs.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub root: PathBuf,
    pub cache_dir: PathBuf,
    pub address: PathBuf,
    pub namespace: String,
    pub jobs: usize,
    pub insecure_registries: Vec<String>,
    pub progress: Mode,
    /// `-i`: the shell to open in a failed step's container.
    pub debug_shell: Option<Vec<String>>,
    /// `--ca-cert`: extra CA certificates for every step's trust store.
    pub ca_certs: Vec<PathBuf>,
    /// `--locked`: every image tag must be pinned in rbuild.lock.
    pub locked: bool,
    /// `--cache-from`: remote cache repositories read from.
    pub cache_from: Vec<String>,
    /// `--cache-to`: the remote cache repository pushed to (and read from).
    pub cache_to: Option<String>,
    /// `--expect-cached`: fail rather than run a step.
    pub expect_cached: bool,
}

impl EngineConfig {
    /// The remote cache's repositories, checked (a bad one is an error
    /// before anything runs).
    pub fn remote(&self) -> Result<crate::solver::remote::RemoteSettings> {
        let from = self
            .cache_from
            .iter()
            .filter(|r| !r.trim().is_empty())
            .map(|r| crate::remote::parse_repository("--cache-from", r))
            .collect::<Result<Vec<_>, String>>()
            .map_err(anyhow::Error::msg)?;
        let to = match self.cache_to.as_deref().map(str::trim) {
            Some(r) if !r.is_empty() => {
                Some(crate::remote::parse_repository("--cache-to", r).map_err(anyhow::Error::msg)?)
            }
            _ => None,
        };
        Ok(crate::solver::remote::RemoteSettings { from, to })
    }
}

/// The containerd at the configured address, or else rbuild's own (started
/// now if it is not running; it stays up for the next runs).
pub async fn connect(config: &EngineConfig) -> Result<Containerd> {
    match Containerd::connect(&config.address, &config.namespace).await {
        Ok(c) => Ok(c),
        Err(rbuild_containerd::Error::Connect { .. }) => {
            let managed = ManagedContainerd::new(&config.root);
            let (c, started) = managed.start(&config.namespace).await?;
            if started {
                crate::progress::say(&format!(
                    "rbuild: no containerd answers at {}; started rbuild's own (socket {}, state under {}); \
                     later runs reuse it, `rbuild engine stop` stops it",
                    config.address.display(),
                    managed.socket().display(),
                    managed.dir().display()
                ));
            }
            Ok(c)
        }
        Err(e) => Err(e.into()),
    }
}

pub struct Engine {
    pub solver: Arc<Solver<ContainerdWorker>>,
    pub progress: Arc<Progress>,
    pub index: Arc<Index>,
}

impl Engine {
    pub async fn start(config: &EngineConfig) -> Result<Engine> {
        let remote = config.remote()?;
        std::fs::create_dir_all(&config.root)
            .with_context(|| format!("create state root {}", config.root.display()))?;
        let scratch = config.root.join("tmp");
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("create {}", scratch.display()))?;
        // Ctrl-C, SIGTERM and SIGHUP end every wait through this token: steps, lock
        // waits, registry requests (`Solver::shutdown` fires it).
        let cancel = rbuild_runtime::CancellationToken::new();
        let registry = Registry::new(RegistryOptions {
            insecure_hosts: config.insecure_registries.clone(),
            https_marker: Some(config.root.join("https-registries-used")),
            cancel: cancel.clone(),
            ..RegistryOptions::default()
        });
        registry.prewarm();
        let index = Arc::new(Index::open(&config.root.join("index.db"))?);
        crate::gc::keep_reserve(&config.root);
        crate::output::OutputStore::new(&config.root).remove_orphans();
        let ctd = connect(config).await?;
        let worker = ContainerdWorker::new(ctd, registry, Volumes::new(&config.root), scratch);
        // Before the dead runs' leases go with the orphans: a row they
        // wrote must get its GC root while its snapshot is still held.
        crate::consistency::repair(&index, &worker)
            .await
            .context("finish what an interrupted run or prune left half done")?;
        worker
            .remove_orphans()
            .await
            .context("clean up after an interrupted run")?;
        // Bundles are content-addressed and small: kept, not scratch.
        let extra_ca =
            crate::solver::ca::ExtraCa::read(&config.ca_certs, &config.root.join("ca-bundles"))
                .map_err(anyhow::Error::msg)?;
        let secrets = Arc::new(Secrets::default());
        let progress = Arc::new(Progress::stderr(config.progress, secrets.clone()));
        let solver = Solver::new(
            worker,
            index.clone(),
            progress.clone(),
            SolverConfig {
                platform: host_platform(),
                jobs: config.jobs,
                lock_dir: config.root.join("locks"),
                secrets,
                debug_shell: config.debug_shell.clone(),
                cancel,
                outputs: crate::output::OutputStore::new(&config.root),
                pipelines: Some(config.cache_dir.clone()),
                extra_ca,
                remote,
                expect_cached: config.expect_cached,
            },
        );
        Ok(Engine {
            solver,
            progress,
            index,
        })
    }
}

/// `rbuild run`: builds the pipeline, runs it against a fresh session, and
/// returns the exit code to leave with (the pipeline's own).
pub async fn run_pipeline(
    config: &EngineConfig,
    path: &Path,
    args: &[String],
    env: &[(&str, String)],
) -> Result<i32> {
    let started = Instant::now();
    let run_started = crate::gc::now_secs();
    // Compile while the engine connects; cargo's output goes straight to stderr.
    let build = {
        let path = path.to_path_buf();
        let cache = config.cache_dir.clone();
        tokio::task::spawn_blocking(move || pipeline::build(&path, &cache))
    };
    let engine = Engine::start(config).await;
    let built = build.await.context("pipeline build task")??;
    let engine = engine?;
    // Every behaviour a version gates is decided from this (README: API versions).
    let api = built.declared.api();
    tracing::debug!(%api, declared = ?built.declared, "pipeline API");

    let lock = crate::lock::ImageLock::open(&built.dir, config.locked)?.map(Arc::new);
    if let Some(lock) = &lock {
        engine.solver.set_image_lock(lock.clone());
    }
    let _in_use = pipeline::hold(&built.executable);
    let session =
        Session::start(engine.solver.clone(), api).context("start the pipeline session")?;
    let mut command = tokio::process::Command::new(&built.executable);
    command
        .args(args)
        .envs(session.env())
        .env(rbuild_sdk::PIPELINE_DIR_ENV, &built.dir)
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .kill_on_drop(true);
    // With a live display on the terminal, what the pipeline prints there
    // goes above it rather than through it.
    let tty = config.progress == Mode::Tty;
    let stdout_is_tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    // Under --progress json, its stderr lines become events too.
    if tty || config.progress == Mode::Json {
        command.stderr(std::process::Stdio::piped());
    }
    if tty && stdout_is_tty {
        command.stdout(std::process::Stdio::piped());
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("start pipeline {}", built.executable.display()))?;
    let mut relays = Vec::new();
    if let Some(out) = child.stdout.take() {
        relays.push(relay_lines(out, engine.progress.clone()));
    }
    if let Some(err) = child.stderr.take() {
        relays.push(relay_lines(err, engine.progress.clone()));
    }

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    // A closed terminal, a lost SSH session, a CI runner stopping its job.
    let mut sighup = signal(SignalKind::hangup())?;
    let status = tokio::select! {
        s = child.wait() => Some(s?),
        _ = sigint.recv() => None,
        _ = sigterm.recv() => None,
        _ = sighup.recv() => None,
    };
    if status.is_none() {
        let _ = child.kill().await;
    }
    for r in relays {
        let _ = r.await;
    }
    // Pushes to the remote cache finish (or, after an interrupt, stop);
    // whatever the pipeline left running is of no use to anyone now: stop
    // it, and wait until every container, task and snapshot is cleaned up.
    if status.is_some() {
        engine.solver.finish_pushes().await;
    }
    engine.solver.shutdown().await;
    engine.solver.worker().finish().await;
    drop(session);
    let code = match status {
        None => {
            crate::progress::say("rbuild: interrupted; running steps were stopped and cleaned up");
            130
        }
        Some(s) => s.code().unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            128 + s.signal().unwrap_or(0)
        }),
    };
    if let Some(lock) = &lock
        && let Err(e) = lock.save()
    {
        crate::progress::say(&format!("rbuild: warning: {e:#}"));
    }
    engine.progress.summary(started.elapsed().as_millis(), code);
    let (ran, cached) = engine.progress.counts();
    let timeline = engine.progress.timeline();
    let mut run = RunRecord {
        id: 0,
        started: crate::gc::now_secs() - started.elapsed().as_secs() as i64,
        duration_ms: started.elapsed().as_millis() as i64,
        // A call shows as it was typed: the pipeline and the function.
        pipeline: match env.iter().find(|(k, _)| *k == rbuild_sdk::wire::CALL_ENV) {
            Some((_, spec)) => match rbuild_sdk::wire::CallSpec::from_json(spec) {
                Ok(call) => format!("{} {}", path.display(), call.function),
                Err(_) => path.display().to_string(),
            },
            None => path.display().to_string(),
        },
        steps_run: ran as i64,
        steps_cached: cached as i64,
        exit_code: code as i64,
    };
    match engine.index.record_run(&run) {
        Ok(id) => {
            run.id = id;
            let rows: Vec<(u64, String)> = timeline
                .iter()
                .map(|e| (e.no, serde_json::to_string(e).expect("timeline serializes")))
                .collect();
            if let Err(e) = engine.index.put_run_steps(id, &rows) {
                tracing::warn!(error = %e, "could not record the run's timeline");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not record the run"),
    }
    crate::otlp::export(&run, engine.progress.started_at(), &timeline).await;
    auto_gc(&engine, config, run_started).await;
    Ok(code)
}

/// The default cache policy, after each run (see `gc::auto_policy`).
async fn auto_gc(engine: &Engine, config: &EngineConfig, run_started: i64) {
    let cached: u64 = match engine.index.entries() {
        Ok(e) => e.iter().map(|e| e.size.max(0) as u64).sum(),
        Err(_) => return,
    };
    if let Some(policy) = crate::gc::auto_policy(&config.root, cached, run_started) {
        match crate::gc::prune(
            &engine.index,
            engine.solver.worker(),
            &config.root,
            &policy,
            "evicted (the cache was over its size limit)",
        )
        .await
        {
            Ok(p) if p.entries > 0 => crate::progress::say(&format!(
                "rbuild: the cache was over its limit: removed {} least recently used entries ({})",
                p.entries,
                crate::gc::human_bytes(p.bytes)
            )),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "automatic cache pruning failed"),
        }
    }
}

/// Shows a pipeline's own output lines above the live display.
fn relay_lines(
    from: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    progress: Arc<Progress>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(from).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            progress.pipeline_line(&line);
        }
    })
}
