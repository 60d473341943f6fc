//! `container exec`: runs a command in a running container over the daemon's bidirectional
//! `Exec` stream — this process's stdin in (with `-i`), the command's stdout and stderr out —
//! and exits with the command's exit code.

use std::io::IsTerminal;

use anyhow::bail;
use shoal_proto::node::v1 as pb;
use shoal_proto::node::v1::exec_request::Msg as ExecIn;
use shoal_proto::node::v1::exec_response::Msg as ExecOut;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::ExecArgs;
use crate::client::Client;
use crate::commands::{write_out, OrDaemonError};

/// Requests buffered towards the daemon (stdin chunks).
const STDIN_BUFFER: usize = 8;

/// Size of one read of stdin.
const STDIN_CHUNK: usize = 32 * 1024;

/// `container exec`: the command's exit code (0 at once with `-d`).
pub async fn exec(client: &Client, args: ExecArgs) -> anyhow::Result<i32> {
    if args.tty {
        if !std::io::stdin().is_terminal() {
            bail!("the input device is not a TTY");
        }
        bail!("exec with a terminal (-t) is not supported yet");
    }
    let Some((container, command)) = args.args.split_first() else {
        bail!("\"exec\" requires at least 2 arguments");
    };
    let attach_stdin = args.interactive && !args.detach;
    let start = pb::ExecStart {
        id: container.clone(),
        args: command.to_vec(),
        env: args.env,
        user: args.user,
        workdir: args.workdir,
        stdin: attach_stdin,
        tty: false,
        detach: args.detach,
    };
    let (tx, rx) = mpsc::channel(STDIN_BUFFER);
    tx.send(pb::ExecRequest {
        msg: Some(ExecIn::Start(start)),
    })
    .await
    .map_err(|_| anyhow::anyhow!("the exec request stream closed before it started"))?;
    if attach_stdin {
        tokio::spawn(pump_stdin(tx));
    } else {
        // Ending the request stream tells the daemon there is no input.
        drop(tx);
    }
    let mut stream = client
        .containers
        .clone()
        .exec(ReceiverStream::new(rx))
        .await
        .or_daemon_error()?
        .into_inner();
    while let Some(response) = stream.message().await.or_daemon_error()? {
        match response.msg {
            Some(ExecOut::Stdout(data)) => write_out(false, &data),
            Some(ExecOut::Stderr(data)) => write_out(true, &data),
            Some(ExecOut::ExitCode(code)) => return Ok(code),
            None => {}
        }
    }
    if args.detach {
        return Ok(0);
    }
    bail!("the daemon ended the exec stream without an exit code")
}

/// Sends this process's stdin until it ends; dropping the sender then closes the command's.
async fn pump_stdin(tx: mpsc::Sender<pb::ExecRequest>) {
    let mut stdin = tokio::io::stdin();
    loop {
        let mut buf = vec![0u8; STDIN_CHUNK];
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                buf.truncate(n);
                let request = pb::ExecRequest {
                    msg: Some(ExecIn::Stdin(buf)),
                };
                if tx.send(request).await.is_err() {
                    return;
                }
            }
        }
    }
}
