//! `meshctl lab`: local multi-host labs in network namespaces (see the `lab` crate).

use std::io::{Read, Seek, SeekFrom, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use lab::{Lab, LabSpec, LinkParams, Power, TaskRuntime};

use crate::output::{print_list, Format};

/// Local multi-host labs: hosts as network namespaces on a lab switch.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build a lab and start meshd on its managers and workers.
    Up(UpArgs),
    /// Remove everything a lab made: namespaces, links, processes, mounts, cgroups, files.
    Down {
        /// Lab name.
        name: String,
    },
    /// List the labs on this machine.
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show every host of a lab: role, address, power, daemon and link.
    Status {
        /// Lab name.
        name: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Run a command inside a host (meshctl there talks to that host's meshd).
    Exec {
        /// Lab name.
        name: String,
        /// Host name (m1, w1, c1, ...).
        host: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Print a host's meshd log.
    Logs {
        /// Lab name.
        name: String,
        /// Host name.
        host: String,
        /// Keep printing new lines as they come.
        #[arg(short, long)]
        follow: bool,
    },
    /// Simulate power loss: the host's processes die and its link goes down.
    Kill {
        /// Lab name.
        name: String,
        /// Host name.
        host: String,
    },
    /// Power a killed host back on with its state, or restart a stopped meshd.
    Start {
        /// Lab name.
        name: String,
        /// Host name.
        host: String,
    },
    /// Kill only meshd on a host, as in a daemon crash; tasks and kernel state stay.
    StopDaemon {
        /// Lab name.
        name: String,
        /// Host name.
        host: String,
    },
    /// Cut hosts off from other hosts, both directions.
    Partition {
        /// Lab name.
        name: String,
        /// Hosts on one side.
        #[arg(required = true)]
        hosts: Vec<String>,
        /// Hosts on the other side.
        #[arg(long, required = true, num_args = 1..)]
        from: Vec<String>,
    },
    /// Remove every partition.
    Heal {
        /// Lab name.
        name: String,
    },
    /// Change one host's link: MTU, loss, delay.
    Link {
        /// Lab name.
        name: String,
        /// Host name.
        host: String,
        #[command(flatten)]
        link: LinkArgs,
    },
}

/// `lab up` options.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Lab name: lowercase letters, digits and '-'.
    #[arg(long)]
    name: String,
    /// Manager hosts (m1, m2, ...).
    #[arg(long, default_value_t = 3, allow_negative_numbers = true)]
    managers: usize,
    /// Worker hosts (w1, w2, ...).
    #[arg(long, default_value_t = 2, allow_negative_numbers = true)]
    workers: usize,
    /// Client hosts without meshd, for load generators (c1, c2, ...).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    clients: usize,
    /// Leave the hosts without meshd.
    #[arg(long)]
    no_daemons: bool,
    /// Start meshd but form no cluster (for trying init and join by hand).
    #[arg(long)]
    no_cluster: bool,
    /// What runs tasks: meshd's built-in process runtime, or a containerd on every manager
    /// and worker (started before meshd, with the lab's images imported).
    #[arg(long, value_enum, default_value_t)]
    runtime: RuntimeArg,
    /// A lab host (e.g. c1) whose address tasks' DNS forwards outside names to; run a
    /// resolver there. Without it, outside names get SERVFAIL and no query leaves the lab.
    #[arg(long, value_name = "HOST")]
    dns_upstream: Option<String>,
    /// How the hosts' meshd balance published ports: auto, xdp, tc or nftables
    /// [default: meshd's, auto].
    #[arg(long, value_name = "MODE", value_parser = parse_lb_mode)]
    lb_mode: Option<String>,
    #[command(flatten)]
    link: LinkArgs,
}

/// Checks `--lb-mode` here, so a typo fails before any host is made.
fn parse_lb_mode(text: &str) -> Result<String, String> {
    dataplane::lb::LbMode::parse(text).map(|_| text.to_string())
}

/// `--runtime` values.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum RuntimeArg {
    /// meshd's built-in process runtime.
    #[default]
    Process,
    /// A containerd per host.
    Containerd,
}

impl From<RuntimeArg> for TaskRuntime {
    fn from(arg: RuntimeArg) -> Self {
        match arg {
            RuntimeArg::Process => TaskRuntime::Process,
            RuntimeArg::Containerd => TaskRuntime::Containerd,
        }
    }
}

/// Link emulation options.
#[derive(Debug, Args)]
pub struct LinkArgs {
    /// MTU of each host's link.
    #[arg(long)]
    mtu: Option<u32>,
    /// Percent of frames each host sends that are lost.
    #[arg(long, value_name = "PCT")]
    loss: Option<f64>,
    /// One-way delay added to every frame a host sends, in ms.
    #[arg(long, value_name = "MS")]
    delay: Option<u32>,
}

impl LinkArgs {
    fn params(&self) -> LinkParams {
        LinkParams {
            mtu: self.mtu,
            loss_pct: self.loss,
            delay_ms: self.delay,
        }
    }
}

/// Runs one lab command.
pub fn run(command: LabCommand) -> anyhow::Result<ExitCode> {
    match command {
        LabCommand::Up(args) => {
            let spec = LabSpec {
                name: args.name.clone(),
                managers: args.managers,
                workers: args.workers,
                clients: args.clients,
                link: args.link.params(),
                start_daemons: !args.no_daemons,
                form_cluster: !args.no_cluster && !args.no_daemons,
                runtime: args.runtime.into(),
                dns_upstream_host: args.dns_upstream.clone(),
                lb_mode: args.lb_mode.clone(),
            };
            let lab = Lab::up(&spec)?;
            println!(
                "lab {} is up (tasks run through {})",
                lab.name(),
                spec.runtime
            );
            print_status(&lab, Format::Table);
        }
        LabCommand::Down { name } => {
            Lab::down(&name)?;
            println!("lab {name} removed");
        }
        LabCommand::Ls { format } => {
            let labs = lab::list()?;
            print_list(
                format,
                &labs,
                &["NAME", "HOSTS", "ON", "DAEMONS", "CONDITION"],
                |l| {
                    vec![
                        l.name.clone(),
                        l.hosts.to_string(),
                        l.hosts_on.to_string(),
                        l.daemons_running.to_string(),
                        l.condition.clone(),
                    ]
                },
            );
        }
        LabCommand::Status { name, format } => print_status(&Lab::open(&name)?, format),
        LabCommand::Exec {
            name,
            host,
            command,
        } => {
            let status = Lab::open(&name)?.exec(&host, &command)?;
            return Ok(ExitCode::from(exit_code(status)));
        }
        LabCommand::Logs { name, host, follow } => {
            let files = Lab::open(&name)?.files(&host)?;
            print_log(&files.log(), follow)?;
        }
        LabCommand::Kill { name, host } => {
            Lab::open(&name)?.kill(&host)?;
            println!("{host} powered off");
        }
        LabCommand::Start { name, host } => {
            Lab::open(&name)?.start(&host)?;
            println!("{host} started");
        }
        LabCommand::StopDaemon { name, host } => {
            Lab::open(&name)?.stop_daemon(&host)?;
            println!("meshd on {host} killed; its tasks and kernel state remain");
        }
        LabCommand::Partition { name, hosts, from } => {
            Lab::open(&name)?.partition(&hosts, &from)?;
            println!("cut {} from {}", hosts.join(","), from.join(","));
        }
        LabCommand::Heal { name } => {
            Lab::open(&name)?.heal()?;
            println!("partitions of {name} healed");
        }
        LabCommand::Link { name, host, link } => {
            let params = link.params();
            if params == LinkParams::default() {
                bail!("give at least one of --mtu, --loss, --delay");
            }
            Lab::open(&name)?.set_link(&host, params)?;
            println!("link of {host} updated");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(lab: &Lab, format: Format) {
    let partitions = &lab.state().partitions;
    print_list(
        format,
        &lab.status(),
        &[
            "HOST", "ROLE", "ADDRESS", "POWER", "DAEMON", "PID", "MTU", "LOSS", "DELAY",
        ],
        |h| {
            vec![
                h.name.clone(),
                h.role.to_string(),
                h.address.to_string(),
                match h.power {
                    Power::On => "on".into(),
                    Power::Off => "off".into(),
                },
                h.daemon.to_string(),
                h.daemon_pid.map_or("-".into(), |p| p.to_string()),
                h.link.mtu().to_string(),
                h.link.loss_pct.map_or("-".into(), |l| format!("{l}%")),
                h.link.delay_ms.map_or("-".into(), |d| format!("{d}ms")),
            ]
        },
    );
    if format == Format::Table && !partitions.is_empty() {
        let cuts: Vec<String> = partitions
            .iter()
            .map(|(a, b)| format!("{a}<->{b}"))
            .collect();
        println!("partitions: {}", cuts.join(" "));
    }
}

fn print_log(path: &std::path::Path, follow: bool) -> anyhow::Result<()> {
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("opening {}; the host has no meshd log yet", path.display()))?;
    let mut stdout = std::io::stdout().lock();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        file.read_to_end(&mut buf)?;
        stdout.write_all(&buf)?;
        stdout.flush()?;
        if !follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
        // A restarted meshd appends; a truncated log starts over.
        let len = file.metadata()?.len();
        if len < file.stream_position()? {
            file.seek(SeekFrom::Start(0))?;
        }
    }
}

fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        // The shell convention: 128 + signal number.
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    }
}
