//! The I/O: reading /proc/sys, running `nft`, `iptables-save` and `ethtool`, and tying the
//! pure checks together. Nothing here fails: whatever cannot be read is noted and skipped.

use std::path::Path;
use std::process::Command;

use serde::Serialize;

use super::nft::{analyze_nft, TableRef};
use super::nft_text::nft_rule_texts;
use super::settings::{host_setting_findings, HostSettings, Reading};
use super::{analyze_iptables, iptables_nft_tables, required_ports, FirewallReport};

/// One iptables-save dump.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IptablesDump {
    /// "ip" (iptables) or "ip6" (ip6tables).
    pub family: &'static str,
    /// The command that printed it: "iptables-save", "iptables-legacy-save", ...
    pub command: String,
    /// Its output.
    pub text: String,
}

/// The firewall rulesets of this host, as their tools print them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Rulesets {
    /// `nft -j list ruleset`, if nft ran.
    pub nft_json: Option<String>,
    /// `nft -a list ruleset` (the rules' text, with handles), if nft ran.
    pub nft_listing: Option<String>,
    /// iptables-save, ip6tables-save and, beside iptables-nft, the legacy dumps.
    pub iptables: Vec<IptablesDump>,
    /// Tools missing or failing, and why.
    pub notes: Vec<String>,
}

/// Runs a command; its stdout, or why not.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let command = format!("{program} {}", args.join(" "));
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let mut why = format!("`{command}` failed ({}): {}", out.status, stderr.trim());
            if stderr.contains("Operation not permitted") || stderr.contains("Permission denied") {
                why.push_str("; run meshctl diag firewall as root");
            }
            Err(why)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("`{program}` is not installed"))
        }
        Err(e) => Err(format!("running `{command}`: {e}")),
    }
}

/// Runs `nft -j list ruleset`, `nft -a list ruleset`, `iptables-save`, `ip6tables-save`, and
/// the legacy dumps when the default iptables is iptables-nft. Missing tools are noted.
pub fn read_rulesets() -> Rulesets {
    let mut rulesets = Rulesets::default();
    match run("nft", &["-j", "list", "ruleset"]) {
        Ok(json) => rulesets.nft_json = Some(json),
        Err(why) => rulesets.notes.push(format!("nftables not checked: {why}")),
    }
    if rulesets.nft_json.is_some() {
        match run("nft", &["-a", "list", "ruleset"]) {
            Ok(text) => rulesets.nft_listing = Some(text),
            Err(why) => rulesets.notes.push(format!(
                "nft rule texts rebuilt from JSON (may differ slightly from nft's): {why}"
            )),
        }
    }
    for (family, save, legacy) in [
        ("ip", "iptables-save", "iptables-legacy-save"),
        ("ip6", "ip6tables-save", "ip6tables-legacy-save"),
    ] {
        match run(save, &[]) {
            Ok(text) => {
                let nft_backed =
                    !iptables_nft_tables(&text).is_empty() || text.contains("(nf_tables)");
                rulesets.iptables.push(IptablesDump {
                    family,
                    command: save.to_string(),
                    text,
                });
                // Legacy rules still filter beside iptables-nft's (old Docker, old scripts).
                if nft_backed {
                    if let Ok(text) = run(legacy, &[]).map(|t| t.trim().to_string()) {
                        if text.is_empty() {
                            continue;
                        }
                        rulesets.iptables.push(IptablesDump {
                            family,
                            command: legacy.to_string(),
                            text,
                        });
                    }
                }
            }
            Err(why) => rulesets.notes.push(format!("{save} not checked: {why}")),
        }
    }
    rulesets
}

/// A sysctl under /proc/sys, by its dotted name.
fn sysctl<T: std::str::FromStr>(name: &str) -> Reading<T> {
    let path = Path::new("/proc/sys").join(name.replace('.', "/"));
    match std::fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse() {
            Ok(value) => Reading::Value(value),
            Err(_) => Reading::NotChecked(format!("{} holds {:?}", path.display(), text.trim())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Reading::NotChecked(format!("{} does not exist", path.display()))
        }
        Err(e) => Reading::NotChecked(format!("reading {}: {e}", path.display())),
    }
}

/// Reads the settings [`host_setting_findings`] judges; missing ones say why.
pub fn read_host_settings(underlay_iface: &str) -> HostSettings {
    let iface_ok = !underlay_iface.is_empty()
        && !underlay_iface.contains(['/', '.'])
        && Path::new("/sys/class/net").join(underlay_iface).exists();
    let missing = format!("interface {underlay_iface:?} does not exist in this network namespace");
    let conntrack = |name: &str| match sysctl(name) {
        Reading::NotChecked(_) if !Path::new("/proc/sys/net/netfilter").exists() => {
            Reading::NotChecked("conntrack is not loaded (no /proc/sys/net/netfilter)".into())
        }
        reading => reading,
    };
    let (driver, offloads) = if iface_ok {
        ethtool(underlay_iface)
    } else {
        (
            Reading::NotChecked(missing.clone()),
            Reading::NotChecked(missing.clone()),
        )
    };
    HostSettings {
        rp_filter_all: sysctl("net.ipv4.conf.all.rp_filter"),
        rp_filter_default: sysctl("net.ipv4.conf.default.rp_filter"),
        rp_filter_underlay: if iface_ok {
            sysctl(&format!("net.ipv4.conf.{underlay_iface}.rp_filter"))
        } else {
            Reading::NotChecked(missing)
        },
        ip_forward: sysctl("net.ipv4.ip_forward"),
        conntrack_max: conntrack("net.netfilter.nf_conntrack_max"),
        conntrack_count: conntrack("net.netfilter.nf_conntrack_count"),
        conntrack_udp_timeout: conntrack("net.netfilter.nf_conntrack_udp_timeout"),
        underlay_driver: driver,
        underlay_offloads: offloads,
    }
}

