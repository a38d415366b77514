//! meshd's local control socket: newline-delimited JSON requests and responses over a unix
//! socket in the state directory. Only root (the socket is 0600) on the node itself can use it;
//! the cluster API on TCP 2377 is a separate, mTLS-protected surface.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::api::{ApiRequest, ApiResponse};
use crate::node::runtime::{InitOptions, Initialized, JoinOptions, MembershipView};

/// Longest request line meshd reads; anything longer is refused without being parsed.
/// Room for a secret of `secrets::MAX_SIZE` bytes, base64-encoded, and its metadata.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// What [`read_request_line`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestLine {
    /// The client closed the connection.
    Closed,
    /// A line of at most [`MAX_REQUEST_BYTES`] (its newline included, if it had one).
    Request,
    /// A line longer than that: refused after reading `MAX_REQUEST_BYTES + 1` bytes of it.
    TooLarge,
}

/// Reads one request line into `line` (cleared first), buffering at most
/// `MAX_REQUEST_BYTES + 1` bytes however long the line is: the rest stays unread.
pub async fn read_request_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
) -> std::io::Result<RequestLine> {
    line.clear();
    let n = reader
        .take(MAX_REQUEST_BYTES as u64 + 1)
        .read_until(b'\n', line)
        .await?;
    Ok(match n {
        0 => RequestLine::Closed,
        _ if line.len() > MAX_REQUEST_BYTES => RequestLine::TooLarge,
        _ => RequestLine::Request,
    })
}

/// The refusal of a request line over [`MAX_REQUEST_BYTES`].
pub fn too_large() -> Response {
    Response::Error {
        message: too_large_message(),
    }
}

fn too_large_message() -> String {
    format!(
        "request larger than {MAX_REQUEST_BYTES} bytes refused; send less (a secret or config \
         holds at most 500 KiB)"
    )
}

/// A request to the local meshd.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The daemon's identity, configuration and uptime.
    Status,
    /// Create a cluster with this node as its first manager.
    SwarmInit(InitOptions),
    /// Join a cluster.
    SwarmJoin(JoinOptions),
    /// Leave the cluster.
    SwarmLeave { force: bool },
    /// A cluster API call, answered by the managers.
    Cluster { request: ApiRequest },
}

/// meshd's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// Answer to `Status`.
    Status(DaemonStatus),
    /// Answer to `SwarmInit`.
    Initialized(Initialized),
    /// Answer to `SwarmJoin`.
    Joined(MembershipView),
    /// Answer to `SwarmLeave`.
    Left,
    /// Answer to `Cluster`.
    Cluster { answer: ApiResponse },
    /// The request was refused; the message says why and what to do.
    Error { message: String },
}

/// What `Status` returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// The node's name.
    pub node_name: String,
    /// meshd's version.
    pub version: String,
    /// meshd's PID.
    pub pid: u32,
    /// Seconds since meshd started.
    pub uptime_secs: u64,
    /// Cluster API and Raft address.
    pub listen_addr: String,
    /// Address advertised to other nodes, if known.
    pub advertise_addr: Option<String>,
    /// VXLAN data-path port.
    pub data_path_port: u16,
    /// Gossip port.
    pub gossip_port: u16,
    /// State directory.
    pub state_dir: PathBuf,
    /// The node's cluster membership, once it has one.
    pub membership: Option<MembershipView>,
    /// Gossip's counters and the members it sees, once gossip runs.
    #[serde(default)]
    pub gossip: Option<GossipView>,
}

/// What this node's gossip sees and has counted (`meshctl info --format json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GossipView {
    /// Counters since gossip started (authentication failures included).
    pub stats: crate::gossip::stats::GossipStats,
    /// The gossip address of every member it knows, in any state.
    pub members: Vec<std::net::SocketAddr>,
}

/// Errors from talking to the local meshd.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error("cannot reach meshd at {path} ({source}); is meshd running? Start it, or point --socket / MESH_SOCKET at its control socket")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The exchange failed midway.
    #[error("talking to meshd at {path}: {reason}")]
    Exchange { path: PathBuf, reason: String },
    /// meshd refused the request.
    #[error("meshd: {0}")]
    Refused(String),
}

/// Decodes one request line as meshd reads it: at most `MAX_REQUEST_BYTES + 1` bytes, the
/// newline included when there is one. Err holds why it is refused, for a `Response::Error`.
pub fn decode_request(line: &[u8]) -> Result<Request, String> {
    if line.len() > MAX_REQUEST_BYTES {
        return Err(too_large_message());
    }
    serde_json::from_slice(line)
        .map_err(|err| format!("malformed request ({err}); is meshctl the same version as meshd?"))
}

