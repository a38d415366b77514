//! Raft for the managers (openraft): the log and vote on disk (redb), the cluster store as the
//! state machine with snapshots on disk.

// openraft's StorageError is large, and its storage traits fix it as the error type.
#[allow(clippy::result_large_err)]
pub mod log_store;
pub mod network;
#[allow(clippy::result_large_err)]
pub mod recovery;
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

    /// A restarted manager resumes from the snapshot file with its state and membership.
    #[test]
    fn the_state_machine_resumes_from_its_snapshot_file() {
        use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
        use openraft::testing::log_id;
        use openraft::{Entry, EntryPayload};

        use crate::store::{ClusterInfo, Command};

        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut sm = StateMachine::open(dir.path()).unwrap();
            let info = ClusterInfo {
                id: "restored".into(),
                ca_cert_pem: String::new(),
                ca_key_pem: String::new(),
                worker_secret: String::new(),
                manager_secret: String::new(),
                data_path_port: 4789,
                default_addr_pool: "10.0.0.0/8".into(),
                default_addr_pool_mask_length: 24,
                created_unix: 0,
                gossip_keys: Vec::new(),
                cert_expiry_secs: 0,
            };
            let entry = Entry::<TypeConfig> {
                log_id: log_id(1, 1, 1),
                payload: EntryPayload::Normal(Command::InitCluster(info)),
            };
            sm.apply([entry]).await.unwrap();
            sm.build_snapshot().await.unwrap();
        });
        let mut reopened = StateMachine::open(dir.path()).unwrap();
        assert_eq!(
            reopened.read(|s| s.cluster.as_ref().map(|c| c.id.clone())),
            Some("restored".into())
        );
        let applied = runtime.block_on(reopened.applied_state()).unwrap().0;
        assert_eq!(applied, Some(openraft::testing::log_id(1, 1, 1)));
    }

    /// openraft's own conformance suite for storage implementations.
    #[test]
    fn storage_passes_openraft_conformance_suite() {
        // The suite drives its own runtime.
        Suite::test_all(DiskStores).unwrap();
    }
}
