//! The flags of `service create` and `service update` and how they become a `ServiceSpec`,
//! following Docker's `cli/command/service/opts.go` and `update.go`: which flags both share,
//! Docker's defaults (a restart policy exists only once a `--restart-*` flag is given, and then
//! starts from Swarm's defaults), and Docker's update rules (`--*-rm` before `--*-add`,
//! constraints sorted).
//!
//! Everything here is pure: the commands read the service, call [`create_spec`] or
//! [`update_spec`], and send the result. Ports, networks and the endpoint mode are read by
//! [`super::endpoint`].

use std::collections::{BTreeSet, HashMap};

use clap::{Args, ValueEnum};
use shoal_proto::cluster::v1 as pb;
use shoal_proto::cluster::v1::service_spec::Mode;

use super::endpoint::{
    self, parse_network, parse_publish, parse_publish_rm, EndpointModeArg, EndpointUpdateError,
    NetworkArg, PortRemoval, PublishArg,
};
use crate::units::{parse_cpus, parse_memory};

/// Swarm's default delay between restarts (swarmkit `defaults.Service.Task.Restart.Delay`).
pub const DEFAULT_RESTART_DELAY_NANOS: i64 = 5_000_000_000;

/// Errors of turning flags into a spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// `-e =x` or `-e ''`.
    #[error("invalid environment variable: {0}")]
    InvalidEnv(String),
    /// `--replicas` with `--mode global`, or `update --replicas` of a global service.
    #[error("replicas can only be used with replicated mode")]
    ReplicasWithGlobal,
    /// `--args` with an open quote.
    #[error("invalid --args {0:?}: EOF found when expecting closing quote")]
    UnclosedQuote(String),
    /// `--rollback` with flags that change the spec.
    #[error("other flags may not be combined with --rollback")]
    RollbackWithChanges,
    /// A network or port flag of `update` that does not fit the service.
    #[error(transparent)]
    Endpoint(#[from] EndpointUpdateError),
}

/// Errors of Go's `time.ParseDuration`, worded as Go words them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not a duration at all.
    #[error("time: invalid duration {0:?}")]
    Invalid(String),
    /// A number without a unit ("5").
    #[error("time: missing unit in duration {0:?}")]
    MissingUnit(String),
    /// A unit Go does not know ("5x").
    #[error("time: unknown unit {unit:?} in duration {input:?}")]
    UnknownUnit {
        /// The unit as written.
        unit: String,
        /// The whole flag value.
        input: String,
    },
    /// Docker's `DurationOpt` refuses negative values.
    #[error("duration cannot be negative")]
    Negative,
}

/// Go's `time.ParseDuration` in nanoseconds: "300ms", "1.5s", "1m30s", "2h", "0".
pub fn parse_go_duration(s: &str) -> Result<i64, DurationError> {
    let invalid = || DurationError::Invalid(s.to_string());
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int, after) = rest.split_at(int_end);
        let (frac, after) = match after.strip_prefix('.') {
            Some(a) => {
                let end = a.find(|c: char| !c.is_ascii_digit()).unwrap_or(a.len());
                a.split_at(end)
            }
            None => ("", after),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(invalid());
        }
        let unit_end = after
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        if unit.is_empty() {
            return Err(DurationError::MissingUnit(s.to_string()));
        }
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => {
                return Err(DurationError::UnknownUnit {
                    unit: unit.to_string(),
                    input: s.to_string(),
                })
            }
        };
        let whole: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| invalid())?
        };
        // Fractions beyond nanosecond precision do not matter; 18 digits cannot overflow.
        let frac = &frac[..frac.len().min(18)];
        let fraction: u128 = if frac.is_empty() {
            0
        } else {
            frac.parse::<u128>().map_err(|_| invalid())? * scale / 10u128.pow(frac.len() as u32)
        };
        total = whole
            .checked_mul(scale)
            .and_then(|n| n.checked_add(fraction))
            .and_then(|n| n.checked_add(total))
            .ok_or_else(invalid)?;
        rest = after;
    }
    let total = i64::try_from(total).map_err(|_| invalid())?;
    Ok(if negative { -total } else { total })
}

