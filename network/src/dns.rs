//! The embedded DNS resolver a task sees at 127.0.0.11:53, after Docker's (libnetwork
//! `resolver.go`).
//!
//! The daemon binds a UDP socket and a TCP listener inside each task's network namespace and
//! hands them to [`serve`], which runs on the daemon's tokio runtime. Names shoal owns are
//! answered from a [`Resolve`] implementation; everything else is relayed to the node's own
//! resolvers ([`Upstreams`]). Forwarding sockets are created by the runtime thread, i.e. in the
//! daemon's namespace, so a loopback upstream such as systemd-resolved's 127.0.0.53 works.
//!
//! This module owns the DNS protocol handling only: binding the sockets inside a namespace,
//! writing the task's resolv.conf and deciding which names exist belong to the caller.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Header, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use rand::seq::SliceRandom;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;

/// TTL of the answers for owned names. Docker's resolver uses 600 s (`respTTL`); clients that
/// cache longer than a task lives are the reason service VIPs exist.
pub const ANSWER_TTL: u32 = 600;

/// How long one upstream gets to answer a forwarded query before the next is tried. glibc's
/// resolver gives up on us after 5 s by default, so two slow upstreams still leave it an answer.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// glibc reads at most three `nameserver` lines (`MAXNS`); the node itself never asks a fourth,
/// so neither do we.
const MAX_NAMESERVERS: usize = 3;

/// Largest UDP payload we accept or send. Clients may advertise more with EDNS; 4096 is the
/// common ceiling (BIND's default) and the DNS only travels over loopback inside the namespace.
const UDP_MAX_PAYLOAD: u16 = 4096;

/// A UDP reply without EDNS may not exceed this (RFC 1035 4.2.1).
const UDP_CLASSIC_PAYLOAD: u16 = 512;

/// Buffer for an upstream's UDP reply: the largest datagram, so a reply is never cut short here.
const UPSTREAM_RECV_BUFFER: usize = 65_535;

/// Forwards in flight at once per server. Docker caps its resolver at 1024 concurrent queries
/// (`maxConcurrent`); beyond that a task flooding its resolver would only pile up sockets.
const MAX_CONCURRENT_FORWARDS: usize = 1024;

/// Open TCP connections per server; TCP is the rare fallback for truncated replies.
const MAX_TCP_CONNECTIONS: usize = 128;

/// A TCP client that sends nothing for this long is disconnected (RFC 7766 suggests seconds).
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed `recv`/`accept` so a persistent error cannot spin the loop.
const SOCKET_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Errors of [`serve`]. Per-query failures never end the server; they are logged and answered
/// with SERVFAIL/FORMERR where the protocol allows.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The socket's local address could not be read (it was probably never bound).
    #[error("read the local address of the DNS {proto} socket")]
    LocalAddr {
        /// "udp" or "tcp".
        proto: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The std socket could not be switched to non-blocking mode or registered with tokio.
    #[error("register the DNS {proto} socket on {local} with the runtime")]
    Register {
        /// "udp" or "tcp".
        proto: &'static str,
        /// The socket's local address.
        local: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Answers for names shoal owns. `name` is lower-case without the trailing dot.
///
/// Called on the runtime for every query, so it must answer from memory without blocking.
pub trait Resolve: Send + Sync + 'static {
    /// None: not ours, forward it. Some(addrs): ours (addrs may be empty: the name exists but has
    /// no address now).
    fn resolve(&self, name: &str) -> Option<Vec<Ipv4Addr>>;
}

/// The node's own resolvers, tried in order for names shoal does not own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Upstreams(Vec<SocketAddr>);

impl Upstreams {
    /// Upstreams at exactly these addresses (tests, or a configured override).
    pub fn new(addrs: Vec<SocketAddr>) -> Upstreams {
        Upstreams(addrs)
    }

    /// The `nameserver` lines of a resolv.conf (IPv4 and IPv6, port 53), at most three as glibc
    /// reads. Lines it cannot parse, such as IPv6 addresses with a `%zone`, are skipped: the
    /// node's resolv.conf is not ours to reject. No nameserver gives no upstreams, so every
    /// forwarded query fails with SERVFAIL.
    pub fn from_resolv_conf(text: &str) -> Upstreams {
        let addrs = text
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                if words.next() != Some("nameserver") {
                    return None;
                }
                let word = words.next()?;
                match word.parse::<IpAddr>() {
                    Ok(ip) => Some(SocketAddr::new(ip, 53)),
                    Err(_) => {
                        tracing::debug!(
                            nameserver = word,
                            "skipping unparsable resolv.conf nameserver"
                        );
                        None
                    }
                }
            })
            .take(MAX_NAMESERVERS)
            .collect();
        Upstreams(addrs)
    }

    /// The upstream addresses in the order they are tried.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.0
    }
}

