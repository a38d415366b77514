//! Live tests: real `nft` (and iptables-nft) rules in a network namespace created for the test
//! and deleted by a guard, even on failure. Skipped (with a message) unless root with `ip` and
//! `nft` installed. The host namespace's rules are only read, never changed.

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;

/// A named network namespace (`ip netns add`), deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    /// Creates `mfw-<pid>-<n>`, or None (after saying why) when the test cannot run here.
    fn create() -> Option<Netns> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        if !root {
            eprintln!("skipped: needs root to create a network namespace");
            return None;
        }
        if !tool_exists("nft") || !tool_exists("ip") {
            eprintln!("skipped: needs `ip` and `nft`");
            return None;
        }
        let name = format!(
            "mfw-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .ok()?;
        assert!(status.success(), "ip netns add {name} failed");
        Some(Netns { name })
    }

    /// Runs a command inside the namespace; its stdout. Panics (cleaning up) on failure.
    fn run(&self, program: &str, args: &[&str]) -> String {
        // nsenter, not `ip netns exec`, which remounts / and fails where / is not a mount
        // point (a chroot, as in CI's fresh check).
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.name))
            .arg(program)
            .args(args)
            .output()
            .expect("running nsenter");
        assert!(
            out.status.success(),
            "{program} {args:?} in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn tool_exists(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok()
}

#[test]
fn nft_rule_in_a_namespace_is_named_exactly() {
    let Some(ns) = Netns::create() else { return };
    ns.run("nft", &["add", "table", "inet", "t"]);
    ns.run(
        "nft",
        &[
            "add",
            "chain",
            "inet",
            "t",
            "input",
            "{ type filter hook input priority 0 ; }",
        ],
    );
    // --echo --handle prints the rule back with its handle: "... # handle 2".
    let echoed = ns.run(
        "nft",
        &[
            "--echo", "--handle", "add", "rule", "inet", "t", "input", "udp", "dport", "7946",
            "drop",
        ],
    );
    let first = echoed.lines().next().unwrap_or_default();
    let handle = first.rsplit("# handle ").next().unwrap().trim().to_string();
    assert!(handle.parse::<u64>().is_ok(), "no handle in {echoed:?}");

    let json = ns.run("nft", &["-j", "list", "ruleset"]);
    let ports = required_ports(
        DEFAULT_DATA_PATH_PORT,
        DEFAULT_GOSSIP_PORT,
        DEFAULT_CLUSTER_PORT,
    );
    let analysis = analyze_nft(&json, &ports, &[]).unwrap();
    assert_eq!(analysis.notes, Vec::<String>::new());
    assert_eq!(analysis.findings.len(), 1, "{:#?}", analysis.findings);
    let finding = &analysis.findings[0];
    assert_eq!(
        finding.location,
        format!("nft inet t input handle {handle}")
    );
    assert_eq!(finding.severity, Severity::Problem);
    assert_eq!(
        finding.ports,
        vec![RequiredPort {
            protocol: Protocol::Udp,
            port: 7946,
            purpose: "gossip: membership and failure detection"
        }]
    );

    // nft's own text of the rule, as check_firewall shows it.
    let texts = nft_rule_texts(&ns.run("nft", &["-a", "list", "ruleset"]));
    assert_eq!(texts[&finding.location], "udp dport 7946 drop");
}

