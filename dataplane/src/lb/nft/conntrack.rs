//! Forgetting the conntrack entries of flows DNATed to a destination that is no longer a
//! backend, as kube-proxy does for removed endpoints.
//!
//! Conntrack keeps a flow on its backend, which is what keeps a draining backend's flows going;
//! but an entry whose backend is gone keeps its NAT binding too:
//! - TCP: a client's SYN that went unanswered (its backend stopped an instant earlier) leaves
//!   an `[UNREPLIED] SYN_SENT` entry for two minutes, and a later connection from the same
//!   client port (ports are reused within seconds under load) matches it and is sent to the
//!   gone backend again: a connect timeout. Only `SYN_SENT` entries go: an established flow
//!   is left to end on its own (closed and reset entries are replaced by a new SYN anyway).
//! - UDP: every datagram of a client that keeps its port (a resolver, say) refreshes its entry,
//!   so it would go to the gone backend for as long as it talks. Its entries go, as kube-proxy
//!   deletes them for removed endpoints.
//!
//! So after every change of the table, those entries of flows to a published port whose
//! replies would come from anything but a current destination of that port are deleted, and
//! those of a port this balancer published until now, with the `conntrack` tool
//! (`conntrack-tools`).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::Ipv4Addr;
use std::process::Command;

use super::kernel::in_ns;
use crate::lb::{HostLb, LbError, Protocol};
use crate::overlay::netns::Netns;

/// Where a flow to a published port goes: the address and port its replies come from.
pub type Destination = (Ipv4Addr, u16);

/// For every published (protocol, port) of `desired`, the destinations its flows may have:
/// each backend's, draining ones included (they keep their flows). A local backend is DNATed
/// to the task's address and target port, a remote one to its host and the published port.
pub fn destinations(desired: &HostLb) -> BTreeMap<(Protocol, u16), BTreeSet<Destination>> {
    let mut all: BTreeMap<(Protocol, u16), BTreeSet<Destination>> = BTreeMap::new();
    for service in &desired.services {
        for port in &service.ports {
            let kept = all.entry((port.protocol, port.published)).or_default();
            for backend in &service.backends {
                kept.insert(if desired.is_local(backend) {
                    (backend.ip, port.target)
                } else {
                    (backend.vtep, port.published)
                });
            }
        }
    }
    all
}

/// The reply sources (`src=` and `sport=` of the reply tuple, the second of each on a line)
/// of `conntrack -L` output.
pub fn reply_sources(listing: &str) -> Vec<Destination> {
    listing
        .lines()
        .filter_map(|line| {
            let field = |name: &str| {
                line.split_whitespace()
                    .filter_map(|word| word.strip_prefix(name))
                    .nth(1)
            };
            Some((field("src=")?.parse().ok()?, field("sport=")?.parse().ok()?))
        })
        .collect()
}

/// The destinations among `seen` that are not in `kept`, once each.
pub fn stale(seen: &[Destination], kept: &BTreeSet<Destination>) -> BTreeSet<Destination> {
    seen.iter().filter(|d| !kept.contains(d)).copied().collect()
}

/// Deletes, in `ns`, the entries of flows to `underlay_ip`'s published ports whose replies would
/// come from a destination `desired` no longer has: every UDP one, and the TCP ones still in
/// `SYN_SENT`. `unpublished` are ports published before and no longer, whose entries all go
/// likewise. Returns how many destinations were forgotten.
pub fn forget_stale_flows(
    ns: &Netns,
    underlay_ip: Ipv4Addr,
    desired: &HostLb,
    unpublished: &BTreeSet<(Protocol, u16)>,
) -> Result<usize, LbError> {
    let mut forgotten = 0;
    let mut ports = destinations(desired);
    for port in unpublished {
        ports.entry(*port).or_default();
    }
    for ((protocol, published), kept) in ports {
        let to_port = [
            "-p".to_string(),
            protocol.name().to_string(),
            "--orig-dst".to_string(),
            underlay_ip.to_string(),
            "--dport".to_string(),
            published.to_string(),
        ];
        let listing = run(ns, "-L", &to_port)?;
        for (ip, port) in stale(&reply_sources(&listing), &kept) {
            let mut args = to_port.to_vec();
            if protocol == Protocol::Tcp {
                args.extend(["--state".to_string(), "SYN_SENT".to_string()]);
            }
            args.extend([
                "--reply-src".to_string(),
                ip.to_string(),
                "--reply-port-src".to_string(),
                port.to_string(),
            ]);
            run(ns, "-D", &args)?;
            forgotten += 1;
        }
    }
    Ok(forgotten)
}

