//! The cluster port's server: TLS (client certificates optional, verified against the CA when
//! present), then framed requests answered one at a time per connection.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::frame;
use super::messages::{Request, Response};
use crate::cluster::tls::{peer_identity, PeerIdentity};

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers requests; `peer` is None for a peer without a certificate.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(
        &self,
        peer: Option<PeerIdentity>,
        request: Request,
    ) -> impl Future<Output = Response> + Send;
}

/// Serves the cluster port until the task is dropped.
pub async fn serve<H: Handler>(listener: TcpListener, tls: Arc<ServerConfig>, handler: Arc<H>) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(error = %err, "accepting on the cluster port");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    tracing::info!(%remote, error = %err, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::info!(%remote, "TLS handshake timed out");
                    return;
                }
            };
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(peer_identity);
            // A peer without a certificate may only ask to join: small frames only.
            let limit = if peer.is_some() {
                frame::MAX_FRAME
            } else {
                frame::MAX_UNAUTHENTICATED_FRAME
            };
            loop {
                let request: Request = match frame::read_limited(&mut tls, limit).await {
                    Ok(Some(request)) => request,
                    Ok(None) => return,
                    Err(err) => {
                        if matches!(err, frame::FrameError::TooLarge { .. }) {
                            tracing::warn!(%remote, error = %err, "oversized request refused");
                        } else {
                            tracing::debug!(%remote, error = %err, "reading a request");
                        }
                        let _ = frame::write(
                            &mut tls,
                            &Response::Refused(format!("unreadable request: {err}")),
                        )
                        .await;
                        return;
                    }
                };
                let response = handler.handle(peer.clone(), request).await;
                if let Err(err) = frame::write(&mut tls, &response).await {
                    tracing::debug!(%remote, error = %err, "writing a response");
                    return;
                }
            }
        });
    }
}
