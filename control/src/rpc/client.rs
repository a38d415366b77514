//! A client of one node's cluster port: one TLS connection, opened on first use and again
//! after a failure, carrying one request at a time.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::frame::{self, FrameError};
use super::messages::{Request, Response};

/// Errors calling a node.
#[derive(Debug, Error)]
pub enum RpcError {
    /// The node could not be reached or the TLS handshake failed.
    #[error("cannot reach {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The exchange failed midway.
    #[error("talking to {addr}: {source}")]
    Exchange {
        addr: String,
        #[source]
        source: FrameError,
    },
    /// No answer in time.
    #[error("{addr} did not answer within {0:?}", .timeout)]
    Timeout { addr: String, timeout: Duration },
    /// The node closed the connection without answering.
    #[error("{addr} closed the connection without answering")]
    Closed { addr: String },
}

/// How long establishing a TCP connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A client of one node.
pub struct Client {
    addr: String,
    tls: TlsConnector,
    server_name: ServerName<'static>,
    conn: Mutex<Option<TlsStream<TcpStream>>>,
}

impl Client {
    /// A client of `addr` (host:port) that verifies the server as `server_name`.
    pub fn new(addr: &str, tls: Arc<ClientConfig>, server_name: ServerName<'static>) -> Self {
        Client {
            addr: addr.to_string(),
            tls: TlsConnector::from(tls),
            server_name,
            conn: Mutex::new(None),
        }
    }

    /// The address this client calls.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends one request and waits up to `timeout` for its answer. A failed exchange drops the
    /// connection, so the next call starts afresh.
    ///
    /// Cancellation-safe: the connection is taken out while the exchange runs and put back only
    /// once the answer is read. A caller that stops waiting (a `select!`, a timeout) drops it
    /// with the future, so its late answer can never be read as the answer to the next call.
    pub async fn call(&self, request: &Request, timeout: Duration) -> Result<Response, RpcError> {
        let mut conn = self.conn.lock().await;
        let cached = conn.take();
        let exchange = async {
            let mut stream = match cached {
                Some(stream) => stream,
                None => self.connect().await?,
            };
            frame::write(&mut stream, request)
                .await
                .map_err(|source| RpcError::Exchange {
                    addr: self.addr.clone(),
                    source,
                })?;
            match frame::read(&mut stream).await {
                Ok(Some(response)) => Ok((stream, response)),
                Ok(None) => Err(RpcError::Closed {
                    addr: self.addr.clone(),
                }),
                Err(source) => Err(RpcError::Exchange {
                    addr: self.addr.clone(),
                    source,
                }),
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok((stream, response))) => {
                *conn = Some(stream);
                Ok(response)
            }
            Ok(Err(err)) => Err(err),
            Err(_) => Err(RpcError::Timeout {
                addr: self.addr.clone(),
                timeout,
            }),
        }
    }

    /// Connects and completes a TLS handshake (the server proves it holds a certificate of
    /// this cluster), then hangs up: a probe of the cluster port. No answer in time is
    /// `Timeout`; a refusal or a failed handshake is `Connect`.
    pub async fn handshake(&self, timeout: Duration) -> Result<(), RpcError> {
        let failed = |reason: String| RpcError::Connect {
            addr: self.addr.clone(),
            reason,
        };
        let timed_out = || RpcError::Timeout {
            addr: self.addr.clone(),
            timeout,
        };
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| failed(e.to_string()))?;
        tokio::time::timeout(timeout, self.tls.connect(self.server_name.clone(), tcp))
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| failed(format!("TLS handshake: {e}")))?;
        Ok(())
    }

    async fn connect(&self) -> Result<TlsStream<TcpStream>, RpcError> {
        let failed = |reason: String| RpcError::Connect {
            addr: self.addr.clone(),
            reason,
        };
        // A powered-off host answers nothing: give up on the connect long before the call's own
        // timeout, so a caller can try elsewhere.
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| {
                failed(format!(
                    "no answer to the connection within {CONNECT_TIMEOUT:?}"
                ))
            })?
            .map_err(|e| failed(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        self.tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| failed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ApiRequest, ApiResponse};
    use crate::cluster::ca::{new_node_key_and_csr, node_validity, CertRole, ClusterCa};
    use crate::cluster::tls::{manager_server_name, NodeCredentials, PeerIdentity};
    use crate::rpc::server::{serve, Handler};

    /// Answers a node inspection with the node's name, after a pause for "slow".
    struct Echo;

    impl Handler for Echo {
        async fn handle(&self, _peer: Option<PeerIdentity>, request: Request) -> Response {
            let Request::Api(ApiRequest::NodeInspect { node }) = request else {
                return Response::Refused("unexpected request".into());
            };
            if node == "slow" {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Response::Api(ApiResponse::Error(node))
        }
    }

    fn inspect(node: &str) -> Request {
        Request::Api(ApiRequest::NodeInspect { node: node.into() })
    }

    /// The leader-forwarding path abandons a call when the leader changes; the answer to the
    /// abandoned call must not become the answer to the next one (found by the Raft fault
    /// suite: a read got a write's answer, and a failed write could be acknowledged).
    #[tokio::test]
    async fn an_abandoned_call_never_answers_the_next_one() {
        let ca = ClusterCa::generate("cluster").unwrap();
        let (key_pem, csr) = new_node_key_and_csr("m1").unwrap();
        let cert_pem = ca
            .sign_csr(&csr, "m1", CertRole::Manager, "cluster", node_validity(0))
            .unwrap();
        let credentials = NodeCredentials::new(ca.cert_pem.clone(), cert_pem, key_pem);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(serve(
            listener,
            credentials.server_config().unwrap(),
            Arc::new(Echo),
        ));
        let client = Client::new(
            &addr,
            credentials.client_config().unwrap(),
            manager_server_name(),
        );
        let warm = client.call(&inspect("first"), Duration::from_secs(5)).await;
        assert!(matches!(warm, Ok(Response::Api(ApiResponse::Error(n))) if n == "first"));
        let slow = inspect("slow");
        tokio::select! {
            answer = client.call(&slow, Duration::from_secs(5)) => {
                panic!("the slow call answered before it was abandoned: {answer:?}")
            }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        let next = client.call(&inspect("next"), Duration::from_secs(5)).await;
        assert!(
            matches!(&next, Ok(Response::Api(ApiResponse::Error(n))) if n == "next"),
            "{next:?}"
        );
        server.abort();
    }
}