/// Serves until the returned future is dropped/aborted. UDP and (if given) TCP (2-byte length
/// prefix). The sockets must already be bound (in the task's namespace); they are switched to
/// non-blocking mode here. Dropping the future also aborts the queries still in flight.
pub async fn serve(
    udp: std::net::UdpSocket,
    tcp: Option<std::net::TcpListener>,
    resolver: Arc<dyn Resolve>,
    upstreams: Arc<Upstreams>,
) -> Result<(), DnsError> {
    let handler = Handler::new(resolver, upstreams, FORWARD_TIMEOUT);
    serve_with(udp, tcp, handler).await
}

/// [`serve`] with an explicit [`Handler`], so tests can shorten the forward timeout.
async fn serve_with(
    udp: std::net::UdpSocket,
    tcp: Option<std::net::TcpListener>,
    handler: Handler,
) -> Result<(), DnsError> {
    let udp = Arc::new(udp_to_tokio(udp)?);
    let tcp = tcp.map(tcp_to_tokio).transpose()?;
    let handler = Arc::new(handler);
    let tcp_slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    // Owning every spawned query in a JoinSet is what makes dropping this future stop them all.
    let mut tasks = JoinSet::new();
    let mut buf = vec![0u8; usize::from(UDP_MAX_PAYLOAD)];
    loop {
        tokio::select! {
            received = udp.recv_from(&mut buf) => match received {
                Ok((len, peer)) => {
                    let query = buf[..len].to_vec();
                    let (udp, handler) = (Arc::clone(&udp), Arc::clone(&handler));
                    // Each query gets its own task: a forward may wait seconds on an upstream.
                    tasks.spawn(async move {
                        if let Some(reply) = handler.handle(&query, Transport::Udp).await {
                            if let Err(err) = udp.send_to(&reply, peer).await {
                                tracing::debug!(%peer, ?err, "dns: send udp reply failed");
                            }
                        }
                    });
                }
                Err(err) => {
                    tracing::warn!(?err, "dns: udp recv failed");
                    tokio::time::sleep(SOCKET_ERROR_BACKOFF).await;
                }
            },
            accepted = accept(tcp.as_ref()) => match accepted {
                Ok((stream, peer)) => match Arc::clone(&tcp_slots).try_acquire_owned() {
                    Ok(slot) => {
                        let handler = Arc::clone(&handler);
                        tasks.spawn(async move {
                            serve_tcp_connection(&handler, stream, peer).await;
                            drop(slot);
                        });
                    }
                    Err(_) => tracing::debug!(%peer, "dns: too many tcp connections, dropping one"),
                },
                Err(err) => {
                    tracing::warn!(?err, "dns: tcp accept failed");
                    tokio::time::sleep(SOCKET_ERROR_BACKOFF).await;
                }
            },
        }
        while let Some(done) = tasks.try_join_next() {
            if let Err(err) = done {
                tracing::warn!(?err, "dns: query task failed");
            }
        }
    }
}

fn udp_to_tokio(udp: std::net::UdpSocket) -> Result<UdpSocket, DnsError> {
    let local = udp.local_addr().map_err(|source| DnsError::LocalAddr {
        proto: "udp",
        source,
    })?;
    udp.set_nonblocking(true)
        .and_then(|()| UdpSocket::from_std(udp))
        .map_err(|source| DnsError::Register {
            proto: "udp",
            local,
            source,
        })
}

fn tcp_to_tokio(tcp: std::net::TcpListener) -> Result<TcpListener, DnsError> {
    let local = tcp.local_addr().map_err(|source| DnsError::LocalAddr {
        proto: "tcp",
        source,
    })?;
    tcp.set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(tcp))
        .map_err(|source| DnsError::Register {
            proto: "tcp",
            local,
            source,
        })
}

/// Accepts on the listener, or waits forever when there is none (UDP-only server).
async fn accept(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Serves length-prefixed queries on one TCP connection until the client closes it, goes idle
/// or sends something that is not DNS.
async fn serve_tcp_connection(handler: &Handler, mut stream: TcpStream, peer: SocketAddr) {
    loop {
        let query = match timeout(TCP_IDLE_TIMEOUT, read_frame(&mut stream)).await {
            Ok(Ok(query)) => query,
            Ok(Err(err)) if err.kind() == io::ErrorKind::UnexpectedEof => return,
            Ok(Err(err)) => {
                tracing::debug!(%peer, ?err, "dns: tcp read failed");
                return;
            }
            Err(_) => return,
        };
        // Without even a header there is no id to answer to: the stream is not DNS.
        let Some(reply) = handler.handle(&query, Transport::Tcp).await else {
            return;
        };
        match timeout(TCP_IDLE_TIMEOUT, write_frame(&mut stream, &reply)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::debug!(%peer, ?err, "dns: tcp write failed");
                return;
            }
            Err(_) => return,
        }
    }
}

