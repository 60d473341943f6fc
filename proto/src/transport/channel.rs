//! Dialling a manager: a lazily connecting tonic [`Channel`] whose connector does the TCP
//! connect and the rustls handshake itself, so that the server name checked is always
//! `shoal-manager` whatever address the peer is reached at. Keep one channel per peer: it
//! reconnects by itself, and a new connection per RPC costs a handshake each time.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use super::{Result, TransportError, MANAGER_SERVER_NAME};

/// How long a TCP connect may take. Managers sit on one LAN, where a connect takes
/// microseconds; a dead address should be given up quickly so that a client moves on to the
/// next manager well within the cluster's 2 s failover target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the TLS handshake may take once connected: a couple of round trips and two
/// signatures, so a peer still silent after this is stuck, not slow.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A channel to the manager at `addr` (`host:port`) over TLS with `config`
/// ([`client_config`](super::client_config) and friends). Connects on first use and
/// reconnects after failures; errors surface on the RPCs.
pub fn channel(addr: &str, config: Arc<ClientConfig>) -> Result<Channel> {
    let invalid = |reason: &str| TransportError::InvalidAddress {
        addr: addr.to_owned(),
        reason: reason.to_owned(),
    };
    if addr.contains("://") {
        return Err(invalid("expected host:port, without a scheme"));
    }
    // The scheme is only for hyper's request URIs: TLS is done by the connector, not tonic.
    let endpoint =
        Endpoint::from_shared(format!("http://{addr}")).map_err(|err| invalid(&err.to_string()))?;
    let uri = endpoint.uri();
    if uri.host().is_none_or(str::is_empty) || uri.port_u16().is_none() {
        return Err(invalid("expected host:port"));
    }
    if uri.path() != "/" {
        return Err(invalid("expected host:port, without a path"));
    }
    // HTTP/2 pings find a peer that vanished without closing the connection (a node cut
    // off, a host gone) in seconds, not at TCP's retransmission timeout.
    let endpoint = endpoint
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    Ok(channel_from_endpoint(endpoint, config))
}

/// Interval of HTTP/2 keep-alive pings on cluster connections.
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a ping may go unanswered before the connection is dropped.
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Like [`channel`], for an [`Endpoint`] the caller has tuned (timeouts, keep-alive). Its URI
/// must be `http://host:port`.
pub fn channel_from_endpoint(endpoint: Endpoint, config: Arc<ClientConfig>) -> Channel {
    let connector = TlsConnector::from(config);
    endpoint.connect_with_connector_lazy(tower::service_fn(move |uri: Uri| {
        let connector = connector.clone();
        async move { connect(&connector, &uri).await.map(TokioIo::new) }
    }))
}

async fn connect(
    connector: &TlsConnector,
    uri: &Uri,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let (Some(host), Some(port)) = (uri.host(), uri.port_u16()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("no host:port in {uri}"),
        ));
    };
    // An IPv6 literal keeps its brackets in the URI; the resolver wants it bare.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port)))
        .await
        .map_err(|_| timed_out(format!("connect to {host}:{port}")))??;
    // gRPC sends many small frames: don't let Nagle hold them back.
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(MANAGER_SERVER_NAME).expect("a valid DNS name");
    tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| timed_out(format!("TLS handshake with {host}:{port}")))?
}

/// The TLS failure behind an RPC error (a `tonic::Status` or `tonic::transport::Error`), if
/// any, so that a caller can say *why* a manager was refused ("certificate not issued by this
/// cluster's CA", "not a manager") instead of "transport error".
///
/// Finds the failures of this side's handshake. A refusal the server sends after the handshake
/// — in TLS 1.3 the server checks the client's certificate after the client is done — arrives
/// as an alert read by h2, which keeps only its text: such errors are `Code::Unknown`
/// "transport error" with "received fatal alert" in their source, and give `None` here.
pub fn tls_failure<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // `io::Error::source` skips the error it wraps (it returns the wrapped error's
        // source), and tokio-rustls wraps rustls' errors in `io::Error`s.
        if let Some(tls) = err
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        next = err.source();
    }
    None
}

fn timed_out(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
}
