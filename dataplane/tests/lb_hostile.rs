//! Hostile input at the ingress routing mesh: `lb_ingress` (XDP and TC), loaded and programmed
//! by a real `BpfBalancer` with a service published on TCP 8080 and UDP 5353 and two remote
//! backends, is run with `BPF_PROG_TEST_RUN` on crafted packets: empty and short frames, every
//! truncation of the headers, bad IHL and options, wrong lengths, fragments, other ethertypes
//! and VLAN tags, VXLAN with wrong flags or cut short, TCP/UDP with bad lengths, and
//! well-formed controls. For each: the exact verdict the program means, the packet unchanged
//! where it must not be rewritten (nothing appended: it leaks nothing), every map unchanged
//! but for the one drop counter that must count, and the controls still balanced afterwards.
//!
//! Nothing is sent and nothing is attached outside a scratch namespace (`ip netns`), which
//! holds the veth the balancer needs (and the VTEPs' neighbour entries for XDP's FIB lookup).
//! Root only: each test skips with a message otherwise.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use dataplane::lb::bpf::{BpfBalancer, BpfHook, MapState};
use dataplane::lb::{BackendState, HostLb, LbBackend, LbError, LbPort, LbService, Protocol};
use dataplane::overlay::netns::Netns;

mod packets;
use packets::*;

const HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const VTEPS: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 0, 3)];
const VTEP_MACS: [[u8; 6]; 2] = [[2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 3]];
const BACKENDS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 10, 0, 11), Ipv4Addr::new(10, 10, 0, 12)];

// Verdicts of linux/bpf.h and linux/pkt_cls.h.
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

