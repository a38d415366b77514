//! What a lab is made of: its name, hosts, roles, addresses and link parameters. Pure data and
//! the rules that check it; nothing here touches the kernel.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::error::{LabError, Result};

/// The underlay every lab uses: inside 198.18.0.0/15, the benchmarking range. Labs never see
/// each other (each has its own switch namespace), so they can all use the same subnet.
pub const UNDERLAY_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
/// Prefix length of the lab underlay.
pub const UNDERLAY_PREFIX: u8 = 24;
/// Most hosts one lab may hold (addresses .1 to .250 of the underlay /24).
pub const MAX_HOSTS: usize = 250;
/// Longest lab name; it appears in namespace and cgroup names.
pub const MAX_NAME_LEN: usize = 24;
/// Smallest MTU a link may have: IPv4's minimum is 68, but Mesh's overlay needs room for 50
/// bytes of VXLAN on top of a usable payload.
pub const MIN_MTU: u32 = 576;
/// Largest MTU a veth accepts.
pub const MAX_MTU: u32 = 65535;
/// Longest one-way delay a link may add.
pub const MAX_DELAY_MS: u32 = 10_000;

/// What a host is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs meshd and becomes a manager.
    Manager,
    /// Runs meshd and becomes a worker.
    Worker,
    /// Runs no daemon: a load generator or outside client.
    Client,
}

impl Role {
    /// The prefix of this role's host names: m1, w1, c1.
    fn prefix(self) -> &'static str {
        match self {
            Role::Manager => "m",
            Role::Worker => "w",
            Role::Client => "c",
        }
    }

    /// Whether meshd runs on hosts of this role.
    pub fn runs_daemon(self) -> bool {
        !matches!(self, Role::Client)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
            Role::Client => "client",
        })
    }
}

/// What runs the tasks of a lab's meshd: its built-in process runtime, or a containerd of each
/// host's own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskRuntime {
    /// meshd's process runtime.
    #[default]
    Process,
    /// A containerd per manager and worker host, started before meshd.
    Containerd,
}

impl std::fmt::Display for TaskRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TaskRuntime::Process => "process",
            TaskRuntime::Containerd => "containerd",
        })
    }
}

impl std::str::FromStr for TaskRuntime {
    type Err = LabError;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "process" => Ok(TaskRuntime::Process),
            "containerd" => Ok(TaskRuntime::Containerd),
            _ => Err(LabError::InvalidSpec {
                field: "--runtime",
                value: text.to_string(),
                reason: "give process or containerd".into(),
            }),
        }
    }
}

/// Emulated properties of one host's link to the lab switch, applied on the host's egress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkParams {
    /// MTU of the host's interface and its switch port; None keeps 1500.
    pub mtu: Option<u32>,
    /// Percent of frames the host sends that are lost, 0 to 100.
    pub loss_pct: Option<f64>,
    /// One-way delay added to every frame the host sends, in milliseconds.
    pub delay_ms: Option<u32>,
}

impl LinkParams {
    /// The link's MTU, 1500 unless set.
    pub fn mtu(&self) -> u32 {
        self.mtu.unwrap_or(1500)
    }

    /// Whether a userspace link shim must carry the host's frames (the kernel here has no
    /// netem, so delay is emulated in userspace).
    pub fn needs_shim(&self) -> bool {
        self.delay_ms.is_some_and(|d| d > 0)
    }

    /// Checks every set field is in range.
    pub fn validate(&self) -> Result<()> {
        if let Some(mtu) = self.mtu {
            if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
                return Err(LabError::InvalidSpec {
                    field: "--mtu",
                    value: mtu.to_string(),
                    reason: format!("give a value from {MIN_MTU} to {MAX_MTU}"),
                });
            }
        }
        if let Some(loss) = self.loss_pct {
            if !(0.0..=100.0).contains(&loss) || loss.is_nan() {
                return Err(LabError::InvalidSpec {
                    field: "--loss",
                    value: loss.to_string(),
                    reason: "give a percentage from 0 to 100".into(),
                });
            }
        }
        if let Some(delay) = self.delay_ms {
            if delay > MAX_DELAY_MS {
                return Err(LabError::InvalidSpec {
                    field: "--delay",
                    value: delay.to_string(),
                    reason: format!("give milliseconds from 0 to {MAX_DELAY_MS}"),
                });
            }
        }
        Ok(())
    }

    /// These parameters with every field `other` sets taking precedence.
    pub fn overlaid(&self, other: &LinkParams) -> LinkParams {
        LinkParams {
            mtu: other.mtu.or(self.mtu),
            loss_pct: other.loss_pct.or(self.loss_pct),
            delay_ms: other.delay_ms.or(self.delay_ms),
        }
    }
}

