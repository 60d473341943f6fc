//! The cluster store: every object the managers replicate, in memory, changed only by
//! applying Raft entries ([`StoreBatch`]es) in log order.
//!
//! The state machine is deterministic: an entry's outcome depends only on the state and the
//! entry. Timestamps are set by the writer before proposing; applying sets only `version` (the
//! entry's log index). A batch applies whole or not at all, and a refused batch is an outcome
//! of the entry (every manager refuses it alike), not a Raft failure.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use prost::Message;
use shoal_proto::cluster::v1::{
    store_object::Object, Cluster, Network, Node, Service, StoreAction, StoreActionKind,
    StoreBatch, StoreEvent, StoreObject, StoreSnapshot, Task,
};
use tokio::sync::{broadcast, watch};

/// Why a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The writer read an older version than the stored one (Swarm's wording).
    #[error("update out of sequence: {kind} {id} is at version {stored}, the update read version {read}")]
    OutOfSequence {
        /// Object kind ("service", …).
        kind: &'static str,
        /// Object id.
        id: String,
        /// Version in the store.
        stored: u64,
        /// Version the writer read.
        read: u64,
    },
    /// CREATE of an id that exists.
    #[error("{kind} {id} already exists")]
    Exists {
        /// Object kind.
        kind: &'static str,
        /// Object id.
        id: String,
    },
    /// UPDATE or REMOVE of an id that does not exist.
    #[error("{kind} {id} not found")]
    NotFound {
        /// Object kind.
        kind: &'static str,
        /// Object id.
        id: String,
    },
    /// An action without an object, or an object without an id.
    #[error("malformed store action: {0}")]
    Malformed(&'static str),
    /// A snapshot that does not decode.
    #[error("decode store snapshot")]
    Decode(#[from] prost::DecodeError),
}

/// Every replicated object, by id.
#[derive(Debug, Default, Clone)]
pub struct State {
    /// The one cluster object (absent only before `swarm init` commits).
    pub cluster: Option<Cluster>,
    /// Nodes by id.
    pub nodes: BTreeMap<String, Node>,
    /// Services by id.
    pub services: BTreeMap<String, Service>,
    /// Tasks by id.
    pub tasks: BTreeMap<String, Task>,
    /// Networks by id.
    pub networks: BTreeMap<String, Network>,
}

/// Kind name and id of an object, for errors.
fn describe(object: &Object) -> (&'static str, String) {
    let (kind, meta) = match object {
        Object::Cluster(o) => ("cluster", &o.meta),
        Object::Node(o) => ("node", &o.meta),
        Object::Service(o) => ("service", &o.meta),
        Object::Task(o) => ("task", &o.meta),
        Object::Network(o) => ("network", &o.meta),
    };
    (
        kind,
        meta.as_ref().map(|m| m.id.clone()).unwrap_or_default(),
    )
}

fn read_version(object: &Object) -> u64 {
    let meta = match object {
        Object::Cluster(o) => &o.meta,
        Object::Node(o) => &o.meta,
        Object::Service(o) => &o.meta,
        Object::Task(o) => &o.meta,
        Object::Network(o) => &o.meta,
    };
    meta.as_ref().map_or(0, |m| m.version)
}

fn set_version(object: &mut Object, index: u64) {
    let meta = match object {
        Object::Cluster(o) => &mut o.meta,
        Object::Node(o) => &mut o.meta,
        Object::Service(o) => &mut o.meta,
        Object::Task(o) => &mut o.meta,
        Object::Network(o) => &mut o.meta,
    };
    meta.get_or_insert_with(Default::default).version = index;
}

impl State {
    /// The stored version of the object with `object`'s kind and id, if it exists.
    fn stored_version(&self, object: &Object, id: &str) -> Option<u64> {
        let meta = match object {
            Object::Cluster(_) => self.cluster.as_ref().map(|c| &c.meta),
            Object::Node(_) => self.nodes.get(id).map(|o| &o.meta),
            Object::Service(_) => self.services.get(id).map(|o| &o.meta),
            Object::Task(_) => self.tasks.get(id).map(|o| &o.meta),
            Object::Network(_) => self.networks.get(id).map(|o| &o.meta),
        }?;
        Some(meta.as_ref().map_or(0, |m| m.version))
    }

    /// Checks one action against the state as it stands (before the batch).
    fn check(&self, action: &StoreAction) -> Result<(), StoreError> {
        let object = action
            .object
            .as_ref()
            .and_then(|o| o.object.as_ref())
            .ok_or(StoreError::Malformed("action without an object"))?;
        let (kind, id) = describe(object);
        if id.is_empty() {
            return Err(StoreError::Malformed("object without an id"));
        }
        let stored = self.stored_version(object, &id);
        match (action.kind(), stored) {
            (StoreActionKind::Create, Some(_)) => Err(StoreError::Exists { kind, id }),
            (StoreActionKind::Create, None) => Ok(()),
            (_, None) => Err(StoreError::NotFound { kind, id }),
            (_, Some(stored)) => {
                let read = read_version(object);
                if read == stored {
                    Ok(())
                } else {
                    Err(StoreError::OutOfSequence {
                        kind,
                        id,
                        stored,
                        read,
                    })
                }
            }
        }
    }

    /// Applies `batch` as the entry at log `index`: all of it, or nothing when any action
    /// fails its check. Returns the events to publish.
    pub fn apply(&mut self, batch: &StoreBatch, index: u64) -> Result<Vec<StoreEvent>, StoreError> {
        // Check against the state before the batch, and refuse two actions on one object:
        // the second would be checked against a version the writer cannot have read.
        let mut seen = std::collections::HashSet::new();
        for action in &batch.actions {
            self.check(action)?;
            if let Some(object) = action.object.as_ref().and_then(|o| o.object.as_ref()) {
                let (kind, id) = describe(object);
                if !seen.insert((kind, id)) {
                    return Err(StoreError::Malformed(
                        "two actions on one object in a batch",
                    ));
                }
            }
        }
        let mut events = Vec::with_capacity(batch.actions.len());
        for action in &batch.actions {
            let Some(mut object) = action.object.as_ref().and_then(|o| o.object.clone()) else {
                continue;
            };
            let kind = action.kind();
            if kind == StoreActionKind::Remove {
                let removed = self.remove(&object);
                if let Some(removed) = removed {
                    object = removed;
                }
            } else {
                set_version(&mut object, index);
                self.put(object.clone());
            }
            events.push(StoreEvent {
                kind: kind as i32,
                object: Some(StoreObject {
                    object: Some(object),
                }),
                index,
            });
        }
        Ok(events)
    }

    fn put(&mut self, object: Object) {
        match object {
            Object::Cluster(o) => self.cluster = Some(o),
            Object::Node(o) => {
                let id = o.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
                self.nodes.insert(id, o);
            }
            Object::Service(o) => {
                let id = o.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
                self.services.insert(id, o);
            }
            Object::Task(o) => {
                let id = o.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
                self.tasks.insert(id, o);
            }
            Object::Network(o) => {
                let id = o.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
                self.networks.insert(id, o);
            }
        }
    }

    fn remove(&mut self, object: &Object) -> Option<Object> {
        let (_, id) = describe(object);
        match object {
            Object::Cluster(_) => self.cluster.take().map(Object::Cluster),
            Object::Node(_) => self.nodes.remove(&id).map(Object::Node),
            Object::Service(_) => self.services.remove(&id).map(Object::Service),
            Object::Task(_) => self.tasks.remove(&id).map(Object::Task),
            Object::Network(_) => self.networks.remove(&id).map(Object::Network),
        }
    }

    /// Every object, for a snapshot.
    pub fn to_snapshot(&self) -> StoreSnapshot {
        let wrap = |object| StoreObject {
            object: Some(object),
        };
        let mut objects = Vec::new();
        objects.extend(self.cluster.iter().cloned().map(Object::Cluster).map(wrap));
        objects.extend(self.nodes.values().cloned().map(Object::Node).map(wrap));
        objects.extend(
            self.services
                .values()
                .cloned()
                .map(Object::Service)
                .map(wrap),
        );
        objects.extend(self.tasks.values().cloned().map(Object::Task).map(wrap));
        objects.extend(
            self.networks
                .values()
                .cloned()
                .map(Object::Network)
                .map(wrap),
        );
        StoreSnapshot { objects }
    }

    /// The state a snapshot holds.
    pub fn from_snapshot(snapshot: StoreSnapshot) -> State {
        let mut state = State::default();
        for object in snapshot.objects.into_iter().filter_map(|o| o.object) {
            state.put(object);
        }
        state
    }
}

/// What subscribers of the store receive.
#[derive(Debug, Clone)]
pub enum Change {
    /// The objects changed by one applied entry.
    Events(Arc<Vec<StoreEvent>>),
    /// The whole state was replaced (a snapshot was installed): re-read everything.
    Reset,
}

/// The store shared by the Raft state machine (the only writer) and its readers.
#[derive(Debug)]
pub struct Store {
    state: RwLock<State>,
    changes: broadcast::Sender<Change>,
    applied: watch::Sender<u64>,
}

/// Capacity of the change channel: a subscriber this far behind gets `Lagged` and must
/// re-read the state.
///
/// The channel keeps its last `CHANGE_CAPACITY` messages alive until overwritten, and one
/// message can hold hundreds of tasks: keep it small.
const CHANGE_CAPACITY: usize = 256;

impl Store {
    /// An empty store.
    pub fn new() -> Arc<Store> {
        Arc::new(Store {
            state: RwLock::new(State::default()),
            changes: broadcast::channel(CHANGE_CAPACITY).0,
            applied: watch::channel(0).0,
        })
    }

    /// Applies the entry at `index` (see [`State::apply`]) and publishes its changes.
    pub fn apply(&self, index: u64, batch: &StoreBatch) -> Result<(), StoreError> {
        let events = {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            state.apply(batch, index)
        };
        self.applied.send_replace(index);
        let events = events?;
        if !events.is_empty() {
            let _ = self.changes.send(Change::Events(Arc::new(events)));
        }
        Ok(())
    }

    /// Records that the entry at `index` was applied without touching objects (a blank or
    /// membership entry), so that waiters on the applied index progress.
    pub fn mark_applied(&self, index: u64) {
        self.applied.send_replace(index);
    }

    /// Reads the state under the lock.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The state encoded for a Raft snapshot.
    pub fn snapshot_bytes(&self) -> Vec<u8> {
        self.read().to_snapshot().encode_to_vec()
    }

    /// Replaces the state with a snapshot's, as of log index `index`.
    pub fn restore(&self, bytes: &[u8], index: u64) -> Result<(), StoreError> {
        let snapshot = StoreSnapshot::decode(bytes)?;
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = State::from_snapshot(snapshot);
        self.applied.send_replace(index);
        let _ = self.changes.send(Change::Reset);
        Ok(())
    }

    /// Changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// The last applied log index, and its changes.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }
}
