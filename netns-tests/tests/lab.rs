//! The lab itself, on real namespaces: reachability, partitions, power loss, daemon crashes,
//! link emulation, bad input, and a teardown that leaves nothing behind.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;

use lab::{Lab, LabError, LabSpec, LinkParams, Power};
use netns_tests::{alive, TestLab};

fn five_hosts(spec: &mut LabSpec) {
    spec.managers = 3;
    spec.workers = 2;
}

fn host_names(lab: &TestLab) -> Vec<String> {
    lab.lab().hosts().iter().map(|h| h.name.clone()).collect()
}

#[test]
fn five_host_lab_every_host_reaches_every_other() {
    let lab = TestLab::up("reach", five_hosts);
    let status = lab.lab().status();
    assert_eq!(status.len(), 5);
    for host in &status {
        assert_eq!(host.power, Power::On);
        assert_eq!(host.daemon, "running", "meshd on {}", host.name);
    }
    let hosts = host_names(&lab);
    for from in &hosts {
        for to in &hosts {
            if from != to {
                assert!(lab.ping(from, to), "{from} cannot reach {to}");
            }
        }
    }
    // Each meshd answers on its own control socket with its own identity.
    for host in &hosts {
        let socket = lab.lab().files(host).unwrap().control_socket();
        let mut stream = UnixStream::connect(&socket).unwrap();
        stream.write_all(b"{\"op\":\"status\"}\n").unwrap();
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).unwrap();
        assert!(
            answer.contains(&format!("\"node_name\":\"{host}\"")),
            "{answer}"
        );
        assert!(
            answer.contains(&format!("\"listen_addr\":\"{}:2377\"", lab.addr(host))),
            "{answer}"
        );
    }
}

#[test]
fn partition_cuts_exactly_the_named_pairs_and_heal_restores_them() {
    let mut lab = TestLab::up("part", five_hosts);
    lab.lab_mut()
        .partition(&["m1".into()], &["w1".into(), "w2".into()])
        .unwrap();
    let cut: BTreeSet<(&str, &str)> = [("m1", "w1"), ("m1", "w2")].into();
    let hosts = host_names(&lab);
    for from in &hosts {
        for to in &hosts {
            if from == to {
                continue;
            }
            let expect_cut = cut.contains(&(from.as_str(), to.as_str()))
                || cut.contains(&(to.as_str(), from.as_str()));
            assert_eq!(
                lab.ping(from, to),
                !expect_cut,
                "{from} -> {to} (cut: {expect_cut})"
            );
        }
    }
    lab.lab_mut().heal().unwrap();
    for from in &hosts {
        for to in &hosts {
            if from != to {
                assert!(lab.ping(from, to), "{from} -> {to} after heal");
            }
        }
    }
}

#[test]
fn kill_is_power_loss_and_start_brings_the_host_back_with_its_state() {
    let mut lab = TestLab::up("kill", five_hosts);
    let before = lab.status_of("w1");
    let old_pid = before.daemon_pid.expect("meshd runs on w1");
    // A task stand-in: a process started inside the host dies with it.
    let mut task = lab
        .lab()
        .spawn("w1", &["sleep", "600"], Stdio::null(), Stdio::null())
        .unwrap();
    let marker = lab
        .lab()
        .files("w1")
        .unwrap()
        .state_dir()
        .join("survives-power-loss");
    std::fs::write(&marker, "yes").unwrap();

    lab.lab_mut().kill("w1").unwrap();
    assert!(!alive(old_pid), "meshd survived the power loss");
    assert!(
        !task.wait().unwrap().success(),
        "the task outlived its host"
    );
    let w1 = lab.status_of("w1");
    assert_eq!((w1.power, w1.daemon), (Power::Off, "stopped"));
    assert!(!lab.ping("m1", "w1"), "a powered-off host answered");
    assert!(matches!(
        lab.lab().output("w1", &["true"]),
        Err(LabError::HostState { .. })
    ));

    lab.lab_mut().start("w1").unwrap();
    assert!(lab.ping("m1", "w1"), "w1 unreachable after start");
    let w1 = lab.status_of("w1");
    assert_eq!((w1.power, w1.daemon), (Power::On, "running"));
    assert_ne!(w1.daemon_pid, Some(old_pid));
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "yes",
        "state lost across power cycle"
    );
    // Starting a host that runs is refused with a hint.
    let err = lab.lab_mut().start("w1").unwrap_err().to_string();
    assert!(err.contains("nothing to start"), "{err}");
}

