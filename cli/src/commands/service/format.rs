//! Cluster objects in Docker's shapes, shared by `shoal node` and `shoal service`: the JSON
//! documents of `node inspect` and `service inspect` (Docker's field names and `omitempty`
//! rules, so that scripts written against `docker … inspect` keep working), Docker's
//! lower-case names of states, roles and modes, and Docker's ways of printing times.
//!
//! It does not own tables (see [`super::table`]) or the `--pretty` texts, which live with their
//! commands.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use shoal_proto::cluster::v1 as pb;
use shoal_proto::cluster::v1::service_spec::Mode;

use crate::units::human_duration;

/// Docker's name of a task state (`TaskState` in moby's `api/types/swarm`).
pub fn task_state_name(state: pb::TaskState) -> &'static str {
    use pb::TaskState as S;
    match state {
        S::New => "new",
        S::Pending => "pending",
        S::Assigned => "assigned",
        S::Accepted => "accepted",
        S::Preparing => "preparing",
        S::Ready => "ready",
        S::Starting => "starting",
        S::Running => "running",
        S::Complete => "complete",
        S::Shutdown => "shutdown",
        S::Failed => "failed",
        S::Rejected => "rejected",
        S::Remove => "remove",
        S::Orphaned => "orphaned",
    }
}

/// The state Docker calls `name` (the inverse of [`task_state_name`]).
pub fn task_state_from_name(name: &str) -> Option<pb::TaskState> {
    use pb::TaskState as S;
    [
        S::New,
        S::Pending,
        S::Assigned,
        S::Accepted,
        S::Preparing,
        S::Ready,
        S::Starting,
        S::Running,
        S::Complete,
        S::Shutdown,
        S::Failed,
        S::Rejected,
        S::Remove,
        S::Orphaned,
    ]
    .into_iter()
    .find(|s| task_state_name(*s) == name)
}

/// Docker's name of a node state.
pub fn node_state_name(state: pb::NodeState) -> &'static str {
    match state {
        pb::NodeState::Unknown => "unknown",
        pb::NodeState::Down => "down",
        pb::NodeState::Ready => "ready",
        pb::NodeState::Disconnected => "disconnected",
    }
}

/// Docker's name of a node availability.
pub fn availability_name(availability: pb::NodeAvailability) -> &'static str {
    match availability {
        pb::NodeAvailability::Active => "active",
        pb::NodeAvailability::Pause => "pause",
        pb::NodeAvailability::Drain => "drain",
    }
}

/// Docker's name of a node role.
pub fn role_name(role: pb::NodeRole) -> &'static str {
    match role {
        pb::NodeRole::Worker => "worker",
        pb::NodeRole::Manager => "manager",
    }
}

/// Docker's name of a restart condition.
pub fn restart_condition_name(condition: pb::RestartCondition) -> &'static str {
    match condition {
        pb::RestartCondition::Any => "any",
        pb::RestartCondition::OnFailure => "on-failure",
        pb::RestartCondition::None => "none",
    }
}

/// Docker's `MODE` column: "replicated" or "global".
pub fn mode_name(spec: &pb::ServiceSpec) -> &'static str {
    match spec.mode {
        Some(Mode::Global(_)) => "global",
        Some(Mode::Replicated(_)) => "replicated",
        None => "",
    }
}

/// Docker's name of a port protocol.
pub fn protocol_name(protocol: pb::PortProtocol) -> &'static str {
    match protocol {
        pb::PortProtocol::Tcp => "tcp",
        pb::PortProtocol::Udp => "udp",
    }
}

/// Docker's name of a publish mode.
pub fn publish_mode_name(mode: pb::PublishMode) -> &'static str {
    match mode {
        pb::PublishMode::Ingress => "ingress",
        pb::PublishMode::Host => "host",
    }
}

/// Docker's name of an endpoint (resolution) mode.
pub fn endpoint_mode_name(mode: pb::EndpointMode) -> &'static str {
    match mode {
        pb::EndpointMode::Vip => "vip",
        pb::EndpointMode::Dnsrr => "dnsrr",
    }
}

/// Docker's `formatter.PrettyPrint` of a word: first letter upper-case, the rest lower-case
/// ("running" → "Running").
pub fn pretty(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        None => String::new(),
        Some(first) if word.len() == 1 => first.to_lowercase().collect(),
        Some(first) => first
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
    }
}

