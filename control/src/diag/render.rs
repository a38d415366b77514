//! How `meshctl diag` prints a report: a host × host × port matrix, an MTU table, per-host
//! overlay findings, and every problem on a line of its own with its likely cause.

use super::{DiagReport, DiagResult, ProbeStatus};

/// Pads columns to their widest cell.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<width$}", width = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn silent(report: &DiagReport, out: &mut String) {
    for host in &report.silent {
        out.push_str(&format!(
            "{host}: did not answer in time (is it down? `meshctl node ls`; is its meshd stuck? `meshctl lab logs` or journalctl)\n"
        ));
    }
}

/// `diag ports`: one row per (from, to) pair and one column per port, then the problems.
pub fn ports(report: &DiagReport) -> String {
    let mut columns: Vec<(String, String, u16)> = Vec::new();
    for host in &report.hosts {
        if let DiagResult::Ports(checks) = &host.result {
            for c in checks {
                let key = (c.probe.clone(), c.protocol.clone(), c.port);
                if !columns.contains(&key) {
                    columns.push(key);
                }
            }
        }
    }
    let mut header = vec!["FROM".to_string(), "TO".to_string()];
    header.extend(
        columns
            .iter()
            .map(|(probe, protocol, port)| format!("{} {port} {probe}", protocol.to_uppercase())),
    );
    let mut rows = vec![header];
    let mut problems = Vec::new();
    for host in &report.hosts {
        match &host.result {
            DiagResult::Ports(checks) => {
                let mut peers: Vec<&str> = checks.iter().map(|c| c.to.as_str()).collect();
                peers.dedup();
                for peer in peers {
                    let mut row = vec![host.node.clone(), peer.to_string()];
                    for (probe, protocol, port) in &columns {
                        let cell = checks
                            .iter()
                            .find(|c| {
                                c.to == peer
                                    && &c.probe == probe
                                    && &c.protocol == protocol
                                    && c.port == *port
                            })
                            .map_or("-", |c| c.status.as_str());
                        row.push(cell.to_string());
                    }
                    rows.push(row);
                }
                for c in checks.iter().filter(|c| c.status != ProbeStatus::Ok) {
                    problems.push(format!(
                        "{} → {} {} {} ({}): {}: {}\n",
                        host.node,
                        c.to,
                        c.protocol.to_uppercase(),
                        c.port,
                        c.probe,
                        c.status.as_str(),
                        c.cause.as_deref().unwrap_or("no cause known")
                    ));
                }
            }
            DiagResult::Failed(why) => {
                problems.push(format!("{}: could not probe: {why}\n", host.node))
            }
            _ => {}
        }
    }
    let mut out = table(&rows);
    if !problems.is_empty() || !report.silent.is_empty() {
        out.push_str("\nProblems:\n");
        problems.iter().for_each(|p| out.push_str(p));
        silent(report, &mut out);
    }
    out
}

/// `diag mtu`: the path MTU per pair, and what the overlay MTU should be.
pub fn mtu(report: &DiagReport) -> String {
    let mut rows = vec![[
        "FROM",
        "TO",
        "UNDERLAY",
        "OVERLAY",
        "NETWORK",
        "CONFIGURED",
        "RECOMMENDED",
    ]
    .map(String::from)
    .to_vec()];
    let mut notes = Vec::new();
    let show = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
    for host in &report.hosts {
        match &host.result {
            DiagResult::Mtu(checks) => {
                for c in checks {
                    rows.push(vec![
                        host.node.clone(),
                        c.to.clone(),
                        show(c.underlay),
                        show(c.overlay),
                        c.network.clone().unwrap_or_else(|| "-".into()),
                        show(c.configured),
                        show(c.recommended),
                    ]);
                    for note in &c.notes {
                        notes.push(format!("{} → {}: {note}\n", host.node, c.to));
                    }
                    if let (Some(have), Some(want)) = (c.configured, c.recommended) {
                        if have > want {
                            let fate = match c.overlay {
                                Some(passed) if passed < have => format!(
                                    "packets over {passed} bytes are lost (a black hole)"
                                ),
                                _ => "VXLAN packets over the path MTU are fragmented on the way (slow), and lost wherever fragments are dropped".to_string(),
                            };
                            notes.push(format!(
                                "{} → {}: the overlay MTU {have} exceeds the underlay path MTU minus 50: {fate}; recreate the network with --opt mtu={want}\n",
                                host.node, c.to
                            ));
                        }
                    }
                }
            }
            DiagResult::Failed(why) => {
                notes.push(format!("{}: could not probe: {why}\n", host.node))
            }
            _ => {}
        }
    }
    let mut out = table(&rows);
    if !notes.is_empty() || !report.silent.is_empty() {
        out.push('\n');
        notes.iter().for_each(|n| out.push_str(n));
        silent(report, &mut out);
    }
    out
}