/// What `lab up` builds.
#[derive(Clone, Debug, PartialEq)]
pub struct LabSpec {
    /// The lab's name, unique on this machine.
    pub name: String,
    /// Hosts that become managers.
    pub managers: usize,
    /// Hosts that become workers.
    pub workers: usize,
    /// Hosts that run no daemon (load generators, outside clients).
    pub clients: usize,
    /// Link parameters every host starts with.
    pub link: LinkParams,
    /// Whether meshd starts on the manager and worker hosts.
    pub start_daemons: bool,
    /// Whether the daemons form a cluster: the first manager runs `swarm init`, the other
    /// hosts join with the right token.
    pub form_cluster: bool,
    /// What runs tasks: with containerd, every manager and worker host gets its own.
    pub runtime: TaskRuntime,
    /// A lab host (usually a client) whose address the daemons' embedded DNS forwards
    /// outside names to; without one they forward nothing, so no query leaves the lab.
    pub dns_upstream_host: Option<String>,
    /// meshd's `lb_mode` on every host (auto, xdp, tc or nftables); None keeps meshd's default.
    pub lb_mode: Option<String>,
}

impl LabSpec {
    /// A lab of `managers` managers and `workers` workers with default links.
    pub fn new(name: &str, managers: usize, workers: usize) -> Self {
        LabSpec {
            name: name.to_string(),
            managers,
            workers,
            clients: 0,
            link: LinkParams::default(),
            start_daemons: true,
            form_cluster: true,
            runtime: TaskRuntime::Process,
            dns_upstream_host: None,
            lb_mode: None,
        }
    }

    /// Checks the whole specification before anything is created.
    pub fn validate(&self) -> Result<()> {
        validate_lab_name(&self.name)?;
        let total = self.managers + self.workers + self.clients;
        if total == 0 {
            return Err(LabError::InvalidSpec {
                field: "host count",
                value: "0".into(),
                reason: "give at least one host with --managers, --workers or --clients".into(),
            });
        }
        if self.start_daemons && self.form_cluster && self.managers == 0 && self.workers > 0 {
            return Err(LabError::InvalidSpec {
                field: "--managers",
                value: "0".into(),
                reason: "a cluster needs a manager; give --managers 1 or more, or --no-cluster"
                    .into(),
            });
        }
        if total > MAX_HOSTS {
            return Err(LabError::InvalidSpec {
                field: "host count",
                value: total.to_string(),
                reason: format!("a lab holds at most {MAX_HOSTS} hosts"),
            });
        }
        self.link.validate()
    }

    /// The hosts of this lab, managers first, each with its name, role and address.
    pub fn hosts(&self) -> Vec<HostPlan> {
        let roles = std::iter::repeat_n(Role::Manager, self.managers)
            .chain(std::iter::repeat_n(Role::Worker, self.workers))
            .chain(std::iter::repeat_n(Role::Client, self.clients));
        let mut ordinal = [0usize; 3];
        roles
            .enumerate()
            .map(|(index, role)| {
                let slot = &mut ordinal[role as usize];
                *slot += 1;
                HostPlan {
                    name: format!("{}{}", role.prefix(), slot),
                    role,
                    address: host_address(index),
                }
            })
            .collect()
    }
}

/// One host as planned: name, role and underlay address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPlan {
    /// m1, w2, c1, ...
    pub name: String,
    /// What the host is for.
    pub role: Role,
    /// Its underlay address.
    pub address: Ipv4Addr,
}

/// The underlay address of the host at `index` (0-based): .1, .2, ...
pub fn host_address(index: usize) -> Ipv4Addr {
    let last = u8::try_from(index + 1).expect("MAX_HOSTS keeps the index within a /24");
    let [a, b, c, _] = UNDERLAY_NET.octets();
    Ipv4Addr::new(a, b, c, last)
}