/// A stored Unix-nanosecond time as a `SystemTime`.
pub fn system_time(unix_nanos: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(unix_nanos).unwrap_or(0))
}

/// Go's `time.RFC3339Nano`, as Docker's JSON prints times: fraction without trailing zeros
/// ("2024-01-01T00:00:00.5Z", "2024-01-01T00:00:00Z").
pub fn rfc3339_nanos(unix_nanos: i64) -> String {
    let full = humantime::format_rfc3339_nanos(system_time(unix_nanos)).to_string();
    trim_fraction(&full)
}

fn trim_fraction(rfc3339: &str) -> String {
    // humantime always writes nine fraction digits then 'Z'.
    match rfc3339.split_once('.') {
        Some((seconds, fraction)) => {
            let digits = fraction.trim_end_matches('Z').trim_end_matches('0');
            if digits.is_empty() {
                format!("{seconds}Z")
            } else {
                format!("{seconds}.{digits}Z")
            }
        }
        None => rfc3339.to_string(),
    }
}

/// Go's `time.Time.String()` of a UTC time ("2009-11-10 23:00:00.5 +0000 UTC"), as Docker's
/// `--pretty` texts print times (through `PrettyPrint`, which lower-cases "UTC").
pub fn go_time_string(unix_nanos: i64) -> String {
    let rfc = rfc3339_nanos(unix_nanos);
    let without_zone = rfc.trim_end_matches('Z').replacen('T', " ", 1);
    format!("{without_zone} +0000 UTC")
}

/// How long ago `unix_nanos` was, in go-units words: "5 seconds ago", "About a minute ago".
/// `service ps` lower-cases it, `service inspect --pretty` does not.
pub fn ago(unix_nanos: i64, now: SystemTime) -> String {
    let elapsed = now
        .duration_since(system_time(unix_nanos))
        .unwrap_or(Duration::ZERO);
    format!("{} ago", human_duration(elapsed))
}

/// Go's `[]string` through `%v`: "[a b]".
pub fn go_list(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

fn sorted(labels: &HashMap<String, String>) -> BTreeMap<String, String> {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Docker's `Version`.
#[derive(Debug, Serialize)]
pub struct VersionDoc {
    /// The object's version (the Raft index of its last write).
    #[serde(rename = "Index")]
    pub index: u64,
}

/// The object fields every Docker swarm object starts with.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MetaDoc {
    /// Object id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Version to name in updates.
    pub version: VersionDoc,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 time of the last write.
    pub updated_at: String,
}

impl MetaDoc {
    fn new(meta: Option<&pb::Meta>) -> MetaDoc {
        let meta = meta.cloned().unwrap_or_default();
        MetaDoc {
            id: meta.id,
            version: VersionDoc {
                index: meta.version,
            },
            created_at: rfc3339_nanos(meta.created_at),
            updated_at: rfc3339_nanos(meta.updated_at),
        }
    }
}

/// `docker node inspect`'s document.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeDoc {
    /// ID, Version, CreatedAt, UpdatedAt.
    #[serde(flatten)]
    pub meta: MetaDoc,
    /// What the operator asked for.
    pub spec: NodeSpecDoc,
    /// What the node reported about itself.
    pub description: NodeDescriptionDoc,
    /// What the managers observe.
    pub status: NodeStatusDoc,
    /// Set for managers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manager_status: Option<ManagerStatusDoc>,
}

/// Docker's `NodeSpec`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeSpecDoc {
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// Desired role: "worker" or "manager".
    pub role: &'static str,
    /// "active", "pause" or "drain".
    pub availability: &'static str,
}

/// Docker's `NodeDescription`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeDescriptionDoc {
    /// The node's OS hostname.
    pub hostname: String,
    /// OS and architecture.
    pub platform: PlatformDoc,
    /// CPUs and memory.
    pub resources: ResourcesDoc,
    /// The node's daemon.
    pub engine: EngineDoc,
}

/// Docker's `Platform`.
#[derive(Debug, Serialize)]
pub struct PlatformDoc {
    /// Machine architecture ("x86_64").
    #[serde(rename = "Architecture")]
    pub architecture: String,
    /// Operating system ("linux").
    #[serde(rename = "OS")]
    pub os: String,
}

