//! meshctl: the one CLI for Mesh. Cluster and service management in docker's conventions, the
//! local lab, and diagnostics.

mod lab_cmd;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use control::local_api::{self, Request, Response};

use output::{print_record, Format};

/// The Mesh command-line interface.
#[derive(Debug, Parser)]
#[command(name = "meshctl", version, propagate_version = true)]
struct Cli {
    /// meshd's control socket [default: $MESH_SOCKET, else /var/lib/mesh/meshd.sock].
    #[arg(long, global = true, env = "MESH_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the local meshd: node, version, addresses, ports, uptime.
    Info {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Local multi-host labs in network namespaces.
    #[command(subcommand)]
    Lab(lab_cmd::LabCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("meshctl: {}", control::report(&err));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Info { format } => {
            let socket = cli.socket.unwrap_or_else(|| {
                PathBuf::from(control::config::DEFAULT_STATE_DIR)
                    .join(control::config::CONTROL_SOCKET_NAME)
            });
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let Response::Status(status) =
                runtime.block_on(local_api::call(&socket, &Request::Status))?
            else {
                anyhow::bail!("meshd answered a status request with something else; is meshctl the same version as meshd?");
            };
            print_record(
                format,
                &status,
                &[
                    ("Node", status.node_name.clone()),
                    ("Version", status.version.clone()),
                    ("PID", status.pid.to_string()),
                    ("Uptime", format!("{}s", status.uptime_secs)),
                    ("Listen address", status.listen_addr.clone()),
                    (
                        "Advertise address",
                        status
                            .advertise_addr
                            .clone()
                            .unwrap_or_else(|| "(not set)".into()),
                    ),
                    ("Data path port", format!("{}/udp", status.data_path_port)),
                    ("Gossip port", format!("{}/tcp+udp", status.gossip_port)),
                    ("State directory", status.state_dir.display().to_string()),
                ],
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Lab(command) => lab_cmd::run(command),
    }
}
