//! meshd's configuration: a TOML file whose every field a command-line flag can override.
//!
//! Loading is pure (text in, checked config or an error naming the field out), so every rule is
//! unit-tested; the binary only reads the file and the flags.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use dataplane::lb::LbMode;

/// The cluster API and Raft port.
pub const DEFAULT_CLUSTER_PORT: u16 = 2377;
/// The VXLAN data-path port.
pub const DEFAULT_DATA_PATH_PORT: u16 = 4789;
/// The gossip port (UDP and TCP).
pub const DEFAULT_GOSSIP_PORT: u16 = 7946;
/// Where meshd keeps its state unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/mesh";
/// Heartbeat silence after which a node is Down, unless configured.
pub const DEFAULT_NODE_DOWN_AFTER_MS: u64 = 3000;
/// The shortest down timeout: three heartbeat intervals, so one lost heartbeat never flaps a node.
pub const MIN_NODE_DOWN_AFTER_MS: u64 = 1500;
/// The control socket's file name inside the state directory.
pub const CONTROL_SOCKET_NAME: &str = "meshd.sock";

/// Errors from reading or checking a configuration.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a field has the wrong type or an unknown name.
    #[error("config file {path}: {message}; `meshd --help` lists the fields")]
    Parse { path: PathBuf, message: String },
    /// A field's value is out of range or inconsistent with another field.
    #[error("config field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// Log verbosity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Everything, including per-packet detail.
    Trace,
    /// Decisions and state changes.
    Debug,
    /// Lifecycle events.
    Info,
    /// Problems meshd works around.
    Warn,
    /// Failures.
    Error,
}

impl LogLevel {
    /// The tracing filter directive for this level.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable key=value lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The configuration file as written: every field optional, unknown fields refused.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The node's name in the cluster (default: the hostname).
    pub node_name: Option<String>,
    /// Address and port for the cluster API and Raft (default 0.0.0.0:2377).
    pub listen_addr: Option<SocketAddr>,
    /// Address other nodes use to reach this one (default: the listen address, when specific).
    pub advertise_addr: Option<IpAddr>,
    /// UDP port of the VXLAN data path (default 4789).
    pub data_path_port: Option<u16>,
    /// UDP and TCP port for gossip (default 7946).
    pub gossip_port: Option<u16>,
    /// Directory for Raft logs, certificates and task state (default /var/lib/mesh).
    pub state_dir: Option<PathBuf>,
    /// Unix socket meshctl uses (default <state_dir>/meshd.sock).
    pub control_socket: Option<PathBuf>,
    /// trace, debug, info, warn or error (default info).
    pub log_level: Option<LogLevel>,
    /// text or json (default text).
    pub log_format: Option<LogFormat>,
    /// Milliseconds without heartbeats after which managers mark a node Down (default 3000).
    pub node_down_after_ms: Option<u64>,
    /// containerd's gRPC socket; when set, tasks run through containerd instead of the
    /// built-in process runtime.
    pub containerd_socket: Option<PathBuf>,
    /// The containerd namespace Mesh's images and containers live in (default "mesh").
    pub containerd_namespace: Option<String>,
    /// Where the process runtime finds images as OCI image layout tarballs (default
    /// <state_dir>/images).
    pub image_dir: Option<PathBuf>,
    /// Resolvers the embedded DNS forwards names outside the cluster to, as `ip:port` or
    /// `ip` (default: the nameservers of /etc/resolv.conf; `[]` forwards nothing).
    pub dns_upstreams: Option<Vec<String>>,
    /// How published ports are balanced: auto (BPF at the faster hook, nftables where BPF
    /// cannot attach), xdp, tc or nftables (default auto).
    pub lb_mode: Option<String>,
}

