//! The slow path: answers for names in the zone that the hot path does not give (SRV with the
//! targets' addresses, queries carrying other records, EDNS versions we do not speak), built
//! and encoded as a `hickory_proto` message.

use hickory_proto::op::{Edns, Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::answer::{Action, OUR_PAYLOAD};
use super::wire::{self, RCODE_FORMERR};
use super::zone::{Entry, Zone};

/// Writes into `out` the answer to the query in `packet`, whose name is `entry` in `zone`,
/// fitting `limit` bytes. `turn` picks the rotation of multi-address answers.
pub fn answer(
    zone: &Zone,
    entry: &Entry,
    packet: &[u8],
    turn: usize,
    limit: usize,
    out: &mut Vec<u8>,
) -> Action {
    let Ok(request) = Message::from_vec(packet) else {
        // Our parse accepted it, hickory's did not (an OPT option that does not fit, say).
        wire::error_reply(packet, RCODE_FORMERR, None, out);
        return Action::Reply;
    };
    let mut response = Message::response(request.metadata.id, OpCode::Query);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.checking_disabled = request.metadata.checking_disabled;
    response.metadata.recursion_available = true;
    response.metadata.authoritative = true;
    response.add_queries(request.queries.iter().cloned());
    if let Some(asked) = &request.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(OUR_PAYLOAD);
        edns.set_version(0);
        edns.set_dnssec_ok(asked.flags().dnssec_ok);
        response.set_edns(edns);
        if asked.version() != 0 {
            // RFC 6891 6.1.3: only version 0 exists.
            response.metadata.response_code = ResponseCode::BADVERS;
            return encode(&response, limit, out);
        }
    }
    // parse_query saw exactly one question.
    let Some(question) = request.queries.first() else {
        wire::error_reply(packet, RCODE_FORMERR, None, out);
        return Action::Reply;
    };
    let owner = question.name().clone();
    let ttl = zone.ttl();
    match question.query_type() {
        RecordType::A => {
            let n = entry.addrs.len();
            let start = entry.rotation_start(turn);
            for i in 0..n {
                let addr = entry.addrs[(start + i) % n];
                response.add_answer(Record::from_rdata(owner.clone(), ttl, RData::A(A(addr))));
            }
        }
        RecordType::SRV => {
            let mut targets: Vec<&str> = Vec::new();
            for srv in &entry.srv {
                let Ok(target) = fqdn(&srv.target) else {
                    continue;
                };
                let rdata = SRV::new(srv.priority, srv.weight, srv.port, target);
                response.add_answer(Record::from_rdata(owner.clone(), ttl, RData::SRV(rdata)));
                if !targets.contains(&srv.target.as_str()) {
                    targets.push(&srv.target);
                }
            }
            for target in targets {
                let (Some(known), Ok(name)) = (zone.lookup_str(target), fqdn(target)) else {
                    continue;
                };
                for &addr in &known.addrs {
                    response.add_additional(Record::from_rdata(
                        name.clone(),
                        ttl,
                        RData::A(A(addr)),
                    ));
                }
            }
        }
        // The name exists without records of that type: NOERROR, no answer.
        _ => {}
    }
    encode(&response, limit, out)
}

/// Encodes `response` into `out` within `limit` bytes: without its additional records when
/// only they do not fit, else with TC set and no records (the client retries over TCP).
fn encode(response: &Message, limit: usize, out: &mut Vec<u8>) -> Action {
    let mut encoded = response.to_vec();
    if encoded.as_ref().is_ok_and(|bytes| bytes.len() > limit) && !response.additionals.is_empty() {
        let mut lean = response.clone();
        lean.additionals.clear();
        encoded = lean.to_vec();
    }
    if encoded.as_ref().is_ok_and(|bytes| bytes.len() > limit) {
        encoded = response.truncate().to_vec();
    }
    match encoded {
        Ok(bytes) => {
            *out = bytes;
            Action::Reply
        }
        // Nothing we build fails to encode; if it did, the client would retry.
        Err(_) => Action::Drop,
    }
}

