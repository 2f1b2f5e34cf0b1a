//! Services as the solver plans them: what a service runs (its container's
//! final state and command, or ports of the host), its identity and
//! hostname, and how a step's bindings enter its key.
//!
//! Planning starts nothing: a service's container is evaluated like any
//! value (its build steps run or come from the cache), and the plan says
//! what the service manager (`super::instances`) runs when a step bound to
//! it runs. Not here: lifetimes, readiness, networks.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;

use super::*;
use crate::api::Api;
use crate::graph::{ContainerDef, ContainerOp, ServiceDef, ServiceSource, shell_words};
use crate::key::KeyBuilder;

/// How long a service may take to become ready unless it says otherwise.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(120);

/// A service as the solver planned it: everything needed to run it, and its identity.
#[derive(Debug)]
pub struct ServicePlan {
    /// blake3 hex over the definition: the root tree's identity, env,
    /// cwd, user, mounts, args (after the entrypoint rules), exposed ports,
    /// healthcheck, ready settings, `with_hostname`'s hostname and the
    /// bindings' aliases and identities. Not `private`: a private
    /// instance runs the same thing, so its consumers keep their keys.
    pub identity: String,
    /// `with_hostname`'s, else stable for the definition: "svc-" + the
    /// first 12 hex digits of the identity.
    pub hostname: String,
    /// For progress: `service svc-… (postgres:16: 5432/tcp)`.
    pub description: String,
    pub kind: ServiceKind,
    /// The service's own bindings (each with its own, transitively).
    pub bindings: Vec<Binding>,
}

// Read as ServicePlan; one per service planned, so its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum ServiceKind {
    Container {
        /// What the solver materializes for a step's parent.
        rootfs: Tree,
        args: Vec<String>,
        /// Secrets as values: [`ServiceKind::process_env`] resolves them for the runtime only.
        env: Vec<(String, EnvValue)>,
        cwd: String,
        user: String,
        /// As a step's; `Solver::mount_requests` makes them the
        /// worker's when the service starts (not at planning: a bound
        /// step that hits the cache needs none of them).
        mounts: Vec<(String, MountSpec)>,
        /// Exposed `(port, "tcp"|"udp")`, in the order they were exposed.
        ports: Vec<(u16, String)>,
        /// `with_docker_healthcheck`'s, else the image config's `HEALTHCHECK`.
        healthcheck: Option<Healthcheck>,
        ready_log: Option<regex::Regex>,
        /// [`DEFAULT_READY_TIMEOUT`] unless given.
        ready_timeout: Duration,
        /// An instance per consumer rather than one shared.
        private: bool,
    },
    /// Ports of the host: `(frontend, backend)`, reached at `frontend`
    /// (default: `backend`) and forwarded to the host's `localhost:backend`.
    Host { ports: Vec<(Option<u16>, u16)> },
}

impl ServiceKind {
    /// The process environment as `NAME=value`, secrets resolved (for
    /// the runtime spec only: never for a key, a log or the index).
    pub fn process_env(&self) -> Vec<String> {
        match self {
            ServiceKind::Container { env, .. } => env
                .iter()
                .map(|(n, v)| match v {
                    EnvValue::Plain(p) => format!("{n}={p}"),
                    EnvValue::Secret(s) => {
                        format!("{n}={}", String::from_utf8_lossy(s.plaintext()))
                    }
                })
                .collect(),
            ServiceKind::Host { .. } => Vec::new(),
        }
    }
}

/// How a service shows it is ready: `test` exits 0 in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Healthcheck {
    /// argv to exec in the container (`CMD-SHELL`'s as `/bin/sh -c …`).
    pub test: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Failures in this time after the start do not count.
    pub start_period: Duration,
    /// Consecutive failures after which the service is unhealthy.
    pub retries: u32,
}

/// Docker's defaults for what a `HEALTHCHECK` leaves out.
const HEALTH_INTERVAL: Duration = Duration::from_secs(30);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
const HEALTH_RETRIES: u32 = 3;

