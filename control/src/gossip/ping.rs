//! Reachability checks for `meshctl diag ports`: a real gossip exchange with a node's gossip
//! port, not a bare connect, on both transports.
//!
//! * **UDP**: the pinger sends a sealed [`GossipMsg::Ping`] from its gossip socket; the target
//!   answers [`GossipMsg::Pong`] to the datagram's source address. The pinger matches the nonce
//!   to one of its pending pings (at most [`MAX_PENDING_PINGS`]) and reports the round trip
//!   as [`Output::Pong`].
//! * **TCP**: the pinger opens a stream to the target's gossip port and sends one sealed
//!   [`SyncMsg::Ping`] frame where an anti-entropy exchange would send its opening frame; the
//!   target answers [`SyncMsg::Pong`] and ends the stream. The stream itself pairs the answer
//!   with the ping, so nothing is kept pending.
//!
//! A ping is answered whether or not its sender is a member (or in the peer list): the check is
//! meant to run before a host joins, and to tell a port problem from a membership one. It must
//! still open with a key of the target's ring, like any other packet, so a host without the
//! cluster's key gets no answer and learns nothing. The source address a pong goes to is not
//! authenticated: a replayed ping makes a node send one pong, no larger than the ping, to an
//! address of the replayer's choosing; there is no amplification to gain.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;

use super::core::{Core, Output};
use super::envelope::Channel;
use super::keyring::OpenError;
use super::message::{self, GossipMsg, SyncMsg};

/// UDP pings awaiting their pong, at most: a newer ping drops the oldest, whose caller then
/// times out. A diagnosis pings each host once per port, far below this.
pub const MAX_PENDING_PINGS: usize = 256;

/// A UDP ping sent and not answered yet.
#[derive(Debug, Clone)]
pub(super) struct PendingPing {
    nonce: u64,
    sent: Instant,
}

/// UDP pings sent, oldest first.
pub(super) type PendingPings = VecDeque<PendingPing>;

/// Why the answer to a TCP ping is not the expected pong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PongError {
    /// The reply did not open with this node's keys.
    #[error("its reply does not open with this node's gossip keys ({0}): the two nodes hold different keys (another cluster, or a key rotation not finished on both)")]
    Open(OpenError),
    /// The reply opened but is not a stream message.
    #[error("its reply is sealed with the cluster's key but does not decode: are both nodes running the same Mesh release?")]
    Malformed,
    /// A stream message, but not a pong.
    #[error("it answered the ping with another gossip message: are both nodes running the same Mesh release?")]
    NotPong,
    /// A pong for another ping.
    #[error("its pong echoes nonce {got:#x}, not the ping's {sent:#x}")]
    Nonce {
        /// The ping's nonce.
        sent: u64,
        /// The pong's.
        got: u64,
    },
}

impl Core {
    /// Starts a UDP ping: returns the ping's nonce and the sealed datagram to send to the
    /// target's gossip address from the gossip socket (the pong comes back to that socket). The
    /// answer, if any, comes out of [`Core::poll_output`] as [`Output::Pong`] with this nonce.
    pub fn ping(&mut self, now: Instant) -> (u64, Vec<u8>) {
        let nonce = loop {
            let nonce: u64 = self.rng.random();
            if !self.pings.iter().any(|p| p.nonce == nonce) {
                break nonce;
            }
        };
        if self.pings.len() >= MAX_PENDING_PINGS {
            self.pings.pop_front();
        }
        self.pings.push_back(PendingPing { nonce, sent: now });
        let plain = message::encode_gossip(&GossipMsg::Ping { nonce });
        let payload = self.keyring.seal(Channel::Datagram, &plain);
        self.stats.packets_out += 1;
        self.stats.bytes_out += payload.len() as u64;
        (nonce, payload)
    }

    /// Forgets a UDP ping whose caller gave up: a late pong is then counted as unmatched.
    pub fn cancel_ping(&mut self, nonce: u64) {
        self.pings.retain(|p| p.nonce != nonce);
    }

    /// A ping datagram opened: answers at its source address, which is where the pinger's
    /// gossip socket is (see the module doc for why that address need not be trusted).
    pub(super) fn answer_ping(&mut self, from: SocketAddr, nonce: u64) {
        self.stats.pings_answered += 1;
        self.send(from, &message::encode_gossip(&GossipMsg::Pong { nonce }));
    }

