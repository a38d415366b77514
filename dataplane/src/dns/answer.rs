//! Deciding what to do with one message, and the hot path: answering a plain query for a name
//! in the zone from pre-encoded bytes.

use super::slow;
use super::wire::{
    self, flags, EdnsInfo, Header, Query, CLASS_IN, RCODE_FORMERR, RCODE_SERVFAIL, TYPE_A, TYPE_SRV,
};
use super::zone::Zone;

/// The UDP payload size we advertise, and the largest UDP reply we send whatever the client
/// advertises: it avoids IP fragmentation on every usual path (DNS flag day 2020).
pub const OUR_PAYLOAD: u16 = 1232;
/// The largest UDP reply to a client without EDNS (RFC 1035 4.2.1).
pub const PLAIN_UDP_LIMIT: usize = 512;
/// The largest TCP message (its length prefix is 16 bits).
pub const TCP_LIMIT: usize = 65535;
/// Bytes of the OPT record we add to replies: root owner, type, class, TTL, empty rdata.
const OPT_LEN: usize = 11;

/// How the message came, which bounds the reply's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A datagram: 512 bytes, or what the client advertised up to [`OUR_PAYLOAD`].
    Udp,
    /// A TCP message: up to 64 KiB.
    Tcp,
}

/// What to do with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the reply written in the output buffer.
    Reply,
    /// The name is not ours: relay the query upstream.
    Forward(Query),
    /// Send nothing.
    Drop,
}

/// Answers messages for one worker. It holds the round-robin turn, so multi-address answers
/// rotate from one query to the next without any state shared between workers.
#[derive(Debug)]
pub struct Responder {
    turn: usize,
    forwarding: bool,
}

impl Responder {
    /// A responder; `forwarding` says whether upstream servers exist (else unknown names get
    /// SERVFAIL: we do not know them, which is not the same as knowing they do not exist).
    pub fn new(forwarding: bool) -> Self {
        Responder {
            turn: 0,
            forwarding,
        }
    }

    /// Handles one message. `oversized` says the datagram did not fit the receive buffer.
    /// On `Action::Reply`, `out` holds the reply.
    pub fn respond(
        &mut self,
        zone: &Zone,
        packet: &[u8],
        transport: Transport,
        oversized: bool,
        out: &mut Vec<u8>,
    ) -> Action {
        if oversized {
            return reply_if(wire::error_reply(packet, RCODE_FORMERR, None, out));
        }
        let query = match wire::parse_query(packet) {
            Ok(query) => query,
            Err(err) => {
                return match err.rcode() {
                    Some(rcode) => reply_if(wire::error_reply(packet, rcode, None, out)),
                    None => Action::Drop,
                }
            }
        };
        // Other classes (CHAOS, HESIOD) hold nothing of ours.
        let entry = if query.qclass == CLASS_IN {
            zone.lookup(query.name(packet))
        } else {
            None
        };
        let Some(entry) = entry else {
            if self.forwarding {
                return Action::Forward(query);
            }
            servfail(packet, &query, out);
            return Action::Reply;
        };
        let turn = self.turn;
        self.turn = self.turn.wrapping_add(1);
        let limit = reply_limit(query.edns, transport);
        let odd_edns = query.edns.is_some_and(|edns| edns.version != 0);
        if query.extra_records || odd_edns || query.qtype == TYPE_SRV && !entry.srv.is_empty() {
            return slow::answer(zone, entry, packet, turn, limit, out);
        }
        // The hot path: header and question as received, then pre-encoded records.
        let (answer, count) = if query.qtype == TYPE_A {
            (entry.a_answer(turn), entry.a_count())
        } else {
            // The name exists, but has no records of that type: NOERROR, no answer.
            (&[][..], 0)
        };
        let opt_len = if query.edns.is_some() { OPT_LEN } else { 0 };
        let fits = query.question_end + answer.len() + opt_len <= limit;
        out.clear();
        out.extend_from_slice(&packet[..query.question_end]);
        let query_flags = Header::new_unchecked(packet).flags();
        let mut reply_flags = wire::reply_flags(query_flags, 0) | flags::AA;
        let mut header = Header::new_unchecked(&mut out[..]);
        if fits {
            // At most MAX_ADDRESSES records: the count fits.
            header.set_counts(1, u16::try_from(count).unwrap_or(u16::MAX), 0, 0);
        } else {
            reply_flags |= flags::TC;
            header.set_counts(1, 0, 0, 0);
        }
        header.set_flags(reply_flags);
        if fits {
            out.extend_from_slice(answer);
        }
        push_opt(out, query.edns);
        Action::Reply
    }
}