/// Docker's `Resources` / `Limit`: zero fields are left out, as Docker's `omitempty` does.
#[derive(Debug, Default, Serialize)]
pub struct ResourcesDoc {
    /// CPUs in units of 1e-9 CPU.
    #[serde(rename = "NanoCPUs", skip_serializing_if = "is_zero_i64")]
    pub nano_cpus: i64,
    /// Memory in bytes.
    #[serde(rename = "MemoryBytes", skip_serializing_if = "is_zero_i64")]
    pub memory_bytes: i64,
}

impl ResourcesDoc {
    fn new(resources: Option<&pb::Resources>) -> ResourcesDoc {
        resources
            .map(|r| ResourcesDoc {
                nano_cpus: r.nano_cpus,
                memory_bytes: r.memory_bytes,
            })
            .unwrap_or_default()
    }
}

/// Docker's `EngineDescription`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EngineDoc {
    /// The node daemon's version.
    pub engine_version: String,
}

/// Docker's `NodeStatus`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeStatusDoc {
    /// "ready", "down", "unknown" or "disconnected".
    pub state: &'static str,
    /// Why the node is in that state.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Address the node talks to the managers from.
    pub addr: String,
}

/// Docker's `ManagerStatus`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ManagerStatusDoc {
    /// Whether this manager leads the Raft group.
    #[serde(skip_serializing_if = "is_false")]
    pub leader: bool,
    /// "reachable" or "unreachable".
    pub reachability: String,
    /// Cluster address.
    pub addr: String,
}

impl NodeDoc {
    /// The document of `node`.
    pub fn new(node: &pb::Node) -> NodeDoc {
        let spec = node.spec.clone().unwrap_or_default();
        let description = node.description.clone().unwrap_or_default();
        let status = node.status.clone().unwrap_or_default();
        NodeDoc {
            meta: MetaDoc::new(node.meta.as_ref()),
            spec: NodeSpecDoc {
                labels: sorted(&spec.labels),
                role: role_name(spec.desired_role()),
                availability: availability_name(spec.availability()),
            },
            description: NodeDescriptionDoc {
                hostname: description.hostname,
                platform: PlatformDoc {
                    architecture: description.arch,
                    os: description.os,
                },
                resources: ResourcesDoc {
                    nano_cpus: description.nano_cpus,
                    memory_bytes: description.memory_bytes,
                },
                engine: EngineDoc {
                    engine_version: description.engine_version,
                },
            },
            status: NodeStatusDoc {
                state: node_state_name(status.state()),
                message: status.message,
                addr: status.addr,
            },
            manager_status: node.manager_status.as_ref().map(|m| ManagerStatusDoc {
                leader: m.leader,
                reachability: m.reachability.clone(),
                addr: m.addr.clone(),
            }),
        }
    }
}

/// `docker service inspect`'s document.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceDoc {
    /// ID, Version, CreatedAt, UpdatedAt.
    #[serde(flatten)]
    pub meta: MetaDoc,
    /// The current spec.
    pub spec: ServiceSpecDoc,
    /// The spec before the last update, for rollback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_spec: Option<ServiceSpecDoc>,
    /// Published ports and virtual IPs, as the leader allocated them.
    pub endpoint: EndpointDoc,
    /// Progress of the last update.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_status: Option<UpdateStatusDoc>,
}

/// Docker's `Endpoint`: the endpoint spec, then what the leader allocated for it.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointDoc {
    /// The endpoint spec the allocation was made for.
    pub spec: EndpointSpecDoc,
    /// Ports with their published ports filled in.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortConfigDoc>,
    /// One address per network (VIP mode).
    #[serde(rename = "VirtualIPs", skip_serializing_if = "Vec::is_empty")]
    pub virtual_ips: Vec<VirtualIpDoc>,
}

/// Docker's `EndpointSpec`.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointSpecDoc {
    /// "vip" or "dnsrr".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
    /// Ports to publish.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortConfigDoc>,
}

impl EndpointSpecDoc {
    fn new(spec: &pb::EndpointSpec) -> EndpointSpecDoc {
        EndpointSpecDoc {
            mode: Some(endpoint_mode_name(spec.mode())),
            ports: spec.ports.iter().map(PortConfigDoc::new).collect(),
        }
    }
}

