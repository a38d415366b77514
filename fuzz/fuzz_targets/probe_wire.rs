//! The probe wire formats: a VXLAN-encapsulated probe (`ProbePacket`, `ProbeRepr`) and the
//! IPv4/UDP headers a prober reads from a raw socket (`parse_ipv4_udp`). Any input is parsed or
//! refused without a panic; what parses is emitted again and parses to the same thing.
#![no_main]

use dataplane::probe::ipv4::{
    build_ipv4_udp, checksum, parse_ipv4_udp, UdpEndpoints, IPV4_HEADER_LEN, UDP_HEADER_LEN,
};
use dataplane::probe::wire::{ProbePacket, ProbeRepr, IP_UDP_OVERHEAD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    probe(data);
    datagram(data);
});

fn probe(data: &[u8]) {
    let Ok(packet) = ProbePacket::new_checked(data) else {
        return;
    };
    let Ok(repr) = ProbeRepr::parse(&packet) else {
        return;
    };
    // Emitted over a buffer of junk of the same size, the probe reads back the same.
    let mut buf = vec![0xa5; data.len()];
    repr.emit(&mut ProbePacket::new_unchecked(&mut buf[..]));
    let emitted = ProbePacket::new_checked(&buf[..]).expect("an emitted probe has a header");
    assert_eq!(ProbeRepr::parse(&emitted), Ok(repr));
    assert!(emitted.padding().iter().all(|&b| b == 0), "padding zeroed");
    // As a payload for an IPv4 packet of the size it came in, the same.
    let payload = repr.to_payload(data.len() + IP_UDP_OVERHEAD);
    assert_eq!(payload.len(), data.len());
    assert_eq!(payload, buf);
}

fn datagram(data: &[u8]) {
    let Ok(datagram) = parse_ipv4_udp(data) else {
        return;
    };
    // The payload lies inside the input, after at least the two fixed headers.
    let offset = datagram.payload.as_ptr() as usize - data.as_ptr() as usize;
    assert!(offset >= IPV4_HEADER_LEN + UDP_HEADER_LEN);
    assert!(offset + datagram.payload.len() <= data.len());
    // Built again from what was read, it reads back the same, with valid IPv4 checksum.
    let ends = UdpEndpoints {
        src: datagram.src,
        dst: datagram.dst,
        src_port: datagram.src_port,
        dst_port: datagram.dst_port,
    };
    let built = build_ipv4_udp(&ends, 7, datagram.payload).expect("a captured payload fits");
    assert_eq!(
        checksum(&[&built[..IPV4_HEADER_LEN]]),
        0,
        "IPv4 header checksum"
    );
    let again = parse_ipv4_udp(&built).expect("a built datagram parses");
    assert_eq!(usize::from(again.total_len), built.len());
    assert_eq!(
        (
            again.src,
            again.dst,
            again.src_port,
            again.dst_port,
            again.payload
        ),
        (
            ends.src,
            ends.dst,
            ends.src_port,
            ends.dst_port,
            datagram.payload
        )
    );
}