/// Sends one request and reads one response, waiting up to 10 s.
pub async fn call(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    call_with_timeout(socket, request, Duration::from_secs(10)).await
}

/// Sends one request and reads one response, waiting up to `timeout`.
pub async fn call_with_timeout(
    socket: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let exchange = |reason: String| ClientError::Exchange {
        path: socket.to_path_buf(),
        reason,
    };
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.to_path_buf(),
            source,
        })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(request).expect("requests serialize");
    line.push('\n');
    let answer = async {
        // meshd answers a request it refuses (too large) before it has read all of it, then
        // closes: a failed write still leaves its answer to read, which says why.
        let written = write.write_all(line.as_bytes()).await;
        let mut reply = String::new();
        let read = BufReader::new(read).read_line(&mut reply).await;
        if reply.is_empty() {
            return Err(exchange(match (written, read) {
                (Err(e), _) | (Ok(()), Err(e)) => e.to_string(),
                (Ok(()), Ok(_)) => "meshd closed the connection without answering".into(),
            }));
        }
        serde_json::from_str(&reply).map_err(|e| exchange(format!("unreadable answer: {e}")))
    };
    let response = tokio::time::timeout(timeout, answer)
        .await
        .map_err(|_| exchange(format!("no answer within {timeout:?}")))??;
    match response {
        Response::Error { message } => Err(ClientError::Refused(message)),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_have_a_stable_wire_form() {
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"op":"status"}"#
        );
        let error = Response::Error {
            message: "no".into(),
        };
        assert_eq!(
            serde_json::to_string(&error).unwrap(),
            r#"{"result":"error","message":"no"}"#
        );
    }

    #[test]
    fn unknown_ops_do_not_parse() {
        assert!(serde_json::from_str::<Request>(r#"{"op":"format_disk"}"#).is_err());
    }

    #[tokio::test]
    async fn a_line_over_the_limit_is_refused_without_reading_it_all() {
        let mut input = vec![b'x'; 3 * MAX_REQUEST_BYTES];
        input.push(b'\n');
        input.extend_from_slice(b"{}\n");
        let mut reader = BufReader::new(&input[..]);
        let mut line = Vec::new();
        let got = read_request_line(&mut reader, &mut line).await.unwrap();
        assert_eq!(got, RequestLine::TooLarge);
        assert_eq!(line.len(), MAX_REQUEST_BYTES + 1);
        // A line at the limit is a request; the end is a close.
        let mut input = vec![b'x'; MAX_REQUEST_BYTES - 1];
        input.push(b'\n');
        let mut reader = BufReader::new(&input[..]);
        let got = read_request_line(&mut reader, &mut line).await.unwrap();
        assert_eq!((got, line.len()), (RequestLine::Request, MAX_REQUEST_BYTES));
        let got = read_request_line(&mut reader, &mut line).await.unwrap();
        assert_eq!(got, RequestLine::Closed);
    }

    #[tokio::test]
    async fn the_client_reports_meshds_refusal_of_an_oversized_request() {
        // A server that refuses as meshd does: answer after MAX_REQUEST_BYTES + 1, close.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meshd.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut line = Vec::new();
            let got = read_request_line(&mut BufReader::new(read), &mut line).await;
            assert_eq!(got.unwrap(), RequestLine::TooLarge);
            let mut out = serde_json::to_string(&too_large()).unwrap();
            out.push('\n');
            write.write_all(out.as_bytes()).await.unwrap();
        });
        let request = Request::Cluster {
            request: ApiRequest::NodeInspect {
                node: "x".repeat(4 * MAX_REQUEST_BYTES),
            },
        };
        let err = call_with_timeout(&path, &request, Duration::from_secs(10))
            .await
            .unwrap_err();
        server.await.unwrap();
        assert!(
            matches!(&err, ClientError::Refused(m) if m.contains("larger than")),
            "{err}"
        );
    }

    #[test]
    fn request_lines_decode_or_are_refused_with_a_reason() {
        assert_eq!(
            decode_request(b"{\"op\":\"status\"}\n"),
            Ok(Request::Status)
        );
        let Err(message) = decode_request(b"{\"op\":") else {
            panic!("a cut line decoded");
        };
        assert!(message.starts_with("malformed request"), "{message}");
        let mut long = b"{\"op\":\"status\"}".to_vec();
        long.resize(MAX_REQUEST_BYTES + 1, b' ');
        let Err(message) = decode_request(&long) else {
            panic!("an oversized line decoded");
        };
        assert!(message.contains("larger than"), "{message}");
    }
}
