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
    pub async fn call(&self, request: &Request, timeout: Duration) -> Result<Response, RpcError> {
        let mut conn = self.conn.lock().await;
        let exchange = async {
            if conn.is_none() {
                *conn = Some(self.connect().await?);
            }
            let stream = conn.as_mut().expect("connected above");
            frame::write(stream, request)
                .await
                .map_err(|source| RpcError::Exchange {
                    addr: self.addr.clone(),
                    source,
                })?;
            match frame::read(stream).await {
                Ok(Some(response)) => Ok(response),
                Ok(None) => Err(RpcError::Closed {
                    addr: self.addr.clone(),
                }),
                Err(source) => Err(RpcError::Exchange {
                    addr: self.addr.clone(),
                    source,
                }),
            }
        };
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(RpcError::Timeout {
                addr: self.addr.clone(),
                timeout,
            }),
        };
        if result.is_err() {
            *conn = None;
        }
        result
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
