//! Kernel settings known to break VXLAN and gossip, as plain values, and what they mean.

use serde::Serialize;

use super::{Finding, Severity};

/// A value read from the host, or why it was not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reading<T> {
    /// The value.
    Value(T),
    /// Why it could not be read: "ethtool is not installed".
    NotChecked(String),
}

impl<T> Reading<T> {
    /// The value, if read.
    pub fn value(&self) -> Option<&T> {
        match self {
            Reading::Value(v) => Some(v),
            Reading::NotChecked(_) => None,
        }
    }
}

/// The host settings `meshctl diag firewall` looks at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostSettings {
    /// `net.ipv4.conf.all.rp_filter` (0 off, 1 strict, 2 loose).
    pub rp_filter_all: Reading<u32>,
    /// `net.ipv4.conf.default.rp_filter`: what interfaces created later start with.
    pub rp_filter_default: Reading<u32>,
    /// `net.ipv4.conf.<underlay>.rp_filter`.
    pub rp_filter_underlay: Reading<u32>,
    /// `net.ipv4.ip_forward`.
    pub ip_forward: Reading<u32>,
    /// `net.netfilter.nf_conntrack_max`.
    pub conntrack_max: Reading<u64>,
    /// `net.netfilter.nf_conntrack_count`.
    pub conntrack_count: Reading<u64>,
    /// `net.netfilter.nf_conntrack_udp_timeout`, seconds.
    pub conntrack_udp_timeout: Reading<u64>,
    /// The underlay interface's driver (`ethtool -i`): "vmxnet3", "virtio_net", ...
    pub underlay_driver: Reading<String>,
    /// The underlay interface's offload features (`ethtool -k`): name and state as printed
    /// ("on", "off [fixed]").
    pub underlay_offloads: Reading<Vec<(String, String)>>,
}

/// Drivers whose checksum offload of UDP-tunnelled packets is known to corrupt VXLAN on port
/// 4789 (VMware's vmxnet3: ESXi/NSX treats 4789 as its own VXLAN port).
const VXLAN_CSUM_BUGGY_DRIVERS: &[&str] = &["vmxnet3"];

/// Offload features behind that bug.
const VXLAN_CSUM_FEATURES: &[&str] = &["tx-checksum-ip-generic", "tx-udp_tnl-csum-segmentation"];

/// The conntrack fill ratio (percent) from which new flows are at risk, and where they drop.
const CONNTRACK_WARN_PERCENT: u64 = 75;
const CONNTRACK_FULL_PERCENT: u64 = 90;

/// Below this UDP conntrack timeout (seconds, the kernel's default is 30), idle VXLAN and gossip
/// flows lose their entries between packets.
const MIN_UDP_TIMEOUT: u64 = 30;

impl HostSettings {
    /// Each setting that could not be read: "not checked: <setting>: <why>".
    pub fn not_checked(&self) -> Vec<String> {
        let mut notes = Vec::new();
        let mut note = |name: &str, why: Option<&String>| {
            if let Some(why) = why {
                notes.push(format!("not checked: {name}: {why}"));
            }
        };
        note("rp_filter (all)", why(&self.rp_filter_all));
        note("rp_filter (default)", why(&self.rp_filter_default));
        note("rp_filter (underlay)", why(&self.rp_filter_underlay));
        note("ip_forward", why(&self.ip_forward));
        note("nf_conntrack_max", why(&self.conntrack_max));
        note("nf_conntrack_count", why(&self.conntrack_count));
        note("nf_conntrack_udp_timeout", why(&self.conntrack_udp_timeout));
        note("underlay driver", why(&self.underlay_driver));
        note("underlay checksum offload", why(&self.underlay_offloads));
        notes
    }

    /// Each setting read, as "name = value".
    pub fn checked(&self, underlay_iface: &str) -> Vec<String> {
        let mut lines = Vec::new();
        let mut line = |name: String, value: Option<String>| {
            if let Some(value) = value {
                lines.push(format!("{name} = {value}"));
            }
        };
        let show = |r: &Reading<u32>| r.value().map(u32::to_string);
        let show64 = |r: &Reading<u64>| r.value().map(u64::to_string);
        line(
            "net.ipv4.conf.all.rp_filter".into(),
            show(&self.rp_filter_all),
        );
        line(
            "net.ipv4.conf.default.rp_filter".into(),
            show(&self.rp_filter_default),
        );
        let iface = format!("net.ipv4.conf.{underlay_iface}.rp_filter");
        line(iface, show(&self.rp_filter_underlay));
        line("net.ipv4.ip_forward".into(), show(&self.ip_forward));
        line(
            "net.netfilter.nf_conntrack_max".into(),
            show64(&self.conntrack_max),
        );
        line(
            "net.netfilter.nf_conntrack_count".into(),
            show64(&self.conntrack_count),
        );
        let udp = "net.netfilter.nf_conntrack_udp_timeout".to_string();
        line(udp, show64(&self.conntrack_udp_timeout));
        line(
            format!("{underlay_iface} driver"),
            self.underlay_driver.value().cloned(),
        );
        let offloads = self.underlay_offloads.value().map(|features| {
            let wanted: Vec<String> = features
                .iter()
                .filter(|(name, _)| VXLAN_CSUM_FEATURES.contains(&name.as_str()))
                .map(|(name, state)| format!("{name}: {state}"))
                .collect();
            wanted.join(", ")
        });
        line(format!("{underlay_iface} offloads"), offloads);
        lines
    }
}

fn why<T>(reading: &Reading<T>) -> Option<&String> {
    match reading {
        Reading::Value(_) => None,
        Reading::NotChecked(why) => Some(why),
    }
}

