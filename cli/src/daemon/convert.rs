//! Conversions between the node API's messages (`shoal_proto::node::v1`) and the runtime's
//! types, in one place so that handlers never build protobuf structs field by field.
//!
//! They live here rather than in `shoal-proto` because the proto crate must not depend on
//! the runtime (clients of the API should not compile it).

use std::time::{SystemTime, UNIX_EPOCH};

use shoal_proto::node::v1 as pb;
use shoal_runtime::container::{ExecSpec, Stats};
use shoal_runtime::image::{ImageInfo, Removed};
use shoal_runtime::logs::{LogRecord, Stream};
use shoal_runtime::spec::NetworkMode;
use shoal_runtime::{Container, ContainerSpec, State};
use shoal_worker::bridge::Published;

use super::error::{ApiError, Result};

/// The runtime's create request from the wire's.
pub fn spec_from_wire(spec: pb::ContainerSpec) -> Result<ContainerSpec> {
    let network = match pb::NetworkMode::try_from(spec.network) {
        Ok(pb::NetworkMode::None) => NetworkMode::None,
        Ok(pb::NetworkMode::Host) => NetworkMode::Host,
        // The create handler attaches the container and sets its namespace.
        Ok(pb::NetworkMode::Bridge) => NetworkMode::None,
        Err(_) => {
            return Err(ApiError::InvalidArgument(format!(
                "unknown network mode {}",
                spec.network
            )))
        }
    };
    Ok(ContainerSpec {
        name: spec.name,
        image: spec.image,
        cmd: spec.cmd,
        entrypoint: spec.entrypoint.map(|list| list.values),
        env: spec.env,
        workdir: spec.workdir,
        user: spec.user,
        hostname: spec.hostname,
        memory: spec.memory,
        nano_cpus: spec.nano_cpus,
        pids_limit: spec.pids_limit,
        read_only: spec.read_only,
        cap_add: spec.cap_add,
        cap_drop: spec.cap_drop,
        network,
        names: None,
        auto_remove: spec.auto_remove,
        // Only the swarm worker makes disposable containers.
        disposable: false,
        tty: spec.tty,
        open_stdin: spec.open_stdin,
        labels: spec
            .labels
            .into_iter()
            .map(|label| (label.key, label.value))
            .collect(),
    })
}

/// Published ports from the wire, checked.
pub fn ports_from_wire(ports: &[pb::PortBinding]) -> Result<Vec<Published>> {
    ports
        .iter()
        .map(|p| {
            if !matches!(p.host_ip.as_str(), "" | "0.0.0.0") {
                return Err(ApiError::InvalidArgument(format!(
                    "publishing on host address {} is not supported: ports are published on every address of the node (0.0.0.0)",
                    p.host_ip
                )));
            }
            let host_port = u16::try_from(p.host_port).map_err(|_| {
                ApiError::InvalidArgument(format!("invalid host port {}", p.host_port))
            })?;
            let container_port = u16::try_from(p.container_port)
                .ok()
                .filter(|port| *port != 0)
                .ok_or_else(|| {
                    ApiError::InvalidArgument(format!(
                        "invalid container port {}",
                        p.container_port
                    ))
                })?;
            let udp = match p.protocol.as_str() {
                "" | "tcp" => false,
                "udp" => true,
                other => {
                    return Err(ApiError::InvalidArgument(format!(
                        "invalid protocol {other:?}: tcp or udp"
                    )))
                }
            };
            Ok(Published {
                host_port,
                container_port,
                udp,
            })
        })
        .collect()
}

/// Published ports on the wire (as `docker ps` shows them: every address of the node).
pub fn ports_to_wire(ports: &[Published]) -> Vec<pb::PortBinding> {
    ports
        .iter()
        .map(|p| pb::PortBinding {
            host_ip: "0.0.0.0".into(),
            host_port: p.host_port.into(),
            container_port: p.container_port.into(),
            protocol: if p.udp { "udp" } else { "tcp" }.into(),
        })
        .collect()
}

/// An image as listed.
pub fn image_to_wire(image: &ImageInfo) -> pb::Image {
    pb::Image {
        id: image.id.clone(),
        manifest_digest: image.manifest_digest.clone(),
        repo_tags: image.repo_tags.clone(),
        created: image.created.clone().unwrap_or_default(),
        size: image.size,
    }
}