fn is_root() -> bool {
    // SAFETY: geteuid takes nothing and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A scratch namespace, deleted on drop (panics included).
struct Scratch {
    name: String,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let name = format!("mlbh-{}-{tag}", std::process::id());
        let scratch = Scratch { name };
        scratch.ip(&["netns", "add", &scratch.name]);
        scratch
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("ip");
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `ip` inside the namespace (`nsenter`, as `ip netns exec` remounts /).
    fn ip_in(&self, args: &[&str]) {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.path().display()))
            .arg("ip")
            .args(args)
            .output()
            .expect("nsenter");
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn desired() -> HostLb {
    let backends = (0..2)
        .map(|i| LbBackend {
            task_id: format!("task{i}"),
            network_id: "web".into(),
            ip: BACKENDS[i],
            mac: [2, 0x42, 10, 10, 0, 11 + i as u8],
            vtep: VTEPS[i],
            weight: 1,
            state: BackendState::Active,
        })
        .collect();
    HostLb {
        underlay_ip: HOST,
        underlay_if: "ul0".into(),
        underlay_mtu: 1500,
        data_path_port: VXLAN_PORT,
        networks: vec![],
        services: vec![LbService {
            id: "svc-web".into(),
            name: "web".into(),
            ports: vec![
                LbPort {
                    protocol: Protocol::Tcp,
                    published: TCP_PORT,
                    target: 80,
                    local_only: false,
                },
                LbPort {
                    protocol: Protocol::Udp,
                    published: UDP_PORT,
                    target: 53,
                    local_only: false,
                },
            ],
            vips: vec![],
            backends,
        }],
    }
}

/// What the program must do with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
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

struct Case {
    name: String,
    frame: Vec<u8>,
    expect: Expect,
}

fn case(name: impl Into<String>, frame: Vec<u8>, expect: Expect) -> Case {
    Case {
        name: name.into(),
        frame,
        expect,
    }
}

/// Every case, in classes (the class is the name up to the first ':').
fn cases(hook: BpfHook) -> Vec<Case> {
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

/// The counters as a map, for differences.
fn counters(balancer: &BpfBalancer) -> BTreeMap<String, u64> {
    balancer
        .counters()
        .unwrap()
        .into_iter()
        .map(|c| (c.name, c.packets))
        .collect()
}

fn diff(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter(|(name, n)| before.get(*name) != Some(n))
        .map(|(name, n)| (name.clone(), n - before.get(name).copied().unwrap_or(0)))
        .collect()
}

/// Checks a balanced packet's output: encapsulated to a backend's VTEP with the mesh's VNI,
/// the inner packet DNATed to that backend's address and target port, the rest unchanged.
/// Returns the backend's index.
fn check_balanced(hook: BpfHook, input: &[u8], output: &[u8]) -> Result<usize, String> {
    let outer = &output[ETH_LEN..];
    if output.len() != input.len() + 50 {
        return Err(format!("{} bytes out for {} in", output.len(), input.len()));
    }
    let vtep = Ipv4Addr::from(<[u8; 4]>::try_from(&outer[16..20]).unwrap());
    let backend = VTEPS
        .iter()
        .position(|v| *v == vtep)
        .ok_or(format!("outer destination {vtep}"))?;
    if hook == BpfHook::Xdp && output[..6] != VTEP_MACS[backend] {
        return Err(format!("outer MAC {:02x?}", &output[..6]));
    }
    if outer[9] != 17
        || u16::from_be_bytes([outer[22], outer[23]]) != VXLAN_PORT
        || !ip_csum_ok(outer)
    {
        return Err("outer header is not mesh VXLAN with a good checksum".into());
    }
    let inner = &outer[20 + 8 + 8..];
    let in_hl = usize::from(input[ETH_LEN] & 0xf) * 4;
    let port = u16::from_be_bytes([input[ETH_LEN + in_hl + 2], input[ETH_LEN + in_hl + 3]]);
    let vni = u32::from_be_bytes([outer[32], outer[33], outer[34], 0]) >> 8;
    if outer[28] != 0x08 || vni != MESH_VNI_BASE | u32::from(port) {
        return Err(format!("vxlan flags {:#x} vni {vni:#x}", outer[28]));
    }
    let (in_ip, out_ip) = (&input[ETH_LEN..], &inner[ETH_LEN..]);
    if out_ip.len() != in_ip.len()
        || out_ip[16..20] != BACKENDS[backend].octets()
        || !ip_csum_ok(out_ip)
    {
        return Err("inner IPv4 header not DNATed to the backend".into());
    }
    let hl = usize::from(in_ip[0] & 0xf) * 4;
    let target = if in_ip[9] == 6 { 80u16 } else { 53 };
    if u16::from_be_bytes([out_ip[hl + 2], out_ip[hl + 3]]) != target {
        return Err("inner destination port is not the target port".into());
    }
    // Everything else is the client's: source, options, payload (no foreign bytes).
    let same = |a: std::ops::Range<usize>| in_ip[a.clone()] == out_ip[a];
    // The transport checksum follows the DNAT: TCP's at 16, UDP's at 6.
    let csum = if in_ip[9] == 6 { hl + 16 } else { hl + 6 };
    if !(same(12..16) && same(20..hl + 2) && same(hl + 4..csum) && same(csum + 2..in_ip.len())) {
        return Err("inner packet changed beyond the DNAT".into());
    }
    Ok(backend)
}

fn run_suite(hook: BpfHook, tag: &str) {
    if !is_root() {
        eprintln!("skipped: needs root (a scratch network namespace, BPF)");
        return;
    }
    let scratch = Scratch::new(tag);
    scratch.ip_in(&["link", "add", "ul0", "type", "veth", "peer", "name", "ul1"]);
    scratch.ip_in(&["addr", "add", "198.18.0.1/24", "dev", "ul0"]);
    scratch.ip_in(&["link", "set", "ul0", "up"]);
    scratch.ip_in(&["link", "set", "ul1", "up"]);
    for (vtep, mac) in VTEPS.iter().zip(VTEP_MACS) {
        let mac = mac.map(|b| format!("{b:02x}")).join(":");
        scratch.ip_in(&[
            "neigh",
            "replace",
            &vtep.to_string(),
            "lladdr",
            &mac,
            "dev",
            "ul0",
            "nud",
            "permanent",
        ]);
    }
    let ns = Netns::open_pinned(&scratch.path())
        .unwrap()
        .expect("pinned namespace");
    let dir = tempfile::tempdir().unwrap();
    let dir_path = dir.path().to_path_buf();
    ns.run(move || {
        let mut balancer = BpfBalancer::new(hook, "ul0", &dir_path).unwrap();
        balancer.apply(&desired()).unwrap();
        let tables = balancer.maglev_tables().unwrap();
        assert_eq!(tables.len(), 1, "one service, one table");
        let (pass, drop, forward) = match hook {
            BpfHook::Xdp => (XDP_PASS, XDP_DROP, [XDP_TX, XDP_REDIRECT]),
            BpfHook::Tc => (TC_ACT_OK, TC_ACT_SHOT, [TC_ACT_REDIRECT, TC_ACT_REDIRECT]),
        };
        let mut failures = Vec::new();
        let mut classes: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        let mut picked: BTreeMap<String, usize> = BTreeMap::new();
        for round in 0..2 {
            for case in cases(hook) {
                // The second round repeats only the balanced cases: after all the junk, each
                // is balanced again, to the backend its flow was given.
                if round == 1 && case.expect != Expect::Balance {
                    continue;
                }
                let state = balancer.map_state().unwrap();
                let before = counters(&balancer);
                let run = match (balancer.test_run_ingress(&case.frame), case.expect) {
                    (Ok(run), _) => run,
                    (Err(LbError::Io { source, .. }), Expect::Refused)
                        if source.kind() == std::io::ErrorKind::InvalidInput =>
                    {
                        let entry = classes.entry("refused by the kernel".into()).or_default();
                        entry.0 += 1;
                        continue;
                    }
                    (Err(err), _) => {
                        failures.push(format!("{}: {err}", case.name));
                        continue;
                    }
                };
                let after_state = balancer.map_state().unwrap();
                let moved = diff(&before, &counters(&balancer));
                let result = judge(
                    hook,
                    &case,
                    &run,
                    pass,
                    drop,
                    forward,
                    &state,
                    &after_state,
                    &moved,
                    round,
                    &mut picked,
                );
                let class = case.name.split(':').next().unwrap().to_string();
                let entry = classes.entry(class).or_default();
                entry.0 += 1;
                if let Err(why) = result {
                    entry.1 += 1;
                    failures.push(format!("{} (round {round}): {why}", case.name));
                }
            }
        }
        assert!(
            balancer.maglev_tables().unwrap() == tables,
            "{hook:?}: the Maglev table changed"
        );
        for (class, (total, failed)) in &classes {
            eprintln!(
                "{hook:?} {class}: {} of {total} packets as intended",
                total - failed
            );
        }
        assert!(
            failures.is_empty(),
            "{hook:?}: {} failures:\n{}",
            failures.len(),
            failures.join("\n")
        );
        Ok(())
    })
    .unwrap();
}

#[allow(clippy::too_many_arguments)]
fn judge(
    hook: BpfHook,
    case: &Case,
    run: &dataplane::bpf::test_run::TestRun,
    pass: u32,
    drop: u32,
    forward: [u32; 2],
    before: &MapState,
    after: &MapState,
    moved: &BTreeMap<String, u64>,
    round: usize,
    picked: &mut BTreeMap<String, usize>,
) -> Result<(), String> {
    let unchanged = run.packet == case.frame;
    match case.expect {
        Expect::Refused => {
            return Err(format!(
                "ran (verdict {}) though the kernel refuses it",
                run.verdict
            ))
        }
        Expect::Pass => {
            if run.verdict != pass || !unchanged || !moved.is_empty() || before != after {
                return Err(format!("verdict {} (want pass {pass}), packet unchanged {unchanged}, counters {moved:?}, maps unchanged {}", run.verdict, before == after));
            }
        }
        Expect::Drop(reason, rewritten) => {
            let want = BTreeMap::from([(format!("drop:{reason}"), 1)]);
            if run.verdict != drop
                || (!rewritten && !unchanged)
                || *moved != want
                || before != after
            {
                return Err(format!("verdict {} (want drop {drop}), packet unchanged {unchanged}, counters {moved:?} (want {want:?}), maps unchanged {}", run.verdict, before == after));
            }
        }
        Expect::Balance => {
            if !forward.contains(&run.verdict) {
                return Err(format!(
                    "verdict {} (want {forward:?}), counters {moved:?}",
                    run.verdict
                ));
            }
            let backend = check_balanced(hook, &case.frame, &run.packet)?;
            let want = BTreeMap::from([("forward:remote".to_string(), 1)]);
            if *moved != want {
                return Err(format!("counters {moved:?}, want {want:?}"));
            }
            let mut expected = before.clone();
            expected.flows.clone_from(&after.flows);
            let new_flows = after.flows.len() - before.flows.len();
            if expected != *after
                || new_flows != usize::from(round == 0)
                || !after.revnat.is_empty()
            {
                return Err(format!(
                    "maps changed beyond one flow ({new_flows} new flows)"
                ));
            }
            if let Some(&first) = picked.get(&case.name) {
                if first != backend {
                    return Err(format!("went to backend {backend}, first to {first}"));
                }
            }
            picked.insert(case.name.clone(), backend);
        }
    }
    Ok(())
}

#[test]
fn xdp_ingress_survives_hostile_packets() {
    run_suite(BpfHook::Xdp, "xdp");
}

#[test]
fn tc_ingress_survives_hostile_packets() {
    run_suite(BpfHook::Tc, "tc");
}
