//! The node's one `ip shoal` nft table, shared by its two owners: the cluster's networking
//! (routing mesh, gateway bridge) and the node-local bridge networks. Each owner sets its own
//! part; the table is their union, replaced in one transaction whenever it changes and
//! deleted once every part is empty, so shoal never leaves rules behind nor touches another
//! table.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use shoal_network::nft::{self, NftError, NodeRules, Protocol};
use tokio::sync::Mutex;

/// The part of the cluster's networking.
pub const CLUSTER: &str = "cluster";
/// The part of the node-local bridge networks.
pub const LOCAL: &str = "local";

/// The node's nft table.
#[derive(Debug)]
pub struct NodeTable {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Parts that have not said what they want yet: until they have, the kernel's table is
    /// left as a previous run left it (a restarting daemon must not drop rules that running
    /// containers use).
    awaited: BTreeSet<&'static str>,
    parts: BTreeMap<&'static str, NodeRules>,
    applied: Option<NodeRules>,
    /// The table may exist in the kernel (unknown at start: a previous run may have left it).
    maybe_present: bool,
    /// Other tables' forward policies were checked.
    checked_forward: bool,
}

impl NodeTable {
    /// A table that is not known to exist nor to be absent, and is left alone until each of
    /// `parts` has been set once.
    pub fn new(parts: &[&'static str]) -> Arc<NodeTable> {
        Arc::new(NodeTable {
            state: Mutex::new(State {
                awaited: parts.iter().copied().collect(),
                parts: BTreeMap::new(),
                applied: None,
                maybe_present: true,
                checked_forward: false,
            }),
        })
    }

    /// Replaces `part`'s rules and brings the kernel's table in line.
    pub async fn set(&self, part: &'static str, rules: NodeRules) -> Result<(), NftError> {
        let mut state = self.state.lock().await;
        state.parts.insert(part, rules);
        state.awaited.remove(part);
        if !state.awaited.is_empty() {
            return Ok(());
        }
        let merged = merge(&state.parts);
        if merged == NodeRules::default() {
            if state.maybe_present {
                nft::delete_table(None).await?;
                state.maybe_present = false;
                state.applied = None;
            }
            return Ok(());
        }
        if state.applied.as_ref() == Some(&merged) {
            return Ok(());
        }
        state.maybe_present = true;
        nft::apply(&nft::node_ruleset(&merged), None).await?;
        state.applied = Some(merged);
        if !state.checked_forward {
            state.checked_forward = true;
            warn_forward_drops().await;
        }
        Ok(())
    }

    /// Empties `part`.
    pub async fn clear(&self, part: &'static str) -> Result<(), NftError> {
        self.set(part, NodeRules::default()).await
    }

    /// The part other than `except` that publishes `port`, if one does.
    pub async fn port_owner(
        &self,
        port: u16,
        protocol: Protocol,
        except: &str,
    ) -> Option<&'static str> {
        let state = self.state.lock().await;
        state
            .parts
            .iter()
            .filter(|(name, _)| **name != except)
            .find(|(_, rules)| {
                rules
                    .ports
                    .iter()
                    .any(|p| p.port == port && p.protocol == protocol)
            })
            .map(|(name, _)| *name)
    }
}

/// Says so when another table drops forwarded packets by policy: shoal does not touch other
/// tables, so the operator has to let its bridges through.
async fn warn_forward_drops() {
    match nft::foreign_forward_drops(None).await {
        Ok(chains) if !chains.is_empty() => tracing::warn!(
            chains = %chains.join(", "),
            "another nftables/iptables table drops forwarded packets by policy (Docker sets iptables' FORWARD to DROP): \
             traffic of shoal's bridges (shoal0, sbl-*, sbr*, shoal_gwbridge) is dropped there unless it is accepted, \
             e.g. iptables -I FORWARD -i shoal0 -j ACCEPT; iptables -I FORWARD -o shoal0 -j ACCEPT"
        ),
        Ok(_) => {}
        Err(err) => tracing::debug!(%err, "list the nftables chains"),
    }
}

/// The union of the parts, in part order. A port two parts publish goes to the first (the
/// cluster's): the local side refuses such ports when it can, this settles the rest.
fn merge(parts: &BTreeMap<&'static str, NodeRules>) -> NodeRules {
    let mut merged = NodeRules::default();
    let mut ports = HashSet::new();
    for rules in parts.values() {
        for port in &rules.ports {
            if ports.insert((port.port, port.protocol == Protocol::Udp)) {
                merged.ports.push(port.clone());
            } else {
                tracing::warn!(
                    port = port.port,
                    "published port taken twice on this node; the first owner keeps it"
                );
            }
        }
        merged
            .outbound_nat
            .extend(rules.outbound_nat.iter().cloned());
        merged
            .masquerade_dnat_on
            .extend(rules.masquerade_dnat_on.iter().cloned());
        merged.hairpin.extend(rules.hairpin.iter().cloned());
        merged.isolate.extend(rules.isolate.iter().cloned());
    }
    merged
        .ports
        .sort_by_key(|p| (p.port, p.protocol == Protocol::Udp));
    merged
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use shoal_network::nft::PortRule;

    use super::*;

    fn port(port: u16, backend: u8) -> PortRule {
        PortRule {
            protocol: Protocol::Tcp,
            port,
            target_port: 80,
            backends: vec![Ipv4Addr::new(10, 0, 0, backend)],
        }
    }

    #[test]
    fn merge_keeps_the_first_owner_of_a_port_and_sorts() {
        let mut parts = BTreeMap::new();
        parts.insert(
            LOCAL,
            NodeRules {
                ports: vec![port(9000, 1), port(8080, 2)],
                outbound_nat: vec![("172.17.0.0/16".parse().unwrap(), "shoal0".into())],
                ..NodeRules::default()
            },
        );
        parts.insert(
            CLUSTER,
            NodeRules {
                ports: vec![port(8080, 3)],
                ..NodeRules::default()
            },
        );
        let merged = merge(&parts);
        assert_eq!(merged.ports, vec![port(8080, 3), port(9000, 1)]);
        assert_eq!(merged.outbound_nat.len(), 1);
    }

    #[test]
    fn empty_parts_merge_to_nothing() {
        let mut parts = BTreeMap::new();
        parts.insert(CLUSTER, NodeRules::default());
        parts.insert(LOCAL, NodeRules::default());
        assert_eq!(merge(&parts), NodeRules::default());
    }
}
