//! The nftables rulesets shoal owns, and applying them with `nft`.
//!
//! shoal keeps all of its packet filtering and NAT in one table, `ip shoal`, per network
//! namespace. On a node that table is the ingress routing mesh (published ports DNATed to the
//! service's tasks with `numgen inc` round robin, because this kernel has no IPVS), outbound NAT
//! for local bridges and forwarding isolation between networks; inside a task's namespace it maps
//! service VIPs to task addresses.
//!
//! Rulesets are built as typed documents with the `nftables` crate and fed to `nft -j -f -`.
//! Every ruleset starts with `add table; delete table; add table`, so applying it replaces the
//! whole table in one kernel transaction: there is never a moment without rules, a failed apply
//! leaves the previous rules in place, and no other table is ever touched.
//!
//! This module does not decide what to program (the worker does) and does not create
//! namespaces or links (see [`crate::netns`] and [`crate::link`]).

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use ipnet::Ipv4Net;
use nftables::batch::Batch;
use nftables::expr::{
    Expression, Fib, FibFlag, FibResult, Map, Meta, MetaKey, NamedExpression, NgMode, Numgen,
    Payload, PayloadField, Prefix, SetItem, CT,
};
use nftables::schema::{Chain, NfListObject, NfObject, Nftables, Rule, Table};
use nftables::stmt::{JumpTarget, Match, Operator, Reject, RejectType, Statement, NAT};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook, RejectCode};
use nix::sched::CloneFlags;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Name of the table shoal owns in the `ip` family. Nothing outside it is ever changed.
pub const TABLE: &str = "shoal";

/// Chain priorities as numbers: Debian's nft 1.0.6 refuses the symbolic names (`dstnat`) in
/// some hooks, `output` among them. The values are the ones the names stand for.
const DSTNAT_PRIORITY: i32 = -100;
const SRCNAT_PRIORITY: i32 = 100;
const FILTER_PRIORITY: i32 = 0;

/// Regular chain holding the published-port DNAT rules; both `prerouting` (traffic from other
/// hosts) and `output` (traffic from this host) jump to it for local destinations, as Docker's
/// `DOCKER-INGRESS` chain is reached from both PREROUTING and OUTPUT.
const PUBLISHED_CHAIN: &str = "published";

/// `nft` as Debian installs it; daemons started without `/usr/sbin` in `PATH` still find it.
const NFT_PATH: &str = "/usr/sbin/nft";

/// Errors from running `nft`.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The ruleset could not be turned into JSON.
    #[error("serialize the nftables ruleset to JSON")]
    Serialize(#[source] serde_json::Error),
    /// The network namespace file to run `nft` in could not be opened.
    #[error("open network namespace {path}")]
    OpenNetns {
        /// The nsfs file (e.g. `/run/netns/NAME`).
        path: PathBuf,
        /// Why it could not be opened.
        #[source]
        source: io::Error,
    },
    /// `nft` could not be started (missing binary, or `setns` into the namespace failed).
    #[error("{op} in {}: start {program}", netns_label(.netns))]
    Spawn {
        /// What was being done.
        op: NftOp,
        /// The namespace it was done in; `None` is the caller's own.
        netns: Option<PathBuf>,
        /// The program that was started.
        program: PathBuf,
        /// Why it could not start.
        #[source]
        source: io::Error,
    },
    /// Talking to the running `nft` (writing its stdin, waiting for it) failed.
    #[error("{op} in {}: talk to nft", netns_label(.netns))]
    Io {
        /// What was being done.
        op: NftOp,
        /// The namespace it was done in; `None` is the caller's own.
        netns: Option<PathBuf>,
        /// The I/O failure.
        #[source]
        source: io::Error,
    },
    /// `nft` ran and refused: the previous rules are still in place.
    #[error("{op} in {}: nft {args} exited with {status}: {stderr}", netns_label(.netns))]
    Failed {
        /// What was being done.
        op: NftOp,
        /// The namespace it was done in; `None` is the caller's own.
        netns: Option<PathBuf>,
        /// The arguments `nft` was given.
        args: String,
        /// How `nft` exited.
        status: ExitStatus,
        /// What `nft` printed on stderr (its explanation).
        stderr: String,
    },
    /// `nft -j list` printed something that is not an nftables JSON document.
    #[error("{op} in {}: parse nft's JSON output", netns_label(.netns))]
    ParseOutput {
        /// What was being done.
        op: NftOp,
        /// The namespace it was done in; `None` is the caller's own.
        netns: Option<PathBuf>,
        /// The parse failure.
        #[source]
        source: serde_json::Error,
    },
}