#[test]
fn iptables_nft_rules_are_reported_once() {
    let Some(ns) = Netns::create() else { return };
    if !tool_exists("iptables-save") {
        eprintln!("skipped: needs iptables");
        return;
    }
    let version = ns.run("iptables", &["--version"]);
    if !version.contains("nf_tables") {
        eprintln!("skipped: iptables is not iptables-nft ({})", version.trim());
        return;
    }
    ns.run(
        "iptables",
        &[
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            "2377",
            "-m",
            "comment",
            "--comment",
            "no raft",
            "-j",
            "REJECT",
        ],
    );
    let save = ns.run("iptables-save", &[]);
    let json = ns.run("nft", &["-j", "list", "ruleset"]);
    let ports = required_ports(4789, 7946, 2377);

    let skip: Vec<TableRef> = iptables_nft_tables(&save)
        .into_iter()
        .map(|name| TableRef {
            family: "ip".into(),
            name,
        })
        .collect();
    let from_nft = analyze_nft(&json, &ports, &skip).unwrap();
    let from_iptables = analyze_iptables(&save, "ip", &ports);
    assert_eq!(from_nft, Analysis::default());
    assert_eq!(
        from_iptables.findings.len(),
        1,
        "{:#?}",
        from_iptables.findings
    );
    let finding = &from_iptables.findings[0];
    assert_eq!(finding.location, "iptables (nf_tables) filter INPUT rule 1");
    assert_eq!(
        finding.rule.as_deref(),
        Some(
            r#"-A INPUT -p tcp -m tcp --dport 2377 -m comment --comment "no raft" -j REJECT --reject-with icmp-port-unreachable"#
        )
    );
}

#[test]
fn check_firewall_reads_this_host_without_failing() {
    // Read-only: it runs nft/iptables-save listings and reads /proc/sys.
    let report = check_firewall(4789, 7946, 2377, "lo");
    assert!(report.checked[0].starts_with("required ports: TCP 2377"));
    assert!(
        report
            .checked
            .iter()
            .any(|c| c.starts_with("net.ipv4.ip_forward = "))
            || report.notes.iter().any(|n| n.contains("ip_forward"))
    );
    serde_json::to_string(&report).unwrap();
}

#[test]
fn mesh_allow_list_is_taken_by_nft_updated_in_place_and_not_reported() {
    let Some(ns) = Netns::create() else { return };
    let apply = |guard: &crate::guard::Guard| {
        let file = std::env::temp_dir().join(format!("{}-guard.json", ns.name));
        std::fs::write(
            &file,
            serde_json::to_string(&crate::guard::ruleset::transaction(guard)).unwrap(),
        )
        .unwrap();
        ns.run("nft", &["-j", "-f", file.to_str().unwrap()]);
        let _ = std::fs::remove_file(&file);
    };
    let ip = |last| std::net::Ipv4Addr::new(198, 18, 0, last);
    apply(&crate::guard::plan(4789, ip(1), [ip(2), ip(3)]));
    // A member leaves: the set shrinks, in one transaction on the same table.
    apply(&crate::guard::plan(4789, ip(1), [ip(2)]));
    let listing = ns.run("nft", &["list", "table", "inet", crate::guard::TABLE]);
    assert!(listing.contains("198.18.0.1, 198.18.0.2 }"), "{listing}");
    assert!(!listing.contains("198.18.0.3"), "{listing}");
    assert!(
        listing.contains("udp dport 4789 ip saddr @members accept"),
        "{listing}"
    );
    assert!(
        listing.contains("udp dport 4789 counter name \"dropped\" drop"),
        "{listing}"
    );

    let json = ns.run("nft", &["-j", "list", "ruleset"]);
    let ports = required_ports(
        DEFAULT_DATA_PATH_PORT,
        DEFAULT_GOSSIP_PORT,
        DEFAULT_CLUSTER_PORT,
    );
    // Read as any firewall, the table drops some of the data-path port's traffic...
    let unskipped = analyze_nft(&json, &ports, &[]).unwrap();
    assert!(!unskipped.findings.is_empty(), "{unskipped:#?}");
    // ... but it is Mesh's own, and members are never dropped by it.
    let analysis = analyze_nft(&json, &ports, &mesh_tables()).unwrap();
    assert!(analysis.findings.is_empty(), "{:#?}", analysis.findings);

    // Removal takes the whole table, and is no error once it is gone.
    for _ in 0..2 {
        let file = std::env::temp_dir().join(format!("{}-rm.json", ns.name));
        std::fs::write(
            &file,
            serde_json::to_string(&crate::guard::ruleset::removal()).unwrap(),
        )
        .unwrap();
        ns.run("nft", &["-j", "-f", file.to_str().unwrap()]);
        let _ = std::fs::remove_file(&file);
    }
    assert!(!ns
        .run("nft", &["list", "tables"])
        .contains(crate::guard::TABLE));
}
