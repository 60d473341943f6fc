//! Small vocabulary shared by everything that reads or writes the store: timestamps, store
//! actions, object lookup by id, prefix or name, task-state order and placement constraints.

use std::time::{SystemTime, UNIX_EPOCH};

use shoal_proto::cluster::v1::{
    store_object::Object, Meta, Node, NodeAvailability, NodeRole, NodeState, StoreAction,
    StoreActionKind, StoreObject, TaskState,
};

/// Unix time in nanoseconds.
pub fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Metadata for a new object.
pub fn new_meta(id: String) -> Option<Meta> {
    let now = now_nanos();
    Some(Meta {
        id,
        version: 0,
        created_at: now,
        updated_at: now,
    })
}

/// Marks an object's metadata as updated now, keeping the version it was read at.
pub fn touch(meta: &mut Option<Meta>) {
    if let Some(meta) = meta {
        meta.updated_at = now_nanos();
    }
}

/// Records the version an object was written at.
pub fn set_version(meta: &mut Option<Meta>, version: u64) {
    if let Some(meta) = meta {
        meta.version = version;
    }
}

/// The id in an object's metadata.
pub fn id_of(meta: &Option<Meta>) -> &str {
    meta.as_ref().map_or("", |m| m.id.as_str())
}

/// The version in an object's metadata.
pub fn version_of(meta: &Option<Meta>) -> u64 {
    meta.as_ref().map_or(0, |m| m.version)
}

fn action(kind: StoreActionKind, object: impl Into<Object>) -> StoreAction {
    StoreAction {
        kind: kind as i32,
        object: Some(StoreObject {
            object: Some(object.into()),
        }),
    }
}

/// Creates `object`; fails if its id exists.
pub fn create(object: impl Into<Object>) -> StoreAction {
    action(StoreActionKind::Create, object)
}

/// Replaces `object`; fails unless its `meta.version` is the stored one.
pub fn update(object: impl Into<Object>) -> StoreAction {
    action(StoreActionKind::Update, object)
}

/// Removes `object`; fails unless its `meta.version` is the stored one.
pub fn remove(object: impl Into<Object>) -> StoreAction {
    action(StoreActionKind::Remove, object)
}

/// Why a reference did not name exactly one object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// Nothing matches.
    #[error("{kind} {reference} not found")]
    NotFound {
        /// "node", "service".
        kind: &'static str,
        /// What the user gave.
        reference: String,
    },
    /// A prefix or name matches several objects.
    #[error("{kind} {reference} is ambiguous ({count} matches)")]
    Ambiguous {
        /// "node", "service".
        kind: &'static str,
        /// What the user gave.
        reference: String,
        /// How many matched.
        count: usize,
    },
}

/// Finds the one object `reference` names, as Docker resolves them: an exact id, then an
/// exact name, then a unique id prefix.
pub fn lookup<'a, T>(
    kind: &'static str,
    reference: &str,
    objects: impl Iterator<Item = (&'a str, &'a str, &'a T)> + Clone,
) -> Result<&'a T, LookupError>
where
    T: 'a,
{
    if reference.is_empty() {
        return Err(LookupError::NotFound {
            kind,
            reference: reference.to_string(),
        });
    }
    if let Some((_, _, o)) = objects.clone().find(|(id, _, _)| *id == reference) {
        return Ok(o);
    }
    let by_name: Vec<_> = objects
        .clone()
        .filter(|(_, name, _)| *name == reference)
        .collect();
    let matches = if by_name.is_empty() {
        objects
            .filter(|(id, _, _)| id.starts_with(reference))
            .collect()
    } else {
        by_name
    };
    match matches.as_slice() {
        [(_, _, o)] => Ok(o),
        [] => Err(LookupError::NotFound {
            kind,
            reference: reference.to_string(),
        }),
        many => Err(LookupError::Ambiguous {
            kind,
            reference: reference.to_string(),
            count: many.len(),
        }),
    }
}

/// Whether a task in `state` has stopped for good.
pub fn is_terminal(state: TaskState) -> bool {
    state as i32 > TaskState::Running as i32
}

/// Whether a node may receive new tasks.
pub fn node_schedulable(node: &Node) -> bool {
    let ready = node.status.as_ref().map(|s| s.state()) == Some(NodeState::Ready);
    let active = node.spec.as_ref().map(|s| s.availability()) == Some(NodeAvailability::Active)
        || node.spec.is_none();
    ready && active
}

/// Whether a node's tasks should keep running there.
pub fn node_keeps_tasks(node: &Node) -> bool {
    let down = node.status.as_ref().map(|s| s.state()) == Some(NodeState::Down);
    let drained = node.spec.as_ref().map(|s| s.availability()) == Some(NodeAvailability::Drain);
    !down && !drained
}