#[test]
fn stop_daemon_kills_only_meshd() {
    let mut lab = TestLab::up("stopd", |s| s.managers = 2);
    let pid = lab.lab().status()[1].daemon_pid.unwrap();
    let mut task = lab
        .lab()
        .spawn("m2", &["sleep", "600"], Stdio::null(), Stdio::null())
        .unwrap();
    lab.lab_mut().stop_daemon("m2").unwrap();
    assert!(!alive(pid), "meshd still running");
    assert!(
        task.try_wait().unwrap().is_none(),
        "the task died with meshd"
    );
    assert!(lab.ping("m1", "m2"), "the host lost its network");
    assert_eq!(lab.reopened().status()[1].daemon, "stopped");
    lab.lab_mut().start("m2").unwrap();
    assert_eq!(lab.reopened().status()[1].daemon, "running");
    task.kill().unwrap();
    task.wait().unwrap();
}

#[test]
fn link_emulation_applies_mtu_loss_and_delay() {
    let mut lab = TestLab::up("link", |s| {
        s.managers = 1;
        s.clients = 1;
    });
    // MTU: a 1400-byte link carries 1400-byte packets and drops larger ones without a word.
    lab.lab_mut()
        .set_link(
            "c1",
            LinkParams {
                mtu: Some(1400),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(lab.ping_with("m1", "c1", &["-M", "do", "-s", "1372"]));
    assert!(!lab.ping_with("m1", "c1", &["-M", "do", "-s", "1373"]));
    // Loss: 100 % loses everything the host sends.
    lab.lab_mut()
        .set_link(
            "c1",
            LinkParams {
                loss_pct: Some(100.0),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(!lab.ping("m1", "c1"));
    lab.lab_mut()
        .set_link(
            "c1",
            LinkParams {
                loss_pct: Some(0.0),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(lab.ping("m1", "c1"));
    // Delay: every echo reply from c1 is held for at least the delay.
    lab.lab_mut()
        .set_link(
            "c1",
            LinkParams {
                delay_ms: Some(30),
                ..Default::default()
            },
        )
        .unwrap();
    let out = lab.sh(
        "m1",
        &[
            "ping",
            "-n",
            "-q",
            "-c",
            "3",
            "-i",
            "0.2",
            &lab.addr("c1").to_string(),
        ],
    );
    let min_rtt: f64 = out
        .lines()
        .find_map(|l| l.split(" = ").nth(1))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no rtt in {out}"));
    assert!(min_rtt >= 30.0, "rtt {min_rtt} ms is below the 30 ms delay");
    // The MTU survives the switch to a shim-carried link.
    assert!(!lab.ping_with("m1", "c1", &["-M", "do", "-s", "1373"]));
}

#[test]
fn up_with_a_name_in_use_fails_and_changes_nothing() {
    let lab = TestLab::up("dup", |s| s.managers = 1);
    let before = lab.lab().status()[0].daemon_pid;
    let mut spec = LabSpec::new(lab.name(), 2, 2);
    spec.clients = 1;
    let err = Lab::up(&spec)
        .err()
        .expect("second up with the same name succeeded");
    assert!(matches!(err, LabError::Exists { .. }), "{err}");
    assert!(err.to_string().contains("lab down"), "{err}");
    let after = lab.reopened();
    assert_eq!(after.hosts().len(), 1);
    assert_eq!(after.status()[0].daemon_pid, before);
}

#[test]
fn bad_input_gets_errors_that_name_the_fix() {
    let err = Lab::down("t-never-made").unwrap_err();
    assert!(matches!(err, LabError::UnknownLab { .. }), "{err}");
    assert!(err.to_string().contains("lab ls"));
    let err = Lab::up(&LabSpec::new("Bad.Name", 1, 0))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("lab name"), "{err}");
    let mut lab = TestLab::up("bad", |s| s.managers = 1);
    let err = lab.lab_mut().kill("w9").unwrap_err().to_string();
    assert!(
        err.contains("no host \"w9\"") && err.contains("m1"),
        "{err}"
    );
    let err = lab
        .lab_mut()
        .partition(&["m1".into()], &["m1".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("itself"), "{err}");
    let err = lab
        .lab_mut()
        .set_link(
            "m1",
            LinkParams {
                mtu: Some(10),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("--mtu"), "{err}");
}

#[test]
fn down_leaves_nothing_behind() {
    let links_before = host_links();
    let lab = TestLab::up("down", |s| {
        s.managers = 3;
        s.workers = 1;
        s.link.delay_ms = Some(1);
    });
    let name = lab.name().to_string();
    let pids: Vec<i32> = lab
        .lab()
        .status()
        .iter()
        .filter_map(|h| h.daemon_pid)
        .collect();
    assert_eq!(pids.len(), 4);
    let dir = Lab::open(&name).unwrap().files("m1").unwrap().dir;
    drop(lab); // runs lab down
    assert_gone(&name, &pids, &dir);
    assert_eq!(
        host_links(),
        links_before,
        "links appeared in the host namespace"
    );
}

#[test]
fn down_cleans_up_after_a_crashed_up() {
    // What a crash half way through `up` leaves: namespaces and a process in one, no record.
    let name = netns_tests::unique_name("crash");
    // Should an assertion below fail first, still remove what this test made.
    struct DownOnDrop(String);
    impl Drop for DownOnDrop {
        fn drop(&mut self) {
            let _ = Lab::down(&self.0);
        }
    }
    let _cleanup = DownOnDrop(name.clone());
    let ns = lab::host_netns(&name, "m1");
    let run = |args: &[&str]| {
        assert!(std::process::Command::new("ip")
            .args(args)
            .status()
            .unwrap()
            .success())
    };
    run(&["netns", "add", &ns]);
    run(&["netns", "add", &lab::switch_netns(&name)]);
    let mut stray = std::process::Command::new("nsenter")
        .args([&format!("--net=/run/netns/{ns}"), "sleep", "600"])
        .spawn()
        .unwrap();
    // nsenter enters the namespace after it has started: wait until it has.
    let in_ns = || {
        let out = std::process::Command::new("ip")
            .args(["netns", "pids", &ns])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == stray.id().to_string())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !in_ns() {
        assert!(
            std::time::Instant::now() < deadline,
            "stray never entered {ns}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(Lab::open(&name).is_err(), "there is no record to open");
    Lab::down(&name).unwrap();
    assert!(
        !stray.wait().unwrap().success(),
        "the stray process outlived lab down"
    );
    assert_gone(&name, &[], &lab::root_dir().join(&name));
}

fn assert_gone(name: &str, pids: &[i32], dir: &Path) {
    let prefix = lab::netns_prefix(name);
    let namespaces = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(namespaces, 0, "namespaces of {name} remain");
    for pid in pids {
        assert!(!alive(*pid), "process {pid} survived lab down");
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(&*dir.to_string_lossy()),
        "mounts remain under {}",
        dir.display()
    );
    assert!(
        !lab::root_dir().join(name).exists(),
        "files of {name} remain"
    );
    let cgroup_left = std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter(|l| l.split_whitespace().nth(2) == Some("cgroup2"))
        .filter_map(|l| l.split_whitespace().nth(1))
        .any(|root| Path::new(root).join("mesh-lab").join(name).exists());
    assert!(!cgroup_left, "cgroup of {name} remains");
    assert!(
        lab::list().unwrap().iter().all(|l| l.name != name),
        "lab ls still lists {name}"
    );
}

fn host_links() -> String {
    let out = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
        .collect();
    names.sort();
    names.join(",")
}
