//! containerd's content store: checking for blobs, writing them (streamed,
//! digest-checked by containerd on commit), and labelling them for its
//! garbage collector.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use rbuild_containerd::containerd_client::services::v1::{
    DeleteContentRequest, Info, InfoRequest, ReadContentRequest, UpdateRequest, WriteAction,
    WriteContentRequest,
};
use rbuild_containerd::containerd_client::tonic::Code;
use rbuild_containerd::{Containerd, LeaseId};
use tokio::sync::mpsc;

use crate::Error;

/// containerd's gRPC server accepts messages up to 4 MiB; stay well below.
const CHUNK: usize = 1 << 20;

/// A blocking `Read` over chunks sent from async code (a blob streaming
/// into a tarball or a layer unpacker); the channel's end is the end of
/// the stream, an error item is a read error.
pub struct ChannelReader {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
}

impl ChannelReader {
    pub fn new(rx: mpsc::Receiver<std::io::Result<Bytes>>) -> ChannelReader {
        ChannelReader {
            rx,
            current: Bytes::new(),
        }
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// Runs the blocking `read` on a thread of its own over `stream` (a
/// blob from a registry): the chunks are handed to it as they come, an
/// error item ends the stream as a read error. Returns what `read` did.
pub async fn read_blocking<S, T>(
    mut stream: S,
    read: impl FnOnce(ChannelReader) -> T + Send + 'static,
) -> std::io::Result<T>
where
    S: futures::Stream<Item = std::io::Result<Bytes>> + Unpin,
    T: Send + 'static,
{
    use futures::StreamExt;
    let (tx, rx) = mpsc::channel(16);
    let reading = tokio::task::spawn_blocking(move || read(ChannelReader::new(rx)));
    while let Some(chunk) = stream.next().await {
        let failed = chunk.is_err();
        // The reader may have stopped early; what it did is the answer.
        if tx.send(chunk).await.is_err() || failed {
            break;
        }
    }
    drop(tx);
    reading.await.map_err(std::io::Error::other)
}

/// What a blob write found.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// The blob was written and committed now.
    New,
    /// The content store already had it.
    Present,
}

/// A blob to write: its digest and size as the manifest declares them.
pub struct BlobTarget<'a> {
    pub digest: &'a str,
    pub size: i64,
    pub labels: HashMap<String, String>,
}

pub async fn info(ctd: &Containerd, digest: &str) -> Result<Option<Info>, Error> {
    match ctd
        .content()
        .info(ctd.request(InfoRequest {
            digest: digest.to_string(),
        }))
        .await
    {
        Ok(r) => Ok(r.into_inner().info),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(rbuild_containerd::Error::rpc("look up content", digest, s).into()),
    }
}

/// Whether a blob is in the content store, held by `lease` from now on
/// (it may be held only by another run's lease that is about to go: a
/// killed run's, which the next run deletes). The lease is taken first, so
/// that a blob found is a blob kept.
pub async fn hold(ctd: &Containerd, lease: &LeaseId, digest: &str) -> Result<bool, Error> {
    ctd.add_lease_resource(lease, digest, "content").await?;
    Ok(info(ctd, digest).await?.is_some())
}

/// Reads a whole blob as a stream of chunks.
pub async fn read_stream(
    ctd: &Containerd,
    digest: &str,
) -> Result<impl Stream<Item = std::io::Result<Bytes>> + Send + Unpin + 'static, Error> {
    let stream = ctd
        .content()
        .read(ctd.request(ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        }))
        .await
        .map_err(|s| rbuild_containerd::Error::rpc("read content", digest, s))?
        .into_inner();
    Ok(stream.map(|r| {
        r.map(|m| Bytes::from(m.data))
            .map_err(|s| std::io::Error::other(s.message().to_string()))
    }))
}

/// Copies a blob into a host file.
pub async fn read_to_file(
    ctd: &Containerd,
    digest: &str,
    path: &std::path::Path,
) -> Result<u64, Error> {
    use tokio::io::AsyncWriteExt;
    let mut stream = read_stream(ctd, digest).await?;
    let mut f = tokio::fs::File::create(path)
        .await
        .map_err(|e| Error::io("create", path, e))?;
    let mut n = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Error::io("read content into", path, e))?;
        n += chunk.len() as u64;
        f.write_all(&chunk)
            .await
            .map_err(|e| Error::io("write", path, e))?;
    }
    f.flush().await.map_err(|e| Error::io("write", path, e))?;
    Ok(n)
}

/// Streams a host file into the content store.
pub async fn write_file(
    ctd: &Containerd,
    lease: &LeaseId,
    target: BlobTarget<'_>,
    path: &std::path::Path,
) -> Result<Written, Error> {
    let f = tokio::fs::File::open(path)
        .await
        .map_err(|e| Error::io("open", path, e))?;
    let stream = tokio_util::io::ReaderStream::with_capacity(f, CHUNK);
    write_stream(ctd, lease, target, stream).await
}