fn fqdn(name: &str) -> Result<Name, hickory_proto::ProtoError> {
    let mut name = Name::from_ascii(name)?;
    name.set_fqdn(true);
    Ok(name)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use hickory_proto::op::Message;

    use super::*;
    use crate::dns::answer::{Responder, Transport};
    use crate::dns::wire::{Header, TYPE_A, TYPE_SRV};
    use crate::dns::zone::{Records, Srv};

    fn zone(targets: usize) -> Zone {
        let mut a = BTreeMap::new();
        let mut srv = BTreeMap::new();
        let mut records = Vec::new();
        for i in 0..targets {
            let target = format!("web.{i}.task-with-a-rather-long-identifier");
            a.insert(
                target.clone(),
                vec![Ipv4Addr::new(10, 0, 3, u8::try_from(i).unwrap())],
            );
            records.push(Srv {
                priority: 0,
                weight: 10,
                port: 80,
                target,
            });
        }
        srv.insert("_http._tcp.web".into(), records);
        a.insert(
            "tasks.web".into(),
            vec![Ipv4Addr::new(10, 0, 1, 1), Ipv4Addr::new(10, 0, 1, 2)],
        );
        Zone::new(Records { a, srv, ttl: 7 }).unwrap()
    }

    fn ask(zone: &Zone, packet: &[u8], transport: Transport) -> Message {
        let mut out = Vec::new();
        let action = Responder::new(true).respond(zone, packet, transport, false, &mut out);
        assert_eq!(action, Action::Reply);
        Message::from_vec(&out).unwrap()
    }

    fn query(name: &str, qtype: u16, payload: Option<u16>) -> Vec<u8> {
        crate::dns::answer::tests::query(name, qtype, payload)
    }

    #[test]
    fn srv_answers_carry_the_targets_addresses() {
        let reply = ask(
            &zone(2),
            &query("_HTTP._tcp.web", TYPE_SRV, None),
            Transport::Udp,
        );
        assert_eq!(reply.answers.len(), 2);
        assert_eq!(reply.additionals.len(), 2);
        assert!(reply.metadata.authoritative);
        // The question comes back exactly as asked.
        assert_eq!(reply.queries[0].name().to_ascii(), "_HTTP._tcp.web.");
        let RData::SRV(srv) = &reply.answers[0].data else {
            panic!("not an SRV record: {:?}", reply.answers[0]);
        };
        assert_eq!((srv.port, srv.weight), (80, 10));
        assert_eq!(reply.answers[0].ttl, 7);
    }

    #[test]
    fn additional_records_go_before_the_answer_is_truncated() {
        // 8 targets: answers fit in 512 bytes, answers and their addresses do not.
        let reply = ask(
            &zone(8),
            &query("_http._tcp.web", TYPE_SRV, None),
            Transport::Udp,
        );
        assert!(!reply.metadata.truncation);
        assert_eq!(reply.answers.len(), 8);
        assert!(reply.additionals.is_empty());
        // 30 targets do not fit at all: TC, and the full answer over TCP.
        let reply = ask(
            &zone(30),
            &query("_http._tcp.web", TYPE_SRV, None),
            Transport::Udp,
        );
        assert!(reply.metadata.truncation);
        assert!(reply.answers.is_empty());
        let reply = ask(
            &zone(30),
            &query("_http._tcp.web", TYPE_SRV, None),
            Transport::Tcp,
        );
        assert_eq!((reply.answers.len(), reply.additionals.len()), (30, 30));
    }

    #[test]
    fn an_unknown_edns_version_gets_badvers() {
        let mut packet = query("tasks.web", TYPE_A, Some(1232));
        let version_at = packet.len() - 5;
        packet[version_at] = 1;
        let reply = ask(&zone(0), &packet, Transport::Udp);
        // 16 is both BADVERS and BADSIG; hickory names it the latter when decoding.
        assert_eq!(u16::from(reply.metadata.response_code), 16);
        assert!(reply.answers.is_empty());
        assert_eq!(reply.edns.as_ref().map(Edns::version), Some(0));
    }

    #[test]
    fn the_slow_path_agrees_with_the_hot_path() {
        let zone = zone(0);
        let plain = query("tasks.web", TYPE_A, None);
        // The same query with an extra record in the additional section goes the slow way.
        let mut extra = plain.clone();
        extra[11] = 1;
        extra.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 1, 2, 3, 4]);
        for turn in 0..2 {
            let mut fast_out = Vec::new();
            let mut slow_out = Vec::new();
            let mut fast = Responder::new(true);
            let mut slow = Responder::new(true);
            for _ in 0..=turn {
                fast.respond(&zone, &plain, Transport::Udp, false, &mut fast_out);
                slow.respond(&zone, &extra, Transport::Udp, false, &mut slow_out);
            }
            let fast = Message::from_vec(&fast_out).unwrap();
            let slow = Message::from_vec(&slow_out).unwrap();
            assert_eq!(fast.answers, slow.answers, "turn {turn}");
            assert_eq!(
                Header::new_unchecked(&fast_out[..]).flags(),
                Header::new_unchecked(&slow_out[..]).flags()
            );
        }
    }
}