/// One line of `image rm`.
pub fn removal_to_wire(removed: Removed) -> pb::ImageRemoval {
    let (kind, reference) = match removed {
        Removed::Untagged(tag) => (pb::image_removal::Kind::Untagged, tag),
        Removed::Deleted(id) => (pb::image_removal::Kind::Deleted, id),
    };
    pb::ImageRemoval {
        kind: kind.into(),
        reference,
    }
}

/// Docker's `State`.
pub fn state_to_wire(state: &State) -> pb::ContainerState {
    pb::ContainerState {
        status: state.status.as_str().to_string(),
        pid: state.pid,
        exit_code: state.exit_code,
        oom_killed: state.oom_killed,
        started_at: state.started_at.clone(),
        finished_at: state.finished_at.clone(),
        error: state.error.clone(),
    }
}

/// How a container ended.
pub fn exit_to_wire(state: &State) -> pb::WaitContainerResponse {
    pb::WaitContainerResponse {
        exit_code: state.exit_code,
        oom_killed: state.oom_killed,
        error: state.error.clone(),
    }
}

/// One row of `container ls`.
pub fn summary_to_wire(c: &Container) -> pb::ContainerSummary {
    pb::ContainerSummary {
        id: c.id.clone(),
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: c.image_id.clone(),
        command: c.process.args.clone(),
        created: c.created.clone(),
        state: Some(state_to_wire(&c.state)),
        labels: labels_to_wire(&c.spec.labels),
        ports: Vec::new(),
    }
}

fn labels_to_wire(labels: &[(String, String)]) -> Vec<pb::Label> {
    labels
        .iter()
        .map(|(key, value)| pb::Label {
            key: key.clone(),
            value: value.clone(),
        })
        .collect()
}

/// One chunk of a container's output.
pub fn log_to_wire(record: LogRecord) -> pb::LogChunk {
    let stream = match record.stream {
        Stream::Stdout => pb::LogStream::Stdout,
        Stream::Stderr => pb::LogStream::Stderr,
    };
    pb::LogChunk {
        stream: stream.into(),
        data: record.log.into_bytes(),
        time: record.time,
    }
}

/// The runtime's exec request from the wire's.
pub fn exec_spec_from_wire(start: &pb::ExecStart) -> ExecSpec {
    ExecSpec {
        args: start.args.clone(),
        env: start.env.clone(),
        user: start.user.clone(),
        workdir: start.workdir.clone(),
    }
}

/// One usage sample of `c`, stamped with the time it was read.
pub fn stats_to_wire(c: &Container, stats: &Stats, read_at: SystemTime) -> pb::StatsResponse {
    let read_unix_nanos = read_at
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    pb::StatsResponse {
        id: c.id.clone(),
        name: c.name.clone(),
        cpu_usage_ns: stats.cpu_usage_ns,
        memory_usage: stats.memory_usage,
        memory_limit: stats.memory_limit,
        pids: stats.pids,
        read_unix_nanos,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_keeps_an_empty_entrypoint_apart_from_none() {
        let wire = pb::ContainerSpec {
            image: "demo".into(),
            entrypoint: Some(pb::StringList { values: vec![] }),
            network: pb::NetworkMode::Host.into(),
            labels: vec![pb::Label {
                key: "a".into(),
                value: "b".into(),
            }],
            ..Default::default()
        };
        let spec = spec_from_wire(wire).expect("valid spec");
        assert_eq!(spec.entrypoint, Some(vec![]));
        assert_eq!(spec.network, NetworkMode::Host);
        assert_eq!(spec.labels, vec![("a".to_string(), "b".to_string())]);
        let spec = spec_from_wire(pb::ContainerSpec::default()).expect("valid spec");
        assert_eq!(spec.entrypoint, None);
    }

    #[test]
    fn unknown_network_mode_is_refused() {
        let wire = pb::ContainerSpec {
            network: 42,
            ..Default::default()
        };
        assert!(matches!(
            spec_from_wire(wire),
            Err(ApiError::InvalidArgument(_))
        ));
    }
}
