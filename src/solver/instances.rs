//! Running services (DESIGN.md invariant 9): an instance starts when a step
//! that binds it executes (a cache miss), never for a step answered from
//! the cache; it is ready when its log says so, its healthcheck passes, or
//! every exposed TCP port accepts a connection; it stops a grace period
//! after its last consumer ends, on `stop()`, or when the run ends.
//!
//! Identical definitions share one instance within a run (keyed by the
//! plan's identity); a private service gets one instance per consumer.
//! A service's own bindings are held while it runs, so an app bound to its
//! database keeps the database up.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::{Mutex, watch};

use super::services::{Binding, Healthcheck, ServiceKind, ServicePlan};
use super::*;
use crate::progress::{LineSplitter, StepNo, Stream};
use crate::secrets::StreamScrubber;

/// How long an instance outlives its last consumer, so that the next
/// step of a pipeline that binds it again does not restart it.
/// `RBUILD_SERVICE_GRACE_MS` changes it.
const CONSUMER_GRACE: Duration = Duration::from_secs(2);
/// SIGTERM to SIGKILL when a service is stopped.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Lines of a service's output kept for the error when it fails.
const TAIL_LINES: usize = 20;

fn consumer_grace() -> Duration {
    std::env::var("RBUILD_SERVICE_GRACE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(CONSUMER_GRACE)
}

/// The run's service instances.
#[derive(Default)]
pub struct Instances {
    /// Shared instances by identity.
    shared: StdMutex<HashMap<String, Arc<Instance>>>,
    /// Every instance made in this run (shared and private), for shutdown.
    all: StdMutex<Vec<Arc<Instance>>>,
    next: AtomicU64,
}

pub(super) struct Instance {
    plan: Arc<ServicePlan>,
    /// Unique in the run: the container's and the namespace's name part.
    id: String,
    run: Mutex<Option<Running>>,
    users: StdMutex<Users>,
}

#[derive(Default)]
struct Users {
    count: usize,
    /// Started by `service.start()`: runs until `stop()` or the end of the run.
    explicit: bool,
    /// Bumped by every acquire, so that a pending stop sees it was reused.
    generation: u64,
}

struct Running {
    ip: Ipv4Addr,
    attachment: Option<Attachment>,
    control: Option<Arc<dyn ServiceControl>>,
    exited: Option<watch::Receiver<Option<i64>>>,
    /// The service's own bindings, held while it runs.
    deps: Option<Lease>,
    /// Proxies of a host service, aborted at stop.
    proxies: Vec<tokio::task::JoinHandle<()>>,
    no: StepNo,
    since: Instant,
}

/// What a consumer holds while it runs: the instances it bound, and the
/// hosts entries that reach them.
pub struct Lease {
    hosts: Vec<(String, Ipv4Addr)>,
    held: Vec<Arc<Instance>>,
    release: Option<Arc<dyn Fn(Arc<Instance>) + Send + Sync>>,
}

impl Lease {
    /// `(alias, address)` for the consumer's /etc/hosts.
    pub fn hosts(&self) -> Vec<(String, Ipv4Addr)> {
        self.hosts.clone()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(release) = &self.release {
            for inst in self.held.drain(..) {
                release(inst);
            }
        }
    }
}

/// What a service was waiting for (for messages).
fn waited_for(plan: &ServicePlan) -> String {
    match &plan.kind {
        ServiceKind::Container {
            ready_log: Some(re),
            ..
        } => format!("a log line matching /{}/", re.as_str()),
        ServiceKind::Container {
            healthcheck: Some(h),
            ..
        } => format!("its healthcheck ({})", crate::graph::shell_words(&h.test)),
        ServiceKind::Container { ports, .. } if tcp_ports(ports).is_empty() => {
            "nothing (it exposes no TCP port)".to_string()
        }
        ServiceKind::Container { ports, .. } => format!(
            "TCP port{} {} to accept connections",
            if tcp_ports(ports).len() == 1 { "" } else { "s" },
            tcp_ports(ports)
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        ServiceKind::Host { .. } => "the host's ports".to_string(),
    }
}

fn tcp_ports(ports: &[(u16, String)]) -> Vec<u16> {
    ports
        .iter()
        .filter(|(_, proto)| proto.eq_ignore_ascii_case("tcp"))
        .map(|(p, _)| *p)
        .collect()
}

fn ports_text(plan: &ServicePlan) -> String {
    match &plan.kind {
        ServiceKind::Container { ports, .. } if ports.is_empty() => "no exposed ports".into(),
        ServiceKind::Container { ports, .. } => ports
            .iter()
            .map(|(p, proto)| format!("{p}/{proto}"))
            .collect::<Vec<_>>()
            .join(", "),
        ServiceKind::Host { ports } => ports
            .iter()
            .map(|(f, b)| format!("{}->{b}", f.unwrap_or(*b)))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// The last lines of a service's output, shared with its forwarder.
#[derive(Clone, Default)]
struct Tail(Arc<StdMutex<VecDeque<String>>>);

impl Tail {
    fn push(&self, line: &str) {
        let mut t = self.0.lock().unwrap();
        if t.len() == TAIL_LINES {
            t.pop_front();
        }
        t.push_back(line.to_string());
    }

    fn text(&self) -> String {
        let t = self.0.lock().unwrap();
        if t.is_empty() {
            return "    (no output)".into();
        }
        t.iter()
            .map(|l| format!("    | {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl<W: Worker> Solver<W> {
    /// Starts (or joins) the instances behind `bindings` and holds them
    /// until the returned lease is dropped.
    pub(super) fn acquire_services<'a>(
        self: &'a Arc<Self>,
        bindings: &'a [Binding],
    ) -> BoxFuture<'a, Result<Lease, SolveError>> {
        async move {
            let release: Arc<dyn Fn(Arc<Instance>) + Send + Sync> = {
                let this = Arc::downgrade(self);
                Arc::new(move |inst| {
                    if let Some(this) = this.upgrade() {
                        this.release_instance(inst);
                    }
                })
            };
            let mut lease = Lease {
                hosts: Vec::new(),
                held: Vec::new(),
                release: Some(release),
            };
            for b in bindings {
                let inst = self.instance_for(&b.service);
                // Counted before it starts, so that a failed start releases it.
                inst.users.lock().unwrap().count += 1;
                inst.users.lock().unwrap().generation += 1;
                lease.held.push(inst.clone());
                let ip = self.ensure_running(&inst).await?;
                lease.hosts.push((b.alias.clone(), ip));
            }
            Ok(lease)
        }
        .boxed()
    }

    /// The instance a binding of `plan` uses: the shared one, or a new
    /// private one.
    fn instance_for(&self, plan: &Arc<ServicePlan>) -> Arc<Instance> {
        let private = matches!(&plan.kind, ServiceKind::Container { private: true, .. });
        let make = || {
            let n = self.instances.next.fetch_add(1, Ordering::Relaxed);
            let inst = Arc::new(Instance {
                plan: plan.clone(),
                id: format!("{}-{n}", &plan.identity[..12.min(plan.identity.len())]),
                run: Mutex::new(None),
                users: StdMutex::new(Users::default()),
            });
            self.instances.all.lock().unwrap().push(inst.clone());
            inst
        };
        if private {
            return make();
        }
        let mut shared = self.instances.shared.lock().unwrap();
        shared
            .entry(plan.identity.clone())
            .or_insert_with(make)
            .clone()
    }

    /// The instance's address, once it is running and ready.
    async fn ensure_running(
        self: &Arc<Self>,
        inst: &Arc<Instance>,
    ) -> Result<Ipv4Addr, SolveError> {
        let mut run = inst.run.lock().await;
        if let Some(r) = run.as_ref() {
            if let Some(code) = r.exited.as_ref().and_then(|e| *e.borrow()) {
                return Err(SolveError::Invalid(format!(
                    "service {} ({}) exited with code {code} while steps still bind it",
                    inst.plan.hostname,
                    ports_text(&inst.plan)
                )));
            }
            return Ok(r.ip);
        }
        let started = self.start_instance(inst).await?;
        let ip = started.ip;
        *run = Some(started);
        Ok(ip)
    }

    async fn start_instance(self: &Arc<Self>, inst: &Arc<Instance>) -> Result<Running, SolveError> {
        let plan = &inst.plan;
        if self.cancel.is_cancelled() {
            return Err(SolveError::Cancelled);
        }
        let no = self.progress.service_started(&plan.description);
        let since = Instant::now();
        let result = match &plan.kind {
            ServiceKind::Host { ports } => {
                self.start_host_service(ports)
                    .await
                    .map(|(ip, attachment, proxies)| Running {
                        ip,
                        attachment,
                        control: None,
                        exited: None,
                        deps: None,
                        proxies,
                        no,
                        since,
                    })
            }
            ServiceKind::Container { .. } => self.start_container_service(inst, no, since).await,
        };
        match result {
            Ok(r) => {
                self.progress
                    .service_ready(no, &plan.description, since.elapsed().as_millis());
                Ok(r)
            }
            Err(e) => {
                let reason = e.to_string();
                self.progress.failed(no, &plan.description, &reason, &[]);
                Err(e)
            }
        }
    }

    async fn start_container_service(
        self: &Arc<Self>,
        inst: &Arc<Instance>,
        no: StepNo,
        since: Instant,
    ) -> Result<Running, SolveError> {
        let plan = &inst.plan;
        let ServiceKind::Container {
            rootfs,
            args,
            cwd,
            user,
            mounts,
            ports,
            healthcheck,
            ready_log,
            ready_timeout,
            ..
        } = &plan.kind
        else {
            unreachable!("a container service");
        };
        let deps = self.acquire_services(&plan.bindings).await?;
        let parent = self.materialize(rootfs).await?;
        let mounts = self.mount_requests(mounts).await?;
        let attachment = self.worker.attach().await?;
        let ip = attachment.ip;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let tail = Tail::default();
        let (log_ready_tx, mut log_ready) = watch::channel(false);
        let forwarder =
            self.forward_service_output(no, rx, tail.clone(), ready_log.clone(), log_ready_tx);
        let req = ServiceRequest {
            id: inst.id.clone(),
            parent,
            args: args.clone(),
            env: plan.kind.process_env(),
            cwd: cwd.clone(),
            user: user.clone(),
            mounts,
            ports: tcp_ports(ports),
            network: NetworkUse {
                attachment: attachment.clone(),
                hostname: plan.hostname.clone(),
                hosts: deps.hosts(),
            },
            output: tx,
        };
        let handle = match self.worker.start_service(req).await {
            Ok(h) => h,
            Err(e) => {
                let _ = self.worker.detach(attachment).await;
                forwarder.abort();
                return Err(self.service_error(plan, &format!("could not start: {e}"), &tail));
            }
        };
        let mut exited = handle.exited.clone();
        let control = handle.control.clone();
        let ready = async {
            if ready_log.is_some() {
                while !*log_ready.borrow_and_update() {
                    if log_ready.changed().await.is_err() {
                        // The output ended without the line.
                        std::future::pending::<()>().await;
                    }
                }
                Ok(())
            } else if let Some(h) = healthcheck {
                self.wait_healthy(&control, h).await
            } else {
                wait_ports(ip, &tcp_ports(ports)).await;
                Ok(())
            }
        };
        let outcome = tokio::select! {
            r = ready => r.map_err(|why| format!("its healthcheck failed: {why}")),
            code = wait_exit(&mut exited) => Err(format!("exited with code {code} before it was ready")),
            _ = tokio::time::sleep(*ready_timeout) => Err(format!(
                "was not ready after {}", humantime::format_duration(*ready_timeout)
            )),
            _ = self.cancel.cancelled() => Err("cancelled".to_string()),
        };
        match outcome {
            Ok(()) => {
                tracing::debug!(service = %plan.hostname, ms = since.elapsed().as_millis() as u64, "service ready");
                Ok(Running {
                    ip,
                    attachment: Some(attachment),
                    control: Some(control),
                    exited: Some(exited),
                    deps: Some(deps),
                    proxies: Vec::new(),
                    no,
                    since,
                })
            }
            Err(why) => {
                let _ = control.stop(Duration::from_millis(200)).await;
                let _ = self.worker.detach(attachment).await;
                // The rest of the output is in the tail once the forwarder ends.
                let _ = tokio::time::timeout(Duration::from_secs(2), forwarder).await;
                drop(deps);
                if self.cancel.is_cancelled() {
                    return Err(SolveError::Cancelled);
                }
                Err(self.service_error(plan, &why, &tail))
            }
        }
    }

    fn service_error(&self, plan: &ServicePlan, why: &str, tail: &Tail) -> SolveError {
        SolveError::Invalid(self.secrets.scrub_str(&format!(
            "service {} ({}) {why}\n  waited for: {}\n  its output (last lines):\n{}",
            plan.hostname,
            ports_text(plan),
            waited_for(plan),
            tail.text()
        )))
    }

    /// Runs the healthcheck until it passes; Err after `retries`
    /// consecutive failures past the start period.
    async fn wait_healthy(
        &self,
        control: &Arc<dyn ServiceControl>,
        h: &Healthcheck,
    ) -> Result<(), String> {
        let started = Instant::now();
        let mut failures = 0u32;
        let mut last_counted: Option<Instant> = None;
        // The first check at once, then quickly, backing off to the interval:
        // waiting a whole interval first (as Docker does) is the slow start
        // users complain of.
        let mut pause = Duration::from_millis(50);
        loop {
            match control.exec(h.test.clone(), h.timeout).await {
                Ok((0, _)) => return Ok(()),
                Ok((code, out)) => {
                    // Checked often, but failures count once per interval
                    // (as Docker counts them), after the start period.
                    let due = match last_counted {
                        Some(t) => t.elapsed() >= h.interval,
                        None => started.elapsed() >= h.interval,
                    };
                    if started.elapsed() >= h.start_period && due {
                        failures += 1;
                        last_counted = Some(Instant::now());
                    }
                    if failures >= h.retries.max(1) {
                        let out = String::from_utf8_lossy(&out);
                        return Err(format!(
                            "exit code {code} {} times{}",
                            failures,
                            if out.trim().is_empty() {
                                String::new()
                            } else {
                                format!(": {}", out.trim())
                            }
                        ));
                    }
                }
                Err(e) => return Err(e.to_string()),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(h.interval.max(Duration::from_millis(50)));
        }
    }

    /// A host service: the host's ports, reached from namespaces at the
    /// bridge's gateway address. Where nothing already listens there, a
    /// proxy on the gateway forwards to the host's loopback.
    async fn start_host_service(
        self: &Arc<Self>,
        ports: &[(Option<u16>, u16)],
    ) -> Result<
        (
            Ipv4Addr,
            Option<Attachment>,
            Vec<tokio::task::JoinHandle<()>>,
        ),
        SolveError,
    > {
        // The gateway is the bridge's: any namespace tells it.
        let probe = self.worker.attach().await?;
        let gateway = probe.gateway;
        self.worker.detach(probe).await?;
        let mut proxies = Vec::new();
        for (frontend, backend) in ports {
            let front = frontend.unwrap_or(*backend);
            let listen = SocketAddr::from((gateway, front));
            let target = SocketAddr::from((Ipv4Addr::LOCALHOST, *backend));
            match tokio::net::TcpListener::bind(listen).await {
                Ok(listener) => proxies.push(tokio::spawn(proxy(listener, target))),
                // Something listens on all addresses already (a database
                // bound to 0.0.0.0): namespaces reach it directly.
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && front == *backend => {}
                Err(e) => {
                    for p in &proxies {
                        p.abort();
                    }
                    return Err(SolveError::Invalid(format!(
                        "host service: cannot listen on {listen} for the host's port {backend}: {e}"
                    )));
                }
            }
        }
        Ok((gateway, None, proxies))
    }

    /// Shows a service's output under its own line, keeps its tail, and
    /// tells when a line matches the readiness pattern.
    fn forward_service_output(
        &self,
        no: StepNo,
        mut rx: tokio::sync::mpsc::Receiver<rbuild_runtime::OutputChunk>,
        tail: Tail,
        ready_log: Option<regex::Regex>,
        ready: watch::Sender<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let progress = self.progress.clone();
        let secrets = self.secrets.clone();
        tokio::spawn(async move {
            let mut streams = [
                (
                    StreamScrubber::new(secrets.clone()),
                    LineSplitter::default(),
                ),
                (StreamScrubber::new(secrets), LineSplitter::default()),
            ];
            let show = |line: &str, stream: Stream| {
                tail.push(line);
                progress.output(no, stream, line);
                if let Some(re) = &ready_log
                    && re.is_match(line)
                {
                    let _ = ready.send(true);
                }
            };
            while let Some(chunk) = rx.recv().await {
                let (i, stream) = match chunk.stream {
                    rbuild_runtime::Stream::Stdout => (0, Stream::Stdout),
                    rbuild_runtime::Stream::Stderr => (1, Stream::Stderr),
                };
                let (scrubber, lines) = &mut streams[i];
                let shown = scrubber.push(&chunk.bytes);
                for line in lines.push(&shown) {
                    show(&line, stream);
                }
            }
            for (i, stream) in [(0, Stream::Stdout), (1, Stream::Stderr)] {
                let (scrubber, lines) = &mut streams[i];
                let rest = scrubber.finish();
                for line in lines.push(&rest).into_iter().chain(lines.finish()) {
                    show(&line, stream);
                }
            }
        })
    }

    /// A consumer is done with an instance: stopped after the grace period
    /// unless someone binds it again (or started it explicitly).
    fn release_instance(self: &Arc<Self>, inst: Arc<Instance>) {
        let generation = {
            let mut u = inst.users.lock().unwrap();
            u.count = u.count.saturating_sub(1);
            if u.count > 0 || u.explicit {
                return;
            }
            u.generation
        };
        let this = self.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(consumer_grace()) => {}
                // Shutdown stops everything itself.
                _ = this.cancel.cancelled() => return,
            }
            let unused = {
                let u = inst.users.lock().unwrap();
                u.count == 0 && !u.explicit && u.generation == generation
            };
            if unused {
                this.stop_instance(&inst).await;
            }
        });
    }

    /// Stops an instance (idempotent): its process, namespace, proxies, and
    /// what it held of its own bindings.
    async fn stop_instance(&self, inst: &Arc<Instance>) {
        // Held until the instance is down: a second stop (the run's end
        // racing `up`'s own) waits for the first rather than returning
        // while the namespace is still being removed.
        let mut run = inst.run.lock().await;
        let Some(mut r) = run.take() else {
            return;
        };
        if let Some(control) = r.control.take()
            && let Err(e) = control.stop(STOP_GRACE).await
        {
            tracing::warn!(service = %inst.plan.hostname, error = %e, "stopping a service failed");
        }
        for p in r.proxies.drain(..) {
            p.abort();
        }
        if let Some(a) = r.attachment.take()
            && let Err(e) = self.worker.detach(a).await
        {
            tracing::warn!(service = %inst.plan.hostname, error = %e, "removing a service's network namespace failed");
        }
        drop(r.deps.take());
        self.progress
            .service_stopped(r.no, &inst.plan.description, r.since.elapsed().as_millis());
        drop(run);
    }

    /// `service.start()`: runs until `stop()` or the end of the run.
    pub async fn service_start(
        self: &Arc<Self>,
        def: &crate::graph::ServiceDef,
        api: crate::api::Api,
    ) -> Result<(), SolveError> {
        let plan = self.service(def, api).await?;
        let inst = self.instance_for(&plan);
        {
            let mut u = inst.users.lock().unwrap();
            u.explicit = true;
            u.generation += 1;
        }
        self.ensure_running(&inst).await.map(|_| ())
    }

    /// `service.stop()`: stops the shared instance of the definition, if it runs.
    pub async fn service_stop(
        self: &Arc<Self>,
        def: &crate::graph::ServiceDef,
        api: crate::api::Api,
    ) -> Result<(), SolveError> {
        let plan = self.service(def, api).await?;
        let inst = self
            .instances
            .shared
            .lock()
            .unwrap()
            .get(&plan.identity)
            .cloned();
        if let Some(inst) = inst {
            inst.users.lock().unwrap().explicit = false;
            self.stop_instance(&inst).await;
        }
        Ok(())
    }

    /// `rbuild call FN up`: runs the service with `ports` (host, service)
    /// forwarded from the host's loopback until the run is cancelled.
    pub async fn service_up(
        self: &Arc<Self>,
        def: &crate::graph::ServiceDef,
        ports: &[crate::graph::PortForwardDef],
        api: crate::api::Api,
    ) -> Result<(), SolveError> {
        let ports: Vec<(u16, u16)> = ports
            .iter()
            .map(|p| (p.frontend.unwrap_or(p.backend), p.backend))
            .collect();
        let plan = self.service(def, api).await?;
        let inst = self.instance_for(&plan);
        {
            let mut u = inst.users.lock().unwrap();
            u.explicit = true;
            u.generation += 1;
        }
        let ip = self.ensure_running(&inst).await?;
        let ports: Vec<(u16, u16)> = if ports.is_empty() {
            match &plan.kind {
                ServiceKind::Container { ports, .. } => {
                    tcp_ports(ports).into_iter().map(|p| (p, p)).collect()
                }
                ServiceKind::Host { .. } => Vec::new(),
            }
        } else {
            ports
        };
        let mut proxies = Vec::new();
        for (host, service) in &ports {
            let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, *host));
            let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
                SolveError::Invalid(format!(
                    "cannot forward 127.0.0.1:{host} to service {} port {service}: {e}; choose another host port with --ports HOST:{service}",
                    plan.hostname
                ))
            })?;
            self.progress.info(&format!(
                "service {} port {service} is at 127.0.0.1:{host}",
                plan.hostname
            ));
            proxies.push(tokio::spawn(proxy(
                listener,
                SocketAddr::from((ip, *service)),
            )));
        }
        let exited = inst
            .run
            .lock()
            .await
            .as_ref()
            .and_then(|r| r.exited.clone());
        let outcome = match exited {
            Some(mut exited) => tokio::select! {
                code = wait_exit(&mut exited) => Err(SolveError::Invalid(format!(
                    "service {} exited with code {code}", plan.hostname
                ))),
                _ = self.cancel.cancelled() => Ok(()),
            },
            None => {
                self.cancel.cancelled().await;
                Ok(())
            }
        };
        for p in proxies {
            p.abort();
        }
        self.stop_instance(&inst).await;
        outcome
    }

    /// Stops every instance of the run (its end, a failure, a signal).
    pub async fn stop_services(&self) {
        let all: Vec<_> = self.instances.all.lock().unwrap().clone();
        futures::future::join_all(all.iter().map(|inst| self.stop_instance(inst))).await;
    }
}

/// The exit code, once the process has ended.
async fn wait_exit(exited: &mut watch::Receiver<Option<i64>>) -> i64 {
    loop {
        if let Some(code) = *exited.borrow_and_update() {
            return code;
        }
        if exited.changed().await.is_err() {
            return exited.borrow().unwrap_or(-1);
        }
    }
}

/// Until every port accepts a TCP connection, polled with a short backoff.
async fn wait_ports(ip: Ipv4Addr, ports: &[u16]) {
    for &port in ports {
        let mut pause = Duration::from_millis(5);
        loop {
            let attempt = tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect((ip, port)),
            )
            .await;
            if let Ok(Ok(_)) = attempt {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
}

/// Forwards each connection accepted on `listener` to `target`.
async fn proxy(listener: tokio::net::TcpListener, target: SocketAddr) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}
