//! The agent's side of the data-path port's allow-list: the cluster's members, as the last
//! assignments list them, are the only hosts whose VXLAN datagrams this host accepts.

use std::sync::{Arc, Mutex};

use dataplane::guard::{Guard, UnderlayGuard};

use super::Agent;

/// The allow-list's kernel handle, made at the first convergence.
#[derive(Default)]
pub(super) struct GuardState {
    guard: Option<UnderlayGuard>,
    /// The last failure, logged once until it changes.
    error: Option<String>,
}

impl Agent {
    /// Converges the allow-list to the members the last assignments name (`probe_peers`, kept
    /// from the same answer) and this host. Failures are logged and retried with the next
    /// convergence.
    pub(super) async fn apply_guard(&self, underlay_ip: std::net::Ipv4Addr, data_path_port: u16) {
        let peers: Vec<std::net::Ipv4Addr> = self
            .probe_peers
            .read()
            .expect("agent lock")
            .iter()
            .copied()
            .collect();
        let desired = dataplane::guard::plan(data_path_port, underlay_ip, peers);
        let state = Arc::clone(&self.guard);
        let applied = tokio::task::spawn_blocking(move || converge(&state, &desired)).await;
        if let Err(err) = applied {
            tracing::warn!(error = %err, "the data-path allow-list's convergence panicked");
        }
    }
}

fn converge(state: &Mutex<GuardState>, desired: &Guard) {
    let mut state = state.lock().expect("guard lock");
    let result = match state.guard.as_mut() {
        Some(guard) => guard.apply(desired),
        None => UnderlayGuard::new().and_then(|mut guard| {
            let applied = guard.apply(desired);
            state.guard = Some(guard);
            applied
        }),
    };
    match result {
        Ok(()) => {
            if state.error.take().is_some() {
                tracing::info!(
                    members = desired.members.len(),
                    "data-path allow-list converged"
                );
            }
        }
        Err(err) => {
            let message = err.to_string();
            if state.error.as_deref() != Some(message.as_str()) {
                tracing::warn!(error = %message, port = desired.data_path_port, "converging the data-path allow-list; VXLAN from non-members is not filtered; retrying with the next convergence");
            }
            state.error = Some(message);
        }
    }
}

/// Removes the allow-list of the calling thread's namespace: the node left the cluster.
pub(super) fn remove() {
    if let Err(err) = UnderlayGuard::new().and_then(|mut guard| guard.remove()) {
        tracing::warn!(error = %err, "removing the data-path allow-list on leave");
    }
}