fn duration_arg(s: &str) -> Result<i64, String> {
    match parse_go_duration(s) {
        Ok(n) if n < 0 => Err(DurationError::Negative.to_string()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn memory_arg(s: &str) -> Result<i64, String> {
    parse_memory(s).map_err(|e| e.to_string())
}

fn cpus_arg(s: &str) -> Result<i64, String> {
    parse_cpus(s).map_err(|e| e.to_string())
}

/// `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// A fixed number of tasks
    Replicated,
    /// One task on every eligible node
    Global,
}

/// `--restart-condition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RestartConditionArg {
    /// Restart whenever a task ends
    Any,
    /// Restart when a task fails
    OnFailure,
    /// Never restart
    None,
}

impl From<RestartConditionArg> for pb::RestartCondition {
    fn from(arg: RestartConditionArg) -> pb::RestartCondition {
        match arg {
            RestartConditionArg::Any => pb::RestartCondition::Any,
            RestartConditionArg::OnFailure => pb::RestartCondition::OnFailure,
            RestartConditionArg::None => pb::RestartCondition::None,
        }
    }
}

/// The flags `service create` and `service update` share (Docker's `addServiceFlags`). Each
/// is an `Option` so that `update` changes only what was given.
#[derive(Debug, Default, Args)]
pub struct ServiceFlags {
    /// Number of tasks
    #[arg(long, value_name = "N")]
    pub replicas: Option<u64>,
    /// Container hostname
    #[arg(long)]
    pub hostname: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Reserve CPUs
    #[arg(long, value_name = "DECIMAL", value_parser = cpus_arg)]
    pub reserve_cpu: Option<i64>,
    /// Reserve Memory (e.g. 64m, 1g)
    #[arg(long, value_name = "BYTES", value_parser = memory_arg)]
    pub reserve_memory: Option<i64>,
    /// Limit CPUs
    #[arg(long, value_name = "DECIMAL", value_parser = cpus_arg)]
    pub limit_cpu: Option<i64>,
    /// Limit Memory (e.g. 64m, 1g)
    #[arg(long, value_name = "BYTES", value_parser = memory_arg)]
    pub limit_memory: Option<i64>,
    /// Restart when condition is met
    #[arg(long, value_enum)]
    pub restart_condition: Option<RestartConditionArg>,
    /// Delay between restart attempts (ns|us|ms|s|m|h)
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub restart_delay: Option<i64>,
    /// Maximum number of restarts before giving up
    #[arg(long, value_name = "N")]
    pub restart_max_attempts: Option<u64>,
    /// Window used to evaluate the restart policy (ns|us|ms|s|m|h)
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub restart_window: Option<i64>,
    /// Time to wait before force killing a container (ns|us|ms|s|m|h)
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub stop_grace_period: Option<i64>,
    /// Mount the container's root filesystem as read only
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub read_only: Option<bool>,
    /// Endpoint mode (vip or dnsrr) [default: vip]
    #[arg(long, value_enum, value_name = "MODE")]
    pub endpoint_mode: Option<EndpointModeArg>,
    /// Exit immediately instead of waiting for the service to converge
    #[arg(short, long)]
    pub detach: bool,
    /// Suppress progress output
    #[arg(short, long)]
    pub quiet: bool,
}

impl ServiceFlags {
    fn restart_changed(&self) -> bool {
        self.restart_condition.is_some()
            || self.restart_delay.is_some()
            || self.restart_max_attempts.is_some()
            || self.restart_window.is_some()
    }

    /// Whether any flag that changes the spec was given (`detach` and `quiet` do not).
    fn changes_spec(&self) -> bool {
        self.replicas.is_some()
            || self.hostname.is_some()
            || self.user.is_some()
            || self.workdir.is_some()
            || self.reserve_cpu.is_some()
            || self.reserve_memory.is_some()
            || self.limit_cpu.is_some()
            || self.limit_memory.is_some()
            || self.restart_changed()
            || self.stop_grace_period.is_some()
            || self.read_only.is_some()
            || self.endpoint_mode.is_some()
    }

    /// Applies the container, resource and restart flags to `task` (not `--replicas`).
    fn apply(&self, task: &mut pb::TaskSpec) {
        let container = task.container.get_or_insert_with(Default::default);
        set(&mut container.hostname, &self.hostname);
        set(&mut container.user, &self.user);
        set(&mut container.dir, &self.workdir);
        set(&mut container.stop_grace_period, &self.stop_grace_period);
        set(&mut container.read_only, &self.read_only);

        if self.limit_cpu.is_some() || self.limit_memory.is_some() {
            let resources = task.resources.get_or_insert_with(Default::default);
            let limits = resources.limits.get_or_insert_with(Default::default);
            set(&mut limits.nano_cpus, &self.limit_cpu);
            set(&mut limits.memory_bytes, &self.limit_memory);
        }
        if self.reserve_cpu.is_some() || self.reserve_memory.is_some() {
            let resources = task.resources.get_or_insert_with(Default::default);
            let reservations = resources.reservations.get_or_insert_with(Default::default);
            set(&mut reservations.nano_cpus, &self.reserve_cpu);
            set(&mut reservations.memory_bytes, &self.reserve_memory);
        }

        if self.restart_changed() {
            let restart = task.restart.get_or_insert_with(default_restart_policy);
            if let Some(condition) = self.restart_condition {
                restart.set_condition(condition.into());
            }
            set(&mut restart.delay, &self.restart_delay);
            set(&mut restart.max_attempts, &self.restart_max_attempts);
            set(&mut restart.window, &self.restart_window);
        }
    }
}

fn set<T: Clone>(field: &mut T, value: &Option<T>) {
    if let Some(v) = value {
        *field = v.clone();
    }
}

/// Docker's `defaultRestartPolicy`: Swarm's defaults, the start of a policy that a
/// `--restart-*` flag changes.
pub fn default_restart_policy() -> pb::RestartPolicy {
    pb::RestartPolicy {
        condition: pb::RestartCondition::Any as i32,
        delay: DEFAULT_RESTART_DELAY_NANOS,
        max_attempts: 0,
        window: 0,
    }
}

/// `service create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Service name
    #[arg(long)]
    pub name: Option<String>,
    /// Service mode
    #[arg(long, value_enum, default_value = "replicated")]
    pub mode: ModeArg,
    /// Set environment variables
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Placement constraints
    #[arg(long = "constraint", value_name = "EXPR")]
    pub constraints: Vec<String>,
    /// Service labels
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Container labels
    #[arg(long = "container-label", value_name = "KEY=VALUE")]
    pub container_labels: Vec<String>,
    /// Network attachments (NAME, or name=NAME,alias=ALIAS)
    #[arg(long = "network", value_name = "NETWORK", value_parser = parse_network)]
    pub networks: Vec<NetworkArg>,
    /// Publish a port as a node port (PUBLISHED:TARGET[/PROTOCOL], TARGET, or
    /// published=P,target=T[,protocol=tcp|udp][,mode=ingress|host])
    #[arg(short = 'p', long = "publish", value_name = "PORT", value_parser = parse_publish)]
    pub publish: Vec<PublishArg>,
    /// Flags `service update` has too.
    #[command(flatten)]
    pub flags: ServiceFlags,
    /// The image, then the arguments given to its command
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "IMAGE [COMMAND] [ARG...]"
    )]
    pub args: Vec<String>,
}

