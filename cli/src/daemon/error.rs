//! [`ApiError`]: what a request handler can fail with, and its one mapping to `tonic::Status`.
//!
//! The runtime's errors already carry Docker's messages ("No such container: x"), so the
//! status message is the error's text; the status code says what kind of failure it is, so
//! that clients decide on codes and never on text. A failed start also carries the exit code
//! Docker's CLI would exit with ([`shoal_proto::EXIT_CODE_METADATA`]).

use std::error::Error as _;

use shoal_runtime::image::ImageError;
use shoal_runtime::ContainerError;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The runtime refused or failed.
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// The image store refused or failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The request itself is malformed (bad signal, missing first message, …).
    #[error("{0}")]
    InvalidArgument(String),
    /// The request needs something shoal does not do yet.
    #[error("{0}")]
    Unsupported(String),
    /// `attach` to a container that is not running.
    #[error("You cannot attach to a stopped container, start it first")]
    AttachStopped,
    /// Spawning the process of `exec` failed.
    #[error("start exec process in container {id}")]
    ExecSpawn {
        /// The container.
        id: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Relaying to or from a container's attach socket failed.
    #[error("attach to container {id}")]
    Attach {
        /// The container.
        id: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading a container's log failed.
    #[error("read the log of container {id}")]
    ReadLog {
        /// The container.
        id: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for a container's exit through its pidfd failed.
    #[error("wait for container {id} to exit")]
    WaitExit {
        /// The container.
        id: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The daemon is shutting down and ends the stream.
    #[error("the daemon is shutting down")]
    ShuttingDown,
    /// A local network or endpoint could not be made or removed.
    #[error(transparent)]
    Network(#[from] shoal_worker::bridge::BridgeError),
    /// A blocking task panicked or was cancelled.
    #[error("a daemon task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// Result alias of request handlers.
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

fn network_code(err: &shoal_worker::bridge::BridgeError) -> Code {
    use shoal_worker::bridge::BridgeError as E;
    match err {
        E::NotFound(_) => Code::NotFound,
        E::Exists(_) => Code::AlreadyExists,
        E::Predefined(_) | E::InUse { .. } | E::PortTaken { .. } | E::PortTakenBySwarm { .. } => {
            Code::FailedPrecondition
        }
        E::Ambiguous { .. }
        | E::BadName(_)
        | E::BadSubnet { .. }
        | E::Overlap { .. }
        | E::ContainerPortZero => Code::InvalidArgument,
        E::PoolExhausted | E::Full(_) | E::NoFreePort => Code::ResourceExhausted,
        E::Link(_) | E::Netns(_) | E::Network(_) | E::Io { .. } => Code::Internal,
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Status {
        let code = code_of(&err);
        let message = message_of(&err);
        if code == Code::Internal {
            // The one place where unexpected failures are logged; expected refusals (not
            // found, conflicts) are the client's business and would only be noise here.
            tracing::error!(error = %message, "request failed");
        }
        let mut status = Status::new(code, message);
        if let ApiError::Container(ContainerError::StartFailed { code, .. }) = &err {
            status
                .metadata_mut()
                .insert(shoal_proto::EXIT_CODE_METADATA, MetadataValue::from(*code));
        }
        status
    }
}

fn code_of(err: &ApiError) -> Code {
    match err {
        ApiError::Container(e) => match e {
            ContainerError::NotFound(_) => Code::NotFound,
            ContainerError::NameInUse { .. } => Code::AlreadyExists,
            ContainerError::Ambiguous(_)
            | ContainerError::InvalidName(_)
            | ContainerError::InvalidSpec(_) => Code::InvalidArgument,
            ContainerError::NotRunning(_)
            | ContainerError::Running(_)
            | ContainerError::ImageInUse { .. } => Code::FailedPrecondition,
            // 126/127: the command is at fault, not the daemon.
            ContainerError::StartFailed {
                code: 126 | 127, ..
            } => Code::FailedPrecondition,
            ContainerError::StartFailed { .. } => Code::Internal,
            ContainerError::Image(e) => image_code(e),
            _ => Code::Internal,
        },
        ApiError::Image(e) => image_code(e),
        ApiError::InvalidArgument(_) => Code::InvalidArgument,
        ApiError::Network(e) => network_code(e),
        ApiError::Unsupported(_) => Code::Unimplemented,
        ApiError::AttachStopped => Code::FailedPrecondition,
        ApiError::ShuttingDown => Code::Unavailable,
        ApiError::ExecSpawn { .. }
        | ApiError::Attach { .. }
        | ApiError::ReadLog { .. }
        | ApiError::WaitExit { .. }
        | ApiError::Task(_) => Code::Internal,
    }
}

fn image_code(err: &ImageError) -> Code {
    match err {
        ImageError::NotFound(_) => Code::NotFound,
        ImageError::InvalidReference(_)
        | ImageError::Ambiguous(_)
        | ImageError::DigestMismatch { .. }
        | ImageError::HostileEntry { .. }
        | ImageError::InvalidArchive(_) => Code::InvalidArgument,
        ImageError::MultipleTags { .. } => Code::FailedPrecondition,
        _ => Code::Internal,
    }
}

/// The error and its causes, joined as Go's wrapped errors read ("op path: cause").
fn message_of(err: &ApiError) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    // `#[error(transparent)]` variants forward `source()` to their inner error's source, so
    // the chain never repeats the top message.
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_error_kind() {
        let cases: Vec<(ApiError, Code)> = vec![
            (ContainerError::NotFound("x".into()).into(), Code::NotFound),
            (
                ContainerError::NameInUse {
                    name: "a".into(),
                    id: "b".into(),
                }
                .into(),
                Code::AlreadyExists,
            ),
            (
                ContainerError::InvalidSpec("bad".into()).into(),
                Code::InvalidArgument,
            ),
            (
                ContainerError::Running("x".into()).into(),
                Code::FailedPrecondition,
            ),
            (ImageError::NotFound("x".into()).into(), Code::NotFound),
            (
                ContainerError::Image(ImageError::NotFound("x".into())).into(),
                Code::NotFound,
            ),
            (ApiError::InvalidArgument("x".into()), Code::InvalidArgument),
        ];
        for (err, code) in cases {
            let text = err.to_string();
            let status = Status::from(err);
            assert_eq!(status.code(), code, "{text}");
            assert_eq!(status.message(), text);
        }
    }

    #[test]
    fn start_failure_carries_the_exit_code() {
        let status = Status::from(ApiError::from(ContainerError::StartFailed {
            code: 127,
            message: "exec: \"nope\": executable file not found in $PATH".into(),
        }));
        let code = status
            .metadata()
            .get(shoal_proto::EXIT_CODE_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok());
        assert_eq!(code, Some(127));
        assert_eq!(status.code(), Code::FailedPrecondition);
    }

    #[test]
    fn message_includes_the_causes() {
        let err = ApiError::ReadLog {
            id: "abc".into(),
            source: std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied"),
        };
        assert_eq!(
            Status::from(err).message(),
            "read the log of container abc: denied"
        );
    }
}