fn reply_if(written: bool) -> Action {
    if written {
        Action::Reply
    } else {
        Action::Drop
    }
}

/// The largest reply the client takes over `transport`.
pub fn reply_limit(edns: Option<EdnsInfo>, transport: Transport) -> usize {
    match transport {
        Transport::Tcp => TCP_LIMIT,
        Transport::Udp => edns.map_or(PLAIN_UDP_LIMIT, |edns| {
            usize::from(edns.payload.min(OUR_PAYLOAD))
        }),
    }
}

/// Writes a SERVFAIL reply to `query` into `out`: the question echoed, and an OPT record when
/// the query had one.
pub fn servfail(packet: &[u8], query: &Query, out: &mut Vec<u8>) {
    wire::error_reply(packet, RCODE_SERVFAIL, Some(query.question_end), out);
    push_opt(out, query.edns);
}

/// Appends our OPT record when the query had one (RFC 6891 7), copying its DO bit, and counts
/// it in the header.
fn push_opt(out: &mut Vec<u8>, edns: Option<EdnsInfo>) {
    let Some(edns) = edns else { return };
    out.push(0);
    out.extend_from_slice(&wire::TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&OUR_PAYLOAD.to_be_bytes());
    let do_bit = if edns.dnssec_ok { 0x80 } else { 0 };
    out.extend_from_slice(&[0, 0, do_bit, 0, 0, 0]);
    let mut header = Header::new_unchecked(&mut out[..]);
    let counts = (header.qdcount(), header.ancount(), header.nscount());
    header.set_counts(counts.0, counts.1, counts.2, 1);
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use super::*;
    use crate::dns::zone::{Records, Srv};

    const NO_ANSWER: usize = 0;

    fn zone() -> Zone {
        let mut a = BTreeMap::new();
        a.insert("web".into(), vec![Ipv4Addr::new(10, 0, 0, 1)]);
        a.insert(
            "tasks.web".into(),
            (1..=3).map(|i| Ipv4Addr::new(10, 0, 1, i)).collect(),
        );
        a.insert(
            "big".into(),
            (0..40).map(|i| Ipv4Addr::new(10, 0, 2, i)).collect(),
        );
        let mut srv = BTreeMap::new();
        srv.insert(
            "_http._tcp.web".into(),
            vec![Srv {
                priority: 1,
                weight: 2,
                port: 8080,
                target: "web".into(),
            }],
        );
        Zone::new(Records { a, srv, ttl: 5 }).unwrap()
    }

    /// A query for `name` (dotted, any case) of `qtype`, with an OPT record advertising
    /// `payload` when given.
    pub(crate) fn query(name: &str, qtype: u16, payload: Option<u16>) -> Vec<u8> {
        let mut packet = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            packet.push(u8::try_from(label.len()).unwrap());
            packet.extend_from_slice(label.as_bytes());
        }
        packet.push(0);
        packet.extend_from_slice(&qtype.to_be_bytes());
        packet.extend_from_slice(&CLASS_IN.to_be_bytes());
        if let Some(payload) = payload {
            packet[11] = 1;
            packet.extend_from_slice(&[0, 0, 41]);
            packet.extend_from_slice(&payload.to_be_bytes());
            packet.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        }
        packet
    }

    fn respond(packet: &[u8], transport: Transport) -> (Action, Vec<u8>) {
        let mut out = Vec::new();
        let action = Responder::new(true).respond(&zone(), packet, transport, false, &mut out);
        (action, out)
    }

    fn counts(reply: &[u8]) -> (u16, u16, u16, u16) {
        let h = Header::new_checked(reply).unwrap();
        (h.qdcount(), h.ancount(), h.nscount(), h.arcount())
    }

    #[test]
    fn an_a_query_is_answered_from_the_pre_encoded_records() {
        let packet = query("WeB", TYPE_A, None);
        let (action, reply) = respond(&packet, Transport::Udp);
        assert_eq!(action, Action::Reply);
        let mut golden = vec![0xab, 0xcd, 0x85, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        golden.extend_from_slice(&packet[12..]); // the question, case preserved
        golden.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 0, 0, 1]);
        assert_eq!(reply, golden);
    }

    #[test]
    fn aaaa_for_a_known_name_is_an_empty_noerror() {
        let (action, reply) = respond(&query("web", 28, None), Transport::Udp);
        assert_eq!(action, Action::Reply);
        assert_eq!(Header::new_unchecked(&reply[..]).rcode(), 0);
        assert_eq!(counts(&reply), (1, NO_ANSWER as u16, 0, 0));
    }

    #[test]
    fn answers_rotate_between_queries() {
        let zone = zone();
        let mut responder = Responder::new(true);
        let mut out = Vec::new();
        let packet = query("tasks.web", TYPE_A, None);
        let mut firsts = Vec::new();
        for _ in 0..3 {
            responder.respond(&zone, &packet, Transport::Udp, false, &mut out);
            firsts.push(out[packet.len() + 15]);
        }
        assert_eq!(firsts, [1, 2, 3]);
    }

    #[test]
    fn a_large_answer_is_truncated_over_udp_and_whole_over_tcp() {
        let packet = query("big", TYPE_A, None);
        let (_, udp) = respond(&packet, Transport::Udp);
        assert_ne!(Header::new_unchecked(&udp[..]).flags() & flags::TC, 0);
        assert_eq!(counts(&udp), (1, 0, 0, 0));
        let (_, tcp) = respond(&packet, Transport::Tcp);
        assert_eq!(Header::new_unchecked(&tcp[..]).flags() & flags::TC, 0);
        assert_eq!(counts(&tcp), (1, 40, 0, 0));
        // EDNS with a payload large enough lifts the 512-byte limit.
        let (_, edns) = respond(&query("big", TYPE_A, Some(4096)), Transport::Udp);
        assert_eq!(counts(&edns), (1, 40, 0, 1));
    }

    #[test]
    fn edns_queries_get_our_opt_record() {
        let (_, reply) = respond(&query("web", TYPE_A, Some(1400)), Transport::Udp);
        assert_eq!(counts(&reply), (1, 1, 0, 1));
        assert_eq!(
            reply[reply.len() - 11..],
            [0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            reply_limit(
                wire::parse_query(&query("web", 1, Some(4096)))
                    .unwrap()
                    .edns,
                Transport::Udp
            ),
            1232
        );
    }

    #[test]
    fn unknown_names_are_forwarded_or_servfail_without_upstream() {
        let packet = query("example", TYPE_A, Some(1232));
        let (action, _) = respond(&packet, Transport::Udp);
        assert!(matches!(action, Action::Forward(q) if q.question_end == 25));
        let mut out = Vec::new();
        let action =
            Responder::new(false).respond(&zone(), &packet, Transport::Udp, false, &mut out);
        assert_eq!(action, Action::Reply);
        assert_eq!(Header::new_unchecked(&out[..]).rcode(), RCODE_SERVFAIL);
        assert_eq!(counts(&out), (1, 0, 0, 1));
    }

    #[test]
    fn malformed_messages_get_formerr_or_nothing() {
        let mut packet = query("web", TYPE_A, None);
        packet.push(0);
        let (action, reply) = respond(&packet, Transport::Udp);
        assert_eq!(action, Action::Reply);
        assert_eq!(reply, [0xab, 0xcd, 0x81, 0x81, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(respond(&packet[..7], Transport::Udp).0, Action::Drop);
        let mut out = Vec::new();
        let action = Responder::new(true).respond(&zone(), &packet, Transport::Udp, true, &mut out);
        assert_eq!(action, Action::Reply);
        assert_eq!(Header::new_unchecked(&out[..]).rcode(), RCODE_FORMERR);
    }

    #[test]
    fn srv_queries_take_the_slow_path_with_additional_addresses() {
        let (action, reply) = respond(&query("_http._tcp.WEB", TYPE_SRV, None), Transport::Udp);
        assert_eq!(action, Action::Reply);
        assert_eq!(counts(&reply), (1, 1, 0, 1));
    }
}
