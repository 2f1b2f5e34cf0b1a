//! Namespaces kept prepared (BuildKit's pool): making one costs a thread,
//! a mount and two CNI plugin runs, so a few wait on the bridge, and each
//! take is refilled in the background. A namespace is used once: given
//! back, it is destroyed, never reused by another consumer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Attachment, Network, NetworkConfig};
use crate::Error;

/// The bridge network with its pool of prepared namespaces.
pub struct Networks {
    inner: Arc<Inner>,
}

struct Inner {
    network: Network,
    ready: Mutex<VecDeque<Attachment>>,
    size: usize,
    wake: Notify,
    stop: CancellationToken,
    refiller: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Networks {
    /// Opens the network and starts filling the pool.
    pub fn open(config: NetworkConfig) -> Result<Networks, Error> {
        let size = config.pool_size;
        let inner = Arc::new(Inner {
            network: Network::open(config)?,
            ready: Mutex::new(VecDeque::new()),
            size,
            wake: Notify::new(),
            stop: CancellationToken::new(),
            refiller: Mutex::new(None),
        });
        if size > 0 {
            let task = tokio::spawn(refill(inner.clone()));
            *inner.refiller.lock().unwrap() = Some(task);
        }
        Ok(Networks { inner })
    }

    pub fn network(&self) -> &Network {
        &self.inner.network
    }

    /// A prepared namespace, or a new one when none is ready.
    pub async fn attach(&self) -> Result<Attachment, Error> {
        let taken = self.inner.ready.lock().unwrap().pop_front();
        self.inner.wake.notify_one();
        match taken {
            Some(a) => Ok(a),
            None => self.inner.network.create().await,
        }
    }

    /// Destroys a namespace that was attached.
    pub async fn detach(&self, a: Attachment) -> Result<(), Error> {
        self.inner.network.destroy(&a).await
    }

    /// How many namespaces are ready now.
    pub fn ready(&self) -> usize {
        self.inner.ready.lock().unwrap().len()
    }

    /// Waits until the pool is full (tests and benchmarks).
    pub async fn filled(&self) {
        while self.ready() < self.inner.size && !self.inner.stop.is_cancelled() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Stops refilling and destroys the namespaces that wait unused.
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        let task = self.inner.refiller.lock().unwrap().take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let ready: Vec<Attachment> = self.inner.ready.lock().unwrap().drain(..).collect();
        for a in ready {
            if let Err(e) = self.inner.network.destroy(&a).await {
                tracing::warn!(error = %e, netns = %a.netns.display(), "could not destroy a pooled network namespace");
            }
        }
    }
}

async fn refill(inner: Arc<Inner>) {
    loop {
        while inner.ready.lock().unwrap().len() < inner.size && !inner.stop.is_cancelled() {
            match inner.network.create().await {
                Ok(a) => inner.ready.lock().unwrap().push_back(a),
                Err(e) => {
                    // attach() makes its own and reports the error to its caller.
                    tracing::warn!(error = %e, "could not prepare a network namespace");
                    break;
                }
            }
        }
        tokio::select! {
            _ = inner.wake.notified() => {}
            _ = inner.stop.cancelled() => return,
        }
    }
}
