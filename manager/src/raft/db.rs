//! The redb file `<dir>/raft.redb` that holds a manager's Raft state: the log, the vote, the
//! committed and purged log ids, and the last snapshot. It owns the table layout and the way
//! transactions run; what the tables mean is up to `log_store.rs` and `state_machine.rs`.
//!
//! Every write is one redb transaction committed with redb's default durability (fsync before
//! `commit` returns): Raft requires the vote and appended entries to be on disk before it
//! answers a peer.

use std::path::Path;
use std::sync::Arc;

use openraft::AnyError;
use redb::{Database, TableDefinition};

/// Log entries by index, each the JSON of an openraft entry.
pub(crate) const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
/// Small records by name: [`VOTE`], [`COMMITTED`], [`LAST_PURGED`] (JSON).
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The last snapshot: [`SNAPSHOT_META`] (JSON) and [`SNAPSHOT_DATA`] (the store's bytes).
pub(crate) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

pub(crate) const VOTE: &str = "vote";
pub(crate) const COMMITTED: &str = "committed";
pub(crate) const LAST_PURGED: &str = "last_purged";
pub(crate) const SNAPSHOT_META: &str = "meta";
pub(crate) const SNAPSHOT_DATA: &str = "data";

/// Name of the database file inside the Raft directory.
pub(crate) const FILE_NAME: &str = "raft.redb";

/// Opens (or creates) the database in `dir` and makes sure every table exists, so that read
/// transactions never meet a missing table.
pub(crate) fn open(dir: &Path) -> Result<Arc<Database>, redb::Error> {
    let db = Database::create(dir.join(FILE_NAME))?;
    let txn = db.begin_write()?;
    txn.open_table(LOGS)?;
    txn.open_table(META)?;
    txn.open_table(SNAPSHOT)?;
    txn.commit()?;
    Ok(Arc::new(db))
}

/// Runs `f` on a blocking thread: redb reads and fsyncs block, and must not stall the
/// runtime's workers that carry heartbeats.
pub(crate) async fn run<T, F>(db: &Arc<Database>, f: F) -> Result<T, AnyError>
where
    T: Send + 'static,
    F: FnOnce(&Database) -> Result<T, redb::Error> + Send + 'static,
{
    let db = Arc::clone(db);
    match tokio::task::spawn_blocking(move || f(&db)).await {
        Ok(result) => result.map_err(|e| AnyError::new(&e)),
        Err(join) => Err(AnyError::new(&join)),
    }
}

/// Reads one record of a `&str`-keyed table.
pub(crate) fn get(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
) -> Result<Option<Vec<u8>>, redb::Error> {
    use redb::ReadableDatabase;
    let txn = db.begin_read()?;
    let table = txn.open_table(table)?;
    Ok(table.get(key)?.map(|v| v.value().to_vec()))
}

/// Writes one record of a `&str`-keyed table in its own durable transaction.
pub(crate) fn put(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
    value: &[u8],
) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(table)?.insert(key, value)?;
    txn.commit()?;
    Ok(())
}
