//! `Containers.Exec`: another process in a running container. The runtime builds the command
//! (it enters the container's namespaces, cgroup and security settings); the daemon spawns it
//! with piped stdio and pumps the pipes to and from the bidirectional stream.

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;

use shoal_proto::node::v1 as pb;
use shoal_proto::node::v1::exec_request::Msg as ExecIn;
use shoal_proto::node::v1::exec_response::Msg as ExecOut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::containers::STREAM_BUFFER;
use super::convert::exec_spec_from_wire;
use super::error::ApiError;
use super::{blocking, Daemon};

/// Size of one read from the process's stdout or stderr.
const READ_CHUNK: usize = 32 * 1024;

type ExecStream = ReceiverStream<Result<pb::ExecResponse, Status>>;

/// Starts the exec described by the stream's first message and returns the response stream.
pub async fn exec(
    daemon: Arc<Daemon>,
    mut requests: Streaming<pb::ExecRequest>,
) -> Result<ExecStream, Status> {
    let start = match requests.message().await? {
        Some(pb::ExecRequest {
            msg: Some(ExecIn::Start(start)),
        }) => start,
        _ => {
            return Err(ApiError::InvalidArgument(
                "exec: the first message must be an ExecStart".into(),
            )
            .into())
        }
    };
    if start.tty {
        return Err(
            ApiError::Unsupported("exec with a terminal (-t) is not supported yet".into()).into(),
        );
    }
    if start.args.is_empty() {
        return Err(ApiError::InvalidArgument("No exec command specified".into()).into());
    }
    let runtime = daemon.runtime.clone();
    let spec = exec_spec_from_wire(&start);
    let needle = start.id.clone();
    let (id, command) = blocking(move || {
        let c = runtime.lookup(&needle)?;
        let command = runtime.exec_command(&c.id, &spec)?;
        Ok((c.id, command))
    })
    .await?;
    let mut command = tokio::process::Command::from(command);
    let piped = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
    command
        .stdin(piped(start.stdin && !start.detach))
        .stdout(piped(!start.detach))
        .stderr(piped(!start.detach));
    let mut child = command.spawn().map_err(|source| ApiError::ExecSpawn {
        id: id.clone(),
        source,
    })?;
    tracing::debug!(container.id = %id, args = ?start.args, "exec");

    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    if start.detach {
        // Nobody waits for the output; reap the process so that it leaves no zombie.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        return Ok(ReceiverStream::new(rx));
    }
    if let Some(mut stdin) = child.stdin.take() {
        tokio::spawn(async move {
            while let Ok(Some(request)) = requests.message().await {
                if let Some(ExecIn::Stdin(data)) = request.msg {
                    if stdin.write_all(&data).await.is_err() {
                        break;
                    }
                }
            }
            // Dropping stdin closes it: the end of the request stream is the end of input.
        });
    }
    let stdout = child
        .stdout
        .take()
        .map(|out| tokio::spawn(pump(out, tx.clone(), ExecOut::Stdout)));
    let stderr = child
        .stderr
        .take()
        .map(|err| tokio::spawn(pump(err, tx.clone(), ExecOut::Stderr)));
    let mut stopping = daemon.stopping.clone();
    tokio::spawn(async move {
        let finished = async {
            // All output first, then the exit code, so the code is the last message.
            for pump in [stdout, stderr].into_iter().flatten() {
                let _ = pump.await;
            }
            child.wait().await
        };
        let message = tokio::select! {
            status = finished => match status {
                Ok(status) => Ok(pb::ExecResponse { msg: Some(ExecOut::ExitCode(exit_code(status))) }),
                Err(source) => Err(Status::from(ApiError::ExecSpawn { id, source })),
            },
            _ = stopping.wait_for(|stop| *stop) => Err(Status::from(ApiError::ShuttingDown)),
        };
        let _ = tx.send(message).await;
    });
    Ok(ReceiverStream::new(rx))
}

/// Copies `reader` to the stream as `wrap`ped chunks until it ends or the client is gone.
async fn pump(
    mut reader: impl AsyncRead + Unpin,
    tx: mpsc::Sender<Result<pb::ExecResponse, Status>>,
    wrap: fn(Vec<u8>) -> ExecOut,
) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let message = pb::ExecResponse {
                    msg: Some(wrap(buf[..n].to_vec())),
                };
                if tx.send(Ok(message)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The shell's convention: the exit code, or 128 + the signal that killed the process.
fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|sig| 128 + sig))
        .unwrap_or(128)
}