/// Docker's `PortConfig`, with its `omitempty` fields.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PortConfigDoc {
    /// Optional name of the port.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// "tcp" or "udp".
    pub protocol: &'static str,
    /// The port inside the tasks.
    pub target_port: u32,
    /// The port on the nodes; 0 (left out) in a spec asks the leader to pick one.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub published_port: u32,
    /// "ingress" or "host".
    pub publish_mode: &'static str,
}

impl PortConfigDoc {
    fn new(port: &pb::PortConfig) -> PortConfigDoc {
        PortConfigDoc {
            name: port.name.clone(),
            protocol: protocol_name(port.protocol()),
            target_port: port.target_port,
            published_port: port.published_port,
            publish_mode: publish_mode_name(port.publish_mode()),
        }
    }
}

/// Docker's `EndpointVirtualIP`.
#[derive(Debug, Serialize)]
pub struct VirtualIpDoc {
    /// The network the address is on.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// CIDR form, "10.0.1.2/24".
    #[serde(rename = "Addr")]
    pub addr: String,
}

/// Docker's `NetworkAttachmentConfig`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkAttachmentDoc {
    /// The network's id.
    pub target: String,
    /// Extra names of the service on it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// Docker's `UpdateStatus`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateStatusDoc {
    /// "updating", "completed", "paused", "rollback_started", …
    pub state: String,
    /// When the update started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// Human text about it.
    pub message: String,
}

/// Docker's `ServiceSpec`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceSpecDoc {
    /// Service name.
    pub name: String,
    /// Service labels.
    pub labels: BTreeMap<String, String>,
    /// What each task runs.
    pub task_template: TaskTemplateDoc,
    /// Replicated or global.
    pub mode: ModeDoc,
    /// How the service is reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_spec: Option<EndpointSpecDoc>,
}

/// Docker's `TaskSpec`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskTemplateDoc {
    /// The container.
    pub container_spec: ContainerSpecDoc,
    /// Limits and reservations.
    pub resources: ResourceRequirementsDoc,
    /// When to restart tasks; absent means the defaults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicyDoc>,
    /// Constraints.
    pub placement: PlacementDoc,
    /// The networks the tasks join.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkAttachmentDoc>,
    /// Counter bumped to force a redeploy.
    pub force_update: u64,
    /// Always "container".
    pub runtime: &'static str,
}

/// Docker's `ContainerSpec`, with its `omitempty` fields.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerSpecDoc {
    /// Image reference.
    pub image: String,
    /// Container labels.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Replaces the image's entrypoint.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Replaces the image's command.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Container hostname.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// KEY=VALUE environment.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Working directory.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub dir: String,
    /// User (and group).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Read-only root filesystem.
    #[serde(skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// Nanoseconds between SIGTERM and SIGKILL.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub stop_grace_period: i64,
}

/// Docker's `ResourceRequirements`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ResourceRequirementsDoc {
    /// Hard limits.
    pub limits: ResourcesDoc,
    /// What the scheduler sets aside.
    pub reservations: ResourcesDoc,
}

/// Docker's `RestartPolicy`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RestartPolicyDoc {
    /// "any", "on-failure" or "none".
    pub condition: &'static str,
    /// Nanoseconds between restarts.
    pub delay: i64,
    /// Zero: unlimited.
    pub max_attempts: u64,
    /// Nanoseconds over which restarts are counted.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub window: i64,
}

/// Docker's `Placement`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PlacementDoc {
    /// Constraint expressions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
}

/// Docker's `ServiceMode`: exactly one of the two is set.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ModeDoc {
    /// A fixed number of tasks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicated: Option<ReplicatedDoc>,
    /// One task per eligible node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub global: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Docker's `ReplicatedService`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReplicatedDoc {
    /// Desired number of tasks.
    pub replicas: u64,
}

