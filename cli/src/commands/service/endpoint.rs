//! How a service is reached, from the command line: `--publish` and `--network` in both of
//! Docker's syntaxes (its `opts/swarmopts/port.go` and `opts/network.go`), `--endpoint-mode`,
//! and Docker's rules for changing them in `service update` (`update.go`'s `updatePorts` and
//! `updateNetworks`: removals before additions, networks named by id, ports sorted).
//!
//! Pure, like [`super::opts`]: the update command looks the `--network-add`/`--network-rm`
//! references up and reads the ports the leader published before calling in here. What
//! needs the cluster (an unknown network, a port another service holds, a full subnet) is
//! checked by the leader, which answers with its own errors.

use std::collections::HashMap;

use clap::ValueEnum;
use shoal_proto::cluster::v1 as pb;

use super::format::{protocol_name, publish_mode_name};

/// `--endpoint-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EndpointModeArg {
    /// One virtual IP per network, balanced over the running tasks
    Vip,
    /// The service name resolves to the task addresses (DNS round robin)
    Dnsrr,
}

impl From<EndpointModeArg> for pb::EndpointMode {
    fn from(arg: EndpointModeArg) -> pb::EndpointMode {
        match arg {
            EndpointModeArg::Vip => pb::EndpointMode::Vip,
            EndpointModeArg::Dnsrr => pb::EndpointMode::Dnsrr,
        }
    }
}

/// Errors of reading a `--publish`, `--publish-add` or `--publish-rm` value, worded as
/// Docker words them where Docker has the same error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// A long-syntax field without `=` or without a key.
    #[error("invalid field: {0}")]
    InvalidField(String),
    /// A long-syntax key other than published, target, protocol and mode.
    #[error("invalid field key: {0}")]
    InvalidFieldKey(String),
    /// A protocol other than tcp and udp (Docker also has sctp; shoal's mesh does not).
    #[error("invalid protocol value '{0}': shoal publishes tcp and udp ports")]
    Protocol(String),
    /// `mode=` other than ingress and host.
    #[error("invalid publish mode value ({0}): must be either 'ingress' or 'host'")]
    Mode(String),
    /// `target=` that is not a port number.
    #[error("invalid target port ({value}): value must be an integer: {reason}")]
    Target {
        /// The value as given.
        value: String,
        /// Go's words for why: "invalid syntax" or "value out of range".
        reason: &'static str,
    },
    /// `published=` that is not a port number.
    #[error("invalid published port ({value}): value must be an integer: {reason}")]
    Published {
        /// The value as given.
        value: String,
        /// Go's words for why: "invalid syntax" or "value out of range".
        reason: &'static str,
    },
    /// Long syntax without `target=`.
    #[error("missing mandatory field 'target'")]
    MissingTarget,
    /// Short syntax with an empty container port (`8080:`).
    #[error("no port specified: {0}")]
    NoPort(String),
    /// Short syntax whose container port is not a port or range (0 is not a port).
    #[error("invalid containerPort: {0}")]
    ContainerPort(String),
    /// Short syntax whose published port is not a port or range.
    #[error("invalid hostPort: {0}")]
    HostPort(String),
    /// `IP:PUBLISHED:TARGET`: a service's port answers on every address of a node.
    #[error("hostip is not supported: {0}")]
    HostIp(String),
    /// Ranges of different lengths (`8080-8082:80-81`).
    #[error("invalid ranges specified for container and host Ports: {container} and {host}")]
    RangeMismatch {
        /// The container (target) ports as given.
        container: String,
        /// The host (published) ports as given.
        host: String,
    },
    /// A `--publish-rm` value that names no port.
    #[error("--publish-rm {0:?} names no port: give PUBLISHED[/PROTOCOL], PUBLISHED:TARGET or published=…,target=…")]
    RemoveWithoutPort(String),
}

/// Errors of reading a `--network` or `--network-add` value, worded as Docker's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkArgError {
    /// A long-syntax field without `=` or without a key.
    #[error("invalid field {0}")]
    InvalidField(String),
    /// A key Docker does not know either.
    #[error("invalid field key {0}")]
    InvalidFieldKey(String),
    /// A key Docker knows for containers that shoal's services do not take.
    #[error("network option {0} is not supported by shoal services (only name and alias)")]
    Unsupported(String),
    /// Long syntax without `name=`.
    #[error("network name/id is not specified")]
    NoTarget,
}

