//! `Containers.Attach`: a container's output (and, interactively, its input) until it exits,
//! then its exit status — the foreground of `run` and `start -a`.
//!
//! Two ways, chosen per request:
//! - **Output only** (no `-i`, no terminal): the output is read from the container's log as
//!   the supervisor writes it ([`super::follow`]), holding the log (a reaper [`Hold`]) so an
//!   auto-remove container is not removed before its last output was sent.
//! - **Live** (`-i`, or a container with a terminal): the daemon connects to the
//!   supervisor's attach socket (the runtime's attach protocol: stdin, resizes and stdin
//!   close in; stdout, stderr and the exit code out) and relays frames both ways. A start
//!   with `start_attached` holds the process back until the connection is in place, so not a
//!   byte is missed.
//!
//! Either way, the exit status is sent last, after an auto-remove container was removed.
//!
//! [`Hold`]: super::reaper::Hold

use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use shoal_proto::node::v1 as pb;
use shoal_proto::node::v1::attach_container_request::Msg as AttachIn;
use shoal_proto::node::v1::attach_container_response::Event;
use shoal_runtime::process::attach::{kind, parse_header, write_frame, HEADER_LEN};
use shoal_runtime::{Container, Status as RunStatus};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::containers::{start_container, STREAM_BUFFER};
use super::convert::exit_to_wire;
use super::error::{ApiError, Result};
use super::follow::{follow, Followed};
use super::reaper::wait_for_exit;
use super::{blocking, Daemon};

type AttachStream = ReceiverStream<std::result::Result<pb::AttachContainerResponse, Status>>;
type Tx = mpsc::Sender<std::result::Result<pb::AttachContainerResponse, Status>>;

fn event(event: Event) -> pb::AttachContainerResponse {
    pb::AttachContainerResponse { event: Some(event) }
}

/// Serves one `Attach` call: reads the options, starts or attaches, and returns the stream.
pub async fn attach(
    daemon: Arc<Daemon>,
    mut requests: Streaming<pb::AttachContainerRequest>,
) -> std::result::Result<AttachStream, Status> {
    let options = match requests.message().await? {
        Some(pb::AttachContainerRequest {
            msg: Some(AttachIn::Options(options)),
        }) => options,
        _ => {
            return Err(ApiError::InvalidArgument(
                "attach: the first message must carry the options".into(),
            )
            .into())
        }
    };
    let c = {
        let runtime = daemon.runtime.clone();
        let id = options.id.clone();
        blocking(move || Ok(runtime.lookup(&id)?)).await?
    };
    if !options.start && c.state.status != RunStatus::Running {
        return Err(ApiError::AttachStopped.into());
    }
    let stream = if options.stdin || c.spec.tty {
        live(daemon, c, options, requests).await?
    } else {
        from_log(daemon, c, options.start).await?
    };
    Ok(stream)
}

/// Output only, read from the log.
async fn from_log(daemon: Arc<Daemon>, c: Container, start: bool) -> Result<AttachStream> {
    // Taken before the start, so that an auto-remove container that exits at once is not
    // removed before its output was read.
    let hold = daemon.reaper.hold(&c.id);
    let mut reader = {
        let runtime = daemon.runtime.clone();
        let id = c.id.clone();
        // Attach shows what the container writes from now on: skip what the log holds (the
        // output of an earlier run, for `start -a` of an exited container).
        blocking(move || {
            let mut reader = runtime.logs(&id)?;
            reader
                .read_all(Some(0))
                .map_err(|source| ApiError::ReadLog { id, source })?;
            Ok(reader)
        })
        .await?
    };
    let c = if start {
        start_container(&daemon, &c, false).await?.0
    } else {
        c
    };
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let _ = tx
        .send(Ok(event(Event::Attached(pb::Attached { tty: false }))))
        .await;
    tokio::spawn(async move {
        let followed = {
            let runtime = daemon.runtime.clone();
            let stopping = daemon.stopping.clone();
            let id = c.id.clone();
            let tx = tx.clone();
            let exit = {
                let id = id.clone();
                blocking(move || Ok(runtime.exit_fd(&id)?)).await
            };
            match exit {
                Ok(exit) => {
                    let output = |chunk| event(Event::Output(chunk));
                    follow(&id, &mut reader, exit, &tx, output, &stopping).await
                }
                Err(err) => Err(err),
            }
        };
        match followed {
            Ok(Followed::Exited) => {}
            Ok(Followed::ClientGone) => return,
            Err(err) => {
                let _ = tx.send(Err(err.into())).await;
                return;
            }
        }
        drop(hold);
        send_exit(&daemon, &c, &tx).await;
    });
    Ok(ReceiverStream::new(rx))
}

/// Sends the container's final state (after removing it when it is auto-remove).
async fn send_exit(daemon: &Daemon, c: &Container, tx: &Tx) {
    let state = match wait_for_exit(&daemon.runtime, &c.id).await {
        Err(err) => Err(err),
        Ok(()) if c.spec.auto_remove => daemon.reaper.reap(&c.id, &c.name).await,
        Ok(()) => {
            let runtime = daemon.runtime.clone();
            let id = c.id.clone();
            blocking(move || Ok(runtime.wait(&id)?)).await
        }
    };
    let message = state
        .map(|state| event(Event::Exit(exit_to_wire(&state))))
        .map_err(Status::from);
    let _ = tx.send(message).await;
}