/// Result of the nft operations.
pub type Result<T, E = NftError> = std::result::Result<T, E>;

/// The operation an [`NftError`] happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NftOp {
    /// [`apply`].
    Apply,
    /// [`check`].
    Check,
    /// [`delete_table`].
    DeleteTable,
    /// [`list_table`].
    ListTable,
    /// [`foreign_forward_drops`].
    ListChains,
}

impl std::fmt::Display for NftOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NftOp::Apply => "apply nftables ruleset",
            NftOp::Check => "check nftables ruleset",
            NftOp::DeleteTable => "delete table ip shoal",
            NftOp::ListTable => "list table ip shoal",
            NftOp::ListChains => "list chains",
        })
    }
}

fn netns_label(netns: &Option<PathBuf>) -> String {
    match netns {
        Some(path) => format!("network namespace {}", path.display()),
        None => "the current network namespace".to_owned(),
    }
}

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The protocol's name in nft's payload expressions (`tcp dport`).
    fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A published port on this node: packets to a local address (`fib daddr type local`) with
/// this protocol and port are DNATed to one of `backends` in turn (`numgen inc mod N map`),
/// with the destination port rewritten to `target_port`.
///
/// With no backends the port is closed loudly rather than left to whatever listens on the
/// host: TCP gets a reset, UDP an ICMP port unreachable. If two rules name the same protocol
/// and port, the first one wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRule {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The port published on every local address of the node.
    pub port: u16,
    /// The port the tasks listen on.
    pub target_port: u16,
    /// Task addresses to balance over, reachable from this namespace (locally or across the
    /// ingress overlay).
    pub backends: Vec<Ipv4Addr>,
}

/// Everything shoal programs into a node's own `ip shoal` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeRules {
    /// The routing mesh: published ports and where they lead.
    pub ports: Vec<PortRule>,
    /// Outbound NAT for a local bridge: `ip saddr SUBNET oifname != BRIDGE masquerade`, so
    /// tasks on the bridge reach the outside world with the node's address.
    pub outbound_nat: Vec<(Ipv4Net, String)>,
    /// Bridges on which DNATed traffic is masqueraded as it leaves (the ingress bridge): the
    /// task then answers this node, whose conntrack entry undoes the DNAT, instead of the
    /// client directly. `oifname BRIDGE ct status dnat masquerade`.
    pub masquerade_dnat_on: Vec<String>,
    /// DNATed connections from these sources that leave through the bridge are masqueraded
    /// (`ip saddr NET oifname BRIDGE ct status dnat masquerade`): a container reaching a
    /// published port that leads back onto its own bridge (hairpin), and the node itself
    /// through 127.0.0.0/8 (which needs `route_localnet` on the bridge). Other clients keep
    /// their own address.
    pub hairpin: Vec<(Ipv4Net, String)>,
    /// Pairs of interface name patterns (nft wildcards such as `"sov*"`) between which
    /// forwarding is dropped, in both directions.
    pub isolate: Vec<(String, String)>,
}

/// `ip saddr NET`.
fn saddr_in(net: &Ipv4Net) -> Statement<'static> {
    match_expr(
        Operator::EQ,
        payload("ip", "saddr"),
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(Expression::String(net.network().to_string().into())),
            len: net.prefix_len().into(),
        })),
    )
}

/// `oifname NAME`.
fn oifname_is(name: &str) -> Statement<'static> {
    match_expr(
        Operator::EQ,
        meta(MetaKey::Oifname),
        Expression::String(name.to_string().into()),
    )
}

/// `ct status dnat`.
fn ct_status_dnat() -> Statement<'static> {
    match_expr(
        Operator::IN,
        Expression::Named(NamedExpression::CT(CT {
            key: "status".into(),
            family: None,
            dir: None,
        })),
        Expression::String("dnat".into()),
    )
}

