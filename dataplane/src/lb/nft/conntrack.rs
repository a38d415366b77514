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

/// One listed entry that may need to go: its protocol, the port it was sent to, and where its
/// replies come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listed {
    pub protocol: Protocol,
    pub port: u16,
    pub reply: Destination,
}

/// The entries of `conntrack -L` output that the cleanup may delete: every UDP one and the TCP
/// ones in `SYN_SENT` (`<proto> <num> <timeout> [<state>] src= dst= sport= dport= ...`, the
/// reply tuple's `src=` and `sport=` the second of each).
pub fn listed(listing: &str) -> Vec<Listed> {
    listing
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let protocol = match *words.first()? {
                "tcp" if words.get(3) == Some(&"SYN_SENT") => Protocol::Tcp,
                "udp" => Protocol::Udp,
                _ => return None,
            };
            let field =
                |name: &str, nth: usize| words.iter().filter_map(|w| w.strip_prefix(name)).nth(nth);
            Some(Listed {
                protocol,
                port: field("dport=", 0)?.parse().ok()?,
                reply: (
                    field("src=", 1)?.parse().ok()?,
                    field("sport=", 1)?.parse().ok()?,
                ),
            })
        })
        .collect()
}

/// The (protocol, port, destination) of the `entries` to a port in `ports` whose destination
/// is not among that port's kept ones, once each.
pub fn stale(
    entries: &[Listed],
    ports: &BTreeMap<(Protocol, u16), BTreeSet<Destination>>,
) -> BTreeSet<Listed> {
    entries
        .iter()
        .filter(|e| {
            ports
                .get(&(e.protocol, e.port))
                .is_some_and(|kept| !kept.contains(&e.reply))
        })
        .copied()
        .collect()
}

/// Deletes, in `ns`, the entries of flows to `underlay_ip`'s published ports whose replies would
/// come from a destination `desired` no longer has: every UDP one, and the TCP ones still in
/// `SYN_SENT`. `unpublished` are ports published before and no longer, whose entries all go
/// likewise. Lists once, then deletes per stale destination. Returns how many destinations
/// were forgotten.
pub fn forget_stale_flows(
    ns: &Netns,
    underlay_ip: Ipv4Addr,
    desired: &HostLb,
    unpublished: &BTreeSet<(Protocol, u16)>,
) -> Result<usize, LbError> {
    let mut ports = destinations(desired);
    for port in unpublished {
        ports.entry(*port).or_default();
    }
    if ports.is_empty() {
        return Ok(0);
    }
    let to_host = ["--orig-dst".to_string(), underlay_ip.to_string()];
    let gone = stale(&listed(&run(ns, "-L", &to_host)?), &ports);
    for entry in &gone {
        let mut args = to_host.to_vec();
        args.extend([
            "-p".to_string(),
            entry.protocol.name().to_string(),
            "--dport".to_string(),
            entry.port.to_string(),
            "--reply-src".to_string(),
            entry.reply.0.to_string(),
            "--reply-port-src".to_string(),
            entry.reply.1.to_string(),
        ]);
        if entry.protocol == Protocol::Tcp {
            args.extend(["--state".to_string(), "SYN_SENT".to_string()]);
        }
        run(ns, "-D", &args)?;
    }
    Ok(gone.len())
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
    fn unanswered_tcp_and_all_udp_entries_are_read_from_the_listing() {
        let listing = "\
tcp      6 106 SYN_SENT src=198.18.0.5 dst=198.18.0.4 sport=36278 dport=8080 [UNREPLIED] src=10.0.0.9 dst=198.18.0.5 sport=80 dport=36278 mark=0 use=1
tcp      6 117 TIME_WAIT src=198.18.0.5 dst=198.18.0.4 sport=40000 dport=8080 src=198.18.0.2 dst=198.18.0.4 sport=8080 dport=40000 [ASSURED] mark=0 use=1
udp      17 29 src=198.18.0.5 dst=198.18.0.4 sport=5353 dport=53 src=10.0.0.6 dst=198.18.0.5 sport=80 dport=5353 mark=0 use=1
a line that is no entry
";
        assert_eq!(
            listed(listing),
            vec![
                Listed {
                    protocol: Protocol::Tcp,
                    port: 8080,
                    reply: (Ipv4Addr::new(10, 0, 0, 9), 80),
                },
                Listed {
                    protocol: Protocol::Udp,
                    port: 53,
                    reply: (Ipv4Addr::new(10, 0, 0, 6), 80),
                },
            ]
        );
    }

    #[test]
    fn only_destinations_no_backend_has_are_stale() {
        let ports = destinations(&desired());
        let tcp = |reply: Destination, port: u16| Listed {
            protocol: Protocol::Tcp,
            port,
            reply,
        };
        let entries = [
            tcp((Ipv4Addr::new(10, 0, 0, 9), 80), 8080),
            tcp((Ipv4Addr::new(10, 0, 0, 9), 80), 8080),
            tcp((Ipv4Addr::new(10, 0, 0, 7), 80), 8080),
            tcp((THERE, 8080), 8080),
            // The same host on another port is another destination.
            tcp((THERE, 80), 8080),
            // A port this balancer does not publish is not its business.
            tcp((Ipv4Addr::new(10, 0, 0, 9), 80), 9090),
        ];
        let expected: BTreeSet<Listed> = [
            tcp((Ipv4Addr::new(10, 0, 0, 9), 80), 8080),
            tcp((THERE, 80), 8080),
        ]
        .into();
        assert_eq!(stale(&entries, &ports), expected);
    }
}