/// Reads one DNS-over-TCP message: a 2-byte big-endian length, then that many bytes.
async fn read_frame(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

/// Writes one DNS-over-TCP message with its length prefix, in a single write.
async fn write_frame(stream: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    let len = u16::try_from(message.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "dns message longer than 65535 bytes",
        )
    })?;
    let mut frame = Vec::with_capacity(message.len() + 2);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(message);
    stream.write_all(&frame).await
}

/// Which transport a query arrived on; forwards use the same one, as Docker's resolver does, so
/// a client retrying over TCP after a truncated reply gets the full answer from upstream too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// Turns one query into one reply; shared by all UDP and TCP tasks of a server.
struct Handler {
    resolver: Arc<dyn Resolve>,
    upstreams: Arc<Upstreams>,
    /// Per upstream; [`FORWARD_TIMEOUT`] outside tests.
    forward_timeout: Duration,
    /// Caps forwards in flight ([`MAX_CONCURRENT_FORWARDS`]).
    forward_slots: Arc<Semaphore>,
}

impl Handler {
    fn new(
        resolver: Arc<dyn Resolve>,
        upstreams: Arc<Upstreams>,
        forward_timeout: Duration,
    ) -> Handler {
        Handler {
            resolver,
            upstreams,
            forward_timeout,
            forward_slots: Arc::new(Semaphore::new(MAX_CONCURRENT_FORWARDS)),
        }
    }

    /// The reply to `query`, or None when it deserves none (no readable header, or it is itself
    /// a response: answering those could loop two resolvers into each other).
    async fn handle(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let header = Header::read(&mut BinDecoder::new(query)).ok()?;
        if header.metadata.message_type != MessageType::Query {
            return None;
        }
        let request = match Message::from_vec(query) {
            Ok(request) => request,
            Err(err) => {
                tracing::debug!(id = header.metadata.id, ?err, "dns: malformed query");
                let reply = Message::error_msg(
                    header.metadata.id,
                    header.metadata.op_code,
                    ResponseCode::FormErr,
                );
                return encode(reply, transport, UDP_CLASSIC_PAYLOAD);
            }
        };
        let limit = udp_limit(&request);
        if request.metadata.op_code != OpCode::Query {
            return encode(reply_to(&request, ResponseCode::NotImp), transport, limit);
        }
        let [question] = request.queries.as_slice() else {
            // RFC 9619: a query carries exactly one question.
            return encode(reply_to(&request, ResponseCode::FormErr), transport, limit);
        };
        let name = question.name.to_lowercase().to_ascii();
        let name = name.strip_suffix('.').unwrap_or(&name);
        // Only class IN names can be ours; the root never is.
        let owned = (question.query_class == DNSClass::IN && !name.is_empty())
            .then(|| self.resolver.resolve(name))
            .flatten();
        match owned {
            Some(addrs) => {
                let mut reply = reply_to(&request, ResponseCode::NoError);
                if question.query_type == RecordType::A {
                    reply.answers = answers(&question.name, addrs);
                }
                encode(reply, transport, limit)
            }
            None => match self.forward(query, header.metadata.id, transport).await {
                Some(reply) => Some(reply),
                None => encode(reply_to(&request, ResponseCode::ServFail), transport, limit),
            },
        }
    }

    /// Relays `query` (the client's bytes, so its id, EDNS options and cookies pass unchanged)
    /// to each upstream in turn. An upstream's SERVFAIL or REFUSED moves on to the next, as
    /// Docker's resolver does, but is still relayed if nobody does better. None: no reply at all.
    async fn forward(&self, query: &[u8], id: u16, transport: Transport) -> Option<Vec<u8>> {
        let Ok(_slot) = self.forward_slots.try_acquire() else {
            tracing::debug!(id, "dns: too many forwards in flight");
            return None;
        };
        let mut fallback = None;
        for &upstream in self.upstreams.addrs() {
            let exchange = async {
                match transport {
                    Transport::Udp => forward_udp(upstream, query, id).await,
                    Transport::Tcp => forward_tcp(upstream, query, id).await,
                }
            };
            match timeout(self.forward_timeout, exchange).await {
                Ok(Ok(reply)) => {
                    let rcode =
                        reply_header(&reply, id).map(|header| header.metadata.response_code);
                    if matches!(rcode, Some(ResponseCode::ServFail | ResponseCode::Refused)) {
                        tracing::debug!(%upstream, id, ?rcode, "dns: upstream failed, trying next");
                        fallback = Some(reply);
                        continue;
                    }
                    return Some(reply);
                }
                Ok(Err(err)) => tracing::debug!(%upstream, id, ?err, "dns: forward failed"),
                Err(_) => tracing::debug!(%upstream, id, "dns: upstream timed out"),
            }
        }
        fallback
    }
}