/// Input and output relayed through the supervisor's attach socket.
async fn live(
    daemon: Arc<Daemon>,
    c: Container,
    options: pb::AttachOptions,
    requests: Streaming<pb::AttachContainerRequest>,
) -> Result<AttachStream> {
    let id = c.id.clone();
    let attach_error = |source| ApiError::Attach {
        id: id.clone(),
        source,
    };
    let (c, socket) = if options.start && c.state.status != RunStatus::Running {
        match start_container(&daemon, &c, true).await? {
            (c, Some(socket)) => (c, socket),
            // Started meanwhile by someone else: attach to it like to any running one.
            (c, None) => {
                let runtime = daemon.runtime.clone();
                let id = c.id.clone();
                let socket = blocking(move || Ok(runtime.attach(&id)?)).await?;
                (c, socket)
            }
        }
    } else {
        let runtime = daemon.runtime.clone();
        let id = c.id.clone();
        let socket = blocking(move || Ok(runtime.attach(&id)?)).await?;
        (c, socket)
    };
    socket.set_nonblocking(true).map_err(attach_error)?;
    let socket = tokio::net::UnixStream::from_std(socket).map_err(attach_error)?;
    let (mut from_shim, mut to_shim) = socket.into_split();
    if let (true, Some(size)) = (c.spec.tty, options.size) {
        send_frame(&mut to_shim, kind::RESIZE, &resize_payload(size))
            .await
            .map_err(attach_error)?;
    }
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let _ = tx
        .send(Ok(event(Event::Attached(pb::Attached { tty: c.spec.tty }))))
        .await;
    tokio::spawn(relay_input(requests, to_shim, options.stdin));
    tokio::spawn(async move {
        let mut stopping = daemon.stopping.clone();
        loop {
            let frame = tokio::select! {
                frame = read_frame(&mut from_shim) => Some(frame),
                _ = stopping.wait_for(|stop| *stop) => None,
            };
            let Some(frame) = frame else {
                let _ = tx.send(Err(ApiError::ShuttingDown.into())).await;
                return;
            };
            let (stream, data) = match frame {
                Ok(Some((kind::STDOUT, data))) => (pb::LogStream::Stdout, data),
                Ok(Some((kind::STDERR, data))) => (pb::LogStream::Stderr, data),
                // The exit frame, or the supervisor gone: the final state is on disk.
                Ok(Some((kind::EXIT, _))) | Ok(None) => break,
                Ok(Some(_)) => continue,
                Err(source) => {
                    let err = ApiError::Attach {
                        id: c.id.clone(),
                        source,
                    };
                    let _ = tx.send(Err(err.into())).await;
                    return;
                }
            };
            let chunk = pb::LogChunk {
                stream: stream.into(),
                data,
                time: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
            };
            if tx.send(Ok(event(Event::Output(chunk)))).await.is_err() {
                // The client is gone; dropping the socket detaches from the container.
                return;
            }
        }
        send_exit(&daemon, &c, &tx).await;
    });
    Ok(ReceiverStream::new(rx))
}

/// Forwards the client's input and resizes to the supervisor until the client's stream ends.
async fn relay_input(
    mut requests: Streaming<pb::AttachContainerRequest>,
    mut to_shim: OwnedWriteHalf,
    stdin: bool,
) {
    while let Ok(Some(request)) = requests.message().await {
        let sent = match request.msg {
            Some(AttachIn::Stdin(data)) if stdin => {
                send_frame(&mut to_shim, kind::STDIN, &data).await
            }
            Some(AttachIn::StdinClose(true)) if stdin => {
                send_frame(&mut to_shim, kind::STDIN_CLOSE, &[]).await
            }
            Some(AttachIn::Resize(size)) => {
                send_frame(&mut to_shim, kind::RESIZE, &resize_payload(size)).await
            }
            _ => Ok(()),
        };
        if sent.is_err() {
            return;
        }
    }
}

/// The attach protocol's resize payload: `rows: u16 LE, cols: u16 LE`.
fn resize_payload(size: pb::TerminalSize) -> [u8; 4] {
    let clamp = |n: u32| u16::try_from(n).unwrap_or(u16::MAX).to_le_bytes();
    let (rows, cols) = (clamp(size.rows), clamp(size.cols));
    [rows[0], rows[1], cols[0], cols[1]]
}

async fn send_frame(to_shim: &mut OwnedWriteHalf, kind: u8, payload: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(payload.len() + 5);
    write_frame(&mut buf, kind, payload)?;
    to_shim.write_all(&buf).await
}

/// One frame of the attach protocol; `None` at a clean end of stream.
async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; HEADER_LEN];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let (kind, len) = parse_header(&head)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some((kind, payload)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_payload_is_rows_then_cols_little_endian() {
        let payload = resize_payload(pb::TerminalSize { rows: 24, cols: 80 });
        assert_eq!(payload, [24, 0, 80, 0]);
        let huge = resize_payload(pb::TerminalSize {
            rows: 70_000,
            cols: 1,
        });
        assert_eq!(huge, [0xff, 0xff, 1, 0]);
    }

    #[tokio::test]
    async fn frames_read_back_as_written() {
        let mut wire = Vec::new();
        write_frame(&mut wire, kind::STDOUT, b"hi").expect("write");
        write_frame(&mut wire, kind::EXIT, &3i32.to_le_bytes()).expect("write");
        let mut r = &wire[..];
        assert_eq!(
            read_frame(&mut r).await.expect("read"),
            Some((kind::STDOUT, b"hi".to_vec()))
        );
        assert_eq!(
            read_frame(&mut r).await.expect("read").map(|f| f.0),
            Some(kind::EXIT)
        );
        assert_eq!(read_frame(&mut r).await.expect("read"), None);
    }
}
