//! meshd and meshctl as an operator meets them, inside lab hosts: clean shutdown on SIGTERM,
//! bad configuration and flags refused with the field named, one daemon per state directory,
//! and `meshctl info` finding its host's daemon without flags.

use lab::{find_binary, MESHCTL, MESHD};
use netns_tests::TestLab;

fn one_manager(spec: &mut lab::LabSpec) {
    spec.managers = 1;
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn sigterm_stops_meshd_cleanly() {
    let lab = TestLab::up("term", one_manager);
    let pid = lab.lab().status()[0].daemon_pid.expect("meshd runs");
    let files = lab.lab().files("m1").unwrap();
    assert!(files.control_socket().exists());
    // SAFETY: signalling and reaping our own child process (the lab started meshd from this
    // process); status is a valid out-pointer.
    let status = unsafe {
        assert_eq!(libc::kill(pid, libc::SIGTERM), 0);
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        status
    };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "meshd exit status {status:#x}"
    );
    assert!(
        !files.control_socket().exists(),
        "control socket left behind"
    );
    let log = std::fs::read_to_string(files.log()).unwrap();
    assert!(
        log.contains("SIGTERM: shutting down") && log.contains("meshd stopped"),
        "{log}"
    );
}

#[test]
fn bad_config_and_flags_are_refused_with_the_field_named() {
    let lab = TestLab::up("badcfg", one_manager);
    let meshd = find_binary(MESHD).unwrap().to_string_lossy().into_owned();
    let dir = lab.lab().files("m1").unwrap().dir;
    let cases: &[(&str, &[&str], &str)] = &[
        ("data_path_port = 0\n", &[], "data_path_port"),
        ("gossip_port = 4789\n", &[], "data_path_port"),
        ("listen_adr = \"198.18.0.1:2377\"\n", &[], "listen_adr"),
        ("log_level = \"loud\"\n", &[], "log_level"),
        ("state_dir = \"relative\"\n", &[], "state_dir"),
        ("", &["--listen-addr", "nowhere"], "--listen-addr"),
        ("", &["--data-path-port", "70000"], "--data-path-port"),
    ];
    for (i, (config, flags, named)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad-{i}.toml"));
        std::fs::write(&path, config).unwrap();
        let path = path.to_string_lossy().into_owned();
        let mut argv = vec![meshd.as_str(), "--config", &path];
        argv.extend_from_slice(flags);
        let out = lab.lab().output("m1", &argv).unwrap();
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "meshd accepted {config:?} {flags:?}");
        assert!(
            stderr.contains(named),
            "error for {config:?} {flags:?} does not name {named}: {stderr}"
        );
    }
    let missing = lab
        .lab()
        .output(
            "m1",
            &[meshd.as_str(), "--config", "/nonexistent/meshd.toml"],
        )
        .unwrap();
    assert!(text(&missing.stderr).contains("/nonexistent/meshd.toml"));
    // The running daemon was not disturbed by any of it.
    assert_eq!(lab.reopened().status()[0].daemon, "running");
}

#[test]
fn a_second_meshd_on_the_same_state_dir_is_refused() {
    let lab = TestLab::up("twice", one_manager);
    let meshd = find_binary(MESHD).unwrap();
    let config = lab.lab().files("m1").unwrap().config();
    let out = lab
        .lab()
        .output(
            "m1",
            &[
                meshd.to_str().unwrap(),
                "--config",
                config.to_str().unwrap(),
            ],
        )
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("another meshd is using state directory"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(lab.reopened().status()[0].daemon, "running");
}

#[test]
fn meshctl_inside_a_host_talks_to_that_hosts_meshd() {
    let lab = TestLab::up("info", |spec| spec.managers = 2);
    let meshctl = find_binary(MESHCTL).unwrap();
    let meshctl = meshctl.to_str().unwrap();
    for host in ["m1", "m2"] {
        let json = lab.sh(host, &[meshctl, "info", "--format", "json"]);
        let info: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(info["node_name"], host);
        assert_eq!(info["listen_addr"], format!("{}:2377", lab.addr(host)));
        assert_eq!(info["data_path_port"], 4789);
    }
    let table = lab.sh("m1", &[meshctl, "info"]);
    assert!(table.contains("Node") && table.contains("m1"), "{table}");
    // Without a daemon to talk to, the error says what to do.
    let out = lab
        .lab()
        .output("m1", &[meshctl, "--socket", "/nonexistent.sock", "info"])
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is meshd running?"),
        "{}",
        text(&out.stderr)
    );
}
