//! The Raft log and vote on disk, in a redb database: `raft/log.redb` in the state directory.
//!
//! redb commits are durable (fsync) by default, so an entry acknowledged through `append`'s
//! callback survives a crash, and so does a vote once `save_vote` returns.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, ReadableTable, TableDefinition};

use super::typ::{Entry, NodeId, TypeConfig};

/// Log entries by index, JSON-encoded.
const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
/// Vote, committed and last purged log id, JSON-encoded, by name.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// The log store; cheap to clone (readers share the database).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

type StorageResult<T> = Result<T, StorageError<NodeId>>;

fn read_err(err: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(&err).into()
}

fn write_err(err: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(&err).into()
}

impl LogStore {
    /// Opens (or creates) the log database at `path`.
    pub fn open(path: &Path) -> Result<Self, redb::DatabaseError> {
        let db = Database::create(path)?;
        Ok(LogStore { db: Arc::new(db) })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> StorageResult<Option<T>> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = match txn.open_table(META) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(err) => return Err(read_err(err)),
        };
        match table.get(key).map_err(read_err)? {
            Some(value) => serde_json::from_slice(value.value())
                .map(Some)
                .map_err(read_err),
            None => Ok(None),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, key: &str, value: &T) -> StorageResult<()> {
        self.put_meta_with(key, value, redb::Durability::Immediate)
    }

    fn put_meta_with<T: serde::Serialize>(
        &self,
        key: &str,
        value: &T,
        durability: redb::Durability,
    ) -> StorageResult<()> {
        let bytes = serde_json::to_vec(value).map_err(write_err)?;
        let mut txn = self.db.begin_write().map_err(write_err)?;
        txn.set_durability(durability);
        {
            let mut table = txn.open_table(META).map_err(write_err)?;
            table.insert(key, bytes.as_slice()).map_err(write_err)?;
        }
        txn.commit().map_err(write_err)
    }

    fn last_entry_id(&self) -> StorageResult<Option<LogId<NodeId>>> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = match txn.open_table(LOGS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(err) => return Err(read_err(err)),
        };
        let last = table.last().map_err(read_err)?;
        let Some((_, value)) = last else {
            return Ok(None);
        };
        let entry: Entry = serde_json::from_slice(value.value()).map_err(read_err)?;
        Ok(Some(entry.log_id))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry>> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = match txn.open_table(LOGS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(err) => return Err(read_err(err)),
        };
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i + 1,
            Bound::Unbounded => 0,
        };
        let mut entries = Vec::new();
        for item in table.range(start..).map_err(read_err)? {
            let (index, value) = item.map_err(read_err)?;
            if !range.contains(&index.value()) {
                break;
            }
            entries.push(serde_json::from_slice(value.value()).map_err(read_err)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.get_meta(LAST_PURGED)?;
        let last_log_id = self.last_entry_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.put_meta(VOTE, vote)
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.get_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // The committed index only saves replaying on restart; a stale one is safe (Raft learns
        // the real one from the leader), so it rides along with the next durable commit instead
        // of costing an fsync of its own on every commit.
        self.put_meta_with(COMMITTED, &committed, redb::Durability::Eventual)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.get_meta::<Option<LogId<NodeId>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let result = (|| {
            let txn = self.db.begin_write().map_err(write_err)?;
            {
                let mut table = txn.open_table(LOGS).map_err(write_err)?;
                for entry in entries {
                    let bytes = serde_json::to_vec(&entry).map_err(write_err)?;
                    table
                        .insert(entry.log_id.index, bytes.as_slice())
                        .map_err(write_err)?;
                }
            }
            // The commit is durable before the callback reports the entries flushed.
            txn.commit().map_err(write_err)
        })();
        let io_result = result
            .as_ref()
            .map(|_| ())
            .map_err(|err| std::io::Error::other(err.to_string()));
        callback.log_io_completed(io_result);
        result
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.remove_range(log_id.index..)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.put_meta(LAST_PURGED, &log_id)?;
        self.remove_range(..=log_id.index)
    }
}

impl LogStore {
    /// Every entry from index `start` on (recovery reads the log without Raft running).
    pub fn entries_from(&self, start: u64) -> StorageResult<Vec<Entry>> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = match txn.open_table(LOGS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(err) => return Err(read_err(err)),
        };
        let mut entries = Vec::new();
        for item in table.range(start..).map_err(read_err)? {
            let (_, value) = item.map_err(read_err)?;
            entries.push(serde_json::from_slice(value.value()).map_err(read_err)?);
        }
        Ok(entries)
    }

    /// Empties the log as if everything up to `last` had been snapshotted and purged, and
    /// records `vote` (recovery only).
    pub fn reset_to(&self, last: LogId<NodeId>, vote: Vote<NodeId>) -> StorageResult<()> {
        self.remove_range(..)?;
        self.put_meta(LAST_PURGED, &last)?;
        self.put_meta(COMMITTED, &Some(last))?;
        self.put_meta(VOTE, &vote)
    }

    fn remove_range(&self, range: impl RangeBounds<u64>) -> StorageResult<()> {
        let txn = self.db.begin_write().map_err(write_err)?;
        {
            let mut table = txn.open_table(LOGS).map_err(write_err)?;
            let doomed: Vec<u64> = table
                .range::<u64>((range.start_bound().cloned(), range.end_bound().cloned()))
                .map_err(write_err)?
                .map(|item| item.map(|(k, _)| k.value()))
                .collect::<Result<_, _>>()
                .map_err(write_err)?;
            for index in doomed {
                table.remove(index).map_err(write_err)?;
            }
        }
        txn.commit().map_err(write_err)
    }
}