/// Errors of applying `service update`'s network and port flags to a spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointUpdateError {
    /// `--network-add` of a network the service is on (Docker's text).
    #[error("service is already attached to network {0}")]
    AlreadyAttached(String),
    /// `--network-rm` of a network the service is not on.
    #[error("service is not attached to network {0}")]
    NotAttached(String),
    /// `--publish-rm` of a port the service does not publish (named with its protocol).
    #[error("port {0} is not published by the service")]
    NotPublished(String),
}

/// One `--publish` value: one port, or one per port of a range.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishArg(pub Vec<pb::PortConfig>);

/// One `--network` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkArg {
    /// Network name, id or id prefix.
    pub target: String,
    /// Extra names of the service on that network.
    pub aliases: Vec<String>,
}

impl From<&NetworkArg> for pb::NetworkAttachmentConfig {
    fn from(arg: &NetworkArg) -> pb::NetworkAttachmentConfig {
        pb::NetworkAttachmentConfig {
            target: arg.target.clone(),
            aliases: arg.aliases.clone(),
        }
    }
}

/// One `--publish-rm` value: which of the service's ports it removes.
#[derive(Debug, Clone, PartialEq)]
pub struct PortRemoval {
    /// The value as given, for errors.
    value: String,
    published: Option<u32>,
    target: Option<u32>,
    protocol: pb::PortProtocol,
    mode: Option<pb::PublishMode>,
    /// A bare `PORT[/PROTOCOL]`: the published port, or (Docker's reading, which removes by
    /// target port) the target port when nothing is published on it.
    bare: bool,
}

/// Go's `strconv.ParseUint(s, 10, 16)`, with Go's words for its errors.
fn parse_port_number(s: &str) -> Result<u32, &'static str> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err("invalid syntax");
    }
    match s.parse::<u32>() {
        Ok(n) if n <= u32::from(u16::MAX) => Ok(n),
        _ => Err("value out of range"),
    }
}

/// go-connections' `ParsePortRange`: "80" or "8000-8010".
fn parse_port_range(s: &str) -> Option<(u32, u32)> {
    match s.split_once('-') {
        None => parse_port_number(s).ok().map(|p| (p, p)),
        Some((start, end)) => {
            let start = parse_port_number(start).ok()?;
            let end = parse_port_number(end).ok()?;
            (start <= end).then_some((start, end))
        }
    }
}

fn parse_protocol(s: &str) -> Result<pb::PortProtocol, PublishError> {
    match s.to_ascii_lowercase().as_str() {
        "" | "tcp" => Ok(pb::PortProtocol::Tcp),
        "udp" => Ok(pb::PortProtocol::Udp),
        _ => Err(PublishError::Protocol(s.to_string())),
    }
}

fn parse_mode(s: &str) -> Result<pb::PublishMode, PublishError> {
    match s {
        "ingress" => Ok(pb::PublishMode::Ingress),
        "host" => Ok(pb::PublishMode::Host),
        _ => Err(PublishError::Mode(s.to_string())),
    }
}

/// Docker's choice between the syntaxes (a `key=value` field makes the long one).
fn is_long_syntax(value: &str) -> bool {
    value.contains('=')
}

/// The fields of a long-syntax port, as given (Docker lower-cases keys and values).
#[derive(Default)]
struct PortFields {
    published: Option<u32>,
    target: Option<u32>,
    protocol: Option<pb::PortProtocol>,
    mode: Option<pb::PublishMode>,
}

fn parse_port_fields(value: &str) -> Result<PortFields, PublishError> {
    let mut fields = PortFields::default();
    for field in value.split(',') {
        let lower = field.to_lowercase();
        let (key, val) = lower
            .split_once('=')
            .filter(|(key, _)| !key.is_empty())
            .ok_or_else(|| PublishError::InvalidField(field.to_string()))?;
        match key {
            "protocol" => fields.protocol = Some(parse_protocol(val)?),
            "mode" => fields.mode = Some(parse_mode(val)?),
            "target" => {
                fields.target =
                    Some(
                        parse_port_number(val).map_err(|reason| PublishError::Target {
                            value: val.to_string(),
                            reason,
                        })?,
                    )
            }
            "published" => {
                fields.published =
                    Some(
                        parse_port_number(val).map_err(|reason| PublishError::Published {
                            value: val.to_string(),
                            reason,
                        })?,
                    )
            }
            _ => return Err(PublishError::InvalidFieldKey(key.to_string())),
        }
    }
    Ok(fields)
}

