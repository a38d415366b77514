//! The probe responder's request handling: any frame is refused or answered, and an answer is
//! a well-formed reply to the claimed sender, echoing the nonce, never larger than the request
//! (no amplification).
#![no_main]

use std::net::Ipv4Addr;

use dataplane::probe::ipv4::parse_ipv4_udp;
use dataplane::probe::wire::{
    ProbeKind, ProbePacket, ProbeRepr, IP_UDP_OVERHEAD, MIN_PROBE_SIZE, VXLAN_HEADER_LEN,
};
use dataplane::probe::{build_reply, parse_request};
use libfuzzer_sys::fuzz_target;

const ME: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const PORT: u16 = 4789;

fuzz_target!(|data: &[u8]| {
    // The first two bytes say how much of the frame the capture cut off (the responder reads
    // the start of a frame and learns its whole length from MSG_TRUNC); the rest is what the
    // responder's buffer holds: its VXLAN header, then the start of the frame.
    let Some((cut, captured)) = data.split_first_chunk::<2>() else {
        return;
    };
    if captured.len() < VXLAN_HEADER_LEN {
        return;
    }
    let frame_len = captured.len() - VXLAN_HEADER_LEN + usize::from(u16::from_be_bytes(*cut));
    let Some(request) = parse_request(captured, frame_len) else {
        return;
    };
    let repr =
        ProbeRepr::parse(&ProbePacket::new_checked(captured).expect("a request has a header"))
            .expect("a request is a probe");
    assert_eq!(request.repr, repr);
    assert_eq!(repr.kind, ProbeKind::Request);
    // What the request's outer IPv4 packet was: frame, VXLAN, UDP and IPv4 headers.
    let request_size = frame_len + VXLAN_HEADER_LEN + IP_UDP_OVERHEAD;
    let reply = build_reply(&request, ME, PORT, 1);
    assert!(
        reply.len() >= MIN_PROBE_SIZE,
        "a reply of {} bytes",
        reply.len()
    );
    assert!(
        reply.len() <= request_size,
        "amplification: a {}-byte reply to a {request_size}-byte request",
        reply.len()
    );
    let datagram = parse_ipv4_udp(&reply).expect("a reply is an IPv4/UDP datagram");
    assert_eq!(usize::from(datagram.total_len), reply.len());
    assert_eq!((datagram.src, datagram.src_port), (ME, PORT));
    assert_eq!((datagram.dst, datagram.dst_port), request.from);
    assert_eq!(request.from, (repr.sender, repr.sender_port));
    let answer = ProbeRepr::parse(&ProbePacket::new_checked(datagram.payload).expect("a probe"))
        .expect("a reply is a probe");
    assert_eq!(answer.kind, ProbeKind::Reply);
    assert_eq!(answer.nonce, repr.nonce);
    assert_eq!(answer.sender, ME);
    assert_eq!(answer.sender_port, PORT);
    assert_eq!(answer.seen_size, request.total_len);
});