/// A service's virtual IP as seen from inside a task's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    /// The service's virtual address on this network.
    pub addr: Ipv4Addr,
    /// Addresses of the service's tasks; connections to `addr` go to one of them, port kept.
    /// Empty: connections are refused.
    pub backends: Vec<Ipv4Addr>,
}

/// The node's `ip shoal` table.
///
/// Chains: `prerouting` (nat, -100) and `output` (nat, -100) send local destinations to the
/// regular chain `published` with the DNAT rules; `postrouting` (nat, 100) masquerades;
/// `forward` (filter, 0) drops between isolated interfaces; `input` (filter, 0) rejects
/// published ports that have no backends. Every base chain's policy is accept: shoal adds
/// behaviour, it does not firewall the host.
pub fn node_ruleset(rules: &NodeRules) -> Nftables<'static> {
    let mut table = TableBatch::replacing();
    table.base_chain(
        "prerouting",
        NfChainType::NAT,
        NfHook::Prerouting,
        DSTNAT_PRIORITY,
    );
    table.base_chain("output", NfChainType::NAT, NfHook::Output, DSTNAT_PRIORITY);
    table.base_chain(
        "postrouting",
        NfChainType::NAT,
        NfHook::Postrouting,
        SRCNAT_PRIORITY,
    );
    table.base_chain(
        "forward",
        NfChainType::Filter,
        NfHook::Forward,
        FILTER_PRIORITY,
    );
    table.base_chain("input", NfChainType::Filter, NfHook::Input, FILTER_PRIORITY);
    table.regular_chain(PUBLISHED_CHAIN);

    for chain in ["prerouting", "output"] {
        table.rule(
            chain,
            vec![
                daddr_is_local(),
                Statement::Jump(JumpTarget {
                    target: PUBLISHED_CHAIN.into(),
                }),
            ],
        );
    }

    for port in &rules.ports {
        let matches_port = match_expr(
            Operator::EQ,
            payload(port.protocol.name(), "dport"),
            Expression::Number(port.port.into()),
        );
        if port.backends.is_empty() {
            let reject = match port.protocol {
                Protocol::Tcp => Reject::new(Some(RejectType::TCPReset), None),
                Protocol::Udp => Reject::new(Some(RejectType::ICMP), Some(RejectCode::PortUnreach)),
            };
            // The input hook sees both remote and locally generated packets to local addresses.
            table.rule("input", vec![matches_port, Statement::Reject(Some(reject))]);
        } else {
            table.rule(
                PUBLISHED_CHAIN,
                vec![
                    matches_port,
                    Statement::DNAT(Some(NAT {
                        addr: Some(round_robin(&port.backends)),
                        family: None,
                        port: Some(Expression::Number(port.target_port.into())),
                        flags: None,
                    })),
                ],
            );
        }
    }

    for (subnet, bridge) in &rules.outbound_nat {
        table.rule(
            "postrouting",
            vec![
                saddr_in(subnet),
                match_expr(
                    Operator::NEQ,
                    meta(MetaKey::Oifname),
                    Expression::String(bridge.clone().into()),
                ),
                Statement::Masquerade(None),
            ],
        );
    }

    for bridge in &rules.masquerade_dnat_on {
        table.rule(
            "postrouting",
            vec![
                oifname_is(bridge),
                ct_status_dnat(),
                Statement::Masquerade(None),
            ],
        );
    }

    for (source, bridge) in &rules.hairpin {
        table.rule(
            "postrouting",
            vec![
                saddr_in(source),
                oifname_is(bridge),
                ct_status_dnat(),
                Statement::Masquerade(None),
            ],
        );
    }

    for (a, b) in &rules.isolate {
        for (from, to) in [(a, b), (b, a)] {
            table.rule(
                "forward",
                vec![
                    match_expr(
                        Operator::EQ,
                        meta(MetaKey::Iifname),
                        Expression::String(from.clone().into()),
                    ),
                    match_expr(
                        Operator::EQ,
                        meta(MetaKey::Oifname),
                        Expression::String(to.clone().into()),
                    ),
                    Statement::Drop(None),
                ],
            );
        }
    }

    table.finish()
}