/// The short syntax split as go-connections' `ParsePortSpec` splits it:
/// `[IP:][PUBLISHED:]TARGET[/PROTOCOL]`.
struct ShortPort<'a> {
    host: &'a str,
    container: &'a str,
    protocol: pb::PortProtocol,
}

fn split_short(value: &str) -> Result<ShortPort<'_>, PublishError> {
    let mut parts = value.rsplitn(3, ':');
    let container = parts.next().unwrap_or_default();
    let host = parts.next().unwrap_or_default();
    if parts.next().is_some_and(|ip| !ip.is_empty()) {
        return Err(PublishError::HostIp(value.to_string()));
    }
    let (container, protocol) = match container.split_once('/') {
        Some((port, protocol)) => (port, parse_protocol(protocol)?),
        None => (container, pb::PortProtocol::Tcp),
    };
    if container.is_empty() {
        return Err(PublishError::NoPort(value.to_string()));
    }
    Ok(ShortPort {
        host,
        container,
        protocol,
    })
}

fn port_config(published: u32, target: u32, protocol: pb::PortProtocol) -> pb::PortConfig {
    pb::PortConfig {
        name: String::new(),
        protocol: protocol as i32,
        target_port: target,
        published_port: published,
        publish_mode: pb::PublishMode::Ingress as i32,
    }
}

/// Docker's `PortOpt.Set`: `published=8080,target=80[,protocol=udp][,mode=host]`, or
/// `[PUBLISHED:]TARGET[/PROTOCOL]` with ranges (`8080-8081:80-81`). Without a published
/// port the leader picks one.
pub fn parse_publish(value: &str) -> Result<PublishArg, PublishError> {
    if is_long_syntax(value) {
        let fields = parse_port_fields(value)?;
        let target = fields
            .target
            .filter(|t| *t != 0)
            .ok_or(PublishError::MissingTarget)?;
        let mut port = port_config(
            fields.published.unwrap_or(0),
            target,
            fields.protocol.unwrap_or(pb::PortProtocol::Tcp),
        );
        port.set_publish_mode(fields.mode.unwrap_or(pb::PublishMode::Ingress));
        return Ok(PublishArg(vec![port]));
    }
    let short = split_short(value)?;
    let (target_start, target_end) = parse_port_range(short.container)
        .filter(|(start, _)| *start != 0)
        .ok_or_else(|| PublishError::ContainerPort(short.container.to_string()))?;
    if short.host.is_empty() {
        return Ok(PublishArg(
            (target_start..=target_end)
                .map(|t| port_config(0, t, short.protocol))
                .collect(),
        ));
    }
    let (host_start, host_end) = parse_port_range(short.host)
        .ok_or_else(|| PublishError::HostPort(short.host.to_string()))?;
    let ports = if host_end - host_start == target_end - target_start {
        (host_start..=host_end)
            .zip(target_start..=target_end)
            .map(|(p, t)| port_config(p, t, short.protocol))
            .collect()
    } else if target_start == target_end {
        // One target behind several published ports, as Docker's swarm conversion does.
        (host_start..=host_end)
            .map(|p| port_config(p, target_start, short.protocol))
            .collect()
    } else {
        return Err(PublishError::RangeMismatch {
            container: short.container.to_string(),
            host: short.host.to_string(),
        });
    };
    Ok(PublishArg(ports))
}

/// A `--publish-rm` value: `PUBLISHED[/PROTOCOL]`, `PUBLISHED:TARGET[/PROTOCOL]`, or the
/// long syntax with `published=` and/or `target=` (and `protocol=`, `mode=`).
pub fn parse_publish_rm(value: &str) -> Result<PortRemoval, PublishError> {
    let mut removal = PortRemoval {
        value: value.to_string(),
        published: None,
        target: None,
        protocol: pb::PortProtocol::Tcp,
        mode: None,
        bare: false,
    };
    if is_long_syntax(value) {
        let fields = parse_port_fields(value)?;
        removal.published = fields.published.filter(|p| *p != 0);
        removal.target = fields.target.filter(|t| *t != 0);
        removal.protocol = fields.protocol.unwrap_or(pb::PortProtocol::Tcp);
        removal.mode = fields.mode;
    } else {
        let short = split_short(value)?;
        let container = parse_port_number(short.container)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| PublishError::ContainerPort(short.container.to_string()))?;
        removal.protocol = short.protocol;
        if short.host.is_empty() {
            removal.published = Some(container);
            removal.bare = true;
        } else {
            let host = parse_port_number(short.host)
                .map_err(|_| PublishError::HostPort(short.host.to_string()))?;
            removal.published = Some(host).filter(|p| *p != 0);
            removal.target = Some(container);
        }
    }
    if removal.published.is_none() && removal.target.is_none() {
        return Err(PublishError::RemoveWithoutPort(value.to_string()));
    }
    Ok(removal)
}