/// `service update`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Service image tag
    #[arg(long)]
    pub image: Option<String>,
    /// Service command args
    #[arg(long, value_name = "COMMAND", allow_hyphen_values = true)]
    pub args: Option<String>,
    /// Rollback to previous specification
    #[arg(long)]
    pub rollback: bool,
    /// Force update even if no changes require it
    #[arg(long)]
    pub force: bool,
    /// Add or update an environment variable
    #[arg(long = "env-add", value_name = "KEY=VALUE")]
    pub env_add: Vec<String>,
    /// Remove an environment variable
    #[arg(long = "env-rm", value_name = "KEY")]
    pub env_rm: Vec<String>,
    /// Add or update a placement constraint
    #[arg(long = "constraint-add", value_name = "EXPR")]
    pub constraint_add: Vec<String>,
    /// Remove a constraint
    #[arg(long = "constraint-rm", value_name = "EXPR")]
    pub constraint_rm: Vec<String>,
    /// Add or update a service label
    #[arg(long = "label-add", value_name = "KEY=VALUE")]
    pub label_add: Vec<String>,
    /// Remove a label by its key
    #[arg(long = "label-rm", value_name = "KEY")]
    pub label_rm: Vec<String>,
    /// Add or update a container label
    #[arg(long = "container-label-add", value_name = "KEY=VALUE")]
    pub container_label_add: Vec<String>,
    /// Remove a container label by its key
    #[arg(long = "container-label-rm", value_name = "KEY")]
    pub container_label_rm: Vec<String>,
    /// Add a network (NAME, or name=NAME,alias=ALIAS)
    #[arg(long = "network-add", value_name = "NETWORK", value_parser = parse_network)]
    pub network_add: Vec<NetworkArg>,
    /// Remove a network
    #[arg(long = "network-rm", value_name = "NETWORK")]
    pub network_rm: Vec<String>,
    /// Add or update a published port
    #[arg(long = "publish-add", value_name = "PORT", value_parser = parse_publish)]
    pub publish_add: Vec<PublishArg>,
    /// Remove a published port by its published port (PUBLISHED[/PROTOCOL]; a port nothing
    /// is published on is read as a target port, as Docker reads it)
    #[arg(long = "publish-rm", value_name = "PORT", value_parser = parse_publish_rm)]
    pub publish_rm: Vec<PortRemoval>,
    /// Flags `service create` has too.
    #[command(flatten)]
    pub flags: ServiceFlags,
    /// The service
    pub service: String,
}

impl UpdateArgs {
    /// Whether any flag that changes the spec was given (Docker refuses them with
    /// `--rollback`).
    fn changes_spec(&self) -> bool {
        self.image.is_some()
            || self.args.is_some()
            || self.force
            || !self.env_add.is_empty()
            || !self.env_rm.is_empty()
            || !self.constraint_add.is_empty()
            || !self.constraint_rm.is_empty()
            || !self.label_add.is_empty()
            || !self.label_rm.is_empty()
            || !self.container_label_add.is_empty()
            || !self.container_label_rm.is_empty()
            || !self.network_add.is_empty()
            || !self.network_rm.is_empty()
            || !self.publish_add.is_empty()
            || !self.publish_rm.is_empty()
            || self.flags.changes_spec()
    }

