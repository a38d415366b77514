//! `meshctl diag ...`: find the network problems that break a cluster silently. Ports, MTU and
//! overlay checks run on every host involved (through the managers); the firewall check reads
//! this host's rulesets. Every check exits non-zero when it finds a problem.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use control::api::{ApiRequest, ApiResponse};
use control::diag::{render, DiagReport, DiagRequest};
use control::local_api::{self, Request, Response};

use crate::cluster_cmd::cluster;
use crate::output::Format;

/// Diagnostics.
#[derive(Debug, Subcommand)]
pub enum DiagCommand {
    /// From every host to every other host: TCP 2377 (TLS handshake, managers), UDP and TCP
    /// 7946 (gossip pings) and the VXLAN port (a probe the far meshd answers), as a matrix.
    Ports {
        /// Only probe from these hosts (names or IDs, comma-separated) [default: all].
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Path MTU from this host to the others, on the underlay (DF probes, binary search, with
    /// timeouts for ICMP black holes) and over the overlay, with the overlay MTU to use.
    Mtu {
        /// Only to this host [default: every other host].
        #[arg(long)]
        to: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Each host's FDB, neighbour and DNS state of a network against the endpoint table and
    /// the control plane, and a ping from task to task between every pair of hosts.
    Overlay {
        /// The network [default: every network].
        network: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Each host's load-balancer path (xdp, tc or nftables, as `--lb-mode` chose), what it
    /// balances, and its counters: packets forwarded, and every drop by reason.
    Lb {
        /// Only these hosts (names or IDs, comma-separated) [default: all].
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// This host's nftables and iptables rules that drop Mesh's ports, and the kernel settings
    /// known to break VXLAN (rp_filter, conntrack, checksum offload).
    Firewall {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// Runs `meshctl diag ...`.
pub fn diag(socket: &Path, command: DiagCommand) -> anyhow::Result<ExitCode> {
    let (request, format, print): (DiagRequest, Format, fn(&DiagReport) -> String) = match command {
        DiagCommand::Ports { nodes, format } => {
            (DiagRequest::Ports { nodes }, format, render::ports)
        }
        DiagCommand::Mtu { to, format } => {
            let from = local_status(socket)?.node_name;
            (DiagRequest::Mtu { from, to }, format, render::mtu)
        }
        DiagCommand::Overlay { network, format } => {
            (DiagRequest::Overlay { network }, format, render::overlay)
        }
        DiagCommand::Lb { nodes, format } => (DiagRequest::Lb { nodes }, format, render::lb),
        DiagCommand::Firewall { format } => return firewall(socket, format),
    };
    let ApiResponse::Diag(report) = cluster(socket, ApiRequest::Diag(request))? else {
        bail!("unexpected answer to a diag request");
    };
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Table => print!("{}", print(&report)),
    }
    Ok(if report.has_problem() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn local_status(socket: &Path) -> anyhow::Result<control::local_api::DaemonStatus> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match runtime.block_on(local_api::call(socket, &Request::Status))? {
        Response::Status(status) => Ok(status),
        _ => bail!("meshd answered with something else; is meshctl the same version as meshd?"),
    }
}

/// The firewall check runs here, on this host's own rulesets and settings.
fn firewall(socket: &Path, format: Format) -> anyhow::Result<ExitCode> {
    use dataplane::probe::firewall::{check_firewall, Severity};
    let status = local_status(socket)?;
    let underlay = status
        .advertise_addr
        .as_deref()
        .and_then(|a| a.parse::<std::net::IpAddr>().ok())
        .and_then(|ip| match ip {
            std::net::IpAddr::V4(v4) => Some(v4),
            std::net::IpAddr::V6(_) => None,
        });
    let iface = underlay
        .and_then(|ip| dataplane::overlay::interface_of(ip).ok().flatten())
        .unwrap_or_default();
    let cluster_port = status
        .listen_addr
        .parse::<std::net::SocketAddr>()
        .map_or(control::config::DEFAULT_CLUSTER_PORT, |a| a.port());
    let report = check_firewall(
        status.data_path_port,
        status.gossip_port,
        cluster_port,
        &iface,
    );
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Table => {
            for finding in &report.findings {
                println!("{:?}: {}", finding.severity, finding.what);
                if let Some(rule) = &finding.rule {
                    println!("    rule: {rule}");
                }
                println!("    where: {}", finding.location);
                println!("    fix: {}", finding.fix);
            }
            for note in &report.notes {
                println!("note: {note}");
            }
            if report.findings.is_empty() {
                println!("No rule drops Mesh's ports and no setting is known to break VXLAN (checked: {}).", report.checked.join(", "));
            }
        }
    }
    let problem = report
        .findings
        .iter()
        .any(|f| f.severity == Severity::Problem);
    Ok(if problem {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