impl ConfigFile {
    /// Parses TOML text; `path` is used in the error only.
    pub fn parse(text: &str, path: &std::path::Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: path.to_path_buf(),
            // toml's message already names the line, column and field.
            message: err.to_string().trim_end().replace('\n', " "),
        })
    }

    /// Reads and parses a file.
    pub fn read(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// This file with every field `flags` sets taking precedence.
    pub fn overlaid(self, flags: ConfigFile) -> ConfigFile {
        ConfigFile {
            node_name: flags.node_name.or(self.node_name),
            listen_addr: flags.listen_addr.or(self.listen_addr),
            advertise_addr: flags.advertise_addr.or(self.advertise_addr),
            data_path_port: flags.data_path_port.or(self.data_path_port),
            gossip_port: flags.gossip_port.or(self.gossip_port),
            state_dir: flags.state_dir.or(self.state_dir),
            control_socket: flags.control_socket.or(self.control_socket),
            log_level: flags.log_level.or(self.log_level),
            log_format: flags.log_format.or(self.log_format),
            node_down_after_ms: flags.node_down_after_ms.or(self.node_down_after_ms),
            containerd_socket: flags.containerd_socket.or(self.containerd_socket),
            containerd_namespace: flags.containerd_namespace.or(self.containerd_namespace),
            image_dir: flags.image_dir.or(self.image_dir),
            dns_upstreams: flags.dns_upstreams.or(self.dns_upstreams),
            lb_mode: flags.lb_mode.or(self.lb_mode),
        }
    }

    /// Fills defaults and checks every rule; `hostname` is the default node name.
    pub fn resolve(self, hostname: &str) -> Result<Config, ConfigError> {
        let node_name = self.node_name.unwrap_or_else(|| hostname.to_string());
        validate_node_name(&node_name)?;
        let listen_addr = self
            .listen_addr
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], DEFAULT_CLUSTER_PORT)));
        if listen_addr.port() == 0 {
            return Err(invalid(
                "listen_addr",
                "port 0 is not a fixed port; use 2377 unless it is taken",
            ));
        }
        let advertise_addr = match self.advertise_addr {
            Some(addr) if addr.is_unspecified() => {
                return Err(invalid(
                    "advertise_addr",
                    format!("{addr} is not reachable by other nodes; give this node's own address"),
                ))
            }
            Some(addr) => Some(addr),
            None if listen_addr.ip().is_unspecified() => None,
            None => Some(listen_addr.ip()),
        };
        let data_path_port = check_port(
            "data_path_port",
            self.data_path_port,
            DEFAULT_DATA_PATH_PORT,
        )?;
        let gossip_port = check_port("gossip_port", self.gossip_port, DEFAULT_GOSSIP_PORT)?;
        if data_path_port == gossip_port {
            return Err(invalid(
                "data_path_port",
                format!(
                    "{data_path_port} is also the gossip port; the two need different UDP ports"
                ),
            ));
        }
        let state_dir = self
            .state_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        if !state_dir.is_absolute() {
            return Err(invalid(
                "state_dir",
                format!("{} is relative; give an absolute path", state_dir.display()),
            ));
        }
        let control_socket = self
            .control_socket
            .unwrap_or_else(|| state_dir.join(CONTROL_SOCKET_NAME));
        // sun_path holds 108 bytes including the terminating NUL.
        if control_socket.as_os_str().len() > 107 {
            return Err(invalid(
                "control_socket",
                format!(
                    "{} is longer than the 107 bytes a unix socket path may have; choose a shorter state_dir or control_socket",
                    control_socket.display()
                ),
            ));
        }
        let down_ms = self
            .node_down_after_ms
            .unwrap_or(DEFAULT_NODE_DOWN_AFTER_MS);
        if !(MIN_NODE_DOWN_AFTER_MS..=600_000).contains(&down_ms) {
            return Err(invalid(
                "node_down_after_ms",
                format!("{down_ms} is out of range; give {MIN_NODE_DOWN_AFTER_MS} to 600000 (heartbeats come every 500 ms, so a shorter timeout would flap)"),
            ));
        }
        let runtime = match self.containerd_socket {
            Some(socket) if !socket.is_absolute() => {
                return Err(invalid(
                    "containerd_socket",
                    format!("{} is relative; give an absolute path", socket.display()),
                ))
            }
            Some(socket) => {
                let namespace = self.containerd_namespace.unwrap_or_else(|| "mesh".into());
                let ok = !namespace.is_empty()
                    && namespace.len() <= 76
                    && namespace
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                if !ok {
                    return Err(invalid(
                        "containerd_namespace",
                        format!("{namespace:?} is not a valid containerd namespace; use letters, digits, '-', '_' or '.'"),
                    ));
                }
                RuntimeConfig::Containerd { socket, namespace }
            }
            None if self.containerd_namespace.is_some() => {
                return Err(invalid(
                    "containerd_namespace",
                    "is set but containerd_socket is not; give containerd_socket to use containerd",
                ))
            }
            None => RuntimeConfig::Process,
        };
        let image_dir = self.image_dir.unwrap_or_else(|| state_dir.join("images"));
        if !image_dir.is_absolute() {
            return Err(invalid(
                "image_dir",
                format!("{} is relative; give an absolute path", image_dir.display()),
            ));
        }
        let dns_upstreams = match self.dns_upstreams {
            Some(list) => Some(
                list.iter()
                    .map(|text| parse_upstream(text))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };
        let lb_mode = match &self.lb_mode {
            Some(text) => LbMode::parse(text).map_err(|why| invalid("lb_mode", why))?,
            None => LbMode::Auto,
        };
        Ok(Config {
            lb_mode,
            runtime,
            dns_upstreams,
            image_dir,
            node_down_after: std::time::Duration::from_millis(down_ms),
            node_name,
            listen_addr,
            advertise_addr,
            data_path_port,
            gossip_port,
            state_dir,
            control_socket,
            log_level: self.log_level.unwrap_or(LogLevel::Info),
            log_format: self.log_format.unwrap_or(LogFormat::Text),
        })
    }
}

