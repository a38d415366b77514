//! The embedded DNS server's answering step, as its UDP and TCP workers run it (parse, zone
//! lookup, hot or slow answer, truncation): any message is dropped, forwarded or answered, and
//! an answer parses as DNS, carries the query's ID and fits the transport's size limit.
#![no_main]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::LazyLock;

use dataplane::dns::{
    Action, Records, Responder, Srv, Transport, Zone, OUR_PAYLOAD, PLAIN_UDP_LIMIT, TCP_LIMIT,
};
use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;

/// A zone with a small name, one whose answer needs truncation over UDP, and SRV records
/// whose targets add addresses (the slow path).
static ZONE: LazyLock<Zone> = LazyLock::new(|| {
    let addrs = |n: u32| (0..n).map(|i| Ipv4Addr::from(0x0a00_0002 + i)).collect();
    let srv = |target: &str| Srv {
        priority: 1,
        weight: 1,
        port: 80,
        target: target.into(),
    };
    let records = Records {
        a: BTreeMap::from([
            ("web".to_string(), addrs(3)),
            ("tasks.web".to_string(), addrs(200)),
            ("db".to_string(), addrs(1)),
        ]),
        srv: BTreeMap::from([(
            "_http._tcp.web".to_string(),
            vec![srv("web"), srv("tasks.web"), srv("elsewhere.example")],
        )]),
        ttl: 5,
    };
    Zone::new(records).expect("the fuzz zone is valid")
});

/// What the UDP worker's receive buffer holds (`udp::MAX_QUERY`, equal to our payload size).
const UDP_BUFFER: usize = OUR_PAYLOAD as usize;

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    // UDP, without upstream servers: unknown names get SERVFAIL, so every parsed query is
    // answered. A datagram larger than the buffer arrives cut, flagged oversized.
    let oversized = data.len() > UDP_BUFFER;
    let packet = &data[..data.len().min(UDP_BUFFER)];
    let action = Responder::new(false).respond(&ZONE, packet, Transport::Udp, oversized, &mut out);
    check(packet, action, &out, Transport::Udp);
    // TCP, with upstream servers: unknown names are forwarded.
    let action = Responder::new(true).respond(&ZONE, data, Transport::Tcp, false, &mut out);
    check(data, action, &out, Transport::Tcp);
});

fn check(packet: &[u8], action: Action, out: &[u8], transport: Transport) {
    match action {
        Action::Drop => {}
        Action::Forward(query) => {
            assert_eq!(transport, Transport::Tcp, "forwarded with no upstream");
            assert!(query.name_end <= query.question_end && query.question_end <= packet.len());
        }
        Action::Reply => {
            let limit = match transport {
                Transport::Udp => usize::from(OUR_PAYLOAD),
                Transport::Tcp => TCP_LIMIT,
            };
            assert!(
                out.len() <= limit,
                "a {}-byte reply over {transport:?}",
                out.len()
            );
            let reply = Message::from_vec(out)
                .unwrap_or_else(|e| panic!("the reply does not parse ({e}): {out:02x?}"));
            assert_eq!(reply.metadata.message_type, MessageType::Response);
            assert_eq!(
                reply.metadata.id.to_be_bytes(),
                packet[..2],
                "the reply's ID"
            );
            // A client that did not advertise a larger size gets at most 512 bytes over UDP.
            let plain = Message::from_vec(packet).is_ok_and(|query| query.edns.is_none());
            if transport == Transport::Udp && plain {
                assert!(
                    out.len() <= PLAIN_UDP_LIMIT,
                    "{} bytes to a plain query",
                    out.len()
                );
            }
        }
    }
}