impl Healthcheck {
    /// `with_docker_healthcheck(args, opts)`; durations in milliseconds
    /// (interval, timeout, start period), absent ones Docker's defaults.
    pub fn from_op(
        args: &[String],
        shell: bool,
        [interval, timeout, start_period]: [Option<u64>; 3],
        retries: Option<u32>,
    ) -> Result<Healthcheck, SolveError> {
        if args.is_empty() || (shell && args.iter().all(|a| a.trim().is_empty())) {
            return Err(SolveError::Invalid(
                "with_docker_healthcheck: no command: give the command that exits 0 when the service is ready (e.g. [\"pg_isready\"])".into(),
            ));
        }
        let ms = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_millis);
        Ok(Healthcheck {
            test: if shell {
                shell_test(&args.join(" "))
            } else {
                args.to_vec()
            },
            interval: ms(interval, HEALTH_INTERVAL),
            timeout: ms(timeout, HEALTH_TIMEOUT),
            start_period: ms(start_period, Duration::ZERO),
            retries: retries.unwrap_or(HEALTH_RETRIES),
        })
    }

    /// An image config's `Healthcheck`, as Docker writes it: `Test`
    /// `["CMD", argv…]`, `["CMD-SHELL", "line"]` or `["NONE"]`, durations
    /// in nanoseconds (0: the default). `None` for none, `NONE`, or a form
    /// rbuild does not know (it is then not waited for, as with no check).
    pub fn from_image_config(config: &serde_json::Value) -> Option<Healthcheck> {
        let h = config.get("Healthcheck")?;
        let test: Vec<String> = h
            .get("Test")?
            .as_array()?
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()?;
        let test = match test.split_first() {
            Some((form, argv)) if form == "CMD" && !argv.is_empty() => argv.to_vec(),
            Some((form, line)) if form == "CMD-SHELL" && !line.is_empty() => {
                shell_test(&line.join(" "))
            }
            _ => return None,
        };
        let ns = |name: &str, default: Duration| match h.get(name).and_then(|v| v.as_u64()) {
            Some(n) if n > 0 => Duration::from_nanos(n),
            _ => default,
        };
        Some(Healthcheck {
            test,
            interval: ns("Interval", HEALTH_INTERVAL),
            timeout: ns("Timeout", HEALTH_TIMEOUT),
            start_period: ns("StartPeriod", Duration::ZERO),
            retries: match h.get("Retries").and_then(|v| v.as_u64()) {
                Some(n) if n > 0 => u32::try_from(n).unwrap_or(u32::MAX),
                _ => HEALTH_RETRIES,
            },
        })
    }

    fn key_part(&self) -> Vec<String> {
        let mut parts = self.test.clone();
        parts.push(format!(
            "interval={}\0timeout={}\0start={}\0retries={}",
            self.interval.as_millis(),
            self.timeout.as_millis(),
            self.start_period.as_millis(),
            self.retries
        ));
        parts
    }
}

fn shell_test(line: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), line.to_string()]
}

/// What an image's config says about the services made from it.
#[derive(Default)]
pub(super) struct ImageServiceConfig {
    pub ports: Vec<(u16, String)>,
    pub healthcheck: Option<Healthcheck>,
}

