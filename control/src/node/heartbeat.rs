//! Reaching the leader from any node, and the heartbeat every node sends it.

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use tokio::sync::{mpsc, Mutex};

use crate::cluster::tls::manager_server_name;
use crate::rpc::client::Client;
use crate::rpc::messages::{Request, Response};
use crate::store::{NodeId, Role};

/// How often a node tells the leader it is alive.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);

/// Calls whichever manager leads, following redirects and trying the managers it knows.
pub struct LeaderClient {
    /// When the leader last acknowledged a heartbeat.
    last_ack: std::sync::Mutex<Option<std::time::Instant>>,
    tls: Arc<ClientConfig>,
    managers: Mutex<Vec<String>>,
    current: Mutex<Option<Arc<Client>>>,
}

/// Why the leader could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// No manager answered as leader.
    #[error("no manager answered as leader (tried {tried}): {last}; if a majority of managers is down, bring them back (or recover one with `meshd --force-new-cluster`)")]
    Unreachable { tried: String, last: String },
}

impl LeaderClient {
    /// A client that starts with `managers` (host:port each).
    pub fn new(tls: Arc<ClientConfig>, managers: Vec<String>) -> Self {
        LeaderClient {
            last_ack: std::sync::Mutex::new(None),
            tls,
            managers: Mutex::new(managers),
            current: Mutex::new(None),
        }
    }

    /// Whether the leader acknowledged a heartbeat within the last two seconds.
    pub fn leader_reachable(&self) -> bool {
        self.last_ack
            .lock()
            .expect("heartbeat lock")
            .is_some_and(|at| at.elapsed() < Duration::from_secs(2))
    }

    /// Records that the leader answered just now (a join is such an answer).
    pub fn acknowledged(&self) {
        *self.last_ack.lock().expect("heartbeat lock") = Some(std::time::Instant::now());
    }

    /// Another client to the same managers, on its own connections (for calls that wait long,
    /// so they never hold up this one's).
    pub async fn sibling(&self) -> LeaderClient {
        LeaderClient::new(Arc::clone(&self.tls), self.managers.lock().await.clone())
    }

    /// Replaces the known managers (the leader reports them in every heartbeat answer).
    pub async fn set_managers(&self, managers: Vec<String>) {
        *self.managers.lock().await = managers;
    }

    /// Sends `request` to the leader and returns its answer (never `NotLeader`).
    pub async fn call(
        &self,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, LeaderError> {
        let candidates = self.managers.lock().await.clone();
        let mut last = String::from("no manager known");
        let mut redirect: Option<String> = None;
        // Each known manager once, plus the redirects they give.
        for attempt in 0..candidates.len() * 2 + 1 {
            // Take the current client out of the lock before client_for locks it again.
            let current = self.current.lock().await.clone();
            let client = match (redirect.take(), current) {
                (Some(addr), _) => self.client_for(&addr).await,
                (None, Some(client)) if attempt == 0 => client,
                (None, _) => match candidates.get(attempt % candidates.len().max(1)) {
                    Some(addr) => self.client_for(addr).await,
                    None => break,
                },
            };
            match client.call(request, timeout).await {
                Ok(Response::NotLeader { leader_addr }) => {
                    last = format!("{} is not the leader", client.addr());
                    *self.current.lock().await = None;
                    redirect = leader_addr;
                }
                Ok(response) => {
                    *self.current.lock().await = Some(client);
                    return Ok(response);
                }
                Err(err) => {
                    last = err.to_string();
                    *self.current.lock().await = None;
                }
            }
        }
        Err(LeaderError::Unreachable {
            tried: candidates.join(", "),
            last,
        })
    }

    /// A TLS handshake with the cluster port at `addr`, as this node's certificate allows.
    pub async fn handshake(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> Result<(), crate::rpc::client::RpcError> {
        Client::new(addr, Arc::clone(&self.tls), manager_server_name())
            .handshake(timeout)
            .await
    }

    async fn client_for(&self, addr: &str) -> Arc<Client> {
        if let Some(current) = self.current.lock().await.as_ref() {
            if current.addr() == addr {
                return Arc::clone(current);
            }
        }
        Arc::new(Client::new(
            addr,
            Arc::clone(&self.tls),
            manager_server_name(),
        ))
    }
}

/// Sends heartbeats forever. Answers refresh the list of managers; when an answer names a role
/// other than `role`, it is sent (once) on `role_changed`.
pub async fn run(
    node_id: NodeId,
    role: Role,
    leader: Arc<LeaderClient>,
    role_changed: mpsc::UnboundedSender<Role>,
) {
    let mut reported = false;
    let version = env!("CARGO_PKG_VERSION").to_string();
    let mut ticker = tokio::time::interval(HEARTBEAT_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let request = Request::Heartbeat {
            node_id,
            version: version.clone(),
        };
        match leader.call(&request, Duration::from_secs(1)).await {
            Ok(Response::HeartbeatAck {
                managers,
                role: wanted,
            }) => {
                leader.set_managers(managers).await;
                leader.acknowledged();
                if wanted != role && !reported {
                    tracing::info!(from = ?role, to = ?wanted, "the cluster changed this node's role");
                    reported = role_changed.send(wanted).is_ok();
                }
            }
            Ok(other) => tracing::debug!(answer = ?other, "unexpected heartbeat answer"),
            Err(err) => tracing::debug!(error = %err, "heartbeat"),
        }
    }
}