impl ServiceSpecDoc {
    /// The document of `spec`.
    pub fn new(spec: &pb::ServiceSpec) -> ServiceSpecDoc {
        let task = spec.task.clone().unwrap_or_default();
        let container = task.container.clone().unwrap_or_default();
        let resources = task.resources.unwrap_or_default();
        ServiceSpecDoc {
            name: spec.name.clone(),
            labels: sorted(&spec.labels),
            task_template: TaskTemplateDoc {
                container_spec: ContainerSpecDoc {
                    image: container.image,
                    labels: sorted(&container.labels),
                    command: container.command,
                    args: container.args,
                    hostname: container.hostname,
                    env: container.env,
                    dir: container.dir,
                    user: container.user,
                    read_only: container.read_only,
                    stop_grace_period: container.stop_grace_period,
                },
                resources: ResourceRequirementsDoc {
                    limits: ResourcesDoc::new(resources.limits.as_ref()),
                    reservations: ResourcesDoc::new(resources.reservations.as_ref()),
                },
                restart_policy: task.restart.as_ref().map(|r| RestartPolicyDoc {
                    condition: restart_condition_name(r.condition()),
                    delay: r.delay,
                    max_attempts: r.max_attempts,
                    window: r.window,
                }),
                placement: PlacementDoc {
                    constraints: task.placement.map(|p| p.constraints).unwrap_or_default(),
                },
                networks: spec
                    .networks
                    .iter()
                    .map(|n| NetworkAttachmentDoc {
                        target: n.target.clone(),
                        aliases: n.aliases.clone(),
                    })
                    .collect(),
                force_update: task.force_update,
                runtime: "container",
            },
            mode: match spec.mode {
                Some(Mode::Replicated(r)) => ModeDoc {
                    replicated: Some(ReplicatedDoc {
                        replicas: r.replicas,
                    }),
                    global: None,
                },
                Some(Mode::Global(_)) => ModeDoc {
                    replicated: None,
                    global: Some(serde_json::Map::new()),
                },
                None => ModeDoc::default(),
            },
            endpoint_spec: spec.endpoint.as_ref().map(EndpointSpecDoc::new),
        }
    }
}

impl ServiceDoc {
    /// The document of `service`.
    pub fn new(service: &pb::Service) -> ServiceDoc {
        let time = |nanos: i64| (nanos != 0).then(|| rfc3339_nanos(nanos));
        ServiceDoc {
            meta: MetaDoc::new(service.meta.as_ref()),
            spec: ServiceSpecDoc::new(&service.spec.clone().unwrap_or_default()),
            previous_spec: service.previous_spec.as_ref().map(ServiceSpecDoc::new),
            endpoint: EndpointDoc {
                spec: service
                    .spec
                    .as_ref()
                    .and_then(|s| s.endpoint.as_ref())
                    .map(EndpointSpecDoc::new)
                    .unwrap_or_default(),
                ports: service
                    .endpoint
                    .iter()
                    .flat_map(|e| &e.ports)
                    .map(PortConfigDoc::new)
                    .collect(),
                virtual_ips: service
                    .endpoint
                    .iter()
                    .flat_map(|e| &e.virtual_ips)
                    .map(|v| VirtualIpDoc {
                        network_id: v.network_id.clone(),
                        addr: v.addr.clone(),
                    })
                    .collect(),
            },
            update_status: service
                .update_status
                .as_ref()
                .filter(|u| !u.state.is_empty())
                .map(|u| UpdateStatusDoc {
                    state: u.state.clone(),
                    started_at: time(u.started_at),
                    completed_at: time(u.completed_at),
                    message: u.message.clone(),
                }),
        }
    }
}

