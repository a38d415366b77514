//! `meshctl network ...`: overlay networks, in docker's conventions.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use control::api::{ApiRequest, ApiResponse};
use control::network::{NetworkSpec, NetworkView};

use crate::cluster_cmd::cluster;
use crate::output::{print_list, short_id, Format};
use crate::service_cmd::key_values;

/// `meshctl network` subcommands.
#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create an overlay network.
    Create {
        /// Network driver; only overlay.
        #[arg(short, long, default_value = "overlay")]
        driver: String,
        /// Subnet in CIDR form [default: the next free one of the cluster's address pool].
        #[arg(long, value_name = "CIDR")]
        subnet: Option<String>,
        /// Gateway address [default: the subnet's first address].
        #[arg(long, value_name = "IP")]
        gateway: Option<Ipv4Addr>,
        /// Driver option; mtu=N sets the overlay MTU (else derived: underlay MTU minus 50).
        #[arg(short, long = "opt", value_name = "KEY=VALUE")]
        opts: Vec<String>,
        /// Let standalone tasks attach.
        #[arg(long)]
        attachable: bool,
        /// Label KEY=VALUE (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Network name.
        name: String,
    },
    /// List networks.
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show networks and their attached tasks as JSON.
    Inspect {
        /// Add each host's gossip view of the endpoint table, with what it misses or still
        /// holds compared with the control plane.
        #[arg(long, short)]
        verbose: bool,
        /// Networks (name, ID or ID prefix).
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove networks no service or task uses.
    Rm {
        /// Networks (name, ID or ID prefix).
        #[arg(required = true)]
        networks: Vec<String>,
    },
}

/// Runs `meshctl network ...`.
pub fn network(socket: &Path, command: NetworkCommand) -> anyhow::Result<ExitCode> {
    match command {
        NetworkCommand::Create {
            driver,
            subnet,
            gateway,
            opts,
            attachable,
            labels,
            name,
        } => {
            let mut mtu = None;
            for opt in &opts {
                match opt.split_once('=') {
                    Some(("mtu", value)) => {
                        mtu = Some(value.parse::<u32>().map_err(|_| {
                            anyhow::anyhow!("--opt mtu={value}: the MTU must be a number")
                        })?)
                    }
                    _ => bail!("--opt {opt:?} is not known; the overlay driver takes mtu=N"),
                }
            }
            let labels = key_values("--label", &labels)?;
            let spec = NetworkSpec {
                name,
                driver,
                subnet,
                gateway,
                mtu,
                attachable,
                labels,
            };
            let ApiResponse::Done { message, warnings } =
                cluster(socket, ApiRequest::NetworkCreate(spec))?
            else {
                bail!("unexpected answer to a network create request");
            };
            for warning in warnings {
                eprintln!("warning: {warning}");
            }
            println!("{message}");
        }
        NetworkCommand::Ls { format } => {
            let ApiResponse::Networks(networks) = cluster(socket, ApiRequest::NetworkList)? else {
                bail!("unexpected answer to a network list request");
            };
            print_list(
                format,
                &networks,
                &[
                    "ID", "NAME", "DRIVER", "SUBNET", "GATEWAY", "VNI", "MTU", "TASKS",
                ],
                |n| {
                    vec![
                        short_id(&n.id).to_string(),
                        n.name.clone(),
                        n.driver.clone(),
                        n.subnet.clone(),
                        n.gateway.to_string(),
                        n.vni.to_string(),
                        n.mtu.to_string(),
                        n.endpoints.len().to_string(),
                    ]
                },
            );
        }
        NetworkCommand::Inspect { verbose, networks } => {
            let mut views: Vec<NetworkView> = Vec::new();
            for network in networks {
                let ApiResponse::Network(view) =
                    cluster(socket, ApiRequest::NetworkInspect { network, verbose })?
                else {
                    bail!("unexpected answer to a network inspect request");
                };
                views.push(*view);
            }
            println!("{}", serde_json::to_string_pretty(&views)?);
        }
        NetworkCommand::Rm { networks } => {
            for network in networks {
                let ApiResponse::Done { message, .. } =
                    cluster(socket, ApiRequest::NetworkRemove { network })?
                else {
                    bail!("unexpected answer to a network rm request");
                };
                println!("{message}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