/// `conntrack <command> <args>` in `ns`: its standard output. "0 flow entries" is no error
/// (the tool exits with 1 when a delete matched nothing, say because the entry just expired).
fn run(ns: &Netns, command: &str, args: &[String]) -> Result<String, LbError> {
    let output = in_ns(ns, "running conntrack", || {
        Command::new("conntrack").arg(command).args(args).output()
    })
    .map_err(|err| match err {
        LbError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => LbError::Io {
            operation: "forgetting the conntrack entries of removed backends: the conntrack \
                            tool is missing; install it (Debian: apt install conntrack, or bash \
                            scripts/setup.sh)"
                .to_string(),
            source,
        },
        other => other,
    })?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() && !stderr.contains(" 0 flow entries") {
        return Err(LbError::Io {
            operation: format!("conntrack {command} {}", args.join(" ")),
            source: io::Error::other(stderr.trim().to_string()),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::{BackendState, LbBackend, LbPort, LbService};

    const HERE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 4);
    const THERE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    fn backend(ip: [u8; 4], vtep: Ipv4Addr, state: BackendState) -> LbBackend {
        LbBackend {
            task_id: format!("t{}", ip[3]),
            network_id: "net".into(),
            ip: ip.into(),
            mac: [2, 66, ip[0], ip[1], ip[2], ip[3]],
            vtep,
            weight: 1,
            state,
        }
    }

    fn desired() -> HostLb {
        HostLb {
            underlay_ip: HERE,
            underlay_if: "eth0".into(),
            underlay_mtu: 1500,
            data_path_port: 4789,
            networks: vec![],
            services: vec![LbService {
                id: "s".into(),
                name: "web".into(),
                ports: vec![LbPort {
                    protocol: Protocol::Tcp,
                    published: 8080,
                    target: 80,
                    local_only: false,
                }],
                vips: vec![],
                backends: vec![
                    backend([10, 0, 0, 6], HERE, BackendState::Active),
                    backend([10, 0, 0, 7], HERE, BackendState::Draining),
                    backend([10, 0, 0, 3], THERE, BackendState::Active),
                ],
            }],
        }
    }

    #[test]
    fn local_backends_are_kept_by_task_and_target_remote_ones_by_host_and_published_port() {
        let all = destinations(&desired());
        let kept = &all[&(Protocol::Tcp, 8080)];
        let expected: BTreeSet<Destination> = [
            (Ipv4Addr::new(10, 0, 0, 6), 80),
            (Ipv4Addr::new(10, 0, 0, 7), 80),
            (THERE, 8080),
        ]
        .into();
        assert_eq!(*kept, expected);
    }

    #[test]
    fn the_reply_tuple_is_read_from_each_listed_entry() {
        let listing = "\
tcp      6 106 SYN_SENT src=198.18.0.5 dst=198.18.0.4 sport=36278 dport=8080 [UNREPLIED] src=10.0.0.9 dst=198.18.0.5 sport=80 dport=36278 mark=0 use=1
tcp      6 117 TIME_WAIT src=198.18.0.5 dst=198.18.0.4 sport=40000 dport=8080 src=198.18.0.2 dst=198.18.0.4 sport=8080 dport=40000 [ASSURED] mark=0 use=1
udp      17 29 src=198.18.0.5 dst=198.18.0.4 sport=5353 dport=8080 src=10.0.0.6 dst=198.18.0.5 sport=80 dport=5353 mark=0 use=1
a line that is no entry
";
        assert_eq!(
            reply_sources(listing),
            vec![
                (Ipv4Addr::new(10, 0, 0, 9), 80),
                (THERE, 8080),
                (Ipv4Addr::new(10, 0, 0, 6), 80),
            ]
        );
    }

    #[test]
    fn only_destinations_no_backend_has_are_stale() {
        let kept = destinations(&desired())[&(Protocol::Tcp, 8080)].clone();
        let seen = [
            (Ipv4Addr::new(10, 0, 0, 9), 80),
            (Ipv4Addr::new(10, 0, 0, 9), 80),
            (Ipv4Addr::new(10, 0, 0, 7), 80),
            (THERE, 8080),
            // The same host on another port is another destination.
            (THERE, 80),
        ];
        let expected: BTreeSet<Destination> =
            [(Ipv4Addr::new(10, 0, 0, 9), 80), (THERE, 80)].into();
        assert_eq!(stale(&seen, &kept), expected);
    }
}