/// The checked configuration meshd runs with.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Config {
    /// The node's name in the cluster.
    pub node_name: String,
    /// Address and port for the cluster API and Raft.
    pub listen_addr: SocketAddr,
    /// Address other nodes use to reach this one; None until one is known.
    pub advertise_addr: Option<IpAddr>,
    /// UDP port of the VXLAN data path.
    pub data_path_port: u16,
    /// UDP and TCP port for gossip.
    pub gossip_port: u16,
    /// State directory.
    pub state_dir: PathBuf,
    /// meshctl's unix socket.
    pub control_socket: PathBuf,
    /// Log verbosity.
    pub log_level: LogLevel,
    /// Log format.
    pub log_format: LogFormat,
    /// Heartbeat silence after which managers mark a node Down.
    pub node_down_after: std::time::Duration,
    /// Which runtime runs tasks.
    pub runtime: RuntimeConfig,
    /// The process runtime's image directory.
    pub image_dir: PathBuf,
    /// Where the embedded DNS forwards other names; None means /etc/resolv.conf's.
    pub dns_upstreams: Option<Vec<SocketAddr>>,
    /// The load balancer's path.
    pub lb_mode: LbMode,
}

/// Which runtime runs this node's tasks.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum RuntimeConfig {
    /// The built-in process runtime.
    Process,
    /// containerd at this socket, in this namespace.
    Containerd {
        /// gRPC socket path.
        socket: PathBuf,
        /// containerd namespace.
        namespace: String,
    },
}

/// `ip:port`, or `ip` meaning port 53.
fn parse_upstream(text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse::<SocketAddr>()
        .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| {
            invalid(
                "dns_upstreams",
                format!("{text:?} is not an address; write \"192.0.2.53\" or \"192.0.2.53:53\""),
            )
        })
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn check_port(field: &'static str, port: Option<u16>, default: u16) -> Result<u16, ConfigError> {
    match port.unwrap_or(default) {
        0 => Err(invalid(
            field,
            format!("0 is not a usable port; give 1-65535 (default {default})"),
        )),
        port => Ok(port),
    }
}