/// The header of `reply` if it is a response with the query's `id`; anything else on the
/// socket is stray (or spoofed) and ignored.
fn reply_header(reply: &[u8], id: u16) -> Option<Header> {
    let header = Header::read(&mut BinDecoder::new(reply)).ok()?;
    (header.metadata.id == id && header.metadata.message_type == MessageType::Response)
        .then_some(header)
}

async fn forward_udp(upstream: SocketAddr, query: &[u8], id: u16) -> io::Result<Vec<u8>> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    // Connected, so the kernel drops datagrams from anyone but the upstream and reports
    // ICMP port-unreachable as an error instead of leaving us to time out.
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; UPSTREAM_RECV_BUFFER];
    loop {
        let len = socket.recv(&mut buf).await?;
        if reply_header(&buf[..len], id).is_some() {
            buf.truncate(len);
            return Ok(buf);
        }
    }
}

async fn forward_tcp(upstream: SocketAddr, query: &[u8], id: u16) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    write_frame(&mut stream, query).await?;
    loop {
        let reply = read_frame(&mut stream).await?;
        if reply_header(&reply, id).is_some() {
            return Ok(reply);
        }
    }
}

/// An empty response to `request` with `rcode`: the question echoed, RD copied, RA set (we
/// recurse on the client's behalf) and AA off, as Docker answers. EDNS is echoed when the client
/// used it (RFC 6891 6.1.1).
fn reply_to(request: &Message, rcode: ResponseCode) -> Message {
    let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
    reply.metadata = Metadata::response_from_request(&request.metadata);
    reply.metadata.recursion_available = true;
    reply.metadata.authoritative = false;
    reply.metadata.response_code = rcode;
    reply.queries = request.queries.clone();
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(UDP_MAX_PAYLOAD);
        reply.edns = Some(edns);
    }
    reply
}

/// One A record per address, owned by the question's name as the client spelled it, in random
/// order so clients that take the first address spread over the tasks (dnsrr).
fn answers(name: &hickory_proto::rr::Name, mut addrs: Vec<Ipv4Addr>) -> Vec<Record> {
    addrs.shuffle(&mut rand::rng());
    addrs
        .into_iter()
        .map(|addr| Record::from_rdata(name.clone(), ANSWER_TTL, RData::A(A(addr))))
        .collect()
}

/// The largest UDP reply `request` accepts: 512 without EDNS, else its advertised size up to
/// [`UDP_MAX_PAYLOAD`].
fn udp_limit(request: &Message) -> u16 {
    request.max_payload().min(UDP_MAX_PAYLOAD)
}

