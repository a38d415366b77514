//! Raft's outbound side: one cluster-port client per peer manager, over mutual TLS.

use std::sync::Arc;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use rustls::ClientConfig;

use super::typ::{NodeId, TypeConfig};
use crate::cluster::tls::manager_server_name;
use crate::rpc::client::{Client, RpcError};
use crate::rpc::messages::{Request, Response};

/// Makes a client for every peer Raft talks to.
pub struct Network {
    tls: Arc<ClientConfig>,
}

impl Network {
    /// Peers are verified as managers of this cluster; we present our node certificate.
    pub fn new(tls: Arc<ClientConfig>) -> Self {
        Network { tls }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            target,
            client: Client::new(&node.addr, Arc::clone(&self.tls), manager_server_name()),
        }
    }
}

/// One peer manager.
pub struct Peer {
    target: NodeId,
    client: Client,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl Peer {
    async fn call<E: std::error::Error>(
        &self,
        request: Request,
        option: &RPCOption,
    ) -> Result<Response, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>> {
        self.client
            .call(&request, option.hard_ttl())
            .await
            .map_err(|err| match err {
                RpcError::Connect { .. } => RPCError::Unreachable(Unreachable::new(&err)),
                _ => RPCError::Network(NetworkError::new(&err)),
            })
    }

    fn unexpected<E: std::error::Error>(
        &self,
        response: Response,
    ) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
        let reason = std::io::Error::other(format!(
            "unexpected answer from manager {}: {response:?}",
            self.target
        ));
        RPCError::Network(NetworkError::new(&reason))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        match self.call(Request::AppendEntries(rpc), &option).await? {
            Response::AppendEntries(result) => {
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        match self.call(Request::InstallSnapshot(rpc), &option).await? {
            Response::InstallSnapshot(result) => {
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        match self.call(Request::Vote(rpc), &option).await? {
            Response::Vote(result) => {
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(other)),
        }
    }
}