fn setting(severity: Severity, what: String, location: String, fix: String) -> Finding {
    Finding {
        severity,
        what,
        rule: None,
        location,
        ports: Vec::new(),
        fix,
    }
}

/// What in `settings` may break VXLAN or gossip on `underlay_iface`.
pub fn host_setting_findings(settings: &HostSettings, underlay_iface: &str) -> Vec<Finding> {
    let mut findings = Vec::new();
    let persist = "persist it in /etc/sysctl.d/90-mesh.conf";

    // The kernel applies max(all, <iface>).
    let all = settings.rp_filter_all.value().copied();
    let iface = settings.rp_filter_underlay.value().copied();
    if let (Some(all), Some(iface)) = (all, iface) {
        if all.max(iface) == 1 {
            let which = if all == 1 { "all" } else { underlay_iface };
            findings.push(setting(
                Severity::Warning,
                format!(
                    "strict reverse-path filtering is on for {underlay_iface} \
                     (net.ipv4.conf.{which}.rp_filter = 1): a packet is dropped when the route \
                     back to its source leaves by another interface, so with asymmetric routes \
                     (several interfaces, several default routes, policy routing) VXLAN and \
                     gossip packets from some peers vanish without a trace"
                ),
                format!("sysctl net.ipv4.conf.{which}.rp_filter"),
                format!(
                    "switch to loose mode: sysctl -w net.ipv4.conf.{underlay_iface}.rp_filter=2 \
                     (the kernel uses the larger of `all` and the interface's value, so 2 wins \
                     over all=1); {persist}"
                ),
            ));
        }
    }
    if settings.rp_filter_default.value() == Some(&1) && all != Some(1) {
        findings.push(setting(
            Severity::Warning,
            "interfaces created from now on (and network namespaces, which copy these values) \
             start with strict reverse-path filtering (net.ipv4.conf.default.rp_filter = 1): \
             a second underlay interface added later will drop asymmetric VXLAN traffic"
                .to_string(),
            "sysctl net.ipv4.conf.default.rp_filter".to_string(),
            format!("sysctl -w net.ipv4.conf.default.rp_filter=2; {persist}"),
        ));
    }

    if let (Some(&max), Some(&count)) = (
        settings.conntrack_max.value(),
        settings.conntrack_count.value(),
    ) {
        let percent = count.saturating_mul(100).checked_div(max).unwrap_or(100);
        if percent >= CONNTRACK_WARN_PERCENT {
            let severity = if percent >= CONNTRACK_FULL_PERCENT {
                Severity::Problem
            } else {
                Severity::Warning
            };
            findings.push(setting(
                severity,
                format!(
                    "the conntrack table is {percent}% full ({count} of {max} entries): when it \
                     is full the kernel drops the first packet of every new flow (\"nf_conntrack: \
                     table full, dropping packet\" in dmesg), new gossip probes and VXLAN flows \
                     included"
                ),
                "sysctl net.netfilter.nf_conntrack_max".to_string(),
                format!(
                    "raise the limit: sysctl -w net.netfilter.nf_conntrack_max={}; {persist}",
                    max.saturating_mul(2).max(262_144)
                ),
            ));
        }
    }
    if let Some(&timeout) = settings.conntrack_udp_timeout.value() {
        if timeout < MIN_UDP_TIMEOUT {
            findings.push(setting(
                Severity::Warning,
                format!(
                    "UDP conntrack entries expire after {timeout}s (kernel default 30s): a VXLAN \
                     or gossip flow idle for longer loses its entry, and a firewall that accepts \
                     only established UDP traffic then drops the next packet"
                ),
                "sysctl net.netfilter.nf_conntrack_udp_timeout".to_string(),
                format!("sysctl -w net.netfilter.nf_conntrack_udp_timeout=30; {persist}"),
            ));
        }
    }

    if settings.ip_forward.value() == Some(&0) {
        findings.push(setting(
            Severity::Warning,
            "IPv4 forwarding is off (net.ipv4.ip_forward = 0): tasks cannot reach networks \
             outside the cluster through this host, and published ports this host routes to \
             tasks on other hosts do not answer"
                .to_string(),
            "sysctl net.ipv4.ip_forward".to_string(),
            format!("sysctl -w net.ipv4.ip_forward=1; {persist}"),
        ));
    }

    let driver = settings.underlay_driver.value().map(String::as_str);
    if let (Some(driver), Some(features)) = (driver, settings.underlay_offloads.value()) {
        let on: Vec<&str> = features
            .iter()
            .filter(|(name, state)| {
                VXLAN_CSUM_FEATURES.contains(&name.as_str()) && state.starts_with("on")
            })
            .map(|(name, _)| name.as_str())
            .collect();
        if VXLAN_CSUM_BUGGY_DRIVERS.contains(&driver) && !on.is_empty() {
            let off: Vec<String> = on.iter().map(|f| format!("{f} off")).collect();
            findings.push(setting(
                Severity::Warning,
                format!(
                    "{underlay_iface} uses the {driver} driver with checksum offload on ({}): \
                     VMware's virtual NIC mangles checksums of VXLAN packets to UDP 4789, so \
                     overlay traffic is dropped while ping between hosts still works (small \
                     packets or ICMP may pass, TCP connections between tasks hang)",
                    on.join(", ")
                ),
                format!("ethtool -k {underlay_iface}"),
                format!(
                    "ethtool -K {underlay_iface} {} (and make it permanent in the interface's \
                     configuration), or create the cluster with a data-path port other than 4789",
                    off.join(" ")
                ),
            ));
        }
    }
    findings
}
