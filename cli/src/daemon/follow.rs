//! Streaming a container's log to a client: what is there, then (following) what the
//! container writes until its process ends. Runs on a blocking thread: the log reader is
//! synchronous, and a `poll(2)` on the container's exit pidfd is both the pause between reads
//! and the exit notification, so the end of the container is seen at once rather than on the
//! next tick.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use shoal_proto::node::v1 as pb;
use shoal_runtime::logs::{LogReader, LogRecord};
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
pub fn send_records<T>(
    records: Vec<LogRecord>,
    tx: &mpsc::Sender<Result<T, Status>>,
    wrap: &impl Fn(pb::LogChunk) -> T,
) -> bool {
    records
        .into_iter()
        .all(|record| tx.blocking_send(Ok(wrap(log_to_wire(record)))).is_ok())
}

/// Sends what is appended to the log from the reader's position on, until `exit` (the
/// container's exit pidfd; `None` when it is not running) is readable and a last read is
/// done. Ends early when the client is gone or the daemon stops.
pub fn follow<T>(
    id: &str,
    reader: &mut LogReader,
    exit: Option<OwnedFd>,
    tx: &mpsc::Sender<Result<T, Status>>,
    wrap: impl Fn(pb::LogChunk) -> T,
    stopping: &watch::Receiver<bool>,
) -> Result<Followed> {
    let timeout =
        PollTimeout::try_from(FOLLOW_INTERVAL).expect("the follow interval fits a poll timeout");
    let mut exited = exit.is_none();
    loop {
        let records = reader.read_new().map_err(|source| ApiError::ReadLog {
            id: id.to_string(),
            source,
        })?;
        if !send_records(records, tx, &wrap) || tx.is_closed() {
            return Ok(Followed::ClientGone);
        }
        if exited {
            return Ok(Followed::Exited);
        }
        if *stopping.borrow() {
            return Err(ApiError::ShuttingDown);
        }
        if let Some(fd) = &exit {
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            // EINTR and friends just mean "look again".
            exited = matches!(poll(&mut fds, timeout), Ok(n) if n > 0);
        }
    }
}