/// Pretty JSON as `docker inspect` prints it (4-space indent), keeping the documents' field
/// order (Docker's struct order) rather than sorting keys.
pub fn inspect_json<T: Serialize>(docs: &[T]) -> String {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    docs.serialize(&mut ser)
        .expect("inspect documents always serialize");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_704_067_200_000_000_000; // 2024-01-01T00:00:00Z

    fn meta(id: &str) -> Option<pb::Meta> {
        Some(pb::Meta {
            id: id.into(),
            version: 7,
            created_at: T0,
            updated_at: T0 + 500_000_000,
        })
    }

    #[test]
    fn times_print_like_go() {
        assert_eq!(rfc3339_nanos(T0), "2024-01-01T00:00:00Z");
        assert_eq!(rfc3339_nanos(T0 + 500_000_000), "2024-01-01T00:00:00.5Z");
        assert_eq!(rfc3339_nanos(T0 + 123), "2024-01-01T00:00:00.000000123Z");
        assert_eq!(go_time_string(T0), "2024-01-01 00:00:00 +0000 UTC");
        assert_eq!(
            go_time_string(T0 + 250_000_000),
            "2024-01-01 00:00:00.25 +0000 UTC"
        );
        let now = system_time(T0 + 65_000_000_000);
        assert_eq!(ago(T0, now), "About a minute ago");
        assert_eq!(ago(T0 + 60_000_000_000, now), "5 seconds ago");
        assert_eq!(ago(T0 + 90_000_000_000, now), "Less than a second ago");
    }

    #[test]
    fn words_print_like_docker() {
        assert_eq!(pretty("running"), "Running");
        assert_eq!(pretty("READY"), "Ready");
        assert_eq!(pretty(""), "");
        assert_eq!(
            task_state_from_name("shutdown"),
            Some(pb::TaskState::Shutdown)
        );
        assert_eq!(task_state_from_name("bogus"), None);
        assert_eq!(go_list(&["a".into(), "b".into()]), "[a b]");
    }

    #[test]
    fn node_document_has_docker_field_names() {
        let node = pb::Node {
            meta: meta("n1"),
            spec: Some(pb::NodeSpec {
                labels: [("zone".to_string(), "a".to_string())].into(),
                desired_role: pb::NodeRole::Manager as i32,
                availability: pb::NodeAvailability::Drain as i32,
            }),
            description: Some(pb::NodeDescription {
                hostname: "node-1".into(),
                os: "linux".into(),
                arch: "x86_64".into(),
                nano_cpus: 2_000_000_000,
                memory_bytes: 1 << 30,
                engine_version: "0.1.0".into(),
                kernel_version: "6.1".into(),
            }),
            status: Some(pb::NodeStatus {
                state: pb::NodeState::Ready as i32,
                message: String::new(),
                addr: "198.18.0.2".into(),
            }),
            role: pb::NodeRole::Manager as i32,
            manager_status: Some(pb::ManagerStatus {
                raft_id: 1,
                addr: "198.18.0.2:4247".into(),
                leader: true,
                reachability: "reachable".into(),
            }),
            last_heartbeat: 0,
            attachments: Vec::new(),
        };
        let doc = serde_json::to_value(NodeDoc::new(&node)).expect("serializes");
        let want = serde_json::json!({
            "ID": "n1",
            "Version": {"Index": 7},
            "CreatedAt": "2024-01-01T00:00:00Z",
            "UpdatedAt": "2024-01-01T00:00:00.5Z",
            "Spec": {"Labels": {"zone": "a"}, "Role": "manager", "Availability": "drain"},
            "Description": {
                "Hostname": "node-1",
                "Platform": {"Architecture": "x86_64", "OS": "linux"},
                "Resources": {"NanoCPUs": 2_000_000_000_i64, "MemoryBytes": 1_073_741_824_i64},
                "Engine": {"EngineVersion": "0.1.0"}
            },
            "Status": {"State": "ready", "Addr": "198.18.0.2"},
            "ManagerStatus": {"Leader": true, "Reachability": "reachable", "Addr": "198.18.0.2:4247"}
        });
        assert_eq!(doc, want);
        // Docker's struct order, not sorted keys.
        let text = inspect_json(&[NodeDoc::new(&node)]);
        let id = text.find("\"ID\"").expect("ID");
        let created = text.find("\"CreatedAt\"").expect("CreatedAt");
        assert!(id < created, "{text}");
        assert!(
            text.starts_with("[\n    {\n        \"ID\": \"n1\","),
            "{text}"
        );
    }

    #[test]
    fn service_document_has_docker_field_names() {
        let spec = pb::ServiceSpec {
            name: "web".into(),
            labels: HashMap::new(),
            task: Some(pb::TaskSpec {
                container: Some(pb::ContainerSpec {
                    image: "busybox".into(),
                    args: vec!["sleep".into(), "1d".into()],
                    env: vec!["A=1".into()],
                    stop_grace_period: 10_000_000_000,
                    ..Default::default()
                }),
                resources: Some(pb::ResourceRequirements {
                    limits: Some(pb::Resources {
                        nano_cpus: 500_000_000,
                        memory_bytes: 0,
                    }),
                    reservations: None,
                }),
                restart: Some(pb::RestartPolicy {
                    condition: pb::RestartCondition::OnFailure as i32,
                    delay: 5_000_000_000,
                    max_attempts: 3,
                    window: 0,
                }),
                placement: Some(pb::Placement {
                    constraints: vec!["node.role==worker".into()],
                }),
                force_update: 0,
                attachment: None,
            }),
            mode: Some(Mode::Replicated(pb::ReplicatedMode { replicas: 3 })),
            networks: vec![pb::NetworkAttachmentConfig {
                target: "net1".into(),
                aliases: vec!["www".into()],
            }],
            endpoint: Some(pb::EndpointSpec {
                mode: pb::EndpointMode::Vip as i32,
                ports: vec![pb::PortConfig {
                    name: String::new(),
                    protocol: pb::PortProtocol::Tcp as i32,
                    target_port: 80,
                    published_port: 0,
                    publish_mode: pb::PublishMode::Ingress as i32,
                }],
            }),
        };
        let mut previous = spec.clone();
        previous.mode = Some(Mode::Global(pb::GlobalMode {}));
        previous.networks.clear();
        previous.endpoint = None;
        let service = pb::Service {
            meta: meta("s1"),
            spec: Some(spec),
            previous_spec: Some(previous),
            update_status: Some(pb::UpdateStatus {
                state: "completed".into(),
                started_at: T0,
                completed_at: 0,
                message: "update completed".into(),
            }),
            spec_version: 2,
            endpoint: Some(pb::Endpoint {
                ports: vec![pb::PortConfig {
                    name: String::new(),
                    protocol: pb::PortProtocol::Tcp as i32,
                    target_port: 80,
                    published_port: 30000,
                    publish_mode: pb::PublishMode::Ingress as i32,
                }],
                virtual_ips: vec![pb::VirtualIp {
                    network_id: "net1".into(),
                    addr: "10.0.1.2/24".into(),
                }],
            }),
        };
        let doc = serde_json::to_value(ServiceDoc::new(&service)).expect("serializes");
        let task_template = serde_json::json!({
            "ContainerSpec": {
                "Image": "busybox",
                "Args": ["sleep", "1d"],
                "Env": ["A=1"],
                "StopGracePeriod": 10_000_000_000_i64
            },
            "Resources": {"Limits": {"NanoCPUs": 500_000_000}, "Reservations": {}},
            "RestartPolicy": {"Condition": "on-failure", "Delay": 5_000_000_000_i64, "MaxAttempts": 3},
            "Placement": {"Constraints": ["node.role==worker"]},
            "Networks": [{"Target": "net1", "Aliases": ["www"]}],
            "ForceUpdate": 0,
            "Runtime": "container"
        });
        assert_eq!(doc["ID"], "s1");
        assert_eq!(doc["Version"]["Index"], 7);
        assert_eq!(doc["Spec"]["Name"], "web");
        assert_eq!(doc["Spec"]["Labels"], serde_json::json!({}));
        assert_eq!(doc["Spec"]["TaskTemplate"], task_template);
        assert_eq!(
            doc["Spec"]["Mode"],
            serde_json::json!({"Replicated": {"Replicas": 3}})
        );
        assert_eq!(
            doc["PreviousSpec"]["Mode"],
            serde_json::json!({"Global": {}})
        );
        assert_eq!(
            doc["Spec"]["EndpointSpec"],
            serde_json::json!({
                "Mode": "vip",
                "Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishMode": "ingress"}]
            })
        );
        assert_eq!(doc["PreviousSpec"].get("EndpointSpec"), None);
        assert_eq!(doc["PreviousSpec"]["TaskTemplate"].get("Networks"), None);
        assert_eq!(
            doc["Endpoint"],
            serde_json::json!({
                "Spec": {
                    "Mode": "vip",
                    "Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishMode": "ingress"}]
                },
                "Ports": [{
                    "Protocol": "tcp",
                    "TargetPort": 80,
                    "PublishedPort": 30000,
                    "PublishMode": "ingress"
                }],
                "VirtualIPs": [{"NetworkID": "net1", "Addr": "10.0.1.2/24"}]
            })
        );
        assert_eq!(
            doc["UpdateStatus"],
            serde_json::json!({
                "State": "completed",
                "StartedAt": "2024-01-01T00:00:00Z",
                "Message": "update completed"
            })
        );
    }
}