impl ImageServiceConfig {
    pub(super) fn read(config_json: &str) -> ImageServiceConfig {
        let Ok(doc) = serde_json::from_str::<serde_json::Value>(config_json) else {
            return ImageServiceConfig::default();
        };
        let Some(config) = doc.get("config") else {
            return ImageServiceConfig::default();
        };
        let ports = config
            .get("ExposedPorts")
            .and_then(|p| p.as_object())
            .map(|ports| {
                ports
                    .keys()
                    .filter_map(|k| {
                        let (port, protocol) = k.split_once('/').unwrap_or((k, "tcp"));
                        Some((port.parse().ok()?, protocol.to_lowercase()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        ImageServiceConfig {
            ports,
            healthcheck: Healthcheck::from_image_config(config),
        }
    }
}

/// A service reached by `alias` from a step.
#[derive(Clone, Debug)]
pub struct Binding {
    pub alias: String,
    pub service: Arc<ServicePlan>,
}

/// A step's bindings as its key has them: `alias\0identity`, sorted by alias.
pub(super) fn bindings_key_parts(bindings: &[Binding]) -> Vec<String> {
    let mut parts: Vec<String> = bindings
        .iter()
        .map(|b| format!("{}\0{}", b.alias, b.service.identity))
        .collect();
    parts.sort();
    parts
}

/// Whether `name` is a hostname: DNS labels (letters, digits, `-`, at most
/// 63 each, not starting or ending with `-`), dot-separated when `dots`.
/// `call` and `what` name it in the error.
pub(super) fn check_hostname(
    call: &str,
    what: &str,
    name: &str,
    dots: bool,
) -> Result<(), SolveError> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    let ok = name.len() <= 253
        && if dots {
            name.split('.').all(label_ok)
        } else {
            label_ok(name)
        };
    if ok {
        return Ok(());
    }
    let shape = if dots {
        "labels of letters, digits and '-' separated by dots (each at most 63 characters, not starting or ending with '-')"
    } else {
        "letters, digits and '-' (at most 63 characters, not starting or ending with '-')"
    };
    Err(SolveError::Invalid(format!(
        "{call}: {what} {name:?} is not a hostname: use {shape}, e.g. \"db\""
    )))
}

/// The container a service definition runs, for messages: its image and
/// where the pipeline made it.
fn describe_container(def: &ContainerDef) -> String {
    let image = def.ops.iter().rev().find_map(|op| match op {
        ContainerOp::From { address } => Some(address.as_str()),
        _ => None,
    });
    let mut s = match image {
        Some(a) => format!("the container from {a}"),
        None => "the container".to_string(),
    };
    if let Some(Some(at)) = def.at.last() {
        s.push_str(&format!(" (made at {at})"));
    }
    s
}

impl<W: Worker> Solver<W> {
    /// Plans a service: evaluates its container (build steps run or come
    /// from the cache) and takes its final state. Starts nothing. The same
    /// definition planned twice in a run is the same plan.
    pub fn service<'a>(
        self: &'a Arc<Self>,
        def: &'a ServiceDef,
        api: Api,
    ) -> BoxFuture<'a, Result<Arc<ServicePlan>, SolveError>> {
        async move {
            if let Some(h) = &def.hostname {
                check_hostname("with_hostname", "hostname", h, false)?;
            }
            let (mut key, kind, bindings, what) = match &def.source {
                ServiceSource::Container {
                    container,
                    args,
                    use_entrypoint,
                    ready_log,
                    ready_timeout_ms,
                    private,
                } => {
                    let st = self.container(container, api).await?;
                    let argv = if args.is_empty() {
                        st.entrypoint
                            .iter()
                            .chain(&st.default_args)
                            .cloned()
                            .collect()
                    } else if *use_entrypoint {
                        st.entrypoint.iter().chain(args).cloned().collect()
                    } else {
                        args.clone()
                    };
                    if argv.is_empty() {
                        return Err(SolveError::Invalid(format!(
                            "as_service: {} has nothing to run: give args (as_service_opts with ServiceOpts {{ args, .. }}) or set an entrypoint or default args (with_entrypoint, with_default_args)",
                            describe_container(container)
                        )));
                    }
                    if matches!(st.rootfs, Tree::Empty) {
                        return Err(SolveError::Invalid(format!(
                            "as_service({}): the container has no root filesystem; start it with .from(\"<image>\")",
                            shell_words(&argv)
                        )));
                    }
                    let ready_log = match ready_log {
                        Some(re) => Some(regex::Regex::new(re).map_err(|e| {
                            SolveError::Invalid(format!(
                                "as_service: ready_log {re:?} is not a regular expression: {e}"
                            ))
                        })?),
                        None => None,
                    };
                    let ready_timeout = ready_timeout_ms.map_or(DEFAULT_READY_TIMEOUT, Duration::from_millis);
                    let env = super::values::env_key_parts(&st.env);
                    let mounts: Vec<(String, MountSpec)> = st
                        .mounts
                        .iter()
                        .map(|(t, m)| (t.clone(), m.clone()))
                        .collect();
                    let mount_parts: Vec<String> =
                        mounts.iter().map(|(t, m)| m.key_part(t)).collect();
                    let port_parts: Vec<String> =
                        st.ports.iter().map(|(p, q)| format!("{p}/{q}")).collect();
                    let mut key = KeyBuilder::new("service");
                    key.field("source", "container")
                        .field("input.rootfs", &st.rootfs.content_id())
                        .list("args", &argv)
                        .list("env", &env)
                        .field("workdir", &st.workdir)
                        .field("user", &st.user)
                        .field("platform", &self.platform.to_string())
                        .list("mounts", &mount_parts)
                        .list("ports", &port_parts)
                        .list(
                            "healthcheck",
                            &st.healthcheck
                                .as_ref()
                                .map(Healthcheck::key_part)
                                .unwrap_or_default(),
                        )
                        .field("ready_log", ready_log.as_ref().map_or("", |r| r.as_str()))
                        .field("ready_timeout_ms", &ready_timeout.as_millis().to_string());
                    let what = container
                        .ops
                        .iter()
                        .rev()
                        .find_map(|op| match op {
                            ContainerOp::From { address } => Some(address.clone()),
                            _ => None,
                        })
                        .unwrap_or_else(|| shell_words(&argv));
                    let ports = if port_parts.is_empty() {
                        "no ports".to_string()
                    } else {
                        port_parts.join(", ")
                    };
                    let kind = ServiceKind::Container {
                        rootfs: st.rootfs.clone(),
                        args: argv,
                        env: st.env.clone(),
                        cwd: st.workdir.clone(),
                        user: st.user.clone(),
                        mounts,
                        ports: st.ports.clone(),
                        healthcheck: st.healthcheck.clone(),
                        ready_log,
                        ready_timeout,
                        private: *private,
                    };
                    (key, kind, st.bindings, format!("{what}: {ports}"))
                }
                ServiceSource::Host { ports } => {
                    if ports.is_empty() {
                        return Err(SolveError::Invalid(
                            "host.service: no ports: give the host ports to reach (PortForward { backend: 8080, .. })".into(),
                        ));
                    }
                    let parts: Vec<String> = ports
                        .iter()
                        .map(|p| match p.frontend {
                            Some(f) => format!("{f}:{}", p.backend),
                            None => p.backend.to_string(),
                        })
                        .collect();
                    let mut key = KeyBuilder::new("service");
                    key.field("source", "host").list("ports", &parts);
                    let kind = ServiceKind::Host {
                        ports: ports.iter().map(|p| (p.frontend, p.backend)).collect(),
                    };
                    (key, kind, Vec::new(), format!("host: {}", parts.join(", ")))
                }
            };
            key.field("hostname", def.hostname.as_deref().unwrap_or_default())
                .list("bindings", &bindings_key_parts(&bindings));
            let identity = key.finish().to_hex();
            let hostname = def
                .hostname
                .clone()
                .unwrap_or_else(|| format!("svc-{}", &identity[..12]));
            let plan = ServicePlan {
                description: format!("service {hostname} ({what})"),
                identity,
                hostname,
                kind,
                bindings,
            };
            Ok(self.remember_service(plan))
        }
        .boxed()
    }

    /// The plan of this identity made first in this run (or this one).
    fn remember_service(&self, plan: ServicePlan) -> Arc<ServicePlan> {
        let mut planned = self
            .services_planned
            .lock()
            .expect("service plans lock poisoned");
        planned
            .entry(plan.identity.clone())
            .or_insert_with(|| Arc::new(plan))
            .clone()
    }
}

/// `service.endpoint`: `host:port` (the first exposed port unless `port`
/// is given), or `scheme://host:port`.
pub fn endpoint(
    plan: &ServicePlan,
    port: Option<u16>,
    scheme: Option<&str>,
) -> Result<String, SolveError> {
    let first = match &plan.kind {
        ServiceKind::Container { ports, .. } => ports.first().map(|(p, _)| *p),
        ServiceKind::Host { ports } => ports.first().map(|(f, b)| f.unwrap_or(*b)),
    };
    let Some(port) = port.or(first) else {
        return Err(SolveError::Invalid(format!(
            "service.endpoint: {} exposes no port: give one (EndpointOpts {{ port: Some(…), .. }}) or expose one with with_exposed_port",
            plan.description
        )));
    };
    let host = &plan.hostname;
    Ok(match scheme.filter(|s| !s.is_empty()) {
        Some(scheme) => format!("{scheme}://{host}:{port}"),
        None => format!("{host}:{port}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_dns_labels() {
        for ok in ["db", "svc-1a2b", "A9", &"a".repeat(63)] {
            check_hostname("with_hostname", "hostname", ok, false).unwrap();
        }
        for bad in ["", "-db", "db-", "d_b", "db.local", "dé", &"a".repeat(64)] {
            let e = check_hostname("with_hostname", "hostname", bad, false)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!(
                    "with_hostname: hostname {bad:?} is not a hostname"
                )),
                "{e}"
            );
        }
        check_hostname("with_service_binding", "alias", "db.internal", true).unwrap();
        assert!(check_hostname("with_service_binding", "alias", "db..x", true).is_err());
    }

    #[test]
    fn a_docker_healthcheck_is_read_as_docker_writes_it() {
        let config = serde_json::json!({"Healthcheck": {
            "Test": ["CMD-SHELL", "pg_isready -U postgres"],
            "Interval": 2_000_000_000u64, "Timeout": 0, "StartPeriod": 500_000_000u64, "Retries": 5
        }});
        assert_eq!(
            Healthcheck::from_image_config(&config),
            Some(Healthcheck {
                test: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "pg_isready -U postgres".into()
                ],
                interval: Duration::from_secs(2),
                timeout: HEALTH_TIMEOUT,
                start_period: Duration::from_millis(500),
                retries: 5,
            })
        );
        let cmd = serde_json::json!({"Healthcheck": {"Test": ["CMD", "curl", "-f", "http://localhost/"]}});
        let h = Healthcheck::from_image_config(&cmd).unwrap();
        assert_eq!(h.test, ["curl", "-f", "http://localhost/"]);
        assert_eq!((h.interval, h.retries), (HEALTH_INTERVAL, HEALTH_RETRIES));
        for none in [
            serde_json::json!({"Healthcheck": {"Test": ["NONE"]}}),
            serde_json::json!({"Healthcheck": {"Test": []}}),
            serde_json::json!({}),
        ] {
            assert_eq!(Healthcheck::from_image_config(&none), None, "{none}");
        }
    }

    #[test]
    fn a_healthcheck_needs_a_command() {
        let e = Healthcheck::from_op(&[], false, [None; 3], None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("with_docker_healthcheck: no command"), "{e}");
        let h = Healthcheck::from_op(
            &["redis-cli".into(), "ping".into()],
            true,
            [Some(100), None, None],
            Some(1),
        )
        .unwrap();
        assert_eq!(h.test, ["/bin/sh", "-c", "redis-cli ping"]);
        assert_eq!(h.interval, Duration::from_millis(100));
        assert_eq!(h.retries, 1);
    }

    #[test]
    fn an_image_exposes_its_ports_to_its_services() {
        let config =
            serde_json::json!({"config": {"ExposedPorts": {"5432/tcp": {}, "53/UDP": {}}}});
        let read = ImageServiceConfig::read(&config.to_string());
        assert_eq!(
            read.ports,
            [(53, "udp".to_string()), (5432, "tcp".to_string())]
        );
    }
}
