//! The server side of the cluster port: a stream of TLS connections for tonic's
//! `Server::serve_with_incoming`, and the swappable configuration that lets a renewed
//! certificate take effect without restarting the listener.

use std::io;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;

/// How long a client may take to finish the handshake. Each handshake runs in its own task, so
/// this bounds the resources a silent or hostile client holds, not anyone else's wait.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed `accept` (typically out of file descriptors) before trying again, so
/// that the loop does not spin while the condition lasts — hyper and tonic do the same.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Handshaken connections waiting for the server to pick them up.
const QUEUE: usize = 64;

/// A server configuration that can be replaced while the server runs: connections accepted
/// after [`ServerConfigCell::replace`] use the new one, established ones keep theirs.
#[derive(Clone, Debug)]
pub struct ServerConfigCell {
    inner: Arc<RwLock<Arc<ServerConfig>>>,
}

impl ServerConfigCell {
    /// A cell holding `config`.
    pub fn new(config: Arc<ServerConfig>) -> ServerConfigCell {
        ServerConfigCell {
            inner: Arc::new(RwLock::new(config)),
        }
    }

    /// The configuration new connections get.
    pub fn current(&self) -> Arc<ServerConfig> {
        // A writer cannot panic while holding the lock (it only assigns), so poisoning is
        // impossible; recover the value anyway rather than take the listener down.
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Makes `config` the configuration of every connection accepted from now on (after a
    /// certificate renewal).
    pub fn replace(&self, config: Arc<ServerConfig>) {
        *self
            .inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = config;
    }
}

impl From<Arc<ServerConfig>> for ServerConfigCell {
    fn from(config: Arc<ServerConfig>) -> ServerConfigCell {
        ServerConfigCell::new(config)
    }
}

/// The TLS connections accepted on `listener`, for `Server::serve_with_incoming`. Handshakes
/// run concurrently, each in its own task, so one slow client cannot hold up the others; a
/// failed handshake or accept is logged and skipped, and never ends the stream. Dropping the
/// stream stops the accept loop and closes the listener.
///
/// Must be called within a Tokio runtime: the accept loop is a spawned task.
pub fn incoming(
    listener: TcpListener,
    config: impl Into<ServerConfigCell>,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, io::Error>> {
    let config = config.into();
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(accept_loop(listener, config, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    config: ServerConfigCell,
    tx: mpsc::Sender<Result<TlsStream<TcpStream>, io::Error>>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = tx.closed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(%err, "accept on the cluster port failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, %err, "set TCP_NODELAY");
        }
        let acceptor = TlsAcceptor::from(config.current());
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    // The server has stopped if the receiver is gone; the connection just drops.
                    let _ = tx.send(Ok(tls)).await;
                }
                Ok(Err(err)) => tracing::info!(%peer, %err, "TLS handshake refused"),
                Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
            }
        });
    }
}