/// The table, then the notes (problems, counters, silent hosts) under it.
fn table_then_notes(report: &DiagReport, rows: &[Vec<String>], mut notes: String) -> String {
    silent(report, &mut notes);
    let mut text = table(rows);
    if !notes.is_empty() {
        text.push('\n');
        text.push_str(&notes);
    }
    text
}

/// `diag overlay`: each host's problems, repairs and pings.
pub fn overlay(report: &DiagReport) -> String {
    let mut out = String::new();
    let mut rows = vec![["FROM", "TO", "FROM TASK", "TO TASK", "IP", "PING"]
        .map(String::from)
        .to_vec()];
    for host in &report.hosts {
        match &host.result {
            DiagResult::Overlay(check) => {
                for p in &check.problems {
                    out.push_str(&format!("{} ({}): {p}\n", host.node, check.network));
                }
                for r in &check.repaired {
                    out.push_str(&format!(
                        "{} ({}): repaired: {r}\n",
                        host.node, check.network
                    ));
                }
                for p in &check.pings {
                    rows.push(vec![
                        host.node.clone(),
                        p.to.clone(),
                        p.from_task.clone(),
                        p.to_task.clone(),
                        p.ip.to_string(),
                        match p.rtt_us {
                            Some(us) if p.status == ProbeStatus::Ok => {
                                format!("OK {us} µs")
                            }
                            _ => p.status.as_str().to_string(),
                        },
                    ]);
                }
            }
            DiagResult::Failed(why) => {
                out.push_str(&format!("{}: could not check: {why}\n", host.node))
            }
            _ => {}
        }
    }
    table_then_notes(report, &rows, out)
}