/// The `ip shoal` table inside a task's namespace.
///
/// Chain `output` (nat, -100): `ip daddr VIP dnat to numgen inc mod N map { … }`, address only
/// so the port the client chose is kept. Chain `output_filter` (filter, 0) refuses connections
/// to VIPs without backends: a TCP reset for TCP, ICMP port unreachable for anything else.
pub fn vip_ruleset(vips: &[Vip]) -> Nftables<'static> {
    let mut table = TableBatch::replacing();
    table.base_chain("output", NfChainType::NAT, NfHook::Output, DSTNAT_PRIORITY);
    table.base_chain(
        "output_filter",
        NfChainType::Filter,
        NfHook::Output,
        FILTER_PRIORITY,
    );

    for vip in vips {
        let to_vip = || {
            match_expr(
                Operator::EQ,
                payload("ip", "daddr"),
                Expression::String(vip.addr.to_string().into()),
            )
        };
        if vip.backends.is_empty() {
            table.rule(
                "output_filter",
                vec![
                    to_vip(),
                    match_expr(
                        Operator::EQ,
                        meta(MetaKey::L4proto),
                        Expression::String("tcp".into()),
                    ),
                    Statement::Reject(Some(Reject::new(Some(RejectType::TCPReset), None))),
                ],
            );
            table.rule(
                "output_filter",
                vec![
                    to_vip(),
                    Statement::Reject(Some(Reject::new(
                        Some(RejectType::ICMP),
                        Some(RejectCode::PortUnreach),
                    ))),
                ],
            );
        } else {
            table.rule(
                "output",
                vec![
                    to_vip(),
                    Statement::DNAT(Some(NAT {
                        addr: Some(round_robin(&vip.backends)),
                        family: None,
                        port: None,
                        flags: None,
                    })),
                ],
            );
        }
    }

    table.finish()
}

/// Applies `ruleset` with `nft -j -f -`, inside the network namespace whose nsfs file is
/// `netns` (e.g. `/run/netns/NAME`), or in the caller's namespace when `None`.
///
/// The rulesets built here replace the `ip shoal` table in one transaction; if nft refuses
/// them, the table is left exactly as it was.
pub async fn apply(ruleset: &Nftables<'_>, netns: Option<&Path>) -> Result<()> {
    let json = serde_json::to_vec(ruleset).map_err(NftError::Serialize)?;
    tracing::debug!(
        netns = ?netns,
        objects = ruleset.objects.len(),
        "applying nftables ruleset"
    );
    run_nft(NftOp::Apply, &["-j", "-f", "-"], Some(json), netns).await?;
    Ok(())
}

/// Asks nft whether it would accept `ruleset` (`nft -c -j -f -`), changing nothing.
pub async fn check(ruleset: &Nftables<'_>, netns: Option<&Path>) -> Result<()> {
    let json = serde_json::to_vec(ruleset).map_err(NftError::Serialize)?;
    run_nft(NftOp::Check, &["-c", "-j", "-f", "-"], Some(json), netns).await?;
    Ok(())
}

/// Deletes the `ip shoal` table if it exists; succeeds if it does not.
pub async fn delete_table(netns: Option<&Path>) -> Result<()> {
    let mut batch = Batch::new();
    // Adding first makes the delete valid when the table is absent, in the same transaction.
    batch.add(NfListObject::Table(shoal_table()));
    batch.delete(NfListObject::Table(shoal_table()));
    let json = serde_json::to_vec(&batch.to_nftables()).map_err(NftError::Serialize)?;
    run_nft(NftOp::DeleteTable, &["-j", "-f", "-"], Some(json), netns).await?;
    Ok(())
}

/// The current `ip shoal` table as nft lists it (`nft -j list table ip shoal`), or `None` if
/// there is none.
pub async fn list_table(netns: Option<&Path>) -> Result<Option<Nftables<'static>>> {
    let parse = |out: &[u8]| {
        serde_json::from_slice::<Nftables<'static>>(out).map_err(|source| NftError::ParseOutput {
            op: NftOp::ListTable,
            netns: netns.map(Path::to_path_buf),
            source,
        })
    };
    // Ask for the table list first: `list table` on a missing table fails with a message that
    // would have to be matched as a string.
    let tables = parse(
        &run_nft(
            NftOp::ListTable,
            &["-j", "list", "tables", "ip"],
            None,
            netns,
        )
        .await?,
    )?;
    let exists = tables.objects.iter().any(
        |object| matches!(object, NfObject::ListObject(NfListObject::Table(t)) if t.name == TABLE),
    );
    if !exists {
        return Ok(None);
    }
    let out = run_nft(
        NftOp::ListTable,
        &["-j", "list", "table", "ip", TABLE],
        None,
        netns,
    )
    .await?;
    parse(&out).map(Some)
}

