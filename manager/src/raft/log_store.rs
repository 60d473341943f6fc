//! The Raft log on redb ([`RaftLogStorage`]): entries, the vote, the committed log id and the
//! last purged log id. Entries are kept as JSON, keyed by index. The state machine and the
//! snapshot are not here (`state_machine.rs`), though they share the database file.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::db;
use super::types::{Entry, LogId, StorageError, TypeConfig};

/// The log of one manager. Clones share the database (openraft reads the log through a clone
/// while it appends through the original).
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    /// The log in `db` (opened by [`db::open`]).
    pub(crate) fn new(db: Arc<Database>) -> LogStore {
        LogStore { db }
    }

    async fn read_meta<T: DeserializeOwned + Send + 'static>(
        &self,
        key: &'static str,
    ) -> Result<Option<T>, openraft::AnyError> {
        let bytes = db::run(&self.db, move |db| db::get(db, db::META, key)).await?;
        bytes
            .map(|b| serde_json::from_slice(&b))
            .transpose()
            .map_err(|e| openraft::AnyError::new(&e))
    }

    async fn write_meta<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
    ) -> Result<(), openraft::AnyError> {
        let bytes = serde_json::to_vec(value).map_err(|e| openraft::AnyError::new(&e))?;
        db::run(&self.db, move |db| db::put(db, db::META, key, &bytes)).await
    }
}

fn decode_entry(bytes: &[u8]) -> Result<Entry, serde_json::Error> {
    serde_json::from_slice(bytes)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        let raw = db::run(&self.db, move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(db::LOGS)?;
            let mut out = Vec::new();
            for item in table.range(bounds)? {
                let (_, value) = item?;
                out.push(value.value().to_vec());
            }
            Ok(out)
        })
        .await
        .map_err(StorageIOError::read_logs)?;
        raw.iter()
            .map(|b| decode_entry(b))
            .collect::<Result<_, _>>()
            .map_err(|e| StorageIOError::read_logs(&e).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last = db::run(&self.db, |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(db::LOGS)?;
            let last = table.last()?.map(|(_, v)| v.value().to_vec());
            Ok(last)
        })
        .await
        .map_err(StorageIOError::read_logs)?;
        let last_log_id = last
            .map(|b| decode_entry(&b))
            .transpose()
            .map_err(|e| StorageIOError::read_logs(&e))?
            .map(|e| e.log_id);
        let last_purged_log_id: Option<LogId> = self
            .read_meta(db::LAST_PURGED)
            .await
            .map_err(StorageIOError::read_logs)?;
        Ok(LogState {
            last_purged_log_id,
            // With every entry purged, the last log id is the last purged one.
            last_log_id: last_log_id.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        // Durable before returning: a vote forgotten in a crash lets this node vote twice in
        // one term.
        self.write_meta(db::VOTE, vote)
            .await
            .map_err(|e| StorageIOError::write_vote(e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        self.read_meta(db::VOTE)
            .await
            .map_err(|e| StorageIOError::read_vote(e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Kept so that a restarted manager re-applies up to here at once: the state machine
        // is in memory and is rebuilt from the snapshot and the log.
        self.write_meta(db::COMMITTED, &committed)
            .await
            .map_err(|e| StorageIOError::write(e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed: Option<Option<LogId>> = self
            .read_meta(db::COMMITTED)
            .await
            .map_err(StorageIOError::read)?;
        Ok(committed.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded = entries
            .into_iter()
            .map(|e| serde_json::to_vec(&e).map(|bytes| (e.log_id.index, bytes)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StorageIOError::write_logs(&e))?;
        db::run(&self.db, move |db| {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(db::LOGS)?;
                for (index, bytes) in &encoded {
                    table.insert(index, bytes.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(StorageIOError::write_logs)?;
        // The transaction is committed (fsync'd): the entries are durable.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "truncate raft log from here on");
        db::run(&self.db, move |db| {
            let txn = db.begin_write()?;
            txn.open_table(db::LOGS)?
                .retain_in(log_id.index.., |_, _| false)?;
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_logs(e).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "purge raft log up to here");
        let purged = serde_json::to_vec(&log_id).map_err(|e| StorageIOError::write_logs(&e))?;
        // One transaction, so that a crash never leaves entries purged without the purge
        // point recorded.
        db::run(&self.db, move |db| {
            let txn = db.begin_write()?;
            txn.open_table(db::META)?
                .insert(db::LAST_PURGED, purged.as_slice())?;
            txn.open_table(db::LOGS)?
                .retain_in(..=log_id.index, |_, _| false)?;
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_logs(e).into())
    }
}
