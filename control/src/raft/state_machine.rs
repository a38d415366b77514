//! The Raft state machine: the cluster store, its applied position and membership, and its
//! snapshots, which are also written to `raft/snapshot.json` so a restarted manager resumes
//! from its last snapshot and replays only the log after it.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::typ::{Entry, NodeId, TypeConfig};
use crate::store::{ClusterState, CommandResult};

type StorageResult<T> = Result<T, StorageError<NodeId>>;
type Membership = StoredMembership<NodeId, openraft::BasicNode>;

/// What a snapshot holds: everything needed to resume.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Image {
    /// The cluster store.
    pub state: ClusterState,
    /// The last log entry applied to it.
    pub last_applied: Option<LogId<NodeId>>,
    /// The membership in force at that entry.
    pub last_membership: Membership,
}

#[derive(Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    data: Vec<u8>,
}

struct Inner {
    image: Image,
    snapshot: Option<StoredSnapshot>,
    snapshots_built: u64,
}

/// The state machine; clones share it (the API reads through one, Raft writes through another).
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<RwLock<Inner>>,
    snapshot_file: PathBuf,
    applied: watch::Sender<Option<LogId<NodeId>>>,
}

impl StateMachine {
    /// Opens the state machine, resuming from `dir/snapshot.json` when present.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let snapshot_file = dir.join("snapshot.json");
        let (image, snapshot) = match std::fs::read(&snapshot_file) {
            Ok(bytes) => {
                let stored: StoredSnapshot = serde_json::from_slice(&bytes).map_err(|err| {
                    std::io::Error::other(format!("{}: {err}", snapshot_file.display()))
                })?;
                let image: Image = serde_json::from_slice(&stored.data).map_err(|err| {
                    std::io::Error::other(format!("{}: {err}", snapshot_file.display()))
                })?;
                (image, Some(stored))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => (Image::default(), None),
            Err(err) => return Err(err),
        };
        let (applied, _) = watch::channel(image.last_applied);
        Ok(StateMachine {
            inner: Arc::new(RwLock::new(Inner {
                image,
                snapshot,
                snapshots_built: 0,
            })),
            snapshot_file,
            applied,
        })
    }

    /// Reads the cluster state (the caller makes the read linearizable first if it must be).
    pub fn read<T>(&self, f: impl FnOnce(&ClusterState) -> T) -> T {
        f(&self.inner.read().expect("state machine lock").image.state)
    }

    /// A copy of everything the state machine holds.
    pub fn image(&self) -> Image {
        self.inner.read().expect("state machine lock").image.clone()
    }

    /// Replaces the state with `image` and makes it the current snapshot, on disk too (used by
    /// recovery, before Raft starts).
    pub fn replace_with(&self, image: Image) -> std::io::Result<()> {
        let data = serde_json::to_vec(&image).map_err(std::io::Error::other)?;
        let stored = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: image.last_applied,
                last_membership: image.last_membership.clone(),
                snapshot_id: format!("recovered-{}", image.last_applied.map_or(0, |id| id.index)),
            },
            data,
        };
        self.persist(&stored)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut inner = self.inner.write().expect("state machine lock");
        inner.image = image;
        inner.snapshot = Some(stored);
        Ok(())
    }

    /// Notified with the last applied log id after every apply.
    pub fn subscribe(&self) -> watch::Receiver<Option<LogId<NodeId>>> {
        self.applied.subscribe()
    }

    fn persist(&self, snapshot: &StoredSnapshot) -> StorageResult<()> {
        let bytes =
            serde_json::to_vec(snapshot).map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let tmp = self.snapshot_file.with_extension("json.tmp");
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &self.snapshot_file))
            .map_err(|e| StorageIOError::write_snapshot(Some(snapshot.meta.signature()), &e).into())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let stored = {
            let mut inner = self.inner.write().expect("state machine lock");
            let data = serde_json::to_vec(&inner.image)
                .map_err(|e| StorageIOError::read_state_machine(&e))?;
            inner.snapshots_built += 1;
            let last = inner.image.last_applied;
            let snapshot_id = match last {
                Some(id) => format!(
                    "{}-{}-{}",
                    id.leader_id.term, id.index, inner.snapshots_built
                ),
                None => format!("0-0-{}", inner.snapshots_built),
            };
            let stored = StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: last,
                    last_membership: inner.image.last_membership.clone(),
                    snapshot_id,
                },
                data,
            };
            inner.snapshot = Some(stored.clone());
            stored
        };
        self.persist(&stored)?;
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<NodeId>>, Membership)> {
        let inner = self.inner.read().expect("state machine lock");
        Ok((
            inner.image.last_applied,
            inner.image.last_membership.clone(),
        ))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<CommandResult>>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut results = Vec::new();
        let last = {
            let mut inner = self.inner.write().expect("state machine lock");
            for entry in entries {
                inner.image.last_applied = Some(entry.log_id);
                let result = match entry.payload {
                    EntryPayload::Blank => CommandResult::Ok,
                    EntryPayload::Normal(command) => inner.image.state.apply(command),
                    EntryPayload::Membership(membership) => {
                        inner.image.last_membership =
                            StoredMembership::new(Some(entry.log_id), membership);
                        CommandResult::Ok
                    }
                };
                results.push(result);
            }
            inner.image.last_applied
        };
        self.applied.send_replace(last);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let image: Image = serde_json::from_slice(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.persist(&stored)?;
        let last = image.last_applied;
        {
            let mut inner = self.inner.write().expect("state machine lock");
            inner.image = Image {
                state: image.state,
                last_applied: meta.last_log_id,
                last_membership: meta.last_membership.clone(),
            };
            inner.snapshot = Some(stored);
        }
        self.applied.send_replace(last.max(meta.last_log_id));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let inner = self.inner.read().expect("state machine lock");
        Ok(inner.snapshot.clone().map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}