    /// Refuses `--rollback` combined with changes, as Docker does.
    pub fn check_rollback(&self) -> Result<(), SpecError> {
        if self.rollback && self.changes_spec() {
            return Err(SpecError::RollbackWithChanges);
        }
        Ok(())
    }
}

/// Docker's `ValidateEnv`: `KEY=VALUE` as given; a bare `KEY` takes the client's own value
/// when it has one.
pub fn parse_env(entry: &str) -> Result<String, SpecError> {
    let (key, has_value) = match entry.split_once('=') {
        Some((key, _)) => (key, true),
        None => (entry, false),
    };
    if key.is_empty() {
        return Err(SpecError::InvalidEnv(entry.to_string()));
    }
    if has_value {
        return Ok(entry.to_string());
    }
    Ok(match std::env::var(key) {
        Ok(value) => format!("{key}={value}"),
        Err(_) => entry.to_string(),
    })
}

fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(key, _)| key)
}

/// Docker's `ConvertKVStringsToMap`: `k=v` sets `k` to `v`, a bare `k` to "".
pub fn parse_labels(entries: &[String]) -> HashMap<String, String> {
    entries
        .iter()
        .map(|entry| match entry.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (entry.clone(), String::new()),
        })
        .collect()
}

/// google/shlex's `Split`, as Docker reads `--args`: words split on whitespace, with single
/// quotes, double quotes and backslash escapes.
pub fn shell_split(line: &str) -> Result<Vec<String>, SpecError> {
    #[derive(PartialEq)]
    enum Quote {
        None,
        Single,
        Double,
    }
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote = Quote::None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match quote {
            Quote::Single if c == '\'' => quote = Quote::None,
            Quote::Single => word.push(c),
            Quote::Double if c == '"' => quote = Quote::None,
            Quote::Double if c == '\\' => match chars.next() {
                Some(next) => word.push(next),
                None => return Err(SpecError::UnclosedQuote(line.to_string())),
            },
            Quote::Double => word.push(c),
            Quote::None => match c {
                '\'' => {
                    quote = Quote::Single;
                    in_word = true;
                }
                '"' => {
                    quote = Quote::Double;
                    in_word = true;
                }
                '\\' => {
                    if let Some(next) = chars.next() {
                        word.push(next);
                    }
                    in_word = true;
                }
                c if c.is_whitespace() => {
                    if in_word {
                        words.push(std::mem::take(&mut word));
                        in_word = false;
                    }
                }
                c => {
                    word.push(c);
                    in_word = true;
                }
            },
        }
    }
    if quote != Quote::None {
        return Err(SpecError::UnclosedQuote(line.to_string()));
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// The spec `service create` sends.
pub fn create_spec(args: &CreateArgs) -> Result<pb::ServiceSpec, SpecError> {
    let (image, command_args) = match args.args.split_first() {
        Some((image, rest)) => (image.clone(), rest.to_vec()),
        None => (String::new(), Vec::new()),
    };
    let mode = match args.mode {
        ModeArg::Replicated => Mode::Replicated(pb::ReplicatedMode {
            replicas: args.flags.replicas.unwrap_or(1),
        }),
        ModeArg::Global if args.flags.replicas.is_some() => {
            return Err(SpecError::ReplicasWithGlobal)
        }
        ModeArg::Global => Mode::Global(pb::GlobalMode {}),
    };
    let env = args
        .env
        .iter()
        .map(|e| parse_env(e))
        .collect::<Result<Vec<_>, _>>()?;
    let mut task = pb::TaskSpec {
        container: Some(pb::ContainerSpec {
            image,
            // Docker's `service create IMAGE CMD…` sets Args: the image keeps its entrypoint.
            args: command_args,
            env,
            labels: parse_labels(&args.container_labels),
            ..Default::default()
        }),
        placement: (!args.constraints.is_empty()).then(|| pb::Placement {
            constraints: args.constraints.clone(),
        }),
        ..Default::default()
    };
    args.flags.apply(&mut task);
    Ok(pb::ServiceSpec {
        name: args.name.clone().unwrap_or_default(),
        labels: parse_labels(&args.labels),
        task: Some(task),
        mode: Some(mode),
        networks: args.networks.iter().map(Into::into).collect(),
        // Docker always sends an endpoint spec, with the mode set.
        endpoint: Some(pb::EndpointSpec {
            mode: pb::EndpointMode::from(args.flags.endpoint_mode.unwrap_or(EndpointModeArg::Vip))
                as i32,
            ports: endpoint::create_ports(&args.publish),
        }),
    })
}

/// Sets the replica count of a replicated service (`service scale`, `update --replicas`).
pub fn set_replicas(spec: &mut pb::ServiceSpec, replicas: u64) -> Result<(), SpecError> {
    match &mut spec.mode {
        Some(Mode::Replicated(r)) => {
            r.replicas = replicas;
            Ok(())
        }
        _ => Err(SpecError::ReplicasWithGlobal),
    }
}

fn update_labels(labels: &mut HashMap<String, String>, remove: &[String], add: &[String]) {
    for key in remove {
        labels.remove(key);
    }
    labels.extend(parse_labels(add));
}

/// What `service update` reads from the cluster before applying its flags.
#[derive(Debug, Default)]
pub struct UpdateLookups {
    /// The `--network-add` and `--network-rm` references, mapped to network ids.
    pub network_ids: HashMap<String, String>,
    /// The ports the leader published for the service (its endpoint), so that
    /// `--publish-rm` finds a port whose published port the leader picked.
    pub allocated_ports: Vec<pb::PortConfig>,
}

/// `service update`'s changes applied to the spec read from the daemon.
pub fn update_spec(
    spec: &mut pb::ServiceSpec,
    args: &UpdateArgs,
    lookups: &UpdateLookups,
) -> Result<(), SpecError> {
    update_labels(&mut spec.labels, &args.label_rm, &args.label_add);
    if let Some(replicas) = args.flags.replicas {
        set_replicas(spec, replicas)?;
    }
    let task = spec.task.get_or_insert_with(Default::default);
    {
        let container = task.container.get_or_insert_with(Default::default);
        update_labels(
            &mut container.labels,
            &args.container_label_rm,
            &args.container_label_add,
        );
        if let Some(image) = &args.image {
            container.image = image.clone();
        }
        if let Some(line) = &args.args {
            container.args = shell_split(line)?;
        }
        container
            .env
            .retain(|e| !args.env_rm.iter().any(|k| k == env_key(e)));
        for entry in &args.env_add {
            let entry = parse_env(entry)?;
            // Docker keeps one entry per key; unlike Docker (a Go map), keep their order.
            match container
                .env
                .iter_mut()
                .find(|e| env_key(e) == env_key(&entry))
            {
                Some(existing) => *existing = entry,
                None => container.env.push(entry),
            }
        }
    }
    args.flags.apply(task);
    if !args.constraint_add.is_empty() || !args.constraint_rm.is_empty() {
        let placement = task.placement.get_or_insert_with(Default::default);
        let mut constraints: BTreeSet<String> = placement.constraints.drain(..).collect();
        constraints.extend(args.constraint_add.iter().cloned());
        for constraint in &args.constraint_rm {
            constraints.remove(constraint);
        }
        // Sorted, as Docker sorts them, "so that the result is predictable".
        placement.constraints = constraints.into_iter().collect();
    }
    if args.force {
        task.force_update += 1;
    }
    if let Some(mode) = args.flags.endpoint_mode {
        spec.endpoint
            .get_or_insert_with(Default::default)
            .set_mode(mode.into());
    }
    if !args.publish_add.is_empty() || !args.publish_rm.is_empty() {
        let endpoint_spec = spec.endpoint.get_or_insert_with(Default::default);
        endpoint::update_ports(
            &mut endpoint_spec.ports,
            &lookups.allocated_ports,
            &args.publish_rm,
            &args.publish_add,
        )?;
    }
    if !args.network_add.is_empty() || !args.network_rm.is_empty() {
        endpoint::update_networks(
            &mut spec.networks,
            &args.network_rm,
            &args.network_add,
            &lookups.network_ids,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    enum Cmd {
        Create(CreateArgs),
        Update(UpdateArgs),
    }

    fn create(args: &[&str]) -> CreateArgs {
        let argv = ["x", "create"].iter().chain(args);
        match Cmd::try_parse_from(argv).expect("valid flags") {
            Cmd::Create(a) => a,
            Cmd::Update(_) => unreachable!(),
        }
    }

    fn update(args: &[&str]) -> UpdateArgs {
        let argv = ["x", "update"].iter().chain(args);
        match Cmd::try_parse_from(argv).expect("valid flags") {
            Cmd::Update(a) => a,
            Cmd::Create(_) => unreachable!(),
        }
    }

    fn none() -> UpdateLookups {
        UpdateLookups::default()
    }

    fn container(spec: &pb::ServiceSpec) -> &pb::ContainerSpec {
        spec.task
            .as_ref()
            .and_then(|t| t.container.as_ref())
            .expect("container spec")
    }

    #[test]
    fn go_durations() {
        let good = [
            ("0", 0),
            ("5s", 5_000_000_000),
            ("1m30s", 90_000_000_000),
            ("1.5s", 1_500_000_000),
            ("300ms", 300_000_000),
            ("2h", 7_200_000_000_000),
            ("1h2m3s4ms5us6ns", 3_723_004_005_006),
            (".5m", 30_000_000_000),
            ("10µs", 10_000),
            ("-1s", -1_000_000_000),
        ];
        for (s, want) in good {
            assert_eq!(parse_go_duration(s), Ok(want), "{s}");
        }
        assert_eq!(
            parse_go_duration("5"),
            Err(DurationError::MissingUnit("5".into()))
        );
        assert_eq!(
            parse_go_duration("5x"),
            Err(DurationError::UnknownUnit {
                unit: "x".into(),
                input: "5x".into()
            })
        );
        for s in ["", "s", ".s", "-", "1s.", "99999999999h"] {
            assert!(parse_go_duration(s).is_err(), "{s}");
        }
        assert_eq!(
            duration_arg("-1s"),
            Err("duration cannot be negative".into())
        );
    }

    #[test]
    fn create_defaults_to_one_replica_and_no_policies() {
        let spec = create_spec(&create(&["busybox"])).expect("valid");
        assert_eq!(spec.name, "");
        assert_eq!(
            spec.mode,
            Some(Mode::Replicated(pb::ReplicatedMode { replicas: 1 }))
        );
        let task = spec.task.as_ref().expect("task");
        assert_eq!(task.restart, None);
        assert_eq!(task.resources, None);
        assert_eq!(task.placement, None);
        assert_eq!(container(&spec).image, "busybox");
        assert!(container(&spec).args.is_empty());
    }

    #[test]
    fn create_reads_every_flag() {
        let args = create(&[
            "--name",
            "web",
            "--replicas",
            "3",
            "-e",
            "A=1",
            "--env",
            "B=",
            "--constraint",
            "node.role==worker",
            "--constraint",
            "node.labels.zone!=b",
            "--reserve-cpu",
            "0.5",
            "--reserve-memory",
            "64m",
            "--limit-cpu",
            "2",
            "--limit-memory",
            "1g",
            "--restart-condition",
            "on-failure",
            "--restart-max-attempts",
            "3",
            "--restart-window",
            "1m30s",
            "--hostname",
            "h",
            "-u",
            "1000:1000",
            "-w",
            "/srv",
            "--stop-grace-period",
            "2s",
            "-l",
            "tier=front",
            "-l",
            "solo",
            "--container-label",
            "c=1",
            "--read-only",
            "-d",
            "busybox",
            "sleep",
            "-x",
            "1d",
        ]);
        assert!(args.flags.detach);
        let spec = create_spec(&args).expect("valid");
        assert_eq!(spec.name, "web");
        assert_eq!(
            spec.mode,
            Some(Mode::Replicated(pb::ReplicatedMode { replicas: 3 }))
        );
        assert_eq!(spec.labels["tier"], "front");
        assert_eq!(spec.labels["solo"], "");
        let c = container(&spec);
        assert_eq!(c.image, "busybox");
        assert_eq!(c.args, ["sleep", "-x", "1d"]);
        assert!(c.command.is_empty());
        assert_eq!(c.env, ["A=1", "B="]);
        assert_eq!(c.hostname, "h");
        assert_eq!(c.user, "1000:1000");
        assert_eq!(c.dir, "/srv");
        assert_eq!(c.stop_grace_period, 2_000_000_000);
        assert!(c.read_only);
        assert_eq!(c.labels["c"], "1");
        let task = spec.task.as_ref().expect("task");
        let resources = task.resources.as_ref().expect("resources");
        assert_eq!(
            resources.limits,
            Some(pb::Resources {
                nano_cpus: 2_000_000_000,
                memory_bytes: 1 << 30
            })
        );
        assert_eq!(
            resources.reservations,
            Some(pb::Resources {
                nano_cpus: 500_000_000,
                memory_bytes: 64 << 20
            })
        );
        assert_eq!(
            task.restart,
            Some(pb::RestartPolicy {
                condition: pb::RestartCondition::OnFailure as i32,
                delay: DEFAULT_RESTART_DELAY_NANOS,
                max_attempts: 3,
                window: 90_000_000_000,
            })
        );
        assert_eq!(
            task.placement.as_ref().map(|p| p.constraints.clone()),
            Some(vec![
                "node.role==worker".to_string(),
                "node.labels.zone!=b".to_string()
            ])
        );
    }

    #[test]
    fn create_refuses_bad_input() {
        let bad: [(&[&str], SpecError); 3] = [
            (
                &["--mode", "global", "--replicas", "2", "busybox"],
                SpecError::ReplicasWithGlobal,
            ),
            (&["-e", "=x", "busybox"], SpecError::InvalidEnv("=x".into())),
            (&["-e", "", "busybox"], SpecError::InvalidEnv("".into())),
        ];
        for (args, want) in bad {
            assert_eq!(create_spec(&create(args)), Err(want), "{args:?}");
        }
        let global = create_spec(&create(&["--mode", "global", "busybox"])).expect("valid");
        assert_eq!(global.mode, Some(Mode::Global(pb::GlobalMode {})));
        // Flag values that do not parse are usage errors.
        for args in [
            &["--reserve-memory", "lots", "busybox"][..],
            &["--limit-cpu", "x", "busybox"],
            &["--restart-delay", "5", "busybox"],
            &["--restart-condition", "sometimes", "busybox"],
            &["--mode", "replicated-job", "busybox"],
        ] {
            let argv = ["x", "create"].iter().chain(args);
            assert!(Cmd::try_parse_from(argv).is_err(), "{args:?}");
        }
    }

    #[test]
    fn update_changes_only_what_is_given() {
        let mut spec = create_spec(&create(&[
            "--name",
            "web",
            "-e",
            "A=1",
            "-e",
            "B=2",
            "-l",
            "x=1",
            "--constraint",
            "node.role==worker",
            "--restart-delay",
            "1s",
            "busybox",
            "sleep",
            "1d",
        ]))
        .expect("valid");
        let before = spec.clone();
        update_spec(&mut spec, &update(&["web"]), &none()).expect("valid");
        assert_eq!(spec, before);

        update_spec(
            &mut spec,
            &update(&[
                "--replicas",
                "4",
                "--image",
                "busybox:2",
                "--args",
                "sh -c 'echo hi; sleep 1d' \"a b\"",
                "--env-add",
                "B=3",
                "--env-add",
                "C=4",
                "--env-rm",
                "A",
                "--label-add",
                "y=2",
                "--label-rm",
                "x",
                "--constraint-add",
                "node.labels.a==b",
                "--constraint-rm",
                "node.role==worker",
                "--limit-memory",
                "128m",
                "--restart-max-attempts",
                "2",
                "--read-only=false",
                "--force",
                "web",
            ]),
            &none(),
        )
        .expect("valid");
        assert_eq!(
            spec.mode,
            Some(Mode::Replicated(pb::ReplicatedMode { replicas: 4 }))
        );
        let c = container(&spec);
        assert_eq!(c.image, "busybox:2");
        assert_eq!(c.args, ["sh", "-c", "echo hi; sleep 1d", "a b"]);
        assert_eq!(c.env, ["B=3", "C=4"]);
        assert!(!c.read_only);
        assert_eq!(spec.labels, [("y".to_string(), "2".to_string())].into());
        let task = spec.task.as_ref().expect("task");
        assert_eq!(
            task.placement.as_ref().map(|p| p.constraints.clone()),
            Some(vec!["node.labels.a==b".to_string()])
        );
        assert_eq!(
            task.resources.as_ref().and_then(|r| r.limits),
            Some(pb::Resources {
                nano_cpus: 0,
                memory_bytes: 128 << 20
            })
        );
        // The policy set at create time is kept and only the given field changes.
        assert_eq!(
            task.restart,
            Some(pb::RestartPolicy {
                condition: pb::RestartCondition::Any as i32,
                delay: 1_000_000_000,
                max_attempts: 2,
                window: 0,
            })
        );
        assert_eq!(task.force_update, 1);
    }

    #[test]
    fn update_refuses_replicas_of_global_and_rollback_with_changes() {
        let mut spec = create_spec(&create(&["--mode", "global", "busybox"])).expect("valid");
        assert_eq!(
            update_spec(&mut spec, &update(&["--replicas", "2", "web"]), &none()),
            Err(SpecError::ReplicasWithGlobal)
        );
        assert_eq!(
            update(&["--rollback", "--image", "x", "web"]).check_rollback(),
            Err(SpecError::RollbackWithChanges)
        );
        assert_eq!(
            update(&["--rollback", "-d", "web"]).check_rollback(),
            Ok(())
        );
    }

    fn ingress(published: u32, target: u32, protocol: pb::PortProtocol) -> pb::PortConfig {
        pb::PortConfig {
            name: String::new(),
            protocol: protocol as i32,
            target_port: target,
            published_port: published,
            publish_mode: pb::PublishMode::Ingress as i32,
        }
    }

    #[test]
    fn create_reads_networks_ports_and_endpoint_mode() {
        let spec = create_spec(&create(&["busybox"])).expect("valid");
        assert!(spec.networks.is_empty());
        assert_eq!(
            spec.endpoint,
            Some(pb::EndpointSpec {
                mode: pb::EndpointMode::Vip as i32,
                ports: vec![],
            })
        );
        let spec = create_spec(&create(&[
            "--network",
            "front",
            "--network",
            "name=back,alias=db",
            "-p",
            "8080:80",
            "--publish",
            "53/udp",
            "--publish",
            "published=9000,target=90,mode=host",
            "--endpoint-mode",
            "dnsrr",
            "busybox",
        ]))
        .expect("valid");
        let targets: Vec<(&str, &[String])> = spec
            .networks
            .iter()
            .map(|n| (n.target.as_str(), n.aliases.as_slice()))
            .collect();
        assert_eq!(
            targets,
            [("front", &[][..]), ("back", &["db".to_string()][..])]
        );
        let endpoint = spec.endpoint.expect("endpoint spec");
        assert_eq!(endpoint.mode(), pb::EndpointMode::Dnsrr);
        let mut host = ingress(9000, 90, pb::PortProtocol::Tcp);
        host.set_publish_mode(pb::PublishMode::Host);
        assert_eq!(
            endpoint.ports,
            [
                ingress(8080, 80, pb::PortProtocol::Tcp),
                ingress(0, 53, pb::PortProtocol::Udp),
                host
            ]
        );
        // Bad values are usage errors that name the value.
        for (args, needle) in [
            (&["-p", "8080:http", "busybox"][..], "8080:http"),
            (&["-p", "published=80", "busybox"], "published=80"),
            (&["--endpoint-mode", "rr", "busybox"], "rr"),
            (&["--network", "alias=x", "busybox"], "alias=x"),
        ] {
            let argv = ["x", "create"].iter().chain(args);
            let err = Cmd::try_parse_from(argv).expect_err("invalid");
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn update_changes_networks_ports_and_endpoint_mode() {
        let mut spec = create_spec(&create(&[
            "--network",
            "front",
            "-p",
            "8080:80",
            "-p",
            "9090",
            "busybox",
        ]))
        .expect("valid");
        // As the leader stores it: networks by id.
        spec.networks[0].target = "id-front".into();
        let lookups = UpdateLookups {
            network_ids: [
                ("front".to_string(), "id-front".to_string()),
                ("back".to_string(), "id-back".to_string()),
            ]
            .into(),
            allocated_ports: vec![
                ingress(8080, 80, pb::PortProtocol::Tcp),
                ingress(30001, 9090, pb::PortProtocol::Tcp),
            ],
        };
        let args = update(&[
            "--network-rm",
            "front",
            "--network-add",
            "name=back,alias=db",
            "--publish-rm",
            "30001",
            "--publish-add",
            "8081:81/udp",
            "--endpoint-mode",
            "dnsrr",
            "web",
        ]);
        assert_eq!(
            args.check_rollback(),
            Ok(()),
            "no --rollback, nothing to refuse"
        );
        update_spec(&mut spec, &args, &lookups).expect("valid");
        assert_eq!(
            spec.networks,
            [pb::NetworkAttachmentConfig {
                target: "id-back".into(),
                aliases: vec!["db".into()],
            }]
        );
        let endpoint = spec.endpoint.as_ref().expect("endpoint spec");
        assert_eq!(endpoint.mode(), pb::EndpointMode::Dnsrr);
        assert_eq!(
            endpoint.ports,
            [
                ingress(8080, 80, pb::PortProtocol::Tcp),
                ingress(8081, 81, pb::PortProtocol::Udp)
            ]
        );
        assert_eq!(
            update_spec(
                &mut spec,
                &update(&["--network-add", "back", "web"]),
                &lookups
            ),
            Err(SpecError::Endpoint(EndpointUpdateError::AlreadyAttached(
                "back".into()
            )))
        );
        assert_eq!(
            update_spec(
                &mut spec,
                &update(&["--publish-rm", "7000", "web"]),
                &lookups
            ),
            Err(SpecError::Endpoint(EndpointUpdateError::NotPublished(
                "7000/tcp".into()
            )))
        );
        assert_eq!(
            update(&["--rollback", "--publish-rm", "8080", "web"]).check_rollback(),
            Err(SpecError::RollbackWithChanges)
        );
    }

    #[test]
    fn shell_words() {
        let cases: [(&str, &[&str]); 6] = [
            ("", &[]),
            ("  a  b ", &["a", "b"]),
            ("'a b' c", &["a b", "c"]),
            (r#""a \"b\"" c\ d"#, &["a \"b\"", "c d"]),
            ("''", &[""]),
            ("x'y'z", &["xyz"]),
        ];
        for (line, want) in cases {
            assert_eq!(shell_split(line).expect("valid"), want, "{line}");
        }
        assert!(shell_split("'open").is_err());
    }

    #[test]
    fn env_without_value_takes_the_clients() {
        assert_eq!(parse_env("A=1").expect("valid"), "A=1");
        assert_eq!(
            parse_env("SHOAL_TEST_SURELY_UNSET_VAR").expect("valid"),
            "SHOAL_TEST_SURELY_UNSET_VAR"
        );
        let path = std::env::var("PATH").expect("PATH is set in tests");
        assert_eq!(parse_env("PATH").expect("valid"), format!("PATH={path}"));
    }
}