/// Checks a lab name: lowercase letters, digits and '-', starting with a letter, at most
/// MAX_NAME_LEN long. No dots, so namespace names split unambiguously.
pub fn validate_lab_name(name: &str) -> Result<()> {
    let invalid = |reason| LabError::InvalidName {
        what: "lab name",
        value: name.to_string(),
        reason,
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid("use 1 to 24 characters"));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(invalid("start with a lowercase letter"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(invalid("use only lowercase letters, digits and '-'"));
    }
    // `<lab dir>/images` holds the task images every lab shares.
    if name == "images" {
        return Err(invalid(
            "choose another name: the lab keeps its task images there",
        ));
    }
    Ok(())
}

/// The network namespace of `host` in lab `lab`.
pub fn host_netns(lab: &str, host: &str) -> String {
    format!("{}{host}", netns_prefix(lab))
}

/// The namespace holding lab `lab`'s switch (a bridge and the hosts' ports).
pub fn switch_netns(lab: &str) -> String {
    format!("{}switch", netns_prefix(lab))
}

/// Every namespace of lab `lab`, the ones meshd creates inside it included, starts with this.
pub fn netns_prefix(lab: &str) -> String {
    format!("mlab.{lab}.")
}

/// The switch port of `host`. Host names are short (m1, w12), so this fits IFNAMSIZ.
pub fn switch_port(host: &str) -> String {
    format!("p-{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_named_by_role_and_numbered_in_order() {
        let mut spec = LabSpec::new("demo", 3, 2);
        spec.clients = 1;
        let hosts = spec.hosts();
        let names: Vec<_> = hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["m1", "m2", "m3", "w1", "w2", "c1"]);
        assert_eq!(hosts[0].address, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(hosts[5].address, Ipv4Addr::new(198, 18, 0, 6));
        assert_eq!(hosts[4].role, Role::Worker);
        assert!(!hosts[5].role.runs_daemon());
    }

    #[test]
    fn addresses_stay_inside_the_benchmarking_range() {
        let spec = LabSpec::new("big", 0, MAX_HOSTS);
        for host in spec.hosts() {
            let [a, b, ..] = host.address.octets();
            assert_eq!(
                (a, b & 0xfe),
                (198, 18),
                "{} outside 198.18.0.0/15",
                host.address
            );
        }
    }

    #[test]
    fn lab_names_are_checked() {
        for good in ["a", "demo", "t-1", "abcdefghijklmnopqrstuvwx"] {
            validate_lab_name(good).unwrap();
        }
        for bad in [
            "",
            "Demo",
            "1abc",
            "a.b",
            "a b",
            "a/b",
            "abcdefghijklmnopqrstuvwxy",
        ] {
            assert!(validate_lab_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn spec_rejects_empty_oversized_and_bad_links() {
        assert!(LabSpec::new("x", 0, 0).validate().is_err());
        assert!(LabSpec::new("x", 0, MAX_HOSTS + 1).validate().is_err());
        let mut spec = LabSpec::new("x", 1, 0);
        spec.link.mtu = Some(100);
        assert!(spec.validate().unwrap_err().to_string().contains("--mtu"));
        spec.link = LinkParams {
            loss_pct: Some(101.0),
            ..Default::default()
        };
        assert!(spec.validate().unwrap_err().to_string().contains("--loss"));
        spec.link = LinkParams {
            delay_ms: Some(MAX_DELAY_MS + 1),
            ..Default::default()
        };
        assert!(spec.validate().unwrap_err().to_string().contains("--delay"));
        spec.link = LinkParams {
            mtu: Some(1400),
            loss_pct: Some(0.5),
            delay_ms: Some(20),
        };
        spec.validate().unwrap();
    }

    #[test]
    fn link_overrides_take_precedence_field_by_field() {
        let base = LinkParams {
            mtu: Some(1400),
            loss_pct: None,
            delay_ms: Some(5),
        };
        let over = LinkParams {
            mtu: None,
            loss_pct: Some(1.0),
            delay_ms: Some(0),
        };
        let merged = base.overlaid(&over);
        assert_eq!(merged.mtu, Some(1400));
        assert_eq!(merged.loss_pct, Some(1.0));
        assert_eq!(merged.delay_ms, Some(0));
        assert!(!merged.needs_shim());
        assert!(base.needs_shim());
    }

    #[test]
    fn runtimes_parse_and_print_by_name() {
        for runtime in [TaskRuntime::Process, TaskRuntime::Containerd] {
            assert_eq!(runtime.to_string().parse::<TaskRuntime>().unwrap(), runtime);
        }
        assert_eq!(TaskRuntime::default(), TaskRuntime::Process);
        assert!("docker"
            .parse::<TaskRuntime>()
            .unwrap_err()
            .to_string()
            .contains("--runtime"));
    }

    #[test]
    fn namespace_names_of_two_labs_never_share_a_prefix() {
        // "a" and "a-b" must not be confused by prefix matching.
        assert!(!host_netns("a-b", "m1").starts_with(&netns_prefix("a")));
        assert!(host_netns("a", "m1").starts_with(&netns_prefix("a")));
        assert!(switch_port("w250").len() <= 15);
    }
}