/// One placement constraint: `node.hostname == web1`, `node.labels.zone != b`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    key: String,
    equal: bool,
    value: String,
}

/// A constraint Swarm would not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    /// No `==` or `!=`.
    #[error("invalid constraint {0:?}: expected KEY==VALUE or KEY!=VALUE")]
    Syntax(String),
    /// A key shoal does not know.
    #[error("invalid constraint {0:?}: unknown key (use node.id, node.hostname, node.role, node.platform.os, node.platform.arch or node.labels.NAME)")]
    Key(String),
    /// node.role with another value than manager or worker.
    #[error("invalid constraint {0:?}: node.role is manager or worker")]
    Role(String),
}

impl std::str::FromStr for Constraint {
    type Err = ConstraintError;

    fn from_str(s: &str) -> Result<Constraint, ConstraintError> {
        let (key, equal, value) = if let Some((k, v)) = s.split_once("==") {
            (k, true, v)
        } else if let Some((k, v)) = s.split_once("!=") {
            (k, false, v)
        } else {
            return Err(ConstraintError::Syntax(s.to_string()));
        };
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() || value.is_empty() {
            return Err(ConstraintError::Syntax(s.to_string()));
        }
        let known = matches!(
            key,
            "node.id" | "node.hostname" | "node.role" | "node.platform.os" | "node.platform.arch"
        ) || key
            .strip_prefix("node.labels.")
            .is_some_and(|l| !l.is_empty());
        if !known {
            return Err(ConstraintError::Key(s.to_string()));
        }
        if key == "node.role" && value != "manager" && value != "worker" {
            return Err(ConstraintError::Role(s.to_string()));
        }
        Ok(Constraint {
            key: key.to_string(),
            equal,
            value: value.to_string(),
        })
    }
}

impl Constraint {
    /// Whether `node` satisfies the constraint.
    pub fn matches(&self, node: &Node) -> bool {
        let desc = node.description.clone().unwrap_or_default();
        let actual: Option<String> = match self.key.as_str() {
            "node.id" => Some(id_of(&node.meta).to_string()),
            "node.hostname" => Some(desc.hostname),
            "node.role" => Some(
                match node.role() {
                    NodeRole::Manager => "manager",
                    NodeRole::Worker => "worker",
                }
                .to_string(),
            ),
            "node.platform.os" => Some(desc.os),
            "node.platform.arch" => Some(desc.arch),
            key => key
                .strip_prefix("node.labels.")
                .and_then(|l| node.spec.as_ref().and_then(|s| s.labels.get(l)).cloned()),
        };
        // Swarm: a missing label never equals, and always differs.
        match actual {
            Some(actual) => (actual == self.value) == self.equal,
            None => !self.equal,
        }
    }
}

/// Parses every constraint of a spec.
pub fn parse_constraints(exprs: &[String]) -> Result<Vec<Constraint>, ConstraintError> {
    exprs.iter().map(|e| e.parse()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::cluster::v1::{NodeDescription, NodeSpec};

    fn node(hostname: &str, labels: &[(&str, &str)]) -> Node {
        Node {
            meta: new_meta("abc".into()),
            spec: Some(NodeSpec {
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            }),
            description: Some(NodeDescription {
                hostname: hostname.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn constraints_match_like_swarm() {
        let n = node("web1", &[("zone", "a")]);
        let c = |s: &str| s.parse::<Constraint>().unwrap().matches(&n);
        assert!(c("node.hostname==web1"));
        assert!(!c("node.hostname!=web1"));
        assert!(c("node.labels.zone == a"));
        assert!(!c("node.labels.disk==ssd"));
        assert!(c("node.labels.disk!=ssd"));
        assert!(c("node.role==worker"));
        assert!(c("node.id==abc"));
    }

    #[test]
    fn bad_constraints_are_named() {
        for bad in [
            "node.hostname",
            "==x",
            "node.color==red",
            "node.role==boss",
            "node.labels.==x",
        ] {
            let err = bad.parse::<Constraint>().unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn lookup_prefers_id_then_name_then_prefix() {
        let objs = [("abc1", "web", 1), ("abd2", "db", 2), ("web", "other", 3)];
        let it = || objs.iter().map(|(i, n, v)| (*i, *n, v));
        assert_eq!(*lookup("service", "web", it()).unwrap(), 3);
        assert_eq!(*lookup("service", "db", it()).unwrap(), 2);
        assert_eq!(*lookup("service", "abc", it()).unwrap(), 1);
        assert!(matches!(
            lookup("service", "ab", it()),
            Err(LookupError::Ambiguous { count: 2, .. })
        ));
        assert!(matches!(
            lookup("service", "zz", it()),
            Err(LookupError::NotFound { .. })
        ));
    }
}