/// Deletes a blob; one that is already gone is fine.
pub async fn delete(ctd: &Containerd, digest: &str) -> Result<(), Error> {
    match ctd
        .content()
        .delete(ctd.request(DeleteContentRequest {
            digest: digest.to_string(),
        }))
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::NotFound => Ok(()),
        Err(s) => Err(rbuild_containerd::Error::rpc("delete content", digest, s).into()),
    }
}

/// Sets labels on a blob, leaving its other labels alone.
pub async fn set_labels(
    ctd: &Containerd,
    digest: &str,
    labels: HashMap<String, String>,
) -> Result<(), Error> {
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    ctd.content()
        .update(ctd.request(UpdateRequest {
            info: Some(Info {
                digest: digest.to_string(),
                labels,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths }),
        }))
        .await
        .map_err(|s| rbuild_containerd::Error::rpc("label content", digest, s))?;
    Ok(())
}

/// Writes a small blob held in memory.
pub async fn write_bytes(
    ctd: &Containerd,
    lease: &LeaseId,
    target: BlobTarget<'_>,
    data: Bytes,
) -> Result<Written, Error> {
    write_stream(ctd, lease, target, futures::stream::iter([Ok(data)])).await
}

/// Streams a blob into the content store. containerd checks size and digest
/// at commit; a blob already present is not written again. When another
/// writer holds the same blob (a concurrent pull), waits for it to finish.
pub async fn write_stream<S>(
    ctd: &Containerd,
    lease: &LeaseId,
    target: BlobTarget<'_>,
    data: S,
) -> Result<Written, Error>
where
    S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin + 'static,
{
    let mut data = Some(data);
    for _attempt in 0..3000 {
        match try_write(ctd, lease, &target, &mut data).await {
            Err(Error::Containerd(e)) if is_locked(&e) => {
                // Someone else is writing this blob; it appears when they commit.
                tokio::time::sleep(Duration::from_millis(100)).await;
                if info(ctd, target.digest).await?.is_some() {
                    return Ok(Written::Present);
                }
            }
            other => return other,
        }
    }
    Err(Error::BadImage {
        reference: target.digest.to_string(),
        reason: "another writer held this blob for more than 5 minutes".into(),
    })
}

fn is_locked(e: &rbuild_containerd::Error) -> bool {
    matches!(e, rbuild_containerd::Error::Rpc { code, message, .. }
        if *code == Code::Unavailable || message.contains("locked"))
}

async fn try_write<S>(
    ctd: &Containerd,
    lease: &LeaseId,
    target: &BlobTarget<'_>,
    data: &mut Option<S>,
) -> Result<Written, Error>
where
    S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin + 'static,
{
    let rpc_err =
        |s| -> Error { rbuild_containerd::Error::rpc("write content", target.digest, s).into() };
    let (tx, mut rx) = mpsc::channel::<WriteContentRequest>(8);
    let requests = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    // The first message opens the writer; containerd answers AlreadyExists
    // right away when it has the blob.
    tx.send(WriteContentRequest {
        action: WriteAction::Write as i32,
        r#ref: format!("rbuild-{}", target.digest),
        total: target.size,
        expected: target.digest.to_string(),
        ..Default::default()
    })
    .await
    .expect("receiver alive");
    let mut responses = match ctd.content().write(ctd.leased(requests, lease)).await {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == Code::AlreadyExists => return Ok(Written::Present),
        Err(s) => return Err(rpc_err(s)),
    };
    // Responses come one per request; drain them alongside so that gRPC flow
    // control never stalls the upload.
    let drain = tokio::spawn(async move {
        loop {
            match responses.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(()),
                Err(s) => return Err(s),
            }
        }
    });

    let Some(mut stream) = data.take() else {
        return Err(Error::BadImage {
            reference: target.digest.to_string(),
            reason: "blob stream was already consumed by a failed attempt".into(),
        });
    };
    let mut offset: i64 = 0;
    let mut send_failed = false;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                drop(tx);
                let _ = drain.await;
                return Err(Error::from_stream(e, target.digest));
            }
        };
        for piece in chunk.chunks(CHUNK) {
            let msg = WriteContentRequest {
                action: WriteAction::Write as i32,
                offset,
                data: piece.to_vec(),
                ..Default::default()
            };
            offset += piece.len() as i64;
            if tx.send(msg).await.is_err() {
                send_failed = true;
                break;
            }
        }
        if send_failed {
            break;
        }
    }
    if !send_failed {
        let _ = tx
            .send(WriteContentRequest {
                action: WriteAction::Commit as i32,
                offset,
                total: target.size,
                expected: target.digest.to_string(),
                labels: target.labels.clone(),
                ..Default::default()
            })
            .await;
    }
    drop(tx);
    match drain.await.expect("response drain panicked") {
        Ok(()) => Ok(Written::New),
        Err(s) if s.code() == Code::AlreadyExists => Ok(Written::Present),
        Err(s) => Err(rpc_err(s)),
    }
}
