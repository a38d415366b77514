//! meshd: the Mesh node daemon. Reads its TOML config, lets any flag override any field, and
//! runs until SIGTERM.

use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use control::config::{ConfigFile, LogFormat, LogLevel};

/// The Mesh node daemon.
///
/// Configuration comes from --config (TOML) and flags; a flag overrides the file's field of the
/// same name (listen_addr for --listen-addr, and so on). Fields: node_name, listen_addr,
/// advertise_addr, data_path_port, gossip_port, state_dir, control_socket, log_level, log_format,
/// node_down_after_ms.
#[derive(Debug, Parser)]
#[command(name = "meshd", version)]
struct Args {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The node's name in the cluster [default: the hostname].
    #[arg(long)]
    node_name: Option<String>,
    /// Address and port for the cluster API and Raft [default: 0.0.0.0:2377].
    #[arg(long, value_name = "IP:PORT")]
    listen_addr: Option<SocketAddr>,
    /// Address other nodes use to reach this one.
    #[arg(long, value_name = "IP")]
    advertise_addr: Option<IpAddr>,
    /// UDP port of the VXLAN data path [default: 4789].
    #[arg(long, value_name = "PORT")]
    data_path_port: Option<u16>,
    /// UDP and TCP port for gossip [default: 7946].
    #[arg(long, value_name = "PORT")]
    gossip_port: Option<u16>,
    /// State directory [default: /var/lib/mesh].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// meshctl's unix socket [default: <state-dir>/meshd.sock].
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// Log verbosity [default: info].
    #[arg(long, value_enum)]
    log_level: Option<LogLevel>,
    /// Log line format [default: text].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Recover a cluster that lost its quorum for good: this manager becomes the only voter,
    /// keeping all the state it has; the other managers must rejoin.
    #[arg(long)]
    force_new_cluster: bool,
    /// Milliseconds without heartbeats before managers mark a node Down [default: 3000].
    #[arg(long, value_name = "MS")]
    node_down_after_ms: Option<u64>,
    /// containerd's gRPC socket; tasks run through containerd instead of the built-in
    /// process runtime.
    #[arg(long, value_name = "PATH")]
    containerd_socket: Option<PathBuf>,
    /// containerd namespace for Mesh's images and containers [default: mesh].
    #[arg(long, value_name = "NAME")]
    containerd_namespace: Option<String>,
    /// The process runtime's OCI image tarballs [default: <state-dir>/images].
    #[arg(long, value_name = "DIR")]
    image_dir: Option<PathBuf>,
    /// A resolver tasks' DNS forwards outside names to, ip or ip:port (repeatable).
    #[arg(long = "dns-upstream", value_name = "IP[:PORT]")]
    dns_upstreams: Vec<String>,
    /// How published ports are balanced: auto, xdp, tc or nftables [default: auto].
    #[arg(long, value_name = "MODE")]
    lb_mode: Option<String>,
}

impl Args {
    fn flags(&self) -> ConfigFile {
        ConfigFile {
            node_name: self.node_name.clone(),
            listen_addr: self.listen_addr,
            advertise_addr: self.advertise_addr,
            data_path_port: self.data_path_port,
            gossip_port: self.gossip_port,
            state_dir: self.state_dir.clone(),
            control_socket: self.control_socket.clone(),
            log_level: self.log_level,
            log_format: self.log_format,
            node_down_after_ms: self.node_down_after_ms,
            containerd_socket: self.containerd_socket.clone(),
            containerd_namespace: self.containerd_namespace.clone(),
            image_dir: self.image_dir.clone(),
            dns_upstreams: (!self.dns_upstreams.is_empty()).then(|| self.dns_upstreams.clone()),
            lb_mode: self.lb_mode.clone(),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("meshd: {}", control::report(&err));
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => ConfigFile::read(path)?,
        None => ConfigFile::default(),
    };
    let config = file.overlaid(args.flags()).resolve(&hostname())?;
    init_logging(config.log_level, config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(control::daemon::run(config, args.force_new_cluster))?;
    Ok(())
}

fn init_logging(level: LogLevel, format: LogFormat) {
    // RUST_LOG, when set, refines the configured level per module.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level.as_str()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}
