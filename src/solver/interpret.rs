//! Interpreting the pipeline's builder calls: a container's, directory's
//! or file's chain of operations becomes container state, trees and the
//! steps that make them. What a step's key is lives in [`super::values`].

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use rbuild_snapshotter::tree::Filter;

use super::inputs::Input;
use super::*;
use crate::api::Api;
use crate::graph::{
    ContainerDef, ContainerOp, DirectoryDef, DirectoryOp, DirectorySource, FileDef, SecretDef,
    shell_words,
};
use crate::secrets::SecretValue;

impl<W: Worker> Solver<W> {
    // ---------------------------------------------------------------- values

    /// Evaluates a container value: every step in it has a result after this.
    pub fn container<'a>(
        self: &'a Arc<Self>,
        def: &'a ContainerDef,
        api: Api,
    ) -> BoxFuture<'a, Result<ContainerState, SolveError>> {
        async move {
            let inputs = self.container_inputs(&def.ops, api);
            inputs
                .drive(async {
                    let mut st = ContainerState::scratch();
                    for (i, op) in def.ops.iter().enumerate() {
                        let at = def.at.get(i).cloned().flatten();
                        let input = inputs.get(i).await?;
                        self.container_op(&mut st, op, at, input, api).await?;
                    }
                    Ok(st)
                })
                .await
        }
        .boxed()
    }

    /// One op on `st`; `input` is what it takes from another value
    /// (see [`super::inputs`]), evaluated.
    pub(super) async fn container_op(
        self: &Arc<Self>,
        st: &mut ContainerState,
        op: &ContainerOp,
        at: Option<String>,
        input: Option<Input>,
        api: Api,
    ) -> Result<(), SolveError> {
        match op {
            ContainerOp::From { .. } | ContainerOp::Import { .. } => {
                *st = ContainerState::from_image(Input::image(input)?);
            }
            // The module's container (evaluated under the module's API),
            // or the caller's (under the caller's): the ops after it are
            // this value's own.
            ContainerOp::Module { .. } | ContainerOp::Value { .. } => {
                *st = Input::container(input)?;
            }
            ContainerOp::WithExposedPort { port, protocol } => st.expose(*port, protocol),
            ContainerOp::WithServiceBinding { alias, .. } => {
                super::services::check_hostname("with_service_binding", "alias", alias, true)?;
                let service = Input::service(input)?;
                st.bindings.retain(|b| &b.alias != alias);
                st.bindings.push(Binding {
                    alias: alias.clone(),
                    service,
                });
            }
            ContainerOp::WithDockerHealthcheck {
                args,
                shell,
                interval_ms,
                timeout_ms,
                start_period_ms,
                retries,
            } => {
                st.healthcheck = Some(Healthcheck::from_op(
                    args,
                    *shell,
                    [*interval_ms, *timeout_ms, *start_period_ms],
                    *retries,
                )?);
            }
            ContainerOp::WithRegistryAuth {
                address,
                username,
                secret,
            } => {
                // Kept as given: what it covers (a registry host, or a
                // repository prefix in one) is matched when pushing.
                super::images::auth_scope(address)?;
                let secret = self.secret(secret, api)?;
                st.registry_auth
                    .insert(address.trim().to_string(), (username.clone(), secret));
            }
            ContainerOp::WithEnvVariable {
                name,
                value,
                expand,
            } => {
                check_env_name(name)?;
                let value = if *expand {
                    expand_env(value, |n| st.plain_env(n).map(str::to_string))
                } else {
                    value.clone()
                };
                st.set_env(name, EnvValue::Plain(value));
            }
            ContainerOp::WithoutEnvVariable { name } => st.env.retain(|(n, _)| n != name),
            ContainerOp::WithSecretVariable { name, secret } => {
                check_env_name(name)?;
                let secret = self.secret(secret, api)?;
                st.set_env(name, EnvValue::Secret(secret));
            }
            ContainerOp::WithWorkdir { path } => st.workdir = st.resolve(path),
            ContainerOp::WithUser { name } => st.user = name.clone(),
            ContainerOp::WithEntrypoint { args } => {
                st.entrypoint = args.clone();
                // Docker's and Dagger's rule from API 0.2 on: a new
                // entrypoint does not run with the old one's arguments.
                if api >= crate::api::ENTRYPOINT_RESETS_DEFAULT_ARGS {
                    st.default_args.clear();
                }
            }
            ContainerOp::WithDefaultArgs { args } => st.default_args = args.clone(),
            ContainerOp::WithLabel { name, value } => {
                st.labels.insert(name.clone(), value.clone());
            }
            ContainerOp::WithExec {
                args,
                expect,
                stdin,
                use_entrypoint,
            } => {
                let mut argv = if args.is_empty() {
                    st.default_args.clone()
                } else {
                    args.clone()
                };
                if *use_entrypoint || args.is_empty() {
                    argv = st.entrypoint.iter().cloned().chain(argv).collect();
                }
                if argv.is_empty() {
                    return Err(SolveError::Invalid(
                        "with_exec: no command: the argument list is empty and the container has no default args".into(),
                    ));
                }
                if matches!(st.rootfs, Tree::Empty) {
                    return Err(SolveError::Invalid(format!(
                        "with_exec({}): the container has no root filesystem; start it with .from(\"<image>\")",
                        shell_words(&argv)
                    )));
                }
                let mut exec = st.exec_plan(argv, at, stdin.clone(), *expect, api);
                self.install_ca(&st.rootfs, &mut exec).await?;
                let plan = StepPlan::exec(st.rootfs.clone(), exec, &self.platform.to_string());
                let result = self.step(plan).await?;
                st.rootfs = Tree::Step(result.clone());
                st.last_exec = Some(result);
            }
            ContainerOp::WithDirectory {
                path,
                include,
                exclude,
                owner,
                ..
            } => {
                let source = Input::directory(input)?;
                let action = PlannedAction::CopyDir {
                    dest: st.resolve(path),
                    source,
                    include: include.clone(),
                    exclude: exclude.clone(),
                    owner: owner.clone(),
                };
                st.rootfs = self.apply(st.rootfs.clone(), action).await?;
            }
            ContainerOp::WithFile {
                path,
                permissions,
                owner,
                ..
            } => {
                let source = Input::file(input)?;
                let action = PlannedAction::CopyFile {
                    dest: st.resolve(path),
                    source,
                    permissions: *permissions,
                    owner: owner.clone(),
                };
                st.rootfs = self.apply(st.rootfs.clone(), action).await?;
            }
            ContainerOp::WithNewFile {
                path,
                contents,
                permissions,
                owner,
            } => {
                let action = PlannedAction::Write {
                    dest: st.resolve(path),
                    contents: Arc::new(contents.clone().into_bytes()),
                    permissions: permissions.unwrap_or(0o644),
                    owner: owner.clone(),
                };
                st.rootfs = self.apply(st.rootfs.clone(), action).await?;
            }
            ContainerOp::WithoutFile { path } | ContainerOp::WithoutDirectory { path } => {
                let action = PlannedAction::Remove {
                    path: st.resolve(path),
                };
                st.rootfs = self.apply(st.rootfs.clone(), action).await?;
            }
            ContainerOp::WithMountedDirectory { path, .. } => {
                let dir = Input::directory(input)?;
                st.mounts
                    .insert(st.resolve(path), MountSpec::Directory(dir));
            }
            ContainerOp::WithMountedFile { path, .. } => {
                let f = Input::file(input)?;
                st.mounts.insert(st.resolve(path), MountSpec::File(f));
            }
            ContainerOp::WithMountedCache {
                path,
                volume,
                sharing,
            } => {
                if volume.is_empty() {
                    return Err(SolveError::Invalid(
                        "with_mounted_cache: the cache volume needs a name".into(),
                    ));
                }
                st.mounts.insert(
                    st.resolve(path),
                    MountSpec::Cache {
                        volume: volume.clone(),
                        sharing: *sharing,
                    },
                );
            }
            ContainerOp::WithMountedTemp { path } => {
                st.mounts.insert(st.resolve(path), MountSpec::Temp);
            }
            ContainerOp::WithMountedSecret { path, secret, mode } => {
                let secret = self.secret(secret, api)?;
                st.mounts.insert(
                    st.resolve(path),
                    MountSpec::Secret {
                        secret,
                        mode: mode.unwrap_or(0o400),
                    },
                );
            }
            ContainerOp::WithoutMount { path } => {
                st.mounts.remove(&st.resolve(path));
            }
        }
        Ok(())
    }

    /// Evaluates a directory value.
    pub fn directory<'a>(
        self: &'a Arc<Self>,
        def: &'a DirectoryDef,
        api: Api,
    ) -> BoxFuture<'a, Result<DirValue, SolveError>> {
        async move {
            let inputs = self.directory_inputs(&def.ops, api);
            inputs.drive(self.directory_walk(def, &inputs, api)).await
        }
        .boxed()
    }

    async fn directory_walk(
        self: &Arc<Self>,
        def: &DirectoryDef,
        inputs: &super::inputs::Inputs<'_>,
        api: Api,
    ) -> Result<DirValue, SolveError> {
        {
            let mut dir = match &def.source {
                DirectorySource::Empty => DirValue {
                    tree: Tree::Empty,
                    path: "/".into(),
                },
                DirectorySource::Host {
                    path,
                    include,
                    exclude,
                    gitignore,
                } => {
                    let filter = Filter {
                        include: include.clone(),
                        exclude: exclude.clone(),
                        gitignore: *gitignore,
                    };
                    DirValue {
                        tree: Tree::Host(self.host_dir(path, filter).await?),
                        path: "/".into(),
                    }
                }
                DirectorySource::Container { container, path } => {
                    let st = self.container(container, api).await?;
                    DirValue {
                        path: st.resolve(path),
                        tree: st.rootfs,
                    }
                }
                DirectorySource::Module { call } => self.module_directory(call, api).await?,
                DirectorySource::Value { handle } => self.bound_directory(handle).await?,
            };
            for (i, op) in def.ops.iter().enumerate() {
                let input = inputs.get(i).await?;
                dir = self.directory_op(dir, op, input).await?;
            }
            Ok(dir)
        }
    }

    /// One op on `dir`; `input` is what it takes from another value,
    /// evaluated.
    pub(super) async fn directory_op(
        self: &Arc<Self>,
        dir: DirValue,
        op: &DirectoryOp,
        input: Option<Input>,
    ) -> Result<DirValue, SolveError> {
        let at = |p: &str| join_path(&dir.path, p);
        let action = match op {
            DirectoryOp::Directory { path } => {
                return Ok(DirValue {
                    path: at(path),
                    tree: dir.tree,
                }
                .rerooted());
            }
            DirectoryOp::WithNewFile {
                path,
                contents,
                permissions,
            } => PlannedAction::Write {
                dest: at(path),
                contents: Arc::new(contents.clone().into_bytes()),
                permissions: permissions.unwrap_or(0o644),
                owner: None,
            },
            DirectoryOp::WithFile {
                path, permissions, ..
            } => PlannedAction::CopyFile {
                dest: at(path),
                source: Input::file(input)?,
                permissions: *permissions,
                owner: None,
            },
            DirectoryOp::WithDirectory {
                path,
                include,
                exclude,
                ..
            } => PlannedAction::CopyDir {
                dest: at(path),
                source: Input::directory(input)?,
                include: include.clone(),
                exclude: exclude.clone(),
                owner: None,
            },
            DirectoryOp::WithoutFile { path } | DirectoryOp::WithoutDirectory { path } => {
                PlannedAction::Remove { path: at(path) }
            }
            // Filter and diff make a tree of their own.
            DirectoryOp::Filter { include, exclude } => {
                // A host directory is filtered in its listing: no copy, and
                // its identity is what the filter kept, so a change in an
                // excluded path changes nothing downstream.
                if let DirValue {
                    tree: Tree::Host(listing),
                    path,
                } = dir.clone().rerooted()
                    && path == "/"
                {
                    let kept = listing
                        .filtered(include, exclude)
                        .map_err(SolveError::from)?;
                    return Ok(DirValue {
                        tree: Tree::Host(Arc::new(kept)),
                        path: "/".into(),
                    });
                }
                let action = PlannedAction::CopyDir {
                    dest: "/".into(),
                    source: dir,
                    include: include.clone(),
                    exclude: exclude.clone(),
                    owner: None,
                };
                return Ok(DirValue {
                    tree: self.apply(Tree::Empty, action).await?,
                    path: "/".into(),
                });
            }
            DirectoryOp::Diff { .. } => {
                let action = PlannedAction::Diff {
                    base: dir,
                    other: Input::directory(input)?,
                };
                return Ok(DirValue {
                    tree: self.apply(Tree::Empty, action).await?,
                    path: "/".into(),
                });
            }
        };
        Ok(DirValue {
            tree: self.apply(dir.tree, action).await?,
            path: dir.path,
        })
    }

    /// Evaluates a file value.
    pub async fn file(self: &Arc<Self>, def: &FileDef, api: Api) -> Result<FileValue, SolveError> {
        match def {
            FileDef::Host { path } => {
                let listing = self.host_file(path).await?;
                let name = listing.entries[0].rel.clone();
                Ok(FileValue {
                    tree: Tree::Host(listing),
                    path: format!("/{name}"),
                })
            }
            FileDef::Container { container, path } => {
                let st = self.container(container, api).await?;
                Ok(FileValue {
                    path: st.resolve(path),
                    tree: st.rootfs,
                })
            }
            FileDef::Directory { directory, path } => {
                let dir = self.directory(directory, api).await?;
                Ok(FileValue {
                    path: join_path(&dir.path, path),
                    tree: dir.tree,
                })
            }
            FileDef::Tarball {
                container,
                format,
                name,
            } => {
                let st = self.container(container, api).await?;
                self.tarball(&st, crate::graph::image_format(format), name.as_deref())
                    .await
            }
            FileDef::Module { call } => self.module_file(call, api).await,
            FileDef::Value { handle } => self.bound_file(handle).await,
        }
    }

    /// Reads a secret now (errors only): see `session`'s secrets-first pass.
    pub fn check_secret(&self, def: &SecretDef, api: Api) -> Result<(), SolveError> {
        self.secret(def, api).map(drop)
    }

    /// A secret's value, read by `api`'s rule (see [`crate::secrets`]).
    pub(super) fn secret(&self, def: &SecretDef, api: Api) -> Result<Arc<SecretValue>, SolveError> {
        let rule = crate::secrets::Rule::of(api);
        // A module's secret argument: the caller's secret, by its handle.
        if let (None, Some(handle)) = (
            &def.plaintext,
            def.uri
                .as_deref()
                .and_then(|u| u.strip_prefix(rbuild_sdk::wire::SECRET_HANDLE)),
        ) {
            return match self.bound(handle)? {
                (crate::graph::ModuleArgDef::Secret { secret }, caller) => self
                    .secrets
                    .resolve(&secret, crate::secrets::Rule::of(caller))
                    .map_err(SolveError::Invalid),
                (other, _) => Err(SolveError::Invalid(format!(
                    "secret {:?} is bound to a {}, not a secret",
                    def.name,
                    other.kind()
                ))),
            };
        }
        self.secrets.resolve(def, rule).map_err(SolveError::Invalid)
    }
}

fn check_env_name(name: &str) -> Result<(), SolveError> {
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        return Err(SolveError::Invalid(format!(
            "{name:?} is not a valid environment variable name"
        )));
    }
    Ok(())
}

/// Expands `$NAME` and `${NAME}` with `lookup`; unknown names expand to "".
pub fn expand_env(value: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        let mut name = String::new();
        if chars.peek() == Some(&'{') {
            chars.next();
            for c in chars.by_ref() {
                if c == '}' {
                    break;
                }
                name.push(c);
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    name.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            if name.is_empty() {
                out.push('$');
                continue;
            }
        }
        out.push_str(&lookup(&name).unwrap_or_default());
    }
    out
}

/// Resolves `path` against the working directory `base`, as `cd` would.
pub fn join_path(base: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{}", base.trim_end_matches('/'), path)
    };
    let mut parts: Vec<&str> = Vec::new();
    for p in joined.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}
