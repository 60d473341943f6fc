//! Streaming a container's log to a client: what is there, then (following) what the
//! container writes until its process ends. Waiting on the container's exit pidfd (with a
//! tick between reads) shows the end of the container at once rather than on the next tick.

use std::os::fd::OwnedFd;
use std::time::Duration;

use shoal_proto::node::v1 as pb;
use shoal_runtime::logs::{LogReader, LogRecord};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{mpsc, watch};
use tonic::Status;

use super::convert::log_to_wire;
use super::error::{ApiError, Result};

/// Pause between two reads of a followed log when nothing ended: short enough that output
/// appears live to a person, long enough that a follower costs nothing measurable.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(50);

/// How a follow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Followed {
    /// The container's process ended and its last output was sent.
    Exited,
    /// The client went away.
    ClientGone,
}

/// Sends `records` as `wrap`ped chunks; `false` when the client is gone.
pub async fn send_records<T>(
    records: Vec<LogRecord>,
    tx: &mpsc::Sender<Result<T, Status>>,
    wrap: &impl Fn(pb::LogChunk) -> T,
) -> bool {
    for record in records {
        if tx.send(Ok(wrap(log_to_wire(record)))).await.is_err() {
            return false;
        }
    }
    true
}

/// Sends what is appended to the log from the reader's position on, until `exit` (the
/// container's exit pidfd; `None` when it is not running) is readable and a last read is
/// done. Ends early when the client is gone or the daemon stops. Async, so that any number
/// of followers costs no blocking threads; the log reads themselves are small reads of a
/// local file.
pub async fn follow<T>(
    id: &str,
    reader: &mut LogReader,
    exit: Option<OwnedFd>,
    tx: &mpsc::Sender<Result<T, Status>>,
    wrap: impl Fn(pb::LogChunk) -> T,
    stopping: &watch::Receiver<bool>,
) -> Result<Followed> {
    let exit = match exit {
        // SAFETY: the `OwnedFd` moves into the `AsyncFd`, which keeps it open and referring
        // to the same pidfd until it is dropped.
        Some(fd) => Some(
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|err| {
                ApiError::ReadLog {
                    id: id.to_string(),
                    source: err.into_parts().1,
                }
            })?,
        ),
        None => None,
    };
    let mut exited = exit.is_none();
    loop {
        let records = reader.read_new().map_err(|source| ApiError::ReadLog {
            id: id.to_string(),
            source,
        })?;
        if !send_records(records, tx, &wrap).await || tx.is_closed() {
            return Ok(Followed::ClientGone);
        }
        if exited {
            return Ok(Followed::Exited);
        }
        if *stopping.borrow() {
            return Err(ApiError::ShuttingDown);
        }
        if let Some(fd) = &exit {
            tokio::select! {
                ready = fd.readable() => exited = ready.is_ok(),
                _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
            }
        }
    }
}
