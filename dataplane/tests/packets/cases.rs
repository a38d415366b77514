//! The hostile-input cases for `lb_ingress`: each a frame and what the program must do with it.

use dataplane::lb::bpf::BpfHook;
use std::net::Ipv4Addr;

use super::*;
use crate::{BACKENDS, HOST};

/// What the program must do with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Passed to the kernel untouched; no counter, no state.
    Pass,
    /// Dropped and counted as `drop:<reason>`; no state. `rewritten`: the program may have
    /// changed the frame before deciding (VXLAN stripped), else it is untouched.
    Drop(&'static str, bool),
    /// Balanced: encapsulated to a backend, one flow remembered, `forward:remote` counted.
    Balance,
    /// Refused by the kernel's test run (`EINVAL`) before the program sees it.
    Refused,
}

pub struct Case {
    pub name: String,
    pub frame: Vec<u8>,
    pub expect: Expect,
}

fn case(name: impl Into<String>, frame: Vec<u8>, expect: Expect) -> Case {
    Case {
        name: name.into(),
        frame,
        expect,
    }
}

/// Every case, in classes (the class is the name up to the first ':').
pub fn cases(hook: BpfHook) -> Vec<Case> {
    use Expect::*;
    let mut cases = Vec::new();
    let syn = tcp_frame(HOST, TCP_PORT, 40000, TCP_SYN, 5, b"");
    let udp = udp_frame(HOST, UDP_PORT, 40001, b"hello");
    // Shorter than an Ethernet header: the kernel refuses to test-run them (at XDP a driver
    // hands over no such frame either); the program would drop them as truncated-eth.
    for len in 0..ETH_LEN {
        cases.push(case(
            format!("short frame: {len} bytes"),
            syn[..len].to_vec(),
            Refused,
        ));
    }
    // The kernel's test run refuses an IPv4 skb shorter than its header (EINVAL), so at TC
    // the frames cut inside the IPv4 header cannot be run.
    let shortest = match hook {
        BpfHook::Xdp => ETH_LEN,
        BpfHook::Tc => ETH_LEN + 20,
    };
    for (label, frame) in [("tcp", &syn), ("udp", &udp)] {
        for len in shortest..frame.len() {
            let expect = if len < ETH_LEN + 20 {
                Drop("truncated-ip", false)
            } else {
                Drop("bad-ip", false) // the IP total length reaches past the frame
            };
            cases.push(case(
                format!("truncated frame: {label} cut at {len}"),
                frame[..len].to_vec(),
                expect,
            ));
        }
        // Cut short with the IP total length saying so: the transport header is short.
        let hdr = if label == "tcp" { 20 } else { 8 };
        for keep in 0..hdr {
            let mut cut = frame[..ETH_LEN + 20 + keep].to_vec();
            set_tot_len(&mut cut, (20 + keep) as u16);
            cases.push(case(
                format!("truncated l4 header: {label} with {keep} bytes"),
                cut,
                Drop("truncated-l4", false),
            ));
        }
    }
    for ihl in 0..5 {
        let mut frame = syn.clone();
        frame[ETH_LEN] = 0x40 | ihl;
        cases.push(case(format!("ihl: {ihl}"), frame, Drop("bad-ihl", false)));
    }
    let nops = [1u8, 1, 1, 0]; // NOP NOP NOP EOL
    let garbage: Vec<u8> = (0..40).map(|i| (i * 37 + 11) as u8).collect();
    // IP options are carried, not interpreted (the backend's kernel judges them, as after any
    // router): a packet with options is balanced like any other, to the same backend.
    cases.push(case(
        "ip options: valid (ihl 6)",
        with_options(&syn, &nops, 41000),
        Balance,
    ));
    cases.push(case(
        "ip options: garbage (ihl 15)",
        with_options(&syn, &garbage, 41001),
        Balance,
    ));
    let mut short_opts = with_options(&syn, &garbage, 41002);
    short_opts.truncate(ETH_LEN + 40);
    cases.push(case(
        "ip options: ihl 15 past the frame",
        short_opts,
        Drop("truncated-ip", false),
    ));
    for (what, tot) in [
        ("past the frame", 41u16),
        ("far past", 65535),
        ("below the header", 19),
        ("zero", 0),
    ] {
        let mut frame = syn.clone();
        set_tot_len(&mut frame, tot);
        cases.push(case(
            format!("ip total length: {what} ({tot})"),
            frame,
            Drop("bad-ip", false),
        ));
    }
    let mut v6 = syn.clone();
    v6[ETH_LEN] = 0x65;
    refresh_ip_csum(&mut v6);
    cases.push(case(
        "ip version: 6 in an IPv4 frame",
        v6,
        Drop("bad-ip", false),
    ));
    let mut padded = tcp_frame(HOST, TCP_PORT, 41003, TCP_SYN, 5, b"");
    padded.resize(60, 0); // Ethernet's minimum: the total length stays 40
    cases.push(case(
        "ip total length: below the frame (padding)",
        padded,
        Balance,
    ));

    for (label, proto_frame) in [
        ("udp", udp_frame(HOST, UDP_PORT, 42000, &[7; 64])),
        (
            "tcp",
            tcp_frame(HOST, TCP_PORT, 42001, TCP_SYN, 5, &[7; 64]),
        ),
    ] {
        let mut first = proto_frame.clone();
        set_frag(&mut first, 0x2000); // MF, offset 0
        cases.push(case(
            format!("fragment: first ({label}, MF)"),
            first,
            Drop("fragment", false),
        ));
        let mut later = proto_frame.clone();
        set_frag(&mut later, 185); // offset 1480, last
        cases.push(case(
            format!("fragment: later ({label}, offset 1480)"),
            later,
            Pass,
        ));
        let mut middle = proto_frame;
        set_frag(&mut middle, 0x2000 | 1);
        cases.push(case(
            format!("fragment: middle ({label}, MF, offset 8)"),
            middle,
            Pass,
        ));
    }
    let mut unpublished = udp_frame(HOST, 9999, 42002, &[7; 64]);
    set_frag(&mut unpublished, 0x2000);
    cases.push(case(
        "fragment: first to an unpublished port",
        unpublished,
        Pass,
    ));

    for (what, ethertype) in [
        ("arp", 0x0806u16),
        ("ipv6", 0x86dd),
        ("lldp", 0x88cc),
        ("ethertype 0", 0),
    ] {
        let mut frame = syn.clone();
        frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
        cases.push(case(format!("non-ipv4: {what}"), frame, Pass));
    }
    for (what, tpid) in [("802.1q", 0x8100u16), ("802.1ad", 0x88a8)] {
        // A tagged frame is the kernel's to untag: the program looks at untagged IPv4 only.
        cases.push(case(
            format!("vlan: {what} around a syn"),
            vlan(&syn, tpid, 5),
            Pass,
        ));
    }

    let inner_ok = inner_frame(tcp_frame(BACKENDS[0], 80, 43000, TCP_SYN, 5, b""));
    let mesh_vni = MESH_VNI_BASE | u32::from(TCP_PORT);
    cases.push(case(
        "vxlan: I flag clear",
        vxlan_frame(0x0000_0000, mesh_vni, &inner_ok),
        Pass,
    ));
    cases.push(case(
        "vxlan: only reserved flags set",
        vxlan_frame(0x7700_0000, mesh_vni, &inner_ok),
        Pass,
    ));
    // Reserved bits are ignored on receipt (RFC 7348): handled as the mesh's own, and here
    // dropped for want of a local backend behind the inner address.
    cases.push(case(
        "vxlan: I flag and reserved flags set",
        vxlan_frame(0x08ff_ffff, mesh_vni, &inner_ok),
        Drop("decap-no-backend", true),
    ));
    cases.push(case(
        "vxlan: an overlay network's vni",
        vxlan_frame(0x0800_0000, 4097, &inner_ok),
        Pass,
    ));
    cases.push(case(
        "vxlan: header cut short",
        udp_frame(HOST, VXLAN_PORT, 43001, &[8, 0, 0, 0]),
        Pass,
    ));
    let vx = |inner: &[u8]| vxlan_frame(0x0800_0000, mesh_vni, inner);
    cases.push(case(
        "vxlan: no inner frame",
        vx(&[]),
        Drop("truncated-l4", false),
    ));
    cases.push(case(
        "vxlan: inner ethernet cut short",
        vx(&inner_ok[..10]),
        Drop("truncated-l4", false),
    ));
    let mut arp = inner_ok.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    cases.push(case("vxlan: inner arp", vx(&arp), Drop("bad-inner", false)));
    cases.push(case(
        "vxlan: inner ipv4 cut short",
        vx(&inner_ok[..ETH_LEN + 10]),
        Drop("truncated-ip", true),
    ));
    let mut inner_ihl = inner_ok.clone();
    inner_ihl[ETH_LEN] = 0x43;
    cases.push(case(
        "vxlan: inner ihl 3",
        vx(&inner_ihl),
        Drop("bad-ihl", true),
    ));
    let mut inner_len = inner_ok.clone();
    set_tot_len(&mut inner_len, 1400);
    cases.push(case(
        "vxlan: inner total length past the frame",
        vx(&inner_len),
        Drop("bad-ip", true),
    ));
    let mut frag_vx = vx(&inner_ok);
    set_frag(&mut frag_vx, 0x2000);
    cases.push(case(
        "vxlan: outer first fragment",
        frag_vx,
        Drop("fragment", false),
    ));

    for doff in 0..5 {
        cases.push(case(
            format!("tcp data offset: {doff}"),
            tcp_frame(HOST, TCP_PORT, 44000, TCP_SYN, doff, b""),
            Drop("bad-l4", false),
        ));
    }
    cases.push(case(
        "tcp data offset: 15 past the packet",
        tcp_frame(HOST, TCP_PORT, 44001, TCP_SYN, 15, &[0; 8]),
        Drop("bad-l4", false),
    ));
    cases.push(case(
        "tcp data offset: 6 with options (control)",
        tcp_frame(HOST, TCP_PORT, 44002, TCP_SYN, 6, &[1, 1, 1, 1]),
        Balance,
    ));
    for (what, len) in [("0", 0u16), ("7", 7), ("past the packet", 200)] {
        let mut frame = udp_frame(HOST, UDP_PORT, 45000, b"hello");
        frame[ETH_LEN + 24..ETH_LEN + 26].copy_from_slice(&len.to_be_bytes());
        cases.push(case(
            format!("udp length: {what}"),
            frame,
            Drop("bad-l4", false),
        ));
    }
    cases.push(case(
        "icmp: header cut short",
        icmp_frame(HOST, &[3, 3, 0]),
        Drop("truncated-l4", false),
    ));
    cases.push(case(
        "icmp: echo",
        icmp_frame(HOST, &[8, 0, 0, 0, 0, 1, 0, 1]),
        Pass,
    ));
    let mut quote = vec![3u8, 3, 0, 0, 0, 0, 0, 0];
    quote.extend_from_slice(&syn[ETH_LEN..ETH_LEN + 28]);
    cases.push(case(
        "icmp: error about no flow of ours",
        icmp_frame(HOST, &quote),
        Pass,
    ));
    cases.push(case(
        "icmp: error quoting 4 bytes",
        icmp_frame(HOST, &quote[..12]),
        Pass,
    ));

    cases.push(case(
        "control: syn to the published tcp port",
        syn.clone(),
        Balance,
    ));
    cases.push(case(
        "control: datagram to the published udp port",
        udp.clone(),
        Balance,
    ));
    cases.push(case(
        "control: syn to an unpublished port",
        tcp_frame(HOST, 22, 40000, TCP_SYN, 5, b""),
        Pass,
    ));
    cases.push(case(
        "control: syn to another address",
        tcp_frame(
            Ipv4Addr::new(198, 18, 0, 9),
            TCP_PORT,
            40000,
            TCP_SYN,
            5,
            b"",
        ),
        Pass,
    ));
    cases
}
