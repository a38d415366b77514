//! A minimal DNS client for diagnostics: one A query to a server as a task sees it, from inside
//! the task's namespace, so `diag overlay` checks what tasks are really told.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RData;

use super::wire::{CLASS_IN, TYPE_A};
use crate::overlay::netns::Netns;

/// Why a query got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The namespace could not be entered or the socket failed.
    #[error("querying {server} from {}: {source}", netns.display())]
    Io {
        /// The namespace.
        netns: std::path::PathBuf,
        /// The server.
        server: SocketAddr,
        /// The system's answer.
        #[source]
        source: io::Error,
    },
    /// The name cannot be put in a query.
    #[error("{0:?} is not a DNS name")]
    BadName(String),
    /// The server answered with an error code.
    #[error("{server} answered {code}")]
    Refused {
        /// The server.
        server: SocketAddr,
        /// Its response code.
        code: String,
    },
    /// The answer could not be parsed.
    #[error("{server} sent an answer that does not parse: {detail}")]
    Malformed {
        /// The server.
        server: SocketAddr,
        /// The parser's complaint.
        detail: String,
    },
}

/// The query bytes for `name` A, with recursion desired.
fn a_query(id: u16, name: &str) -> Result<Vec<u8>, QueryError> {
    let mut packet = id.to_be_bytes().to_vec();
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|l| (1..=63).contains(l));
        let len = len.ok_or_else(|| QueryError::BadName(name.into()))?;
        packet.push(len);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.push(0);
    packet.extend_from_slice(&TYPE_A.to_be_bytes());
    packet.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(packet)
}

/// Asks `server` for `name`'s addresses from inside the namespace pinned at `netns`. An
/// NXDOMAIN answer is an empty list: the name is unknown there.
pub fn query_a_in(
    netns: &Path,
    server: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Result<Vec<Ipv4Addr>, QueryError> {
    let io_error = |source| QueryError::Io {
        netns: netns.into(),
        server,
        source,
    };
    let id = (std::process::id() as u16) ^ (name.len() as u16).rotate_left(8);
    let packet = a_query(id, name)?;
    let ns = Netns::open_pinned(netns)
        .map_err(|e| io_error(io::Error::other(e.to_string())))?
        .ok_or_else(|| {
            io_error(io::Error::new(
                io::ErrorKind::NotFound,
                "no namespace pinned there",
            ))
        })?;
    let reply = ns
        .run(|| {
            let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            socket.set_read_timeout(Some(timeout))?;
            socket.send_to(&packet, server)?;
            let mut buf = vec![0u8; 4096];
            loop {
                let (len, from) = socket.recv_from(&mut buf)?;
                if from == server && len >= 2 && buf[..2] == id.to_be_bytes() {
                    buf.truncate(len);
                    return Ok(buf);
                }
            }
        })
        .map_err(io_error)?;
    let message = Message::from_vec(&reply).map_err(|e| QueryError::Malformed {
        server,
        detail: e.to_string(),
    })?;
    match message.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => return Ok(Vec::new()),
        code => {
            return Err(QueryError::Refused {
                server,
                code: code.to_string(),
            })
        }
    }
    Ok(message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_well_formed_and_bad_names_refused() {
        let packet = a_query(7, "tasks.web").unwrap();
        assert_eq!(&packet[..2], &[0, 7]);
        assert_eq!(&packet[12..23], b"\x05tasks\x03web\x00");
        assert!(matches!(a_query(1, "a..b"), Err(QueryError::BadName(_))));
        assert!(matches!(
            a_query(1, &"x".repeat(64)),
            Err(QueryError::BadName(_))
        ));
    }
}
