//! Baselines built by hand, the way users (or Swarm and kube-proxy) build them, so Mesh is
//! measured against the real thing rather than a straw man.

use std::net::Ipv4Addr;

use anyhow::Result;
use lab::Lab;

use crate::tools::{in_ns, nft_apply, sh};

/// A task endpoint on a hand-made overlay: its namespace, overlay address and MAC.
pub struct OverlayTask {
    /// Lab host it lives on.
    pub host: String,
    /// The task's network namespace.
    pub netns: String,
    /// Its overlay address.
    pub ip: Ipv4Addr,
    /// Its MAC.
    pub mac: String,
}

/// The hand-made overlay's VNI (Swarm starts its VNIs at 4097).
const VNI: &str = "4097";
/// VXLAN costs 50 bytes on a 1500-byte underlay.
const OVERLAY_MTU: &str = "1450";

/// Builds a VXLAN overlay between `hosts` exactly as Swarm does: per host an overlay sandbox
/// namespace holding a bridge and a kernel vxlan device (created in the host namespace, so its
/// UDP socket is on the underlay, then moved into the sandbox), learning off, a task namespace
/// on a veth to that bridge, and static neighbour and FDB entries for every remote task.
pub fn swarm_style_vxlan(lab: &Lab, hosts: &[&str]) -> Result<Vec<OverlayTask>> {
    let mut tasks = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let host_ns = lab.netns(host)?;
        let (sandbox, task_ns) = (format!("{host_ns}.ov"), format!("{host_ns}.task"));
        let ordinal = u8::try_from(i + 2)?;
        let task = OverlayTask {
            host: host.to_string(),
            netns: task_ns.clone(),
            ip: Ipv4Addr::new(10, 99, 0, ordinal),
            mac: format!("02:42:0a:63:00:{ordinal:02x}"),
        };
        let local = lab.address(host)?;
        let (ip, mac) = (task.ip, &task.mac);
        for ns in [&sandbox, &task_ns] {
            run_ip(lab, host, None, &format!("netns add {ns}"))?;
            run_ip(lab, host, Some(ns), "link set lo up")?;
        }
        run_ip(
            lab,
            host,
            None,
            &format!("link add vx-bench type vxlan id {VNI} local {local} dstport 4789 nolearning"),
        )?;
        run_ip(
            lab,
            host,
            None,
            &format!("link set vx-bench netns {sandbox}"),
        )?;
        let sb = Some(sandbox.as_str());
        run_ip(
            lab,
            host,
            sb,
            &format!("link add br0 mtu {OVERLAY_MTU} type bridge"),
        )?;
        run_ip(
            lab,
            host,
            sb,
            &format!("link set vx-bench mtu {OVERLAY_MTU} master br0 up"),
        )?;
        run_ip(
            lab,
            host,
            sb,
            &format!(
                "link add veth-task mtu {OVERLAY_MTU} type veth peer name eth0 netns {task_ns}"
            ),
        )?;
        run_ip(lab, host, sb, "link set veth-task master br0 up")?;
        run_ip(lab, host, sb, "link set br0 up")?;
        run_ip(
            lab,
            host,
            Some(&task_ns),
            &format!("link set eth0 address {mac} mtu {OVERLAY_MTU} up"),
        )?;
        run_ip(
            lab,
            host,
            Some(&task_ns),
            &format!("addr add {ip}/24 dev eth0"),
        )?;
        tasks.push(task);
    }
    for (i, host) in hosts.iter().enumerate() {
        let sandbox = format!("{}.ov", lab.netns(host)?);
        for (j, remote) in tasks.iter().enumerate() {
            if i == j {
                continue;
            }
            let vtep = lab.address(&remote.host)?;
            let (ip, mac) = (remote.ip, &remote.mac);
            run_ip(
                lab,
                host,
                Some(&tasks[i].netns),
                &format!("neigh replace {ip} lladdr {mac} dev eth0 nud permanent"),
            )?;
            let fdb = format!("fdb replace {mac} dev vx-bench dst {vtep} self permanent");
            run_tool(lab, host, Some(&sandbox), "bridge", &fdb)?;
        }
    }
    Ok(tasks)
}

/// Runs `ip COMMAND` (words separated by single spaces) in `host`, or in namespace `ns` there.
fn run_ip(lab: &Lab, host: &str, ns: Option<&str>, command: &str) -> Result<()> {
    run_tool(lab, host, ns, "ip", command)
}

/// Runs `PROGRAM COMMAND` in `host`, or in namespace `ns` there.
fn run_tool(lab: &Lab, host: &str, ns: Option<&str>, program: &str, command: &str) -> Result<()> {
    let mut argv = vec![program];
    argv.extend(command.split(' '));
    match ns {
        Some(ns) => sh(lab, host, &in_ns(ns, &argv)),
        None => sh(lab, host, &argv),
    }
    .map(drop)
}

/// Sets up kube-proxy/Swarm-style load balancing on `host`: nftables DNAT of `port` to the
/// backends picked at random per connection, and masquerade so replies return through `host`.
pub fn nft_dnat_lb(lab: &Lab, host: &str, port: u16, backends: &[(Ipv4Addr, u16)]) -> Result<()> {
    sh(lab, host, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    let map: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, (ip, port))| format!("{i} : {ip} . {port}"))
        .collect();
    let ruleset = format!(
        "table ip bench_lb {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    tcp dport {port} dnat ip addr . port to numgen random mod {n} map {{ {map} }}
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ct status dnat masquerade
  }}
}}
",
        n = backends.len(),
        map = map.join(", "),
    );
    nft_apply(lab, host, &ruleset)
}
