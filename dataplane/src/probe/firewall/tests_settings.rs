//! Host settings: each finding, and the values that raise none.

use super::host::parse_features;
use super::*;

/// A host with nothing to report: loose rp_filter, forwarding on, conntrack mostly empty.
fn healthy() -> HostSettings {
    HostSettings {
        rp_filter_all: Reading::Value(2),
        rp_filter_default: Reading::Value(2),
        rp_filter_underlay: Reading::Value(2),
        ip_forward: Reading::Value(1),
        conntrack_max: Reading::Value(262_144),
        conntrack_count: Reading::Value(1_000),
        conntrack_udp_timeout: Reading::Value(30),
        underlay_driver: Reading::Value("virtio_net".into()),
        underlay_offloads: Reading::Value(vec![
            ("tx-checksum-ip-generic".into(), "on".into()),
            ("tx-udp_tnl-csum-segmentation".into(), "on".into()),
        ]),
    }
}

fn locations(findings: &[Finding]) -> Vec<&str> {
    findings.iter().map(|f| f.location.as_str()).collect()
}

#[test]
fn healthy_host_has_no_findings() {
    assert_eq!(host_setting_findings(&healthy(), "eth0"), vec![]);
}

#[test]
fn strict_rp_filter_on_all_or_the_underlay() {
    let mut s = healthy();
    s.rp_filter_all = Reading::Value(1);
    s.rp_filter_underlay = Reading::Value(0);
    let findings = host_setting_findings(&s, "eth0");
    assert_eq!(locations(&findings), ["sysctl net.ipv4.conf.all.rp_filter"]);
    assert_eq!(findings[0].severity, Severity::Warning);
    assert!(findings[0]
        .fix
        .starts_with("switch to loose mode: sysctl -w net.ipv4.conf.eth0.rp_filter=2"));

    // all=1 with the interface at 2: the kernel takes the larger, loose.
    s.rp_filter_underlay = Reading::Value(2);
    assert_eq!(host_setting_findings(&s, "eth0"), vec![]);

    let mut s = healthy();
    s.rp_filter_all = Reading::Value(0);
    s.rp_filter_underlay = Reading::Value(1);
    let findings = host_setting_findings(&s, "ens192");
    assert_eq!(
        locations(&findings),
        ["sysctl net.ipv4.conf.ens192.rp_filter"]
    );
}

#[test]
fn strict_default_rp_filter_is_a_warning() {
    let mut s = healthy();
    s.rp_filter_default = Reading::Value(1);
    let findings = host_setting_findings(&s, "eth0");
    assert_eq!(
        locations(&findings),
        ["sysctl net.ipv4.conf.default.rp_filter"]
    );
    assert!(findings[0]
        .fix
        .starts_with("sysctl -w net.ipv4.conf.default.rp_filter=2"));
}

#[test]
fn conntrack_near_full_and_full() {
    let mut s = healthy();
    s.conntrack_max = Reading::Value(65_536);
    s.conntrack_count = Reading::Value(52_000); // 79%
    let findings = host_setting_findings(&s, "eth0");
    assert_eq!(findings[0].severity, Severity::Warning);
    assert!(findings[0].what.contains("79% full (52000 of 65536"));
    assert!(findings[0]
        .fix
        .contains("sysctl -w net.netfilter.nf_conntrack_max=262144"));

    s.conntrack_count = Reading::Value(65_536);
    let findings = host_setting_findings(&s, "eth0");
    assert_eq!(findings[0].severity, Severity::Problem);

    s.conntrack_max = Reading::Value(0);
    assert_eq!(
        host_setting_findings(&s, "eth0")[0].severity,
        Severity::Problem
    );
}

#[test]
fn short_udp_timeout_is_a_warning() {
    let mut s = healthy();
    s.conntrack_udp_timeout = Reading::Value(10);
    let findings = host_setting_findings(&s, "eth0");
    assert_eq!(
        locations(&findings),
        ["sysctl net.netfilter.nf_conntrack_udp_timeout"]
    );
}

#[test]
fn forwarding_off_is_a_warning() {
    let mut s = healthy();
    s.ip_forward = Reading::Value(0);
    let findings = host_setting_findings(&s, "eth0");
    assert_eq!(locations(&findings), ["sysctl net.ipv4.ip_forward"]);
    assert!(findings[0]
        .fix
        .starts_with("sysctl -w net.ipv4.ip_forward=1"));
}

#[test]
fn vmxnet3_checksum_offload_is_a_warning() {
    let mut s = healthy();
    s.underlay_driver = Reading::Value("vmxnet3".into());
    let findings = host_setting_findings(&s, "ens192");
    assert_eq!(locations(&findings), ["ethtool -k ens192"]);
    assert_eq!(
        findings[0].fix,
        "ethtool -K ens192 tx-checksum-ip-generic off tx-udp_tnl-csum-segmentation off (and make \
         it permanent in the interface's configuration), or create the cluster with a data-path \
         port other than 4789"
    );
    // Fixed-off features are not reported.
    s.underlay_offloads = Reading::Value(vec![(
        "tx-checksum-ip-generic".into(),
        "off [fixed]".into(),
    )]);
    assert_eq!(host_setting_findings(&s, "ens192"), vec![]);
}

#[test]
fn unread_settings_are_not_checked_not_findings() {
    let s = HostSettings {
        rp_filter_all: Reading::NotChecked("no /proc".into()),
        rp_filter_default: Reading::NotChecked("no /proc".into()),
        rp_filter_underlay: Reading::NotChecked("interface \"eth9\" does not exist".into()),
        ip_forward: Reading::NotChecked("no /proc".into()),
        conntrack_max: Reading::NotChecked("conntrack is not loaded".into()),
        conntrack_count: Reading::NotChecked("conntrack is not loaded".into()),
        conntrack_udp_timeout: Reading::NotChecked("conntrack is not loaded".into()),
        underlay_driver: Reading::NotChecked("`ethtool` is not installed".into()),
        underlay_offloads: Reading::NotChecked("`ethtool` is not installed".into()),
    };
    assert_eq!(host_setting_findings(&s, "eth9"), vec![]);
    let notes = s.not_checked();
    assert_eq!(notes.len(), 9);
    assert_eq!(
        notes[8],
        "not checked: underlay checksum offload: `ethtool` is not installed"
    );
    assert!(s.checked("eth9").is_empty());
    assert_eq!(healthy().checked("eth0").len(), 9);
}

#[test]
fn ethtool_features_parse() {
    let text = "Features for eth0:\nrx-checksumming: on\ntx-checksumming: on\n\
                \ttx-checksum-ipv4: off [fixed]\n\ttx-checksum-ip-generic: on\n\
                \ttx-udp_tnl-csum-segmentation: off [fixed]\n";
    let features = parse_features(text);
    assert_eq!(features.len(), 5);
    assert_eq!(
        features[3],
        ("tx-checksum-ip-generic".to_string(), "on".to_string())
    );
    assert_eq!(features[4].1, "off [fixed]");
}
