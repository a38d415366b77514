//! Raft for the managers (openraft): the log and vote on disk (redb), the cluster store as the
//! state machine with snapshots on disk.

// openraft's StorageError is large, and its storage traits fix it as the error type.
#[allow(clippy::result_large_err)]
pub mod log_store;
pub mod network;
#[allow(clippy::result_large_err)]
pub mod state_machine;
pub mod typ;

#[cfg(test)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::StorageError;

    use super::log_store::LogStore;
    use super::state_machine::StateMachine;
    use super::typ::{NodeId, TypeConfig};

    struct DiskStores;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for DiskStores {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
            let dir = tempfile::tempdir().expect("temp dir");
            let log = LogStore::open(&dir.path().join("log.redb")).expect("open log");
            let sm = StateMachine::open(dir.path()).expect("open state machine");
            Ok((dir, log, sm))
        }
    }

    /// openraft's own conformance suite for storage implementations.
    #[test]
    fn storage_passes_openraft_conformance_suite() {
        // The suite drives its own runtime.
        Suite::test_all(DiskStores).unwrap();
    }
}
