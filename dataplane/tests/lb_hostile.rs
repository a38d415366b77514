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
use packets::cases::{cases, Case, Expect};
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
            let outcome = format!(
                "{} of {total} packets as intended (verdict, output bytes, map state)",
                total - failed
            );
            eprintln!("{hook:?} {class}: {outcome}");
            packets::report(
                &format!("malformed packets at lb_ingress ({hook:?}): {class}"),
                *failed == 0,
                &outcome,
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
