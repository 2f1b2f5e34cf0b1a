//! What a container's or directory's ops take from other values (an image,
//! a file, a directory, another container, a service) starts evaluating as
//! soon as the value that holds the ops is asked for — every input at once —
//! while the walk over the ops goes on in order and awaits each input when
//! it gets there. So independent branches (a backend and a frontend copied
//! into one image) run concurrently without the pipeline joining them, as in
//! BuildKit and Dagger; `--jobs` still bounds the steps. Each input is
//! evaluated once (and every step, pull and host scan in it is memoised for
//! the run), so nothing runs twice and nothing runs that the walk would not
//! have reached: an op's input is only what that op would have evaluated.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::{BoxFuture, Either, Shared};

use super::*;
use crate::api::Api;
use crate::graph::{ContainerOp, DirectoryOp};

/// An op's input, evaluated.
#[derive(Clone)]
pub(super) enum Input {
    Image(Arc<ResolvedImage>),
    Directory(DirValue),
    File(FileValue),
    Service(Arc<ServicePlan>),
    /// A whole container: what a module returned, or a module's argument.
    Container(Box<ContainerState>),
}

type Pending<'a> = Shared<BoxFuture<'a, Result<Input, SolveError>>>;

/// The inputs of a list of ops, by op index, evaluating together.
pub(super) struct Inputs<'a> {
    pending: Vec<Option<Pending<'a>>>,
}

impl<'a> Inputs<'a> {
    fn new(
        futures: impl Iterator<Item = Option<BoxFuture<'a, Result<Input, SolveError>>>>,
    ) -> Self {
        Inputs {
            pending: futures.map(|f| f.map(FutureExt::shared)).collect(),
        }
    }

    /// Op `i`'s input (None: it takes none), once evaluated.
    pub(super) async fn get(&self, i: usize) -> Result<Option<Input>, SolveError> {
        match self.pending.get(i).cloned().flatten() {
            Some(p) => p.await.map(Some),
            None => Ok(None),
        }
    }

    /// Runs `walk` while every input is evaluated; `walk`'s result. An
    /// input's failure is the walk's when it gets to that op.
    pub(super) async fn drive<T>(
        &self,
        walk: impl std::future::Future<Output = Result<T, SolveError>>,
    ) -> Result<T, SolveError> {
        let all = futures::future::join_all(self.pending.iter().flatten().cloned());
        futures::pin_mut!(walk);
        match futures::future::select(walk, all).await {
            Either::Left((result, _)) => result,
            Either::Right((_, walk)) => walk.await,
        }
    }
}

impl Input {
    fn mismatch(what: &str) -> SolveError {
        SolveError::Internal(format!("an op's input is not the {what} it asked for"))
    }

    pub(super) fn image(input: Option<Input>) -> Result<Arc<ResolvedImage>, SolveError> {
        match input {
            Some(Input::Image(i)) => Ok(i),
            _ => Err(Input::mismatch("image")),
        }
    }

    pub(super) fn directory(input: Option<Input>) -> Result<DirValue, SolveError> {
        match input {
            Some(Input::Directory(d)) => Ok(d),
            _ => Err(Input::mismatch("directory")),
        }
    }

    pub(super) fn file(input: Option<Input>) -> Result<FileValue, SolveError> {
        match input {
            Some(Input::File(f)) => Ok(f),
            _ => Err(Input::mismatch("file")),
        }
    }

    pub(super) fn container(input: Option<Input>) -> Result<ContainerState, SolveError> {
        match input {
            Some(Input::Container(c)) => Ok(*c),
            _ => Err(Input::mismatch("container")),
        }
    }

    pub(super) fn service(input: Option<Input>) -> Result<Arc<ServicePlan>, SolveError> {
        match input {
            Some(Input::Service(s)) => Ok(s),
            _ => Err(Input::mismatch("service")),
        }
    }
}

impl<W: Worker> Solver<W> {
    /// The inputs of a container's ops, starting now.
    pub(super) fn container_inputs<'a>(
        self: &'a Arc<Self>,
        ops: &'a [ContainerOp],
        api: Api,
    ) -> Inputs<'a> {
        Inputs::new(ops.iter().map(|op| self.container_input(op, api)))
    }

    /// The inputs of a directory's ops, starting now.
    pub(super) fn directory_inputs<'a>(
        self: &'a Arc<Self>,
        ops: &'a [DirectoryOp],
        api: Api,
    ) -> Inputs<'a> {
        Inputs::new(ops.iter().map(|op| self.directory_input(op, api)))
    }

    fn container_input<'a>(
        self: &'a Arc<Self>,
        op: &'a ContainerOp,
        api: Api,
    ) -> Option<BoxFuture<'a, Result<Input, SolveError>>> {
        Some(match op {
            ContainerOp::From { address } => {
                async move { Ok(Input::Image(self.resolve_image(address).await?)) }.boxed()
            }
            ContainerOp::Import { file } => async move {
                let f = self.file(file, api).await?;
                Ok(Input::Image(self.import_image(&f).await?))
            }
            .boxed(),
            ContainerOp::WithServiceBinding { service, .. } => {
                async move { Ok(Input::Service(self.service(service, api).await?)) }.boxed()
            }
            ContainerOp::Module { call } => async move {
                let st = self.module_container(call, api).await?;
                Ok(Input::Container(Box::new(st)))
            }
            .boxed(),
            ContainerOp::Value { handle } => async move {
                let st = self.bound_container(handle).await?;
                Ok(Input::Container(Box::new(st)))
            }
            .boxed(),
            ContainerOp::WithDirectory { directory, .. }
            | ContainerOp::WithMountedDirectory { directory, .. } => {
                async move { Ok(Input::Directory(self.directory(directory, api).await?)) }.boxed()
            }
            ContainerOp::WithFile { file, .. } | ContainerOp::WithMountedFile { file, .. } => {
                async move { Ok(Input::File(self.file(file, api).await?)) }.boxed()
            }
            _ => return None,
        })
    }

    fn directory_input<'a>(
        self: &'a Arc<Self>,
        op: &'a DirectoryOp,
        api: Api,
    ) -> Option<BoxFuture<'a, Result<Input, SolveError>>> {
        Some(match op {
            DirectoryOp::WithFile { file, .. } => {
                async move { Ok(Input::File(self.file(file, api).await?)) }.boxed()
            }
            DirectoryOp::WithDirectory { directory, .. } => {
                async move { Ok(Input::Directory(self.directory(directory, api).await?)) }.boxed()
            }
            DirectoryOp::Diff { other } => {
                async move { Ok(Input::Directory(self.directory(other, api).await?)) }.boxed()
            }
            _ => return None,
        })
    }
}