/// The driver (`ethtool -i`) and offload features (`ethtool -k`) of an interface.
fn ethtool(iface: &str) -> (Reading<String>, Reading<Vec<(String, String)>>) {
    let driver = match run("ethtool", &["-i", iface]) {
        Ok(text) => text
            .lines()
            .find_map(|l| l.strip_prefix("driver:"))
            .map(|d| Reading::Value(d.trim().to_string()))
            .unwrap_or_else(|| {
                Reading::NotChecked(format!("`ethtool -i {iface}` names no driver"))
            }),
        Err(why) => Reading::NotChecked(why),
    };
    let offloads = match run("ethtool", &["-k", iface]) {
        Ok(text) => Reading::Value(parse_features(&text)),
        Err(why) => Reading::NotChecked(why),
    };
    (driver, offloads)
}

/// `ethtool -k` output ("Features for eth0:", then "\tname: state") as (name, state) pairs.
pub(crate) fn parse_features(text: &str) -> Vec<(String, String)> {
    text.lines()
        .skip_while(|l| l.starts_with("Features for"))
        .filter_map(|l| l.trim().split_once(": "))
        .map(|(name, state)| (name.to_string(), state.trim().to_string()))
        .collect()
}

/// Mesh's own tables that the analysis leaves out: the data-path port's allow-list drops only
/// datagrams from hosts that are no cluster members, which no member is hurt by.
pub fn mesh_tables() -> Vec<TableRef> {
    vec![TableRef {
        family: crate::guard::FAMILY_NAME.to_string(),
        name: crate::guard::TABLE.to_string(),
    }]
}

/// Whether `nft -j list ruleset` output holds table `family name`.
fn has_table(ruleset_json: &str, family: &str, name: &str) -> bool {
    let doc: serde_json::Value = serde_json::from_str(ruleset_json).unwrap_or_default();
    doc["nftables"].as_array().into_iter().flatten().any(|o| {
        o.get("table")
            .is_some_and(|t| t["family"] == family && t["name"] == name)
    })
}

/// Reads everything, checks everything: the report `meshctl diag firewall` prints.
pub fn check_firewall(
    data_path_port: u16,
    gossip_port: u16,
    cluster_port: u16,
    underlay_iface: &str,
) -> FirewallReport {
    let ports = required_ports(data_path_port, gossip_port, cluster_port);
    let rulesets = read_rulesets();
    let mut report = FirewallReport {
        notes: rulesets.notes.clone(),
        ..FirewallReport::default()
    };
    let described: Vec<String> = ports.iter().map(ToString::to_string).collect();
    report
        .checked
        .push(format!("required ports: {}", described.join(", ")));

    // iptables-nft's tables are reported once, from iptables-save.
    let mut skip = Vec::new();
    for dump in &rulesets.iptables {
        for table in iptables_nft_tables(&dump.text) {
            skip.push(TableRef {
                family: dump.family.to_string(),
                name: table,
            });
        }
    }
    if let Some(json) = &rulesets.nft_json {
        // Mesh's own allow-list of the data-path port drops only non-members: not a finding.
        let skipped: Vec<TableRef> = skip.iter().cloned().chain(mesh_tables()).collect();
        match analyze_nft(json, &ports, &skipped) {
            Ok(mut analysis) => {
                if let Some(listing) = &rulesets.nft_listing {
                    let texts = nft_rule_texts(listing);
                    for finding in &mut analysis.findings {
                        if let Some(text) = texts.get(&finding.location) {
                            finding.rule = Some(text.clone());
                        }
                    }
                }
                let shown: Vec<String> = skip
                    .iter()
                    .map(|t| format!("{} {}", t.family, t.name))
                    .collect();
                let mut line = "nftables ruleset (nft -j list ruleset)".to_string();
                if !shown.is_empty() {
                    line.push_str(&format!(
                        "; tables {} are iptables-nft's, reported from iptables-save",
                        shown.join(", ")
                    ));
                }
                if has_table(json, crate::guard::FAMILY_NAME, crate::guard::TABLE) {
                    line.push_str(&format!(
                        "; table {} {} is Mesh's allow-list of the data-path port (members only), not checked",
                        crate::guard::FAMILY_NAME,
                        crate::guard::TABLE
                    ));
                }
                report.checked.push(line);
                report.findings.append(&mut analysis.findings);
                report.notes.append(&mut analysis.notes);
            }
            Err(e) => report.notes.push(format!("nftables not checked: {e}")),
        }
    }
    for dump in &rulesets.iptables {
        let mut analysis = analyze_iptables(&dump.text, dump.family, &ports);
        report.checked.push(format!("{} output", dump.command));
        report.findings.append(&mut analysis.findings);
        report.notes.append(&mut analysis.notes);
    }

    let settings = read_host_settings(underlay_iface);
    report.notes.extend(settings.not_checked());
    report.checked.extend(settings.checked(underlay_iface));
    report
        .findings
        .extend(host_setting_findings(&settings, underlay_iface));
    report.findings.sort_by_key(|f| f.severity);
    report
}