/// `diag lb`: a row per host (path, what it balances, forwarded and dropped packets), then
/// every non-zero counter per host.
pub fn lb(report: &DiagReport) -> String {
    let mut out = String::new();
    let mut rows = vec![[
        "HOST",
        "MODE",
        "PATH",
        "VIP PATH",
        "SETS",
        "BACKENDS",
        "FORWARDED",
        "DROPPED",
    ]
    .map(String::from)
    .to_vec()];
    for host in &report.hosts {
        match &host.result {
            DiagResult::Lb(check) => {
                let sum = |prefix: &str| -> u64 {
                    check
                        .counters
                        .iter()
                        .filter(|(name, _)| name.starts_with(prefix))
                        .map(|(_, n)| n)
                        .sum()
                };
                rows.push(vec![
                    host.node.clone(),
                    check.mode.clone(),
                    check.path.clone().unwrap_or_else(|| "NONE".into()),
                    check.vip_path.clone().unwrap_or_else(|| "-".into()),
                    check.services.to_string(),
                    check.backends.to_string(),
                    sum("forward:").to_string(),
                    sum("drop:").to_string(),
                ]);
                if let Some(error) = &check.error {
                    out.push_str(&format!("{}: {error}\n", host.node));
                }
                for (name, n) in check.counters.iter().filter(|(_, n)| *n > 0) {
                    out.push_str(&format!("{}: {name} {n}\n", host.node));
                }
            }
            DiagResult::Failed(why) => {
                out.push_str(&format!("{}: could not check: {why}\n", host.node))
            }
            _ => {}
        }
    }
    table_then_notes(report, &rows, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::{HostResult, LbCheck, MtuCheck, PortCheck};

    #[test]
    fn the_lb_table_sums_forwards_and_drops_and_lists_each_counter() {
        let report = DiagReport {
            hosts: vec![HostResult {
                node: "w1".into(),
                result: DiagResult::Lb(LbCheck {
                    mode: "auto".into(),
                    path: Some("tc".into()),
                    vip_path: Some("tc".into()),
                    error: None,
                    services: 1,
                    backends: 3,
                    counters: vec![
                        ("forward:local".into(), 5),
                        ("forward:remote".into(), 7),
                        ("drop:fragment".into(), 2),
                        ("drop:truncated-ip".into(), 0),
                    ],
                }),
            }],
            silent: vec![],
        };
        let text = lb(&report);
        assert!(
            text.contains("w1") && text.contains(" 12 ") && text.contains(" 2"),
            "{text}"
        );
        assert!(text.contains("w1: drop:fragment 2"), "{text}");
        assert!(!text.contains("truncated-ip"), "{text}");
        assert!(!report.has_problem());
    }

    fn check(to: &str, port: u16, status: ProbeStatus) -> PortCheck {
        PortCheck {
            to: to.into(),
            protocol: "udp".into(),
            port,
            probe: "vxlan".into(),
            status,
            rtt_us: None,
            cause: (status != ProbeStatus::Ok).then(|| "dropped".into()),
        }
    }

    #[test]
    fn the_port_matrix_names_the_pair_direction_and_port_of_a_problem() {
        let report = DiagReport {
            hosts: vec![
                HostResult {
                    node: "w1".into(),
                    result: DiagResult::Ports(vec![check("w2", 4789, ProbeStatus::NoAnswer)]),
                },
                HostResult {
                    node: "w2".into(),
                    result: DiagResult::Ports(vec![check("w1", 4789, ProbeStatus::Ok)]),
                },
            ],
            silent: vec![],
        };
        assert!(report.has_problem());
        let text = ports(&report);
        assert!(text.contains("UDP 4789 vxlan"), "{text}");
        assert!(
            text.contains("w1 → w2 UDP 4789 (vxlan): NO ANSWER: dropped"),
            "{text}"
        );
        assert!(!text.contains("w2 → w1 UDP"), "{text}");
    }

    #[test]
    fn an_overlay_mtu_above_the_path_is_a_problem_with_the_fix() {
        let report = DiagReport {
            hosts: vec![HostResult {
                node: "w1".into(),
                result: DiagResult::Mtu(vec![MtuCheck {
                    to: "w2".into(),
                    underlay: Some(1400),
                    overlay: Some(1350),
                    network: Some("front".into()),
                    configured: Some(1450),
                    recommended: Some(1350),
                    notes: vec![],
                }]),
            }],
            silent: vec![],
        };
        assert!(report.has_problem());
        let text = mtu(&report);
        assert!(text.contains("--opt mtu=1350"), "{text}");
        let healthy = DiagReport {
            hosts: vec![HostResult {
                node: "w1".into(),
                result: DiagResult::Mtu(vec![MtuCheck {
                    to: "w2".into(),
                    underlay: Some(1500),
                    overlay: None,
                    network: None,
                    configured: None,
                    recommended: Some(1450),
                    notes: vec![],
                }]),
            }],
            silent: vec![],
        };
        assert!(!healthy.has_problem());
    }

    #[test]
    fn silent_hosts_are_problems() {
        let report = DiagReport {
            hosts: vec![],
            silent: vec!["w3".into()],
        };
        assert!(report.has_problem());
        assert!(ports(&report).contains("w3: did not answer"));
    }
}