/// Docker's `NetworkOpt.Set`: a network name or id, or `name=NET[,alias=A]…`.
pub fn parse_network(value: &str) -> Result<NetworkArg, NetworkArgError> {
    if !is_long_syntax(value) {
        return Ok(NetworkArg {
            target: value.to_string(),
            aliases: Vec::new(),
        });
    }
    let mut arg = NetworkArg {
        target: String::new(),
        aliases: Vec::new(),
    };
    for field in value.split(',') {
        let (key, val) = field
            .split_once('=')
            .filter(|(key, _)| !key.trim().is_empty())
            .ok_or_else(|| NetworkArgError::InvalidField(field.to_string()))?;
        // Docker lower-cases the key (and the value, which would change network names and
        // aliases; shoal keeps those as written).
        let key = key.trim().to_lowercase();
        let val = val.trim();
        match key.as_str() {
            "name" => arg.target = val.to_string(),
            "alias" => arg.aliases.push(val.to_string()),
            "ip" | "ip6" | "mac-address" | "link-local-ip" | "driver-opt" | "gw-priority" => {
                return Err(NetworkArgError::Unsupported(key))
            }
            _ => return Err(NetworkArgError::InvalidFieldKey(key)),
        }
    }
    if arg.target.is_empty() {
        return Err(NetworkArgError::NoTarget);
    }
    Ok(arg)
}

/// The spec's ports as `service create` sends them.
pub fn create_ports(publish: &[PublishArg]) -> Vec<pb::PortConfig> {
    publish.iter().flat_map(|p| p.0.iter().cloned()).collect()
}

/// Docker's `portConfigToString`, the key update sorts ports by.
fn port_key(port: &pb::PortConfig) -> String {
    format!(
        "{}:{}/{}/{}",
        port.published_port,
        port.target_port,
        protocol_name(port.protocol()),
        publish_mode_name(port.publish_mode())
    )
}

/// The port a spec port is published on: its own, or for one the leader picked (published
/// port 0 in the spec), the one the leader's endpoint holds for the same target.
fn published_port(
    port: &pb::PortConfig,
    spec_ports: &[pb::PortConfig],
    allocated: &[pb::PortConfig],
) -> u32 {
    if port.published_port != 0 {
        return port.published_port;
    }
    allocated
        .iter()
        .find(|a| {
            a.target_port == port.target_port
                && a.protocol == port.protocol
                && a.publish_mode == port.publish_mode
                && !spec_ports
                    .iter()
                    .any(|s| s.published_port == a.published_port && s.protocol == a.protocol)
        })
        .map_or(0, |a| a.published_port)
}

impl PortRemoval {
    /// The value as given, with the protocol it implies when it names none ("8080" is
    /// "8080/tcp"), so that a miss on a udp port says why.
    fn describe(&self) -> String {
        if is_long_syntax(&self.value) || self.value.contains('/') {
            self.value.clone()
        } else {
            format!("{}/{}", self.value, protocol_name(self.protocol))
        }
    }

    fn removes(&self, port: &pb::PortConfig, published: u32) -> bool {
        port.protocol() == self.protocol
            && self.mode.is_none_or(|m| port.publish_mode() == m)
            && self.published.is_none_or(|p| published == p)
            && self.target.is_none_or(|t| port.target_port == t)
    }

    /// Docker's reading of a bare port: the target port.
    fn removes_by_target(&self, port: &pb::PortConfig) -> bool {
        self.bare && port.protocol() == self.protocol && self.published == Some(port.target_port)
    }
}