/// Forward-hook chains of other tables whose policy is drop (`family table/chain`): Docker's
/// `iptables -P FORWARD DROP` is one. Since every base chain of a hook must accept a packet,
/// such a chain drops what shoal's bridges forward unless its own rules accept it.
pub async fn foreign_forward_drops(netns: Option<&Path>) -> Result<Vec<String>> {
    let out = run_nft(NftOp::ListChains, &["-j", "list", "chains"], None, netns).await?;
    let chains = serde_json::from_slice::<Nftables<'static>>(&out).map_err(|source| {
        NftError::ParseOutput {
            op: NftOp::ListChains,
            netns: netns.map(Path::to_path_buf),
            source,
        }
    })?;
    Ok(chains
        .objects
        .iter()
        .filter_map(|object| match object {
            NfObject::ListObject(NfListObject::Chain(c)) => Some(c),
            _ => None,
        })
        .filter(|c| c.table != TABLE)
        .filter(|c| c.hook == Some(NfHook::Forward) && c.policy == Some(NfChainPolicy::Drop))
        .map(|c| {
            let family = format!("{:?}", c.family).to_lowercase();
            format!("{family} {}/{}", c.table, c.name)
        })
        .collect())
}

/// Builds a batch that replaces the `ip shoal` table.
struct TableBatch {
    batch: Batch<'static>,
}

impl TableBatch {
    /// `add table; delete table; add table`: the add makes the delete valid on a first apply,
    /// and since nft sends the whole batch as one transaction, the old table stays in force
    /// until the new one is complete.
    fn replacing() -> Self {
        let mut batch = Batch::new();
        batch.add(NfListObject::Table(shoal_table()));
        batch.delete(NfListObject::Table(shoal_table()));
        batch.add(NfListObject::Table(shoal_table()));
        TableBatch { batch }
    }

    fn base_chain(&mut self, name: &'static str, kind: NfChainType, hook: NfHook, prio: i32) {
        self.batch.add(NfListObject::Chain(Chain {
            family: NfFamily::IP,
            table: TABLE.into(),
            name: name.into(),
            _type: Some(kind),
            hook: Some(hook),
            prio: Some(prio),
            policy: Some(NfChainPolicy::Accept),
            ..Chain::default()
        }));
    }

    fn regular_chain(&mut self, name: &'static str) {
        self.batch.add(NfListObject::Chain(Chain {
            family: NfFamily::IP,
            table: TABLE.into(),
            name: name.into(),
            ..Chain::default()
        }));
    }

    fn rule(&mut self, chain: &'static str, expr: Vec<Statement<'static>>) {
        self.batch.add(NfListObject::Rule(Rule {
            family: NfFamily::IP,
            table: TABLE.into(),
            chain: chain.into(),
            expr: expr.into(),
            ..Rule::default()
        }));
    }

    fn finish(self) -> Nftables<'static> {
        self.batch.to_nftables()
    }
}

fn shoal_table() -> Table<'static> {
    Table {
        family: NfFamily::IP,
        name: TABLE.into(),
        handle: None,
    }
}

fn match_expr(
    op: Operator,
    left: Expression<'static>,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

/// `fib daddr type local`: the destination is one of this namespace's own addresses.
fn daddr_is_local() -> Statement<'static> {
    match_expr(
        Operator::EQ,
        Expression::Named(NamedExpression::Fib(Fib {
            result: FibResult::Type,
            flags: HashSet::from([FibFlag::Daddr]),
        })),
        Expression::String("local".into()),
    )
}