    /// A pong datagram opened: reports it when it answers a pending ping.
    pub(super) fn take_pong(&mut self, now: Instant, from: SocketAddr, nonce: u64) {
        let Some(index) = self.pings.iter().position(|p| p.nonce == nonce) else {
            // Late (the caller gave up or the ping was dropped), or a duplicate.
            self.stats.pongs_unmatched += 1;
            return;
        };
        let ping = self.pings.remove(index).expect("the index was just found");
        self.outputs.push_back(Output::Pong {
            nonce,
            from,
            rtt: now.saturating_duration_since(ping.sent),
        });
    }

    /// UDP pings awaiting their pong.
    pub fn pending_pings(&self) -> usize {
        self.pings.len()
    }

    /// Starts a TCP ping: returns its nonce and the sealed frame to send, as the first and
    /// only frame, on a new stream to the target's gossip port. Check the answer frame with
    /// [`Core::check_stream_pong`].
    pub fn stream_ping(&mut self) -> (u64, Vec<u8>) {
        let nonce: u64 = self.rng.random();
        let plain = message::encode_sync(&SyncMsg::Ping { nonce });
        (nonce, self.keyring.seal(Channel::Stream, &plain))
    }

    /// Responder side of a TCP ping: the sealed pong.
    pub(super) fn answer_stream_ping(&mut self, nonce: u64) -> Vec<u8> {
        self.stats.pings_answered += 1;
        let plain = message::encode_sync(&SyncMsg::Pong { nonce });
        self.keyring.seal(Channel::Stream, &plain)
    }

    /// Checks the frame that answered the TCP ping with `nonce`.
    pub fn check_stream_pong(&mut self, nonce: u64, frame: &[u8]) -> Result<(), PongError> {
        let plain = self.keyring.open(Channel::Stream, frame).map_err(|err| {
            self.count_open_error(err);
            PongError::Open(err)
        })?;
        match message::decode_sync(&plain) {
            Ok(SyncMsg::Pong { nonce: got }) if got == nonce => Ok(()),
            Ok(SyncMsg::Pong { nonce: got }) => Err(PongError::Nonce { sent: nonce, got }),
            Ok(_) => Err(PongError::NotPong),
            Err(_) => {
                self.stats.malformed += 1;
                Err(PongError::Malformed)
            }
        }
    }
}

/// Why a ping of another node's gossip port failed. `Unreachable` and `BadReply` name the
/// transport, port and address, and what the failure most likely means; `Timeout` and
/// `Refused` carry nothing, so the caller, who knows the target, words them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PingError {
    /// No answer in time (UDP), or no connection in time (TCP).
    #[error("no answer in time: meshd is not running there, a firewall drops the port, or that node's gossip does not hold this cluster's key")]
    Timeout,
    /// TCP: the target's host refused the connection.
    #[error(
        "the connection was refused: meshd is not running there, or a firewall rejects the port"
    )]
    Refused,
    /// The network reported the target unreachable, or the exchange failed with an I/O error:
    /// what happened and what it likely means.
    #[error("{0}")]
    Unreachable(String),
    /// Something answered, but not with this cluster's pong: what came back and what it
    /// likely means.
    #[error("{0}")]
    BadReply(String),
}

/// The transport a ping went over, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Transport {
    Udp,
    Tcp,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        })
    }
}

impl PingError {
    /// A TCP ping whose connection was accepted and whose ping went unanswered: the port is
    /// open, so this is not the firewall's `Timeout`.
    pub(super) fn silent(target: SocketAddr, after: Duration) -> Self {
        PingError::BadReply(format!(
            "TCP {} on {} accepted the connection but did not answer the ping within {after:?}: what listens there is not meshd, or meshd is stuck",
            target.port(),
            target.ip()
        ))
    }

    /// A pong that does not check out.
    pub(super) fn bad_pong(target: SocketAddr, err: &PongError) -> Self {
        PingError::BadReply(format!(
            "TCP {} on {} answered, but not as this cluster's gossip: {err}",
            target.port(),
            target.ip()
        ))
    }

