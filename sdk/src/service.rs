//! [`Service`]: a long-running container (or a port of the host) that
//! the commands of other containers reach by a hostname, its options, and
//! the builder calls on [`Container`] that make and bind services.

use std::borrow::Borrow;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_core::de::IgnoredAny;

use crate::container::Container;
use crate::error::Result;
use crate::host::Host;
use crate::options::list;
use crate::session::{ask, Session};
use crate::wire::{ContainerOp, PortForwardDef, Query, ServiceDef, ServiceSource};

/// A service: a container run for as long as the commands bound to it
/// need it, or ports of the host. Dagger's `Service`.
///
/// Immutable and lazy like every value: nothing starts when a service is
/// made. A `with_exec` of a container bound to it ([`Container::with_service_binding`])
/// starts it (once, however many commands use it at once) and it is
/// stopped when the last of them has ended; [`Service::start`] starts it
/// explicitly.
#[derive(Clone)]
pub struct Service {
    pub(crate) session: Arc<Session>,
    pub(crate) def: ServiceDef,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("def", &self.def).finish()
    }
}

/// Options of [`Container::as_service_opts`] (Dagger's `asService` arguments).
#[derive(Clone, Debug, Default)]
pub struct ServiceOpts {
    /// The command to run; empty: the container's entrypoint and default args.
    pub args: Vec<String>,
    /// Put the container's entrypoint in front of `args`.
    pub use_entrypoint: bool,
    /// A regular expression: the service is ready once a line of its output
    /// matches (as well as its healthcheck passing, if it has one).
    pub ready_log: Option<String>,
    /// How long the service may take to become ready (default: 120 s).
    pub ready_timeout: Option<Duration>,
    /// Every command bound to the service gets an instance of its own,
    /// instead of sharing one with the other commands that run at the same
    /// time. Not part of any cache key.
    pub private: bool,
}

/// Options of [`Container::with_docker_healthcheck`] (Docker's
/// `HEALTHCHECK` options; absent ones are Docker's defaults: 30 s
/// interval, 30 s timeout, no start period, 3 retries).
#[derive(Clone, Debug, Default)]
pub struct HealthcheckOpts {
    /// The arguments are one command line run by `/bin/sh -c`
    /// (`CMD-SHELL`), rather than the command itself (`CMD`).
    pub shell: bool,
    /// Time between checks.
    pub interval: Option<Duration>,
    /// How long a check may take before it counts as failed.
    pub timeout: Option<Duration>,
    /// Failures in this time after the start do not count.
    pub start_period: Option<Duration>,
    /// Consecutive failures after which the service is unhealthy.
    pub retries: Option<u32>,
}

/// Options of [`Service::endpoint`].
#[derive(Clone, Debug, Default)]
pub struct EndpointOpts {
    /// The port; absent: the service's first exposed port.
    pub port: Option<u16>,
    /// A URL scheme (`http`): the endpoint is `scheme://host:port`.
    pub scheme: Option<String>,
}

/// A port forwarded to a service (Dagger's `PortForward`): `backend` is the
/// port the service listens on, `frontend` the one it is reached by
/// (default: the same).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortForward {
    /// Where the port is reached (absent: `backend`).
    pub frontend: Option<u16>,
    /// Where the service (or the host) listens.
    pub backend: u16,
}

impl From<&PortForward> for PortForwardDef {
    fn from(p: &PortForward) -> PortForwardDef {
        PortForwardDef {
            frontend: p.frontend,
            backend: p.backend,
        }
    }
}