/// `numgen inc mod N map { 0 : B0, 1 : B1, … }`. `numgen inc` rather than `jhash`: every new
/// connection goes to the next backend, so load spreads evenly even from a single client.
/// Only the first packet of a connection reaches a nat chain; conntrack keeps the rest on the
/// chosen backend.
fn round_robin(backends: &[Ipv4Addr]) -> Expression<'static> {
    let modulus = u32::try_from(backends.len()).expect("fewer than 2^32 backends fit in memory");
    let entries = (0u32..)
        .zip(backends)
        .map(|(i, addr)| {
            SetItem::Mapping(
                Expression::Number(i),
                Expression::String(addr.to_string().into()),
            )
        })
        .collect();
    Expression::Named(NamedExpression::Map(Box::new(Map {
        key: Expression::Named(NamedExpression::Numgen(Numgen {
            mode: NgMode::Inc,
            ng_mod: modulus,
            offset: None,
        })),
        data: Expression::Named(NamedExpression::Set(entries)),
    })))
}

/// Runs nft with `args`, feeding it `stdin`, inside `netns` when given; returns its stdout.
async fn run_nft(
    op: NftOp,
    args: &[&str],
    stdin: Option<Vec<u8>>,
    netns: Option<&Path>,
) -> Result<Vec<u8>> {
    let program = nft_program();
    let mut command = Command::new(&program);
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(path) = netns {
        // Opened here, not in the child: between fork and exec only async-signal-safe calls
        // are allowed, and building a C path allocates. The fd is inherited by the fork and
        // closed by exec (O_CLOEXEC).
        let ns = File::open(path).map_err(|source| NftError::OpenNetns {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: the closure runs in the forked child before exec and only makes the setns
        // syscall on a descriptor the parent opened: no allocation, no locks.
        unsafe {
            command.pre_exec(move || {
                nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
            });
        }
    }
    let owned_netns = || netns.map(Path::to_path_buf);

    let mut child = command.spawn().map_err(|source| NftError::Spawn {
        op,
        netns: owned_netns(),
        program: program.clone(),
        source,
    })?;
    let child_stdin = child.stdin.take();
    let write = async move {
        if let (Some(mut pipe), Some(data)) = (child_stdin, stdin) {
            pipe.write_all(&data).await?;
            pipe.shutdown().await?;
        }
        Ok::<(), io::Error>(())
    };
    // Write and read at once, so neither side blocks on a full pipe.
    let (written, output) = tokio::join!(write, child.wait_with_output());
    let output = output.map_err(|source| NftError::Io {
        op,
        netns: owned_netns(),
        source,
    })?;
    // A refusing nft may exit before reading all of stdin; its stderr says more than EPIPE.
    if !output.status.success() {
        return Err(NftError::Failed {
            op,
            netns: owned_netns(),
            args: args.join(" "),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    written.map_err(|source| NftError::Io {
        op,
        netns: owned_netns(),
        source,
    })?;
    Ok(output.stdout)
}

fn nft_program() -> PathBuf {
    if Path::new(NFT_PATH).exists() {
        PathBuf::from(NFT_PATH)
    } else {
        PathBuf::from("nft")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn small_node_rules() -> NodeRules {
        NodeRules {
            ports: vec![
                PortRule {
                    protocol: Protocol::Tcp,
                    port: 8080,
                    target_port: 80,
                    backends: vec![Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)],
                },
                PortRule {
                    protocol: Protocol::Udp,
                    port: 5353,
                    target_port: 53,
                    backends: vec![Ipv4Addr::new(10, 0, 0, 4)],
                },
                PortRule {
                    protocol: Protocol::Tcp,
                    port: 9000,
                    target_port: 9000,
                    backends: vec![],
                },
                PortRule {
                    protocol: Protocol::Udp,
                    port: 9001,
                    target_port: 9001,
                    backends: vec![],
                },
            ],
            outbound_nat: vec![("172.18.0.0/16".parse().unwrap(), "shoal_gwbridge".into())],
            masquerade_dnat_on: vec!["ingress-br".into()],
            hairpin: vec![("127.0.0.0/8".parse().unwrap(), "shoal0".into())],
            isolate: vec![("sov*".into(), "sing*".into())],
        }
    }

    /// The `expr` array of every rule in `chain`, in order.
    fn rules_in(ruleset: &Nftables<'_>, chain: &str) -> Vec<Value> {
        let doc = serde_json::to_value(ruleset).unwrap();
        doc["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|object| object.get("add")?.get("rule"))
            .filter(|rule| rule["chain"] == chain)
            .map(|rule| {
                assert_eq!(rule["family"], "ip");
                assert_eq!(rule["table"], TABLE);
                rule["expr"].clone()
            })
            .collect()
    }

    #[test]
    fn ruleset_replaces_the_table_in_one_batch() {
        let doc = serde_json::to_value(node_ruleset(&NodeRules::default())).unwrap();
        let objects = doc["nftables"].as_array().unwrap();
        let table = json!({"family": "ip", "name": "shoal"});
        assert_eq!(objects[0], json!({"add": {"table": table}}));
        assert_eq!(objects[1], json!({"delete": {"table": table}}));
        assert_eq!(objects[2], json!({"add": {"table": table}}));
        // Nothing in the batch names another table.
        for object in &objects[3..] {
            let (_, inner) = object["add"].as_object().unwrap().iter().next().unwrap();
            assert_eq!(inner["table"], TABLE);
            assert_eq!(inner["family"], "ip");
        }
    }

    #[test]
    fn node_chains_have_numeric_priorities() {
        let doc = serde_json::to_value(node_ruleset(&NodeRules::default())).unwrap();
        let chains: Vec<Value> = doc["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|object| object.get("add")?.get("chain").cloned())
            .collect();
        let chain = |name, kind, hook, prio| {
            json!({"family": "ip", "table": "shoal", "name": name, "type": kind, "hook": hook,
                   "prio": prio, "policy": "accept"})
        };
        assert_eq!(
            chains,
            vec![
                chain("prerouting", "nat", "prerouting", -100),
                chain("output", "nat", "output", -100),
                chain("postrouting", "nat", "postrouting", 100),
                chain("forward", "filter", "forward", 0),
                chain("input", "filter", "input", 0),
                json!({"family": "ip", "table": "shoal", "name": "published"}),
            ]
        );
    }

    #[test]
    fn local_destinations_jump_to_published_ports() {
        let ruleset = node_ruleset(&small_node_rules());
        let jump = json!([
            {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}},
                       "right": "local"}},
            {"jump": {"target": "published"}},
        ]);
        assert_eq!(rules_in(&ruleset, "prerouting"), vec![jump.clone()]);
        assert_eq!(rules_in(&ruleset, "output"), vec![jump]);
    }

    #[test]
    fn published_ports_dnat_round_robin() {
        let ruleset = node_ruleset(&small_node_rules());
        assert_eq!(
            rules_in(&ruleset, "published"),
            vec![
                json!([
                    {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                               "right": 8080}},
                    {"dnat": {
                        "addr": {"map": {
                            "key": {"numgen": {"mode": "inc", "mod": 2}},
                            "data": {"set": [[0, "10.0.0.2"], [1, "10.0.0.3"]]},
                        }},
                        "port": 80,
                    }},
                ]),
                json!([
                    {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}},
                               "right": 5353}},
                    {"dnat": {
                        "addr": {"map": {
                            "key": {"numgen": {"mode": "inc", "mod": 1}},
                            "data": {"set": [[0, "10.0.0.4"]]},
                        }},
                        "port": 53,
                    }},
                ]),
            ]
        );
    }

    #[test]
    fn ports_without_backends_are_rejected() {
        let ruleset = node_ruleset(&small_node_rules());
        assert_eq!(
            rules_in(&ruleset, "input"),
            vec![
                json!([
                    {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                               "right": 9000}},
                    {"reject": {"type": "tcp reset"}},
                ]),
                json!([
                    {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}},
                               "right": 9001}},
                    {"reject": {"type": "icmp", "expr": "port-unreachable"}},
                ]),
            ]
        );
    }

    #[test]
    fn postrouting_masquerades_outbound_and_dnated_traffic() {
        let ruleset = node_ruleset(&small_node_rules());
        assert_eq!(
            rules_in(&ruleset, "postrouting"),
            vec![
                json!([
                    {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                               "right": {"prefix": {"addr": "172.18.0.0", "len": 16}}}},
                    {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}},
                               "right": "shoal_gwbridge"}},
                    {"masquerade": null},
                ]),
                json!([
                    {"match": {"op": "==", "left": {"meta": {"key": "oifname"}},
                               "right": "ingress-br"}},
                    {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
                    {"masquerade": null},
                ]),
                json!([
                    {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                               "right": {"prefix": {"addr": "127.0.0.0", "len": 8}}}},
                    {"match": {"op": "==", "left": {"meta": {"key": "oifname"}},
                               "right": "shoal0"}},
                    {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
                    {"masquerade": null},
                ]),
            ]
        );
    }

    #[test]
    fn isolation_drops_both_directions() {
        let ruleset = node_ruleset(&small_node_rules());
        let drop = |from: &str, to: &str| {
            json!([
                {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": from}},
                {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": to}},
                {"drop": null},
            ])
        };
        assert_eq!(
            rules_in(&ruleset, "forward"),
            vec![drop("sov*", "sing*"), drop("sing*", "sov*")]
        );
    }

    #[test]
    fn vips_dnat_address_only_and_reject_without_backends() {
        let ruleset = vip_ruleset(&[
            Vip {
                addr: Ipv4Addr::new(10, 0, 0, 100),
                backends: vec![Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)],
            },
            Vip {
                addr: Ipv4Addr::new(10, 0, 0, 101),
                backends: vec![],
            },
        ]);
        let to_vip = |addr: &str| {
            json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                             "right": addr}})
        };
        assert_eq!(
            rules_in(&ruleset, "output"),
            vec![json!([
                to_vip("10.0.0.100"),
                {"dnat": {"addr": {"map": {
                    "key": {"numgen": {"mode": "inc", "mod": 2}},
                    "data": {"set": [[0, "10.0.0.2"], [1, "10.0.0.3"]]},
                }}}},
            ])]
        );
        assert_eq!(
            rules_in(&ruleset, "output_filter"),
            vec![
                json!([
                    to_vip("10.0.0.101"),
                    {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
                    {"reject": {"type": "tcp reset"}},
                ]),
                json!([
                    to_vip("10.0.0.101"),
                    {"reject": {"type": "icmp", "expr": "port-unreachable"}},
                ]),
            ]
        );
    }

    #[test]
    fn failure_names_the_operation_and_namespace() {
        let err = NftError::Failed {
            op: NftOp::Apply,
            netns: Some(PathBuf::from("/run/netns/x")),
            args: "-j -f -".into(),
            status: std::os::unix::process::ExitStatusExt::from_raw(256),
            stderr: "Error: syntax error".into(),
        };
        assert_eq!(
            err.to_string(),
            "apply nftables ruleset in network namespace /run/netns/x: \
             nft -j -f - exited with exit status: 1: Error: syntax error"
        );
    }

    /// nft's check mode (`-c`) validates against the kernel without committing, so it is safe
    /// in the test process's own namespace; it still needs CAP_NET_ADMIN.
    fn can_run_nft() -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "nft check-mode tests need root under CI"
        );
        eprintln!("SKIPPED: nft check-mode tests need root");
        false
    }

    #[tokio::test]
    async fn nft_accepts_node_ruleset() {
        if !can_run_nft() {
            return;
        }
        check(&node_ruleset(&small_node_rules()), None)
            .await
            .unwrap();
        check(&node_ruleset(&NodeRules::default()), None)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn nft_accepts_vip_ruleset() {
        if !can_run_nft() {
            return;
        }
        let vips = [
            Vip {
                addr: Ipv4Addr::new(10, 0, 0, 100),
                backends: vec![Ipv4Addr::new(10, 0, 0, 2)],
            },
            Vip {
                addr: Ipv4Addr::new(10, 0, 0, 101),
                backends: vec![],
            },
        ];
        check(&vip_ruleset(&vips), None).await.unwrap();
        check(&vip_ruleset(&[]), None).await.unwrap();
    }

    #[tokio::test]
    async fn nft_refusal_carries_stderr() {
        if !can_run_nft() {
            return;
        }
        // A rule in a chain that does not exist.
        let mut batch = Batch::new();
        batch.add(NfListObject::Table(shoal_table()));
        batch.add(NfListObject::Rule(Rule {
            family: NfFamily::IP,
            table: TABLE.into(),
            chain: "no-such-chain".into(),
            expr: vec![Statement::Accept(None)].into(),
            ..Rule::default()
        }));
        let err = check(&batch.to_nftables(), None).await.unwrap_err();
        match &err {
            NftError::Failed { op, stderr, .. } => {
                assert_eq!(*op, NftOp::Check);
                assert!(!stderr.is_empty(), "{err}");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
    }
}
