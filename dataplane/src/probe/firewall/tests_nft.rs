//! nftables analysis against `nft -j list ruleset` output captured from nft 1.0.6 in a test
//! namespace (fixtures/nft_*.json, with fixtures/nft_*.txt the `nft -a list ruleset` of the
//! same rules), and small rulesets in the same shape.

use super::test_support::{port, ports, summary};
use super::*;

const HOST_JSON: &str = include_str!("fixtures/nft_host.json");
const HOST_TEXT: &str = include_str!("fixtures/nft_host.txt");
const IPTABLES_NFT_JSON: &str = include_str!("fixtures/nft_iptables_nft.json");

/// A ruleset as `nft -j list ruleset` prints it: table `inet t`, the chains (name, and hook
/// and policy for base chains), and rules (chain, handle, statements as nft's JSON).
fn ruleset(
    family: &str,
    chains: &[(&str, Option<(&str, &str)>)],
    rules: &[(&str, u64, &str)],
) -> String {
    let mut objects = vec![
        r#"{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}"#.to_string(),
        format!(r#"{{"table": {{"family": "{family}", "name": "t", "handle": 1}}}}"#),
    ];
    for (i, (name, base)) in chains.iter().enumerate() {
        let base = base.map_or(String::new(), |(hook, policy)| {
            format!(r#", "type": "filter", "hook": "{hook}", "prio": 0, "policy": "{policy}""#)
        });
        objects.push(format!(
            r#"{{"chain": {{"family": "{family}", "table": "t", "name": "{name}", "handle": {}{base}}}}}"#,
            i + 1
        ));
    }
    for (chain, handle, expr) in rules {
        objects.push(format!(
            r#"{{"rule": {{"family": "{family}", "table": "t", "chain": "{chain}", "handle": {handle}, "expr": {expr}}}}}"#
        ));
    }
    format!(r#"{{"nftables": [{}]}}"#, objects.join(", "))
}

const INPUT_DROP: (&str, Option<(&str, &str)>) = ("input", Some(("input", "drop")));
const INPUT_ACCEPT: (&str, Option<(&str, &str)>) = ("input", Some(("input", "accept")));

fn dport(proto: &str, right: &str) -> String {
    format!(
        r#"{{"match": {{"op": "==", "left": {{"payload": {{"protocol": "{proto}", "field": "dport"}}}}, "right": {right}}}}}"#
    )
}

#[test]
fn host_fixture_names_each_blocking_rule() {
    let findings = blocking_nft_rules(HOST_JSON, &ports()).unwrap();
    use Protocol::{Tcp, Udp};
    assert_eq!(
        summary(&findings),
        vec![
            (
                "nft inet filter input handle 13".to_string(),
                Severity::Problem,
                vec![(Udp, 7946), (Udp, 4789)]
            ),
            (
                "nft inet filter output handle 20".to_string(),
                Severity::Problem,
                vec![(Udp, 7946)]
            ),
            (
                "nft inet filter guard handle 19".to_string(),
                Severity::Warning,
                vec![(Tcp, 7946)]
            ),
        ]
    );
    let udp = &findings[0];
    assert_eq!(udp.rule.as_deref(), Some("udp dport { 4789, 7946 } drop"));
    assert!(udp.what.contains("drops incoming UDP 7946"), "{}", udp.what);
    assert!(
        udp.fix.contains(
            "nft 'insert rule inet filter input position 13 udp dport { 7946, 4789 } accept'"
        ),
        "{}",
        udp.fix
    );
    assert!(udp
        .fix
        .contains("nft delete rule inet filter input handle 13"));
    let guard = &findings[2];
    assert!(
        guard.what.contains("nft inet filter guard handle 18"),
        "{}",
        guard.what
    );
    assert!(
        guard
            .what
            .contains("reached through nft inet filter input handle 11"),
        "{}",
        guard.what
    );
}

#[test]
fn listing_gives_rule_texts_and_policies() {
    let texts = nft_rule_texts(HOST_TEXT);
    assert_eq!(
        texts["nft inet filter input handle 13"],
        "udp dport { 4789, 7946 } drop"
    );
    assert_eq!(
        texts["nft inet filter guard handle 18"],
        "ip saddr 10.0.0.0/8 return"
    );
    assert_eq!(
        texts["nft inet filter output handle 20"],
        "udp dport 7000-8000 counter packets 0 bytes 0 drop"
    );
    assert_eq!(
        texts["nft inet filter input policy"],
        "type filter hook input priority filter; policy drop;"
    );
    assert!(!texts.keys().any(|k| k.contains("cluster_udp")));
}

#[test]
fn iptables_nft_tables_are_skipped_when_asked() {
    let skip = [
        TableRef {
            family: "ip".into(),
            name: "filter".into(),
        },
        TableRef {
            family: "ip6".into(),
            name: "filter".into(),
        },
    ];
    let analysis = analyze_nft(IPTABLES_NFT_JSON, &ports(), &skip).unwrap();
    assert_eq!(analysis, Analysis::default());

    // Unskipped, the xt statements nft cannot show are notes, not guesses.
    let analysis = analyze_nft(IPTABLES_NFT_JSON, &ports(), &[]).unwrap();
    assert!(analysis
        .notes
        .iter()
        .any(|n| n.contains("nft ip filter INPUT handle")
            && n.contains("iptables extension match multiport")));
    assert!(analysis
        .findings
        .iter()
        .any(|f| f.location.starts_with("nft ip filter INPUT handle")
            && f.ports == vec![port(Protocol::Udp, 4789)]));
}

#[test]
fn catch_all_drop_without_accept_is_a_problem() {
    let json = ruleset(
        "inet",
        &[INPUT_ACCEPT],
        &[
            (
                "input",
                2,
                &format!(r#"[{}, {{"accept": null}}]"#, dport("tcp", "2377")),
            ),
            (
                "input",
                3,
                r#"[{"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]"#,
            ),
        ],
    );
    let findings = blocking_nft_rules(&json, &ports()).unwrap();
    use Protocol::{Tcp, Udp};
    assert_eq!(
        summary(&findings),
        vec![(
            "nft inet t input handle 3".to_string(),
            Severity::Problem,
            vec![(Tcp, 7946), (Udp, 7946), (Udp, 4789)]
        )]
    );
}

#[test]
fn policy_drop_without_accept_is_a_problem() {
    let json = ruleset(
        "inet",
        &[INPUT_DROP],
        &[
            (
                "input",
                2,
                &format!(
                    r#"[{}, {{"accept": null}}]"#,
                    dport("th", r#"{"set": [2377, 4789]}"#)
                ),
            ),
            (
                "input",
                3,
                &format!(r#"[{}, {{"accept": null}}]"#, dport("tcp", "7946")),
            ),
        ],
    );
    let findings = blocking_nft_rules(&json, &ports()).unwrap();
    assert_eq!(
        summary(&findings),
        vec![(
            "nft inet t input policy".to_string(),
            Severity::Problem,
            vec![(Protocol::Udp, 7946)],
        )]
    );
    assert!(findings[0]
        .what
        .contains("no earlier rule accepts incoming UDP 7946"));
    assert!(findings[0]
        .fix
        .contains("nft 'add rule inet t input udp dport 7946 accept'"));
}

#[test]
fn negation_ranges_and_comparisons() {
    let not53 = r#"{"match": {"op": "!=", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 53}}"#;
    let below = r#"{"match": {"op": "<", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 2378}}"#;
    let json = ruleset(
        "inet",
        &[INPUT_ACCEPT],
        &[
            ("input", 2, &format!(r#"[{not53}, {{"drop": null}}]"#)),
            (
                "input",
                3,
                &format!(r#"[{below}, {{"reject": {{"type": "tcp reset"}}}}]"#),
            ),
            (
                "input",
                4,
                &format!(
                    r#"[{}, {{"drop": null}}]"#,
                    dport("th", r#"{"range": [7000, 8000]}"#)
                ),
            ),
        ],
    );
    let findings = blocking_nft_rules(&json, &ports()).unwrap();
    use Protocol::{Tcp, Udp};
    assert_eq!(
        summary(&findings),
        vec![
            (
                "nft inet t input handle 2".to_string(),
                Severity::Problem,
                vec![(Udp, 7946), (Udp, 4789)]
            ),
            (
                "nft inet t input handle 3".to_string(),
                Severity::Problem,
                vec![(Tcp, 2377)]
            ),
            (
                "nft inet t input handle 4".to_string(),
                Severity::Problem,
                vec![(Tcp, 7946)]
            ),
        ]
    );
    assert!(findings[1]
        .what
        .contains("this rule rejects incoming TCP 2377"));
}

#[test]
fn protocol_matches_and_verdict_maps() {
    let ip_proto = r#"{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "protocol"}}, "right": "tcp"}}"#;
    let l4 = r#"{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": {"set": ["tcp", "udp"]}}}"#;
    let vmap = r#"{"vmap": {"key": {"payload": {"protocol": "udp", "field": "dport"}}, "data": {"set": [[53, {"accept": null}], [4789, {"drop": null}]]}}}"#;
    let json = ruleset(
        "inet",
        &[INPUT_ACCEPT],
        &[
            ("input", 2, &format!(r#"[{vmap}]"#)),
            (
                "input",
                3,
                &format!(r#"[{l4}, {}, {{"accept": null}}]"#, dport("th", "7946")),
            ),
            ("input", 4, &format!(r#"[{ip_proto}, {{"drop": null}}]"#)),
        ],
    );
    let findings = blocking_nft_rules(&json, &ports()).unwrap();
    use Protocol::{Tcp, Udp};
    assert_eq!(
        summary(&findings),
        vec![
            (
                "nft inet t input handle 2".to_string(),
                Severity::Problem,
                vec![(Udp, 4789)]
            ),
            (
                "nft inet t input handle 4".to_string(),
                Severity::Problem,
                vec![(Tcp, 2377)]
            ),
        ]
    );
}

#[test]
fn conntrack_state_verdict_maps_are_evaluated_for_new_flows() {
    // As Fedora's and firewalld's rulesets start.
    let ct_vmap = r#"{"vmap": {"key": {"ct": {"key": "state"}}, "data": {"set": [["established", {"accept": null}], ["related", {"accept": null}], ["invalid", {"drop": null}]]}}}"#;
    let new_drop = r#"{"vmap": {"key": {"ct": {"key": "state"}}, "data": {"set": [[{"set": ["invalid", "new"]}, {"drop": null}]]}}}"#;
    let json = ruleset(
        "inet",
        &[INPUT_ACCEPT, ("out", Some(("output", "accept")))],
        &[
            ("input", 3, &format!("[{ct_vmap}]")),
            (
                "input",
                4,
                &format!(r#"[{}, {{"drop": null}}]"#, dport("udp", "4789")),
            ),
            ("out", 5, &format!("[{new_drop}]")),
        ],
    );
    let analysis = analyze_nft(&json, &ports(), &[]).unwrap();
    assert_eq!(analysis.notes, Vec::<String>::new());
    let locations: Vec<(&str, Severity)> = analysis
        .findings
        .iter()
        .map(|f| (f.location.as_str(), f.severity))
        .collect();
    assert_eq!(
        locations,
        [
            ("nft inet t input handle 4", Severity::Problem),
            ("nft inet t out handle 5", Severity::Problem)
        ]
    );
    assert_eq!(analysis.findings[1].ports.len(), 4);
}

#[test]
fn named_sets_with_ranges() {
    let json = HOST_JSON.replace(
        r#""elem": [{"range": [4000, 4700]}, 7946]"#,
        r#""elem": [{"range": [4000, 4800]}]"#,
    );
    assert_ne!(json, HOST_JSON, "the fixture holds the named set");
    // Drop the rule for { 4789, 7946 }: UDP 4789 now meets `udp dport @cluster_udp reject`.
    let json = json.replace(r#""right": {"set": [4789, 7946]}"#, r#""right": 1"#);
    let findings = blocking_nft_rules(&json, &ports()).unwrap();
    let reject = findings
        .iter()
        .find(|f| f.location == "nft inet filter input handle 16")
        .unwrap();
    assert_eq!(reject.ports, vec![port(Protocol::Udp, 4789)]);
    assert_eq!(reject.severity, Severity::Problem);
}

#[test]
fn other_conditions_make_warnings_and_loopback_never_matches() {
    let saddr = r#"{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.0.0.0", "len": 8}}}}"#;
    let lo = r#"{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "lo"}}"#;
    let established = r#"{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}"#;
    let json = ruleset(
        "inet",
        &[INPUT_ACCEPT],
        &[
            (
                "input",
                2,
                &format!(r#"[{established}, {{"accept": null}}]"#),
            ),
            ("input", 3, &format!(r#"[{lo}, {{"accept": null}}]"#)),
            (
                "input",
                4,
                &format!(r#"[{saddr}, {}, {{"drop": null}}]"#, dport("udp", "4789")),
            ),
            (
                "input",
                5,
                &format!(r#"[{saddr}, {}, {{"accept": null}}]"#, dport("tcp", "2377")),
            ),
            (
                "input",
                6,
                &format!(r#"[{}, {{"drop": null}}]"#, dport("tcp", "2377")),
            ),
        ],
    );
    let findings = blocking_nft_rules(&json, &ports()).unwrap();
    use Protocol::{Tcp, Udp};
    assert_eq!(
        summary(&findings),
        vec![
            (
                "nft inet t input handle 4".to_string(),
                Severity::Warning,
                vec![(Udp, 4789)]
            ),
            (
                "nft inet t input handle 6".to_string(),
                Severity::Warning,
                vec![(Tcp, 2377)]
            ),
        ]
    );
    assert!(findings[0]
        .what
        .contains("only packets that also match: ip saddr 10.0.0.0/8"));
    assert!(findings[1]
        .what
        .contains("accepted or diverted earlier by nft inet t input handle 5"));
}

#[test]
fn goto_does_not_come_back_and_jump_does() {
    let json = ruleset(
        "inet",
        &[INPUT_ACCEPT, ("sub", None)],
        &[
            (
                "input",
                3,
                &format!(
                    r#"[{}, {{"goto": {{"target": "sub"}}}}]"#,
                    dport("udp", "4789")
                ),
            ),
            ("input", 4, r#"[{"jump": {"target": "sub"}}]"#),
            ("input", 5, r#"[{"drop": null}]"#),
            (
                "sub",
                6,
                &format!(r#"[{}, {{"return": null}}]"#, dport("tcp", "2377")),
            ),
            (
                "sub",
                7,
                &format!(r#"[{}, {{"accept": null}}]"#, dport("tcp", "7946")),
            ),
        ],
    );
    let findings = blocking_nft_rules(&json, &ports()).unwrap();
    use Protocol::{Tcp, Udp};
    // UDP 4789 goes to `sub`, falls off its end and returns past input's last rule.
    assert_eq!(
        summary(&findings),
        vec![(
            "nft inet t input handle 5".to_string(),
            Severity::Problem,
            vec![(Tcp, 2377), (Udp, 7946)]
        )]
    );
}

#[test]
fn unknown_expressions_are_notes_not_guesses() {
    let concat = r#"{"match": {"op": "==", "left": {"concat": [{"payload": {"protocol": "ip", "field": "saddr"}}, {"payload": {"protocol": "udp", "field": "dport"}}]}, "right": "@peers"}}"#;
    let json = ruleset(
        "inet",
        &[INPUT_DROP],
        &[
            ("input", 2, &format!(r#"[{concat}, {{"accept": null}}]"#)),
            ("input", 3, r#"[{"queue": {"num": 1}}]"#),
        ],
    );
    let analysis = analyze_nft(&json, &ports(), &[]).unwrap();
    assert!(
        analysis.notes[0].starts_with("could not evaluate nft inet t input handle 2"),
        "{:?}",
        analysis.notes
    );
    assert!(analysis
        .notes
        .iter()
        .any(|n| n.contains("handle 3") && n.contains("userspace")));
    // The policy still drops what those rules did not take, but that is only a warning.
    assert!(analysis
        .findings
        .iter()
        .all(|f| f.severity == Severity::Warning));
    assert_eq!(analysis.findings.len(), 1);
}

#[test]
fn jump_loops_are_bounded() {
    let json = ruleset(
        "inet",
        &[INPUT_ACCEPT, ("a", None), ("b", None)],
        &[
            ("input", 4, r#"[{"jump": {"target": "a"}}]"#),
            ("a", 5, r#"[{"jump": {"target": "b"}}]"#),
            ("b", 6, r#"[{"jump": {"target": "a"}}]"#),
        ],
    );
    let analysis = analyze_nft(&json, &ports(), &[]).unwrap();
    assert!(analysis.notes.iter().any(|n| n.contains("nested jumps")));
    assert!(analysis.findings.is_empty());
}

#[test]
fn ip6_and_forward_chains_are_warnings_and_forward_policy_is_ignored() {
    let drop = format!(r#"[{}, {{"drop": null}}]"#, dport("udp", "4789"));
    let json = ruleset("ip6", &[INPUT_DROP], &[("input", 2, &drop)]);
    let findings = blocking_nft_rules(&json, &ports()).unwrap();
    assert!(findings.iter().all(|f| f.severity == Severity::Warning));
    assert!(findings[0].what.contains("IPv6"));

    let json = ruleset(
        "inet",
        &[("fwd", Some(("forward", "drop")))],
        &[("fwd", 2, &drop), ("fwd", 3, r#"[{"drop": null}]"#)],
    );
    let findings = blocking_nft_rules(&json, &ports()).unwrap();
    assert_eq!(
        summary(&findings),
        vec![(
            "nft inet t fwd handle 2".to_string(),
            Severity::Warning,
            vec![(Protocol::Udp, 4789)],
        )]
    );
}

#[test]
fn rules_that_ipv4_traffic_never_meets_are_skipped() {
    let ip6 = r#"{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": "::1"}}"#;
    let nfproto =
        r#"{"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv6"}}"#;
    let json = ruleset(
        "inet",
        &[INPUT_ACCEPT],
        &[
            ("input", 2, &format!(r#"[{ip6}, {{"drop": null}}]"#)),
            ("input", 3, &format!(r#"[{nfproto}, {{"drop": null}}]"#)),
        ],
    );
    assert!(blocking_nft_rules(&json, &ports()).unwrap().is_empty());
}

#[test]
fn bridge_tables_are_noted() {
    let json = ruleset("bridge", &[INPUT_DROP], &[]);
    let analysis = analyze_nft(&json, &ports(), &[]).unwrap();
    assert!(analysis.findings.is_empty());
    assert!(analysis.notes[0].contains("nft bridge t: not evaluated"));
}

#[test]
fn empty_ruleset_has_no_findings() {
    let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}]}"#;
    assert_eq!(blocking_nft_rules(json, &ports()).unwrap(), vec![]);
}

#[test]
fn not_json_is_an_error() {
    let err = blocking_nft_rules("table inet filter {", &ports()).unwrap_err();
    assert!(matches!(err, FirewallError::NftJson(_)));
    assert!(err
        .to_string()
        .contains("run `nft -j list ruleset` by hand"));
}

#[test]
fn json_without_nftables_array_is_an_error() {
    let err = blocking_nft_rules(r#"{"tables": []}"#, &ports()).unwrap_err();
    assert!(matches!(err, FirewallError::NftShape(_)));
}

#[test]
fn required_ports_are_deduplicated() {
    let ports = required_ports(4789, 7946, 2377);
    assert_eq!(ports.len(), 4);
    assert_eq!(ports[3].to_string(), "UDP 4789 (VXLAN overlay data path)");
    let same = required_ports(7946, 7946, 2377);
    assert_eq!(same.len(), 3);
}

#[test]
fn findings_serialize_for_json_output() {
    let findings = blocking_nft_rules(HOST_JSON, &ports()).unwrap();
    let json = serde_json::to_value(&findings[0]).unwrap();
    assert_eq!(json["severity"], "problem");
    assert_eq!(json["ports"][0]["protocol"], "udp");
    assert_eq!(json["location"], "nft inet filter input handle 13");
}
