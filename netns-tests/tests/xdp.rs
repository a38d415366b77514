//! The eBPF toolchain end to end: the XDP program built by dataplane's build script is loaded
//! with aya onto a veth inside a lab host and counts exactly the packets sent across it.

use std::net::{SocketAddrV4, UdpSocket};

use dataplane::bpf::traffic_stats::{TrafficClass, TrafficStats, XdpMode};
use netns_tests::{in_netns, TestLab};

const PACKETS: u64 = 1000;
const PORT: u16 = 9999;

fn count_udp_across_veth(mode: XdpMode) {
    let lab = TestLab::up("xdp", |s| {
        s.clients = 2;
        s.start_daemons = false;
    });
    let receiver_ns = lab.lab().netns("c2").unwrap();
    let sender_ns = lab.lab().netns("c1").unwrap();
    let target = SocketAddrV4::new(lab.addr("c2"), PORT);
    let source = lab.addr("c1");

    // Resolve ARP first, so no UDP packet waits in (or overflows) the neighbour queue.
    assert!(lab.ping("c1", "c2"));

    // Attach and read on a thread inside c2; send from a thread inside c1.
    let (attached_tx, attached_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        in_netns(&receiver_ns, move || {
            let stats = TrafficStats::attach("eth0", mode).expect("attach xdp_stats to eth0");
            let socket = UdpSocket::bind(("0.0.0.0", PORT)).unwrap();
            socket
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            attached_tx.send(()).unwrap();
            // Read while the sender sends, so the socket buffer never overflows.
            let mut buf = [0u8; 64];
            let mut received = 0u64;
            while received < PACKETS && socket.recv(&mut buf).is_ok() {
                received += 1;
            }
            (stats.read_all().unwrap(), received)
        })
        .unwrap()
    });
    attached_rx.recv().unwrap();
    in_netns(&sender_ns, move || {
        let socket = UdpSocket::bind((source, 0)).unwrap();
        for i in 0..PACKETS {
            let payload = i.to_be_bytes();
            // A veth never drops for want of buffer while the receiver reads; pace slightly so
            // the receiving socket's buffer does not overflow either.
            socket.send_to(&payload, target).unwrap();
            if i % 100 == 99 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    })
    .unwrap();
    let (counters, received) = reader.join().unwrap();
    assert_eq!(received, PACKETS, "the socket did not get every packet");
    let udp = counters[&TrafficClass::Ipv4Udp];
    assert_eq!(udp.packets, PACKETS, "counters: {counters:?}");
    // 14 Ethernet + 20 IPv4 + 8 UDP + 8 payload bytes per packet.
    assert_eq!(udp.bytes, PACKETS * 50);
    assert!(counters[&TrafficClass::Ipv4].packets >= PACKETS);
    assert!(counters[&TrafficClass::All].packets >= PACKETS);
    assert_eq!(counters[&TrafficClass::Malformed].packets, 0);
}

#[test]
fn xdp_native_counts_every_udp_packet_across_a_veth() {
    count_udp_across_veth(XdpMode::Driver);
}

#[test]
fn xdp_generic_counts_every_udp_packet_across_a_veth() {
    count_udp_across_veth(XdpMode::Skb);
}