/// `--publish-rm` then `--publish-add` on the spec's ports, sorted as Docker sorts them.
/// `allocated` are the ports the leader published for the service, so that a port the
/// leader picked can be removed by the number `service ls` shows. Adding a port whose
/// published port (and protocol) the service already has replaces that port.
pub fn update_ports(
    ports: &mut Vec<pb::PortConfig>,
    allocated: &[pb::PortConfig],
    remove: &[PortRemoval],
    add: &[PublishArg],
) -> Result<(), EndpointUpdateError> {
    let mut published: Vec<u32> = ports
        .iter()
        .map(|p| published_port(p, ports, allocated))
        .collect();
    let mut removed = vec![false; ports.len()];
    for removal in remove {
        let mut hits: Vec<usize> = (0..ports.len())
            .filter(|&i| removal.removes(&ports[i], published[i]))
            .collect();
        if hits.is_empty() {
            hits = (0..ports.len())
                .filter(|&i| removal.removes_by_target(&ports[i]))
                .collect();
        }
        if hits.is_empty() {
            return Err(EndpointUpdateError::NotPublished(removal.describe()));
        }
        for i in hits {
            removed[i] = true;
        }
    }
    let mut kept = Vec::with_capacity(ports.len());
    let mut kept_published = Vec::with_capacity(ports.len());
    for ((port, number), gone) in ports.drain(..).zip(published.drain(..)).zip(removed) {
        if !gone {
            kept.push(port);
            kept_published.push(number);
        }
    }
    let (mut ports_out, mut published) = (kept, kept_published);
    for port in add.iter().flat_map(|a| &a.0) {
        if ports_out.iter().any(|p| p == port) {
            continue;
        }
        let same_port = (port.published_port != 0)
            .then(|| {
                (0..ports_out.len()).find(|&i| {
                    published[i] == port.published_port && ports_out[i].protocol == port.protocol
                })
            })
            .flatten();
        match same_port {
            Some(i) => {
                ports_out[i] = port.clone();
                published[i] = port.published_port;
            }
            None => {
                ports_out.push(port.clone());
                published.push(port.published_port);
            }
        }
    }
    // Sorted "to avoid unnecessary updates", as Docker's `updatePorts` does.
    ports_out.sort_by_key(port_key);
    *ports = ports_out;
    Ok(())
}

