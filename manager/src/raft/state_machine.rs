//! The Raft state machine ([`RaftStateMachine`]) over the in-memory [`Store`], and its
//! snapshots. Applying an entry is the store's job; this file keeps what openraft needs
//! around it (last applied log id, last membership) and persists the last snapshot in the
//! `snapshot` table of the Raft database.
//!
//! The state machine itself is not persisted: on start it is restored from the last snapshot
//! and openraft re-applies the log after it (up to the saved committed index).

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use redb::Database;

use super::db;
use super::types::{
    Entry, LogId, Response, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use crate::store::{Store, StoreError};

/// The state machine of one manager.
pub struct StateMachine {
    store: Arc<Store>,
    db: Arc<Database>,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    /// Counts snapshots built by this process, to tell apart two snapshots of one log id.
    snapshots_built: u64,
}

impl StateMachine {
    /// The state machine over `store`, restored from the snapshot saved in `db` if any.
    pub(crate) async fn open(
        db: Arc<Database>,
        store: Arc<Store>,
    ) -> Result<StateMachine, StorageError> {
        let mut sm = StateMachine {
            store,
            db,
            last_applied: None,
            last_membership: StoredMembership::default(),
            snapshots_built: 0,
        };
        if let Some((meta, data)) = load_snapshot(&sm.db).await? {
            tracing::info!(snapshot = %meta.snapshot_id, "restoring the store from the saved snapshot");
            sm.restore(&meta, &data)
                .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        }
        Ok(sm)
    }

    /// Replaces the store's state with a snapshot's.
    fn restore(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StoreError> {
        let index = meta.last_log_id.map_or(0, |l| l.index);
        self.store.restore(data, index)?;
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        Ok(())
    }
}

async fn load_snapshot(
    db: &Arc<Database>,
) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
    let stored = db::run(db, |db| {
        let meta = db::get(db, db::SNAPSHOT, db::SNAPSHOT_META)?;
        let data = db::get(db, db::SNAPSHOT, db::SNAPSHOT_DATA)?;
        Ok(meta.zip(data))
    })
    .await
    .map_err(|e| StorageIOError::read_snapshot(None, e))?;
    let Some((meta, data)) = stored else {
        return Ok(None);
    };
    let meta: SnapshotMeta =
        serde_json::from_slice(&meta).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
    Ok(Some((meta, data)))
}

async fn save_snapshot(
    db: &Arc<Database>,
    meta: &SnapshotMeta,
    data: Vec<u8>,
) -> Result<(), StorageError> {
    let signature = meta.signature();
    let meta = serde_json::to_vec(meta)
        .map_err(|e| StorageIOError::write_snapshot(Some(signature.clone()), &e))?;
    // Meta and data in one transaction: a crash never pairs one snapshot's meta with
    // another's data.
    db::run(db, move |db| {
        let txn = db.begin_write()?;
        {
            let mut table = txn.open_table(db::SNAPSHOT)?;
            table.insert(db::SNAPSHOT_META, meta.as_slice())?;
            table.insert(db::SNAPSHOT_DATA, data.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    })
    .await
    .map_err(|e| StorageIOError::write_snapshot(Some(signature), e).into())
}

/// Builds a snapshot of the state captured when openraft asked for the builder.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    meta: SnapshotMeta,
    data: Vec<u8>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        // Saved before it is reported: openraft purges the log up to a built snapshot, and
        // a restart must find the snapshot that replaced those entries.
        save_snapshot(&self.db, &self.meta, self.data.clone()).await?;
        tracing::info!(snapshot = %self.meta.snapshot_id, bytes = self.data.len(), "raft snapshot built");
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(std::mem::take(&mut self.data))),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries = entries.into_iter();
        let mut replies = Vec::with_capacity(entries.size_hint().0);
        for entry in entries {
            let index = entry.log_id.index;
            let mut reply = Response::default();
            match entry.payload {
                EntryPayload::Normal(request) => {
                    if let Err(err) = self.store.apply(index, &request.batch) {
                        tracing::debug!(index, %err, "store refused a batch");
                        reply.error = Some(err.to_string());
                    }
                }
                EntryPayload::Blank => self.store.mark_applied(index),
                EntryPayload::Membership(membership) => {
                    self.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    self.store.mark_applied(index);
                }
            }
            self.last_applied = Some(entry.log_id);
            replies.push(reply);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        // Capture the state now: openraft builds the snapshot on another task while this
        // state machine goes on applying entries.
        self.snapshots_built += 1;
        let snapshot_id = match self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, self.snapshots_built),
            None => format!("--{}", self.snapshots_built),
        };
        SnapshotBuilder {
            db: Arc::clone(&self.db),
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.last_membership.clone(),
                snapshot_id,
            },
            data: self.store.snapshot_bytes(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "installing a raft snapshot");
        // Restore first: a snapshot that does not decode must not replace the saved one.
        self.restore(meta, &data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        save_snapshot(&self.db, meta, data).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(load_snapshot(&self.db).await?.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