/// The rule node, service and network names share: 1 to 63 letters, digits, '-', '_' or '.',
/// starting with a letter or digit (a hostname label's rules, widened by '_' and '.'), since
/// they end up in DNS names.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Node names follow `is_valid_name`.
pub fn validate_node_name(name: &str) -> Result<(), ConfigError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(invalid(
            "node_name",
            format!("{name:?} is not a valid node name; use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn resolve(text: &str) -> Result<Config, ConfigError> {
        ConfigFile::parse(text, Path::new("meshd.toml"))?.resolve("host-a")
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let config = resolve("").unwrap();
        assert_eq!(config.node_name, "host-a");
        assert_eq!(config.listen_addr, "0.0.0.0:2377".parse().unwrap());
        assert_eq!(config.advertise_addr, None);
        assert_eq!(config.data_path_port, 4789);
        assert_eq!(config.gossip_port, 7946);
        assert_eq!(config.state_dir, PathBuf::from("/var/lib/mesh"));
        assert_eq!(
            config.control_socket,
            PathBuf::from("/var/lib/mesh/meshd.sock")
        );
        assert_eq!(config.log_level, LogLevel::Info);
    }

    #[test]
    fn specific_listen_address_is_advertised() {
        let config = resolve("listen_addr = \"198.18.0.1:2377\"").unwrap();
        assert_eq!(config.advertise_addr, Some("198.18.0.1".parse().unwrap()));
    }

    #[test]
    fn flags_override_the_file_field_by_field() {
        let file = ConfigFile::parse(
            "data_path_port = 4790\nlog_level = \"debug\"",
            Path::new("f"),
        )
        .unwrap();
        let flags = ConfigFile {
            data_path_port: Some(6789),
            ..Default::default()
        };
        let config = file.overlaid(flags).resolve("h").unwrap();
        assert_eq!(config.data_path_port, 6789);
        assert_eq!(config.log_level, LogLevel::Debug);
    }

    #[test]
    fn lb_mode_defaults_to_auto_and_names_the_choices() {
        assert_eq!(resolve("").unwrap().lb_mode, LbMode::Auto);
        assert_eq!(
            resolve("lb_mode = \"nftables\"").unwrap().lb_mode,
            LbMode::Nftables
        );
        assert_eq!(resolve("lb_mode = \"xdp\"").unwrap().lb_mode, LbMode::Xdp);
        let err = resolve("lb_mode = \"ipvs\"").unwrap_err().to_string();
        assert!(
            err.contains("lb_mode") && err.contains("auto, xdp, tc or nftables"),
            "{err}"
        );
    }

    #[test]
    fn unknown_field_is_named() {
        let err = resolve("data_path = 4789").unwrap_err().to_string();
        assert!(err.contains("data_path"), "{err}");
        assert!(err.contains("meshd --help"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let err = resolve("data_path_port = \"x\"").unwrap_err().to_string();
        assert!(err.contains("data_path_port"), "{err}");
    }

    #[test]
    fn port_out_of_range_is_refused() {
        let err = resolve("data_path_port = 70000").unwrap_err().to_string();
        assert!(err.contains("data_path_port"), "{err}");
        let err = resolve("gossip_port = 0").unwrap_err().to_string();
        assert!(
            err.contains("gossip_port") && err.contains("1-65535"),
            "{err}"
        );
    }

    #[test]
    fn clashing_ports_are_refused() {
        let err = resolve("data_path_port = 7946").unwrap_err().to_string();
        assert!(
            err.contains("data_path_port") && err.contains("gossip"),
            "{err}"
        );
    }

    #[test]
    fn bad_addresses_are_refused() {
        assert!(resolve("listen_addr = \"nowhere\"")
            .unwrap_err()
            .to_string()
            .contains("listen_addr"));
        assert!(resolve("listen_addr = \"0.0.0.0:0\"")
            .unwrap_err()
            .to_string()
            .contains("listen_addr"));
        assert!(resolve("advertise_addr = \"0.0.0.0\"")
            .unwrap_err()
            .to_string()
            .contains("advertise_addr"));
    }

    #[test]
    fn relative_state_dir_and_long_socket_are_refused() {
        assert!(resolve("state_dir = \"state\"")
            .unwrap_err()
            .to_string()
            .contains("state_dir"));
        let long = format!("state_dir = \"/{}\"", "x".repeat(120));
        assert!(resolve(&long)
            .unwrap_err()
            .to_string()
            .contains("control_socket"));
    }

    #[test]
    fn dns_upstreams_take_addresses_with_or_without_port() {
        assert_eq!(resolve("").unwrap().dns_upstreams, None);
        let config = resolve("dns_upstreams = [\"198.18.0.9\", \"198.18.0.10:5353\"]").unwrap();
        assert_eq!(
            config.dns_upstreams,
            Some(vec![
                "198.18.0.9:53".parse().unwrap(),
                "198.18.0.10:5353".parse().unwrap()
            ])
        );
        assert_eq!(
            resolve("dns_upstreams = []").unwrap().dns_upstreams,
            Some(vec![])
        );
        let err = resolve("dns_upstreams = [\"resolver\"]")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("dns_upstreams") && err.contains("192.0.2.53"),
            "{err}"
        );
    }

    #[test]
    fn runtime_defaults_to_process_and_containerd_needs_a_socket() {
        let config = resolve("").unwrap();
        assert_eq!(config.runtime, RuntimeConfig::Process);
        assert_eq!(config.image_dir, PathBuf::from("/var/lib/mesh/images"));
        let config = resolve("containerd_socket = \"/run/c.sock\"").unwrap();
        assert_eq!(
            config.runtime,
            RuntimeConfig::Containerd {
                socket: "/run/c.sock".into(),
                namespace: "mesh".into()
            }
        );
        for (bad, field) in [
            ("containerd_socket = \"c.sock\"", "containerd_socket"),
            ("containerd_namespace = \"x\"", "containerd_socket"),
            (
                "containerd_socket = \"/c\"\ncontainerd_namespace = \"a b\"",
                "containerd_namespace",
            ),
            ("image_dir = \"images\"", "image_dir"),
        ] {
            let err = resolve(bad).unwrap_err().to_string();
            assert!(err.contains(field), "{bad}: {err}");
        }
    }

    #[test]
    fn node_names_follow_hostname_rules() {
        for good in ["m1", "node-1.example", "a_b"] {
            validate_node_name(good).unwrap();
        }
        for bad in ["", "-a", "a b", &"x".repeat(64), "ü"] {
            assert!(validate_node_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