/// `--network-rm` then `--network-add` on the spec's networks, sorted by id as Docker sorts
/// them. `ids` maps the references given to network ids (a reference missing from it is
/// used as it is; the leader resolves it).
pub fn update_networks(
    networks: &mut Vec<pb::NetworkAttachmentConfig>,
    remove: &[String],
    add: &[NetworkArg],
    ids: &HashMap<String, String>,
) -> Result<(), EndpointUpdateError> {
    let id_of = |reference: &str| {
        ids.get(reference)
            .cloned()
            .unwrap_or_else(|| reference.to_string())
    };
    for reference in remove {
        let id = id_of(reference);
        let before = networks.len();
        networks.retain(|n| n.target != id && n.target != *reference);
        if networks.len() == before {
            return Err(EndpointUpdateError::NotAttached(reference.clone()));
        }
    }
    for arg in add {
        let id = id_of(&arg.target);
        if networks
            .iter()
            .any(|n| n.target == id || n.target == arg.target)
        {
            return Err(EndpointUpdateError::AlreadyAttached(arg.target.clone()));
        }
        networks.push(pb::NetworkAttachmentConfig {
            target: id,
            aliases: arg.aliases.clone(),
        });
    }
    networks.sort_by(|a, b| a.target.cmp(&b.target));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(published: u32, target: u32, protocol: pb::PortProtocol) -> pb::PortConfig {
        port_config(published, target, protocol)
    }

    fn host(published: u32, target: u32) -> pb::PortConfig {
        let mut p = port_config(published, target, pb::PortProtocol::Tcp);
        p.set_publish_mode(pb::PublishMode::Host);
        p
    }

    const TCP: pb::PortProtocol = pb::PortProtocol::Tcp;
    const UDP: pb::PortProtocol = pb::PortProtocol::Udp;

    #[test]
    fn publish_short_syntax() {
        let good: [(&str, Vec<pb::PortConfig>); 8] = [
            ("8080:80", vec![port(8080, 80, TCP)]),
            ("8080:80/udp", vec![port(8080, 80, UDP)]),
            ("8080:80/UDP", vec![port(8080, 80, UDP)]),
            ("53:53/tcp", vec![port(53, 53, TCP)]),
            ("80", vec![port(0, 80, TCP)]),
            ("80/udp", vec![port(0, 80, UDP)]),
            (
                "8080-8081:80-81",
                vec![port(8080, 80, TCP), port(8081, 81, TCP)],
            ),
            (
                "8080-8081:80",
                vec![port(8080, 80, TCP), port(8081, 80, TCP)],
            ),
        ];
        for (value, want) in good {
            assert_eq!(parse_publish(value), Ok(PublishArg(want)), "{value}");
        }
        let bad = [
            ("8080:x", PublishError::ContainerPort("x".into())),
            ("8080:0", PublishError::ContainerPort("0".into())),
            ("8080:70000", PublishError::ContainerPort("70000".into())),
            ("x:80", PublishError::HostPort("x".into())),
            ("8080:", PublishError::NoPort("8080:".into())),
            ("8080:80/sctp", PublishError::Protocol("sctp".into())),
            (
                "1.2.3.4:8080:80",
                PublishError::HostIp("1.2.3.4:8080:80".into()),
            ),
            (
                "8080-8082:80-81",
                PublishError::RangeMismatch {
                    container: "80-81".into(),
                    host: "8080-8082".into(),
                },
            ),
        ];
        for (value, want) in bad {
            assert_eq!(parse_publish(value), Err(want), "{value}");
        }
    }

    #[test]
    fn publish_long_syntax() {
        assert_eq!(
            parse_publish("published=8080,target=80"),
            Ok(PublishArg(vec![port(8080, 80, TCP)]))
        );
        assert_eq!(
            parse_publish("target=53,published=5353,protocol=udp"),
            Ok(PublishArg(vec![port(5353, 53, UDP)]))
        );
        assert_eq!(
            parse_publish("published=8080,target=80,mode=host"),
            Ok(PublishArg(vec![host(8080, 80)]))
        );
        assert_eq!(
            parse_publish("target=80"),
            Ok(PublishArg(vec![port(0, 80, TCP)]))
        );
        let bad = [
            ("published=8080", PublishError::MissingTarget),
            ("published=8080,target=0", PublishError::MissingTarget),
            (
                "published=8080,target=80,protocol=sctp",
                PublishError::Protocol("sctp".into()),
            ),
            ("target=80,mode=bridge", PublishError::Mode("bridge".into())),
            (
                "target=http",
                PublishError::Target {
                    value: "http".into(),
                    reason: "invalid syntax",
                },
            ),
            (
                "target=80,published=99999",
                PublishError::Published {
                    value: "99999".into(),
                    reason: "value out of range",
                },
            ),
            (
                "target=80,name=web",
                PublishError::InvalidFieldKey("name".into()),
            ),
            (
                "target=80,bogus",
                PublishError::InvalidField("bogus".into()),
            ),
        ];
        for (value, want) in bad {
            assert_eq!(parse_publish(value), Err(want), "{value}");
        }
        // The messages name the value, as Docker's do.
        assert_eq!(
            PublishError::Mode("bridge".into()).to_string(),
            "invalid publish mode value (bridge): must be either 'ingress' or 'host'"
        );
    }

    #[test]
    fn network_options() {
        assert_eq!(
            parse_network("front"),
            Ok(NetworkArg {
                target: "front".into(),
                aliases: vec![]
            })
        );
        assert_eq!(
            parse_network("name=Front,alias=web,alias=www"),
            Ok(NetworkArg {
                target: "Front".into(),
                aliases: vec!["web".into(), "www".into()]
            })
        );
        let bad = [
            ("alias=web", NetworkArgError::NoTarget),
            (
                "name=front,ip=10.0.0.9",
                NetworkArgError::Unsupported("ip".into()),
            ),
            (
                "name=front,color=red",
                NetworkArgError::InvalidFieldKey("color".into()),
            ),
            (
                "name=front,alias",
                NetworkArgError::InvalidField("alias".into()),
            ),
        ];
        for (value, want) in bad {
            assert_eq!(parse_network(value), Err(want), "{value}");
        }
    }

    fn rm(values: &[&str]) -> Vec<PortRemoval> {
        values
            .iter()
            .map(|v| parse_publish_rm(v).expect("valid"))
            .collect()
    }

    fn add(values: &[&str]) -> Vec<PublishArg> {
        values
            .iter()
            .map(|v| parse_publish(v).expect("valid"))
            .collect()
    }

    #[test]
    fn publish_rm_values() {
        assert!(parse_publish_rm("8080").is_ok());
        assert!(parse_publish_rm("8080/udp").is_ok());
        assert!(parse_publish_rm("8080:80").is_ok());
        assert!(parse_publish_rm("published=8080").is_ok());
        assert_eq!(
            parse_publish_rm("protocol=udp"),
            Err(PublishError::RemoveWithoutPort("protocol=udp".into()))
        );
        assert_eq!(
            parse_publish_rm("http"),
            Err(PublishError::ContainerPort("http".into()))
        );
    }

    #[test]
    fn update_removes_before_adding_and_sorts() {
        let mut ports = vec![
            port(8080, 80, TCP),
            port(5353, 53, UDP),
            port(0, 9000, TCP),
            host(9443, 443),
        ];
        // The leader picked 30000 for the target 9000.
        let allocated = vec![
            port(8080, 80, TCP),
            port(5353, 53, UDP),
            port(30000, 9000, TCP),
            host(9443, 443),
        ];
        update_ports(
            &mut ports,
            &allocated,
            &rm(&["8080", "5353/udp", "30000"]),
            &add(&["8081:80", "published=9443,target=8443,mode=host"]),
        )
        .expect("valid");
        // 9443/tcp was replaced by the added port with the same published port.
        let mut replaced = host(9443, 8443);
        replaced.set_publish_mode(pb::PublishMode::Host);
        assert_eq!(ports, vec![port(8081, 80, TCP), replaced]);

        // A bare port nothing is published on removes by target, as Docker does.
        let mut ports = vec![port(8080, 80, TCP)];
        update_ports(&mut ports, &[], &rm(&["80"]), &[]).expect("valid");
        assert!(ports.is_empty());

        // The protocol must match: 8080 is 8080/tcp.
        let mut ports = vec![port(8080, 80, UDP)];
        assert_eq!(
            update_ports(&mut ports, &[], &rm(&["8080"]), &[]),
            Err(EndpointUpdateError::NotPublished("8080/tcp".into()))
        );
        update_ports(&mut ports, &[], &rm(&["8080/udp"]), &[]).expect("valid");
        assert!(ports.is_empty());

        // Adding a port the service has already changes nothing.
        let mut ports = vec![port(8080, 80, TCP)];
        update_ports(&mut ports, &[], &[], &add(&["8080:80"])).expect("valid");
        assert_eq!(ports, vec![port(8080, 80, TCP)]);
        // Docker's order: the string "published:target/protocol/mode".
        update_ports(&mut ports, &[], &[], &add(&["10000:1", "80"])).expect("valid");
        assert_eq!(
            ports,
            vec![port(0, 80, TCP), port(10000, 1, TCP), port(8080, 80, TCP)]
        );
    }

    #[test]
    fn update_networks_by_id() {
        let ids: HashMap<String, String> = [
            ("front".to_string(), "id-front".to_string()),
            ("back".to_string(), "id-back".to_string()),
            ("id-b".to_string(), "id-back".to_string()),
        ]
        .into();
        let mut networks = vec![pb::NetworkAttachmentConfig {
            target: "id-front".into(),
            aliases: vec![],
        }];
        update_networks(
            &mut networks,
            &["front".to_string()],
            &[NetworkArg {
                target: "back".into(),
                aliases: vec!["db".into()],
            }],
            &ids,
        )
        .expect("valid");
        assert_eq!(
            networks,
            vec![pb::NetworkAttachmentConfig {
                target: "id-back".into(),
                aliases: vec!["db".into()],
            }]
        );
        let plain = |target: &str| NetworkArg {
            target: target.into(),
            aliases: vec![],
        };
        assert_eq!(
            update_networks(&mut networks, &[], &[plain("id-b")], &ids),
            Err(EndpointUpdateError::AlreadyAttached("id-b".into()))
        );
        assert_eq!(
            update_networks(&mut networks, &["front".to_string()], &[], &ids),
            Err(EndpointUpdateError::NotAttached("front".into()))
        );
        // Added in id order, whatever order they are given in.
        update_networks(&mut networks, &[], &[plain("front")], &ids).expect("valid");
        let targets: Vec<&str> = networks.iter().map(|n| n.target.as_str()).collect();
        assert_eq!(targets, ["id-back", "id-front"]);
    }
}
