//! Namespaces kept prepared (BuildKit's pool): making one costs a thread,
//! a mount and two CNI plugin runs (about 170 ms here), and removing one a
//! CNI DEL and an unmount, so a few wait on the bridge. As in BuildKit, a
//! namespace given back goes back into the pool while it has room, for the
//! next consumer: what a step or a service leaves in it ends with its
//! processes (sockets), and nothing else in it can be changed from inside,
//! since no container gets CAP_NET_ADMIN (Docker's default capabilities:
//! addresses, routes, firewall rules and sysctls stay as ADD made them).
//! So a chain of namespaced steps runs CNI once, not once a step. When the
//! pool is emptied (a burst of consumers), it is refilled in the
//! background; one given back to a full pool is destroyed in the
//! background (shutdown waits for that).

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
    destroying: Mutex<tokio::task::JoinSet<()>>,
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
            destroying: Mutex::new(tokio::task::JoinSet::new()),
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
        let (taken, emptied) = {
            let mut ready = self.inner.ready.lock().unwrap();
            let taken = ready.pop_front();
            (taken, ready.is_empty())
        };
        if emptied {
            self.inner.wake.notify_one();
        }
        match taken {
            Some(a) => Ok(a),
            None => self.inner.network.create().await,
        }
    }

    /// Gives back a namespace that was attached (its consumer's processes
    /// are gone): into the pool while it has room, else destroyed in the
    /// background.
    pub async fn detach(&self, a: Attachment) -> Result<(), Error> {
        let a = {
            let mut ready = self.inner.ready.lock().unwrap();
            if ready.len() < self.inner.size && !self.inner.stop.is_cancelled() {
                ready.push_back(a);
                return Ok(());
            }
            a
        };
        // Shutting down: destroyed before this returns, since nothing may
        // wait for a background destroy any more (the process is about to
        // exit, and the namespace would be left behind).
        if self.inner.stop.is_cancelled() {
            return self.inner.network.destroy(&a).await;
        }
        let inner = self.inner.clone();
        self.inner
            .destroying
            .lock()
            .unwrap()
            .spawn(async move {
                if let Err(e) = inner.network.destroy(&a).await {
                    tracing::warn!(error = %e, netns = %a.netns.display(), "could not destroy a network namespace");
                }
            });
        Ok(())
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
        // Until none is left: a detach that began before the stop may
        // have added one meanwhile.
        loop {
            let mut destroying = std::mem::take(&mut *self.inner.destroying.lock().unwrap());
            if destroying.is_empty() {
                break;
            }
            while destroying.join_next().await.is_some() {}
        }
        let ready: Vec<Attachment> = self.inner.ready.lock().unwrap().drain(..).collect();
        // All at once: each is a CNI DEL (a plugin run) and an unmount.
        let mut destroying = tokio::task::JoinSet::new();
        for a in ready {
            let inner = self.inner.clone();
            destroying.spawn(async move {
                if let Err(e) = inner.network.destroy(&a).await {
                    tracing::warn!(error = %e, netns = %a.netns.display(), "could not destroy a pooled network namespace");
                }
            });
        }
        while destroying.join_next().await.is_some() {}
    }
}

async fn refill(inner: Arc<Inner>) {
    loop {
        while inner.ready.lock().unwrap().len() < inner.size && !inner.stop.is_cancelled() {
            match inner.network.create().await {
                Ok(a) => {
                    // Namespaces given back meanwhile may have filled it.
                    let extra = {
                        let mut ready = inner.ready.lock().unwrap();
                        if ready.len() < inner.size {
                            ready.push_back(a);
                            None
                        } else {
                            Some(a)
                        }
                    };
                    if let Some(a) = extra {
                        let _ = inner.network.destroy(&a).await;
                    }
                }
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
