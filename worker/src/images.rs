//! Images for tasks: a task's image comes from the node's own store, or, when missing, from a
//! manager's store over the dispatcher's `ExportImage` stream, loaded like `shoal image load`
//! (every digest verified). Concurrent tasks of one image share one fetch.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{mpsc as std_mpsc, Arc};

use shoal_proto::cluster::v1::dispatcher_client::DispatcherClient;
use shoal_proto::cluster::v1::ExportImageRequest;
use shoal_runtime::Runtime;
use tokio::sync::Mutex;
use tonic::transport::Channel;

/// Why an image could not be made available.
#[derive(Debug, thiserror::Error)]
pub enum ImageFetchError {
    /// No manager has it.
    #[error("No such image: {reference} (not on this node, and no manager has it: {reason})")]
    Missing {
        /// The reference.
        reference: String,
        /// What the managers said.
        reason: String,
    },
    /// The archive did not load.
    #[error("load image {reference} fetched from {manager}: {message}")]
    Load {
        /// The reference.
        reference: String,
        /// Manager it came from.
        manager: String,
        /// The store's error.
        message: String,
    },
}

/// Fetches missing images, one fetch per reference at a time.
#[derive(Debug, Default)]
pub struct ImageFetcher {
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// `Read` over chunks arriving on a channel: lets the synchronous image loader consume a
/// gRPC stream without holding the whole archive in memory.
struct ChunkReader {
    rx: std_mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl ImageFetcher {
    /// Makes `reference` present in `runtime`'s store, fetching it from one of `managers`
    /// (channels by address) when missing.
    pub async fn ensure(
        &self,
        runtime: &Runtime,
        reference: &str,
        managers: &[(String, Channel)],
    ) -> Result<(), ImageFetchError> {
        let present = |rt: &Runtime| rt.images().resolve(reference).is_ok();
        if present(runtime) {
            return Ok(());
        }
        let lock = {
            let mut locks = self.locks.lock().await;
            Arc::clone(locks.entry(reference.to_string()).or_default())
        };
        let _guard = lock.lock().await;
        if present(runtime) {
            return Ok(());
        }
        let mut reasons = Vec::new();
        for (addr, channel) in managers {
            let mut client =
                DispatcherClient::new(channel.clone()).max_decoding_message_size(64 * 1024 * 1024);
            let stream = client
                .export_image(ExportImageRequest {
                    reference: reference.to_string(),
                })
                .await;
            let mut stream = match stream {
                Ok(s) => s.into_inner(),
                Err(status) => {
                    reasons.push(format!("{addr}: {}", status.message()));
                    continue;
                }
            };
            let (tx, rx) = std_mpsc::sync_channel::<Vec<u8>>(8);
            let rt = runtime.clone();
            let loader = tokio::task::spawn_blocking(move || {
                let mut reader = ChunkReader {
                    rx,
                    buf: Vec::new(),
                    pos: 0,
                };
                rt.images().load(&mut reader).map(|_| ())
            });
            let mut failed = None;
            loop {
                match stream.message().await {
                    Ok(Some(chunk)) => {
                        let tx = tx.clone();
                        // The loader may stop early (a bad archive): a closed channel ends
                        // the copy and its error tells why.
                        let sent =
                            tokio::task::spawn_blocking(move || tx.send(chunk.data).is_ok()).await;
                        if !matches!(sent, Ok(true)) {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        failed = Some(status.message().to_string());
                        break;
                    }
                }
            }
            drop(tx);
            let loaded = loader.await;
            match (failed, loaded) {
                (None, Ok(Ok(()))) => {
                    tracing::info!(%reference, manager = %addr, "image fetched");
                    return Ok(());
                }
                (Some(message), _) => reasons.push(format!("{addr}: {message}")),
                (None, Ok(Err(err))) => {
                    return Err(ImageFetchError::Load {
                        reference: reference.to_string(),
                        manager: addr.clone(),
                        message: err.to_string(),
                    })
                }
                (None, Err(err)) => reasons.push(format!("{addr}: {err}")),
            }
        }
        Err(ImageFetchError::Missing {
            reference: reference.to_string(),
            reason: reasons.join("; "),
        })
    }
}