    /// Classifies an I/O error of a ping: refused, closed before answering, or unreachable.
    pub(super) fn from_io(transport: Transport, target: SocketAddr, err: &std::io::Error) -> Self {
        use std::io::ErrorKind;
        let (port, ip) = (target.port(), target.ip());
        let hint = match err.kind() {
            ErrorKind::ConnectionRefused if transport == Transport::Tcp => {
                return PingError::Refused;
            }
            ErrorKind::UnexpectedEof => {
                // The server drops a stream whose first frame does not open or decode.
                return PingError::BadReply(format!(
                    "{transport} {port} on {ip} accepted the connection and closed it without answering the ping: its gossip does not hold this cluster's key (another cluster, or a key rotation not finished), it runs a Mesh release without ping, or it is serving too many gossip connections"
                ));
            }
            ErrorKind::InvalidData => {
                return PingError::BadReply(format!(
                    "{transport} {port} on {ip} answered with {err}: what listens there is not Mesh gossip"
                ));
            }
            ErrorKind::HostUnreachable => format!(
                "the host is down, or the underlay has no path to it (`ip route get {ip}`, `ip neigh show {ip}`)"
            ),
            ErrorKind::NetworkUnreachable => {
                format!("this host has no route to {ip} (`ip route get {ip}`)")
            }
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => {
                "the connection was cut: a firewall or middlebox may reset it, or meshd restarted"
                    .to_string()
            }
            ErrorKind::AddrNotAvailable | ErrorKind::Unsupported => format!(
                "the gossip address cannot reach {ip} (an IPv4 gossip address cannot ping an IPv6 one, or the reverse)"
            ),
            ErrorKind::PermissionDenied => {
                format!("a local firewall rule forbids sending to {ip}")
            }
            _ => "the exchange failed".to_string(),
        };
        PingError::Unreachable(format!("{transport} {port} on {ip}: {err}: {hint}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::core::CoreConfig;
    use crate::gossip::keyring::Keyring;
    use crate::gossip::spread::StreamAnswer;
    use crate::gossip::Tuning;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, i], 7946))
    }

    fn core(i: u8, keyring: Keyring, now: Instant) -> Core {
        Core::new(
            CoreConfig {
                node_id: u64::from(i),
                addr: addr(i),
                keyring,
                tuning: Tuning::default(),
                generation: 1,
                unix_micros: 1_700_000_000_000_000,
                seed: u64::from(i),
            },
            now,
        )
    }

    fn ring() -> Keyring {
        Keyring::new(1, [7; 32])
    }

    fn outputs(core: &mut Core) -> Vec<Output> {
        std::iter::from_fn(|| core.poll_output()).collect()
    }

    /// The single datagram `core` output, and where to.
    fn datagram(core: &mut Core) -> (SocketAddr, Vec<u8>) {
        match outputs(core).as_slice() {
            [Output::Datagram { to, payload }] => (*to, payload.clone()),
            other => panic!("expected one datagram, got {other:?}"),
        }
    }

    #[test]
    fn a_ping_from_a_stranger_is_answered_at_its_source_and_matched_with_its_rtt() {
        let now = Instant::now();
        let mut a = core(1, ring(), now);
        let mut b = core(2, ring(), now);
        // b lists only node 9: a is not in its allow-list, and is answered anyway.
        b.set_peers(now, vec![(9, addr(9))]);
        outputs(&mut b);

        let (nonce, ping) = a.ping(now);
        assert_eq!(a.pending_pings(), 1);
        b.handle_datagram(now, addr(1), &ping);
        let (to, pong) = datagram(&mut b);
        assert_eq!(to, addr(1));
        assert_eq!(b.stats().pings_answered, 1);
        assert_eq!(b.stats().unknown_senders, 0);

        let later = now + Duration::from_millis(3);
        a.handle_datagram(later, addr(2), &pong);
        assert_eq!(
            outputs(&mut a),
            [Output::Pong {
                nonce,
                from: addr(2),
                rtt: Duration::from_millis(3),
            }]
        );
        assert_eq!(a.pending_pings(), 0);
        // The same pong again matches nothing.
        a.handle_datagram(later, addr(2), &pong);
        assert!(outputs(&mut a).is_empty());
        assert_eq!(a.stats().pongs_unmatched, 1);
    }

    #[test]
    fn a_ping_sealed_with_another_key_or_not_sealed_gets_no_answer() {
        let now = Instant::now();
        let mut a = core(1, Keyring::new(1, [8; 32]), now);
        let mut b = core(2, ring(), now);
        let (_, ping) = a.ping(now);
        b.handle_datagram(now, addr(1), &ping);
        assert!(outputs(&mut b).is_empty());
        assert_eq!(b.stats().auth_failures, 1);

        let plain = message::encode_gossip(&GossipMsg::Ping { nonce: 1 });
        b.handle_datagram(now, addr(1), &plain);
        assert!(outputs(&mut b).is_empty());
        assert_eq!(b.stats().pings_answered, 0);
    }

    #[test]
    fn a_pong_for_no_pending_ping_is_dropped() {
        let now = Instant::now();
        let mut a = core(1, ring(), now);
        let (nonce, _) = a.ping(now);
        let pong = |nonce| {
            ring().seal(
                Channel::Datagram,
                &message::encode_gossip(&GossipMsg::Pong { nonce }),
            )
        };
        a.handle_datagram(now, addr(2), &pong(nonce ^ 1));
        assert!(outputs(&mut a).is_empty());
        a.cancel_ping(nonce);
        a.handle_datagram(now, addr(2), &pong(nonce));
        assert!(outputs(&mut a).is_empty());
        assert_eq!(a.stats().pongs_unmatched, 2);
    }

    #[test]
    fn pending_pings_are_bounded_and_the_oldest_go_first() {
        let now = Instant::now();
        let mut a = core(1, ring(), now);
        let nonces: Vec<u64> = (0..MAX_PENDING_PINGS + 10).map(|_| a.ping(now).0).collect();
        assert_eq!(a.pending_pings(), MAX_PENDING_PINGS);
        let pong = |nonce| {
            ring().seal(
                Channel::Datagram,
                &message::encode_gossip(&GossipMsg::Pong { nonce }),
            )
        };
        a.handle_datagram(now, addr(2), &pong(nonces[0]));
        assert!(outputs(&mut a).is_empty());
        a.handle_datagram(now, addr(2), &pong(nonces[10]));
        assert!(matches!(outputs(&mut a)[..], [Output::Pong { nonce, .. }] if nonce == nonces[10]));
    }

    #[test]
    fn a_stream_ping_is_answered_by_any_holder_of_the_key_and_checked() {
        let now = Instant::now();
        let mut a = core(1, ring(), now);
        let mut b = core(2, ring(), now);
        b.set_peers(now, vec![(9, addr(9))]);
        let (nonce, frame) = a.stream_ping();
        let Some(StreamAnswer::Pong(answer)) = b.handle_stream_open(now, &frame) else {
            panic!("no pong");
        };
        assert_eq!(a.check_stream_pong(nonce, &answer), Ok(()));
        assert_eq!(
            a.check_stream_pong(nonce ^ 1, &answer),
            Err(PongError::Nonce {
                sent: nonce ^ 1,
                got: nonce
            })
        );
        // A stranger's key: the ping is dropped, and so is an answer sealed with it.
        let mut c = core(3, Keyring::new(2, [8; 32]), now);
        assert!(c.handle_stream_open(now, &frame).is_none());
        assert_eq!(c.stats().auth_failures, 1);
        let (_, foreign) = c.stream_ping();
        let err = a.check_stream_pong(nonce, &foreign).unwrap_err();
        assert_eq!(err, PongError::Open(OpenError::UnknownKey(2)));
        assert!(err.to_string().contains("different keys"), "{err}");
        // Another message in place of the pong.
        let (_, ping) = b.stream_ping();
        assert_eq!(a.check_stream_pong(nonce, &ping), Err(PongError::NotPong));
    }

    #[test]
    fn error_messages_name_the_port_address_and_likely_cause() {
        use std::io::{Error, ErrorKind};
        let target = addr(3);
        let io = |transport, kind| PingError::from_io(transport, target, &Error::from(kind));
        assert_eq!(
            io(Transport::Tcp, ErrorKind::ConnectionRefused),
            PingError::Refused
        );
        assert!(PingError::Refused
            .to_string()
            .contains("meshd is not running there, or a firewall rejects the port"));
        assert!(PingError::Timeout.to_string().contains("firewall drops"));
        let PingError::BadReply(eof) = io(Transport::Tcp, ErrorKind::UnexpectedEof) else {
            panic!("an early close is a bad reply");
        };
        assert!(
            eof.starts_with("TCP 7946 on 198.18.0.3 accepted the connection"),
            "{eof}"
        );
        assert!(eof.contains("does not hold this cluster's key"), "{eof}");
        let PingError::Unreachable(unreachable) = io(Transport::Udp, ErrorKind::HostUnreachable)
        else {
            panic!("no route is unreachable");
        };
        assert!(
            unreachable.starts_with("UDP 7946 on 198.18.0.3: "),
            "{unreachable}"
        );
        assert!(
            unreachable.contains("ip route get 198.18.0.3"),
            "{unreachable}"
        );
        let silent = PingError::silent(target, Duration::from_secs(2)).to_string();
        assert!(
            silent.contains("within 2s: what listens there is not meshd"),
            "{silent}"
        );
        let bad = PingError::bad_pong(target, &PongError::NotPong).to_string();
        assert!(
            bad.starts_with("TCP 7946 on 198.18.0.3 answered, but not"),
            "{bad}"
        );
    }
}