/// Encodes `reply`, dropping answers and setting TC when it exceeds what the transport carries
/// (`udp_limit` for UDP, the 2-byte length for TCP), so the client retries over TCP the way
/// Docker's resolver makes it. None only if hickory cannot encode it, which our own replies
/// never trigger.
fn encode(mut reply: Message, transport: Transport, udp_limit: u16) -> Option<Vec<u8>> {
    let limit = match transport {
        Transport::Udp => usize::from(udp_limit),
        Transport::Tcp => usize::from(u16::MAX),
    };
    loop {
        let bytes = match reply.to_vec() {
            Ok(bytes) => bytes,
            Err(err) => {
                tracing::warn!(id = reply.metadata.id, ?err, "dns: encoding a reply failed");
                return None;
            }
        };
        if bytes.len() <= limit || reply.answers.is_empty() {
            return Some(bytes);
        }
        // A compressed A record is 16 bytes; drop enough of them in one go, then re-check.
        const A_RECORD_WIRE_LEN: usize = 16;
        let excess = (bytes.len() - limit).div_ceil(A_RECORD_WIRE_LEN).max(1);
        let keep = reply.answers.len().saturating_sub(excess);
        reply.answers.truncate(keep);
        reply.metadata.truncation = true;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use tokio::task::JoinHandle;

    use super::*;

    /// Answers from a fixed map and records every name it was asked.
    #[derive(Default)]
    struct FakeResolver {
        names: HashMap<String, Vec<Ipv4Addr>>,
        asked: Mutex<Vec<String>>,
    }

    impl FakeResolver {
        fn with(names: &[(&str, &[Ipv4Addr])]) -> Arc<FakeResolver> {
            Arc::new(FakeResolver {
                names: names
                    .iter()
                    .map(|(n, a)| (n.to_string(), a.to_vec()))
                    .collect(),
                asked: Mutex::default(),
            })
        }
    }

    impl Resolve for FakeResolver {
        fn resolve(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
            self.asked.lock().unwrap().push(name.to_string());
            self.names.get(name).cloned()
        }
    }

    /// A running server; aborts it on drop so a failing test leaves nothing behind.
    struct TestServer {
        udp: SocketAddr,
        tcp: SocketAddr,
        task: JoinHandle<Result<(), DnsError>>,
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    const TEST_FORWARD_TIMEOUT: Duration = Duration::from_millis(300);
    const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

    fn start(resolver: Arc<dyn Resolve>, upstreams: Vec<SocketAddr>) -> TestServer {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (udp_addr, tcp_addr) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        let handler = Handler::new(
            resolver,
            Arc::new(Upstreams::new(upstreams)),
            TEST_FORWARD_TIMEOUT,
        );
        let task = tokio::spawn(serve_with(udp, Some(tcp), handler));
        TestServer {
            udp: udp_addr,
            tcp: tcp_addr,
            task,
        }
    }

    fn query(id: u16, name: &str, query_type: RecordType) -> Vec<u8> {
        let mut message = Message::query();
        message.metadata.id = id;
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), query_type));
        message.to_vec().unwrap()
    }

    async fn ask_udp(server: SocketAddr, packet: &[u8]) -> Message {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.send_to(packet, server).await.unwrap();
        let mut buf = vec![0u8; 65_535];
        let (len, _) = timeout(CLIENT_TIMEOUT, socket.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        Message::from_vec(&buf[..len]).unwrap()
    }

    async fn ask_tcp(server: SocketAddr, packet: &[u8]) -> Message {
        let mut stream = TcpStream::connect(server).await.unwrap();
        write_frame(&mut stream, packet).await.unwrap();
        let reply = timeout(CLIENT_TIMEOUT, read_frame(&mut stream))
            .await
            .unwrap()
            .unwrap();
        Message::from_vec(&reply).unwrap()
    }

    fn a_records(reply: &Message) -> Vec<Ipv4Addr> {
        let mut addrs: Vec<Ipv4Addr> = reply
            .answers
            .iter()
            .map(|record| match &record.data {
                RData::A(A(addr)) => *addr,
                other => panic!("not an A record: {other:?}"),
            })
            .collect();
        addrs.sort();
        addrs
    }

    const WEB: [Ipv4Addr; 3] = [
        Ipv4Addr::new(10, 0, 1, 2),
        Ipv4Addr::new(10, 0, 1, 3),
        Ipv4Addr::new(10, 0, 1, 4),
    ];

    #[tokio::test]
    async fn owned_name_gets_a_records() {
        let server = start(FakeResolver::with(&[("web", &WEB)]), vec![]);
        let reply = ask_udp(server.udp, &query(0x1234, "web.", RecordType::A)).await;
        assert_eq!(reply.metadata.id, 0x1234);
        assert_eq!(reply.metadata.message_type, MessageType::Response);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(!reply.metadata.authoritative);
        assert!(reply.metadata.recursion_available);
        assert!(reply.metadata.recursion_desired);
        assert!(!reply.metadata.truncation);
        assert_eq!(reply.queries.len(), 1);
        assert_eq!(a_records(&reply), WEB.to_vec());
        assert!(reply
            .answers
            .iter()
            .all(|r| r.ttl == ANSWER_TTL && r.name == Name::from_ascii("web.").unwrap()));
    }

    #[tokio::test]
    async fn answers_come_in_random_order() {
        let many: Vec<Ipv4Addr> = (1..=8).map(|i| Ipv4Addr::new(10, 0, 2, i)).collect();
        let server = start(FakeResolver::with(&[("web", &many)]), vec![]);
        let mut orders = std::collections::HashSet::new();
        for id in 0..20 {
            let reply = ask_udp(server.udp, &query(id, "web.", RecordType::A)).await;
            orders.insert(
                reply
                    .answers
                    .iter()
                    .map(|r| format!("{:?}", r.data))
                    .collect::<Vec<_>>(),
            );
        }
        // 20 shuffles of 8 addresses all equal has probability (1/8!)^19.
        assert!(orders.len() > 1, "answers were never reordered");
    }

    #[tokio::test]
    async fn resolver_sees_lower_case_name_without_dot() {
        let resolver = FakeResolver::with(&[("tasks.web", &WEB[..1])]);
        let server = start(resolver.clone(), vec![]);
        let reply = ask_udp(server.udp, &query(7, "Tasks.WEB.", RecordType::A)).await;
        assert_eq!(a_records(&reply), vec![WEB[0]]);
        // The owner name keeps the client's spelling; it matches the question case-insensitively.
        assert_eq!(reply.answers[0].name.to_ascii(), "Tasks.WEB.");
        assert_eq!(resolver.asked.lock().unwrap().as_slice(), ["tasks.web"]);
    }

    #[tokio::test]
    async fn non_a_query_for_owned_name_is_empty_noerror() {
        let server = start(FakeResolver::with(&[("web", &WEB)]), vec![]);
        for query_type in [RecordType::AAAA, RecordType::MX, RecordType::TXT] {
            let reply = ask_udp(server.udp, &query(9, "web.", query_type)).await;
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::NoError,
                "{query_type}"
            );
            assert!(reply.answers.is_empty(), "{query_type}");
        }
    }

    #[tokio::test]
    async fn owned_name_without_addresses_is_empty_noerror() {
        let server = start(FakeResolver::with(&[("idle", &[])]), vec![]);
        let reply = ask_udp(server.udp, &query(10, "idle.", RecordType::A)).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.answers.is_empty());
    }

    /// A fake upstream answering every query (UDP and TCP on the same port) with `rcode` and, for
    /// NOERROR, one A record, recording the ids it saw. Aborted on drop.
    struct FakeUpstream {
        addr: SocketAddr,
        ids: Arc<Mutex<Vec<u16>>>,
        tasks: Vec<JoinHandle<()>>,
    }

    impl Drop for FakeUpstream {
        fn drop(&mut self) {
            self.tasks.iter().for_each(JoinHandle::abort);
        }
    }

    const UPSTREAM_ANSWER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 9);

    fn upstream_reply(query: &[u8], ids: &Mutex<Vec<u16>>, rcode: ResponseCode) -> Vec<u8> {
        let request = Message::from_vec(query).unwrap();
        ids.lock().unwrap().push(request.metadata.id);
        let mut reply = reply_to(&request, rcode);
        if rcode == ResponseCode::NoError {
            reply.answers = answers(&request.queries[0].name, vec![UPSTREAM_ANSWER]);
        }
        reply.to_vec().unwrap()
    }

    async fn fake_upstream(rcode: ResponseCode) -> FakeUpstream {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        let tcp = TcpListener::bind(addr).await.unwrap();
        let ids = Arc::new(Mutex::new(Vec::new()));
        let udp_ids = Arc::clone(&ids);
        let udp_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let (len, peer) = udp.recv_from(&mut buf).await.unwrap();
                let reply = upstream_reply(&buf[..len], &udp_ids, rcode);
                udp.send_to(&reply, peer).await.unwrap();
            }
        });
        let tcp_ids = Arc::clone(&ids);
        let tcp_task = tokio::spawn(async move {
            loop {
                let (mut stream, _) = tcp.accept().await.unwrap();
                let query = read_frame(&mut stream).await.unwrap();
                write_frame(&mut stream, &upstream_reply(&query, &tcp_ids, rcode))
                    .await
                    .unwrap();
            }
        });
        FakeUpstream {
            addr,
            ids,
            tasks: vec![udp_task, tcp_task],
        }
    }

    #[tokio::test]
    async fn unknown_name_is_forwarded_keeping_the_client_id() {
        let upstream = fake_upstream(ResponseCode::NoError).await;
        let server = start(FakeResolver::with(&[("web", &WEB)]), vec![upstream.addr]);
        let reply = ask_udp(server.udp, &query(0xbeef, "example.com.", RecordType::A)).await;
        assert_eq!(reply.metadata.id, 0xbeef);
        assert_eq!(a_records(&reply), vec![UPSTREAM_ANSWER]);
        assert_eq!(upstream.ids.lock().unwrap().as_slice(), [0xbeef]);
    }

    #[tokio::test]
    async fn closed_upstream_is_skipped_for_the_next_without_waiting() {
        // Bound then closed: the connected forward socket gets ICMP port-unreachable at once.
        let closed = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let upstream = fake_upstream(ResponseCode::NoError).await;
        let server = start(FakeResolver::with(&[]), vec![closed, upstream.addr]);
        let started = tokio::time::Instant::now();
        let reply = ask_udp(server.udp, &query(21, "example.com.", RecordType::A)).await;
        assert_eq!(a_records(&reply), vec![UPSTREAM_ANSWER]);
        assert!(
            started.elapsed() < TEST_FORWARD_TIMEOUT,
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn silent_upstream_is_skipped_for_the_next() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let upstream = fake_upstream(ResponseCode::NoError).await;
        let server = start(
            FakeResolver::with(&[]),
            vec![silent.local_addr().unwrap(), upstream.addr],
        );
        let reply = ask_udp(server.udp, &query(22, "example.com.", RecordType::A)).await;
        assert_eq!(a_records(&reply), vec![UPSTREAM_ANSWER]);
    }

    #[tokio::test]
    async fn upstream_servfail_tries_the_next_and_is_relayed_if_none_does_better() {
        let failing = fake_upstream(ResponseCode::ServFail).await;
        let refusing = fake_upstream(ResponseCode::Refused).await;
        let good = fake_upstream(ResponseCode::NoError).await;
        let server = start(FakeResolver::with(&[]), vec![failing.addr, good.addr]);
        let reply = ask_udp(server.udp, &query(23, "example.com.", RecordType::A)).await;
        assert_eq!(a_records(&reply), vec![UPSTREAM_ANSWER]);
        assert_eq!(failing.ids.lock().unwrap().as_slice(), [23]);

        let server = start(FakeResolver::with(&[]), vec![failing.addr, refusing.addr]);
        let reply = ask_udp(server.udp, &query(24, "example.com.", RecordType::A)).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
        assert_eq!(refusing.ids.lock().unwrap().as_slice(), [24]);
    }

    #[tokio::test]
    async fn silent_upstream_gives_servfail_within_the_timeout() {
        // Bound but never read: queries to it go unanswered.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server = start(FakeResolver::with(&[]), vec![silent.local_addr().unwrap()]);
        let started = tokio::time::Instant::now();
        let reply = ask_udp(server.udp, &query(0x4242, "example.com.", RecordType::A)).await;
        let elapsed = started.elapsed();
        assert_eq!(reply.metadata.id, 0x4242);
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(reply.queries.len(), 1);
        assert!(elapsed >= TEST_FORWARD_TIMEOUT, "{elapsed:?}");
        assert!(elapsed < TEST_FORWARD_TIMEOUT * 5, "{elapsed:?}");
    }

    #[tokio::test]
    async fn no_upstreams_gives_servfail() {
        let server = start(FakeResolver::with(&[]), vec![]);
        let reply = ask_udp(server.udp, &query(3, "example.com.", RecordType::A)).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    }

    #[tokio::test]
    async fn slow_forward_does_not_block_owned_answers() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server = start(
            FakeResolver::with(&[("web", &WEB)]),
            vec![silent.local_addr().unwrap()],
        );
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for packet in [
            query(1, "example.com.", RecordType::A),
            query(2, "web.", RecordType::A),
        ] {
            client.send_to(&packet, server.udp).await.unwrap();
        }
        // The forward (id 1) waits out its timeout; the owned answer (id 2) must not wait for it.
        let mut buf = [0u8; 512];
        let mut ids = Vec::new();
        for _ in 0..2 {
            let (len, _) = timeout(CLIENT_TIMEOUT, client.recv_from(&mut buf))
                .await
                .unwrap()
                .unwrap();
            ids.push(Message::from_vec(&buf[..len]).unwrap().metadata.id);
        }
        assert_eq!(ids, [2, 1]);
    }

    #[tokio::test]
    async fn garbage_does_not_stop_the_server() {
        let server = start(FakeResolver::with(&[("web", &WEB)]), vec![]);
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // Too short for a header: dropped without a reply.
        for packet in [&[][..], &[0xff][..], &[1, 2, 3][..]] {
            client.send_to(packet, server.udp).await.unwrap();
        }
        // A header claiming a question that is not there: FORMERR with the id.
        let mut truncated = query(0x0bad, "web.", RecordType::A);
        truncated.truncate(14);
        let reply = ask_udp(server.udp, &truncated).await;
        assert_eq!(reply.metadata.id, 0x0bad);
        assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
        // Random junk with a readable header.
        let junk: Vec<u8> = (0..200u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 & 0x7f)
            .collect();
        client.send_to(&junk, server.udp).await.unwrap();
        // Responses are ignored, not answered.
        let mut response = Message::from_vec(&query(5, "web.", RecordType::A))
            .unwrap()
            .into_response();
        response.metadata.id = 5;
        client
            .send_to(&response.to_vec().unwrap(), server.udp)
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let first = timeout(Duration::from_millis(200), client.recv_from(&mut buf)).await;
        if let Ok(Ok((len, _))) = first {
            // Only the junk may be answered (FORMERR), never the response we sent.
            assert_ne!(Message::from_vec(&buf[..len]).unwrap().metadata.id, 5);
        }
        let reply = ask_udp(server.udp, &query(6, "web.", RecordType::A)).await;
        assert_eq!(a_records(&reply), WEB.to_vec());
        // TCP garbage closes that connection only.
        let mut stream = TcpStream::connect(server.tcp).await.unwrap();
        stream.write_all(&[0, 1, 0xff]).await.unwrap();
        let mut rest = Vec::new();
        timeout(CLIENT_TIMEOUT, stream.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        let reply = ask_tcp(server.tcp, &query(8, "web.", RecordType::A)).await;
        assert_eq!(a_records(&reply), WEB.to_vec());
        assert!(!server.task.is_finished());
    }

    #[tokio::test]
    async fn multiple_questions_are_formerr() {
        let server = start(FakeResolver::with(&[("web", &WEB)]), vec![]);
        let mut message = Message::from_vec(&query(11, "web.", RecordType::A)).unwrap();
        message.add_query(Query::query(
            Name::from_ascii("db.").unwrap(),
            RecordType::A,
        ));
        let reply = ask_udp(server.udp, &message.to_vec().unwrap()).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    }

    #[tokio::test]
    async fn tcp_query_is_answered() {
        let server = start(FakeResolver::with(&[("web", &WEB)]), vec![]);
        let reply = ask_tcp(server.tcp, &query(0x7777, "web.", RecordType::A)).await;
        assert_eq!(reply.metadata.id, 0x7777);
        assert_eq!(a_records(&reply), WEB.to_vec());
    }

    #[tokio::test]
    async fn tcp_query_for_unknown_name_is_forwarded_over_tcp() {
        let upstream = fake_upstream(ResponseCode::NoError).await;
        let server = start(FakeResolver::with(&[]), vec![upstream.addr]);
        let reply = ask_tcp(server.tcp, &query(0x5151, "example.com.", RecordType::A)).await;
        assert_eq!(reply.metadata.id, 0x5151);
        assert_eq!(a_records(&reply), vec![UPSTREAM_ANSWER]);
    }

    #[tokio::test]
    async fn large_answer_is_truncated_over_udp_and_whole_over_tcp() {
        let many: Vec<Ipv4Addr> = (0..100).map(|i| Ipv4Addr::new(10, 0, 3, i)).collect();
        let server = start(FakeResolver::with(&[("big", &many)]), vec![]);
        let packet = query(12, "big.", RecordType::A);
        let udp = ask_udp(server.udp, &packet).await;
        assert!(udp.metadata.truncation);
        assert!(!udp.answers.is_empty() && udp.answers.len() < many.len());
        assert!(udp.to_vec().unwrap().len() <= usize::from(UDP_CLASSIC_PAYLOAD));
        let tcp = ask_tcp(server.tcp, &packet).await;
        assert!(!tcp.metadata.truncation);
        assert_eq!(a_records(&tcp), many);
    }

    #[tokio::test]
    async fn edns_client_gets_its_larger_payload() {
        let many: Vec<Ipv4Addr> = (0..100).map(|i| Ipv4Addr::new(10, 0, 3, i)).collect();
        let server = start(FakeResolver::with(&[("big", &many)]), vec![]);
        let mut message = Message::from_vec(&query(13, "big.", RecordType::A)).unwrap();
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        message.edns = Some(edns);
        let reply = ask_udp(server.udp, &message.to_vec().unwrap()).await;
        assert!(!reply.metadata.truncation);
        assert!(reply.edns.is_some());
        assert_eq!(a_records(&reply), many);
    }

    #[tokio::test]
    async fn dropping_serve_releases_the_socket() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = udp.local_addr().unwrap();
        let task = tokio::spawn(serve(
            udp,
            None,
            FakeResolver::with(&[]),
            Arc::new(Upstreams::default()),
        ));
        tokio::task::yield_now().await;
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        std::net::UdpSocket::bind(addr).expect("socket still held after abort");
    }

    #[test]
    fn upstreams_from_resolv_conf() {
        let v4 = |a: [u8; 4]| SocketAddr::new(IpAddr::from(a), 53);
        let cases: &[(&str, Vec<SocketAddr>)] = &[
            ("", vec![]),
            ("# nameserver 9.9.9.9\nsearch example.com\n", vec![]),
            (
                "nameserver 127.0.0.53\noptions edns0 trust-ad\n",
                vec![v4([127, 0, 0, 53])],
            ),
            (
                "nameserver 1.1.1.1\n\tnameserver   8.8.8.8  # google\nnameserver 2001:db8::1\n",
                vec![
                    v4([1, 1, 1, 1]),
                    v4([8, 8, 8, 8]),
                    "[2001:db8::1]:53".parse().unwrap(),
                ],
            ),
            (
                "nameserver fe80::1%eth0\nnameserver bogus\nnameserver\nnameserver 9.9.9.9\n",
                vec![v4([9, 9, 9, 9])],
            ),
            (
                "nameserver 1.0.0.1\nnameserver 1.0.0.2\nnameserver 1.0.0.3\nnameserver 1.0.0.4\n",
                vec![v4([1, 0, 0, 1]), v4([1, 0, 0, 2]), v4([1, 0, 0, 3])],
            ),
            ("nameservers 1.2.3.4\n", vec![]),
        ];
        for (text, want) in cases {
            assert_eq!(
                Upstreams::from_resolv_conf(text).addrs(),
                want.as_slice(),
                "{text:?}"
            );
        }
    }
}
