//! One log line per term this manager leads: the record an operator (and the fault tests)
//! reads to see who led when. With openraft's `single-term-leader` mode a term has at most one
//! leader, so two managers logging the same term would be a safety bug.

use openraft::ServerState;

use crate::raft::typ::NodeId;

type Metrics = tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, openraft::BasicNode>>;

/// Logs "this manager leads" once for each term in which it becomes leader, until Raft stops.
pub(super) async fn log_terms(mut metrics: Metrics, node_id: NodeId) {
    let mut logged_term = None;
    loop {
        let (state, term) = {
            let m = metrics.borrow_and_update();
            (m.state, m.current_term)
        };
        if state == ServerState::Leader && logged_term != Some(term) {
            tracing::info!(term, node_id, "this manager leads");
            logged_term = Some(term);
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