fn millis(d: Option<Duration>) -> Option<u64> {
    d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ports(ports: &[PortForward]) -> Vec<PortForwardDef> {
    ports.iter().map(PortForwardDef::from).collect()
}

impl Container {
    /// This container as a service running its entrypoint and default
    /// args (Dagger's `asService()`). Nothing runs until a bound command
    /// or [`Service::start`] needs it.
    pub fn as_service(&self) -> Service {
        self.as_service_opts(ServiceOpts::default())
    }

    /// [`Container::as_service`] with another command, a ready log line, a
    /// ready timeout or an instance per user.
    pub fn as_service_opts(&self, opts: ServiceOpts) -> Service {
        Service {
            session: self.session.clone(),
            def: ServiceDef {
                source: ServiceSource::Container {
                    container: self.def(),
                    args: opts.args,
                    use_entrypoint: opts.use_entrypoint,
                    ready_log: opts.ready_log,
                    ready_timeout_ms: millis(opts.ready_timeout),
                    private: opts.private,
                },
                hostname: None,
            },
        }
    }

    /// Makes `service` reachable as `alias` (a hostname) from this
    /// container's later `with_exec`s, which each start it (if it is not
    /// running yet) and wait until it is ready (Dagger's
    /// `withServiceBinding`). A step's cache key includes each bound
    /// service's definition, so a changed service runs its consumers again.
    #[track_caller]
    pub fn with_service_binding(
        &self,
        alias: impl Into<String>,
        service: impl Borrow<Service>,
    ) -> Container {
        self.with(ContainerOp::WithServiceBinding {
            alias: alias.into(),
            service: service.borrow().def.clone(),
        })
    }

    /// How a service of this container shows it is ready: `args` runs in
    /// it and exits 0 (Docker's `HEALTHCHECK CMD`; with `opts.shell`,
    /// `CMD-SHELL`). Replaces the image's `HEALTHCHECK`; changes no step's
    /// key, only the identity of a service made from this container.
    #[track_caller]
    pub fn with_docker_healthcheck<I, S>(&self, args: I, opts: HealthcheckOpts) -> Container
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.with(ContainerOp::WithDockerHealthcheck {
            args: list(args),
            shell: opts.shell,
            interval_ms: millis(opts.interval),
            timeout_ms: millis(opts.timeout),
            start_period_ms: millis(opts.start_period),
            retries: opts.retries,
        })
    }
}

impl Host {
    /// Ports of the machine running rbuild as a service (Dagger's
    /// `Host.service`): a bound container reaches `localhost:backend` of
    /// the host at `ALIAS:frontend`.
    pub fn service(&self, ports: &[PortForward]) -> Service {
        Service {
            session: self.session.clone(),
            def: ServiceDef {
                source: ServiceSource::Host {
                    ports: self::ports(ports),
                },
                hostname: None,
            },
        }
    }
}

impl Service {
    /// This service with the hostname it is reached by (a DNS label:
    /// letters, digits and `-`), instead of one derived from its definition.
    pub fn with_hostname(&self, hostname: impl Into<String>) -> Service {
        let mut def = self.def.clone();
        def.hostname = Some(hostname.into());
        Service {
            session: self.session.clone(),
            def,
        }
    }

    /// The hostname the service is reached by. Starts nothing (the
    /// container's build steps run, or come from the cache).
    pub fn hostname(&self) -> impl Future<Output = Result<String>> + Send + 'static {
        ask(
            &self.session,
            Query::ServiceHostname {
                service: self.def.clone(),
            },
        )
    }

    /// `host:port` of the service (its first exposed port unless
    /// `opts.port` is given), or `scheme://host:port`. Starts nothing.
    pub fn endpoint(
        &self,
        opts: EndpointOpts,
    ) -> impl Future<Output = Result<String>> + Send + 'static {
        ask(
            &self.session,
            Query::ServiceEndpoint {
                service: self.def.clone(),
                port: opts.port,
                scheme: opts.scheme,
            },
        )
    }

    /// Starts the service and waits until it is ready; it runs until
    /// [`Service::stop`] or the end of the pipeline.
    pub fn start(&self) -> impl Future<Output = Result<Service>> + Send + 'static {
        self.answered(Query::ServiceStart {
            service: self.def.clone(),
        })
    }

    /// Stops the service started by [`Service::start`].
    pub fn stop(&self) -> impl Future<Output = Result<Service>> + Send + 'static {
        self.answered(Query::ServiceStop {
            service: self.def.clone(),
        })
    }

    /// Runs the service with `ports` forwarded from the host's
    /// `localhost:frontend` until the user stops it (Ctrl-C); what
    /// `rbuild call FN up` does with a returned service.
    pub fn up(&self, ports: &[PortForward]) -> impl Future<Output = Result<()>> + Send + 'static {
        let answer = ask::<IgnoredAny>(
            &self.session,
            Query::ServiceUp {
                service: self.def.clone(),
                ports: self::ports(ports),
            },
        );
        async move { answer.await.map(|_| ()) }
    }

    fn answered(&self, query: Query) -> impl Future<Output = Result<Service>> + Send + 'static {
        let answer = ask::<IgnoredAny>(&self.session, query);
        let this = self.clone();
        async move {
            answer.await?;
            Ok(this)
        }
    }
}
