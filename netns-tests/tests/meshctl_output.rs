//! `meshctl` never prints a secret or a private key: with a secret in use by a running service,
//! every command that reads the cluster's state, in table and JSON form, and the error paths
//! that echo input, are searched for the secret (plain and base64) and for the key material of
//! the host's state directory (the node key, and the CA key a manager holds).

use std::process::Command;
use std::time::Duration;

use lab::LabSpec;
use netns_tests::{report, until_ok, TestLab};

const IMAGE: &str = "mesh-test:latest";

fn base64(data: &[u8]) -> String {
    let mut child = Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The base64 body lines of every PEM block in `pem`, longer than 40 characters (so a short
/// common line cannot match by chance).
fn pem_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 40)
        .map(str::to_string)
        .collect()
}

#[test]
fn meshctl_never_prints_a_secret_or_a_private_key() {
    let lab = TestLab::up("noprint", |spec: &mut LabSpec| {
        spec.managers = 1;
        spec.workers = 1;
    });
    let meshctl = lab::find_binary(lab::MESHCTL)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let nonce = std::fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap();
    let payload = format!("TOPSECRET-{}", nonce.trim().replace('-', ""));
    lab.sh(
        "m1",
        &[
            "sh",
            "-c",
            "printf %s \"$2\" | \"$1\" secret create dbpass -",
            "sh",
            &meshctl,
            &payload,
        ],
    );
    lab.meshctl_ok("m1", &["network", "create", "--driver", "overlay", "app"]);
    lab.meshctl_ok(
        "m1",
        &[
            "service",
            "create",
            "--name",
            "db",
            "--network",
            "app",
            "--secret",
            "dbpass",
            "--replicas",
            "2",
            IMAGE,
            "sh",
            "-c",
            "echo started; ls /run/secrets; exec sleep 100000",
        ],
    );
    until_ok(Duration::from_secs(30), || {
        let logs = lab.meshctl("m1", &["service", "logs", "db"])?;
        (logs.matches("started").count() >= 2)
            .then_some(())
            .ok_or(logs)
    })
    .unwrap_or_else(|e| panic!("the service never started: {e}"));

    // What must never appear.
    let mut needles = vec![
        ("the secret".to_string(), payload.clone()),
        (
            "the secret in base64".to_string(),
            base64(payload.as_bytes()),
        ),
        ("a PEM private key".to_string(), "PRIVATE KEY".to_string()),
    ];
    for host in ["m1", "w1"] {
        let dir = lab.lab().files(host).unwrap().state_dir().join("cluster");
        for file in ["node.key", "ca.key"] {
            let Ok(pem) = std::fs::read_to_string(dir.join(file)) else {
                continue;
            };
            for line in pem_lines(&pem) {
                needles.push((format!("{host}'s {file}"), line));
            }
        }
    }
    assert!(
        needles.iter().any(|(what, _)| what == "m1's node.key"),
        "no node key found in m1's state directory: {needles:?}"
    );

    let json = ["--format", "json"];
    let mut commands: Vec<(&str, Vec<&str>)> = Vec::new();
    for host in ["m1", "w1"] {
        commands.push((host, vec!["info"]));
        commands.push((host, vec!["info", json[0], json[1]]));
    }
    for args in [
        vec!["secret", "ls"],
        vec!["secret", "ls", "--format", "json"],
        vec!["secret", "inspect", "dbpass"],
        vec!["service", "inspect", "db"],
        vec!["service", "ps", "db"],
        vec!["service", "ps", "db", "--format", "json"],
        vec!["service", "ls"],
        vec!["service", "logs", "db"],
        vec!["node", "ls"],
        vec!["node", "ls", "--format", "json"],
        vec!["node", "inspect", "m1"],
        vec!["node", "inspect", "w1", "--format", "json"],
        vec!["swarm", "join-token", "worker"],
        vec!["swarm", "join-token", "manager"],
        vec!["network", "ls"],
        vec!["network", "inspect", "--verbose", "app"],
        vec!["diag", "ports"],
        vec!["diag", "ports", "--format", "json"],
        vec!["diag", "overlay", "--format", "json"],
        vec!["diag", "lb", "--format", "json"],
        vec!["diag", "firewall", "--format", "json"],
        vec!["diag", "mtu", "--format", "json"],
        // Error paths that echo what they were given.
        vec!["secret", "create", "dbpass", "/etc/hostname"],
        vec!["secret", "rm", "dbpass"],
        vec!["secret", "inspect", "nope"],
        vec![
            "service", "create", "--name", "db", "--secret", "dbpass", IMAGE, "true",
        ],
    ] {
        commands.push(("m1", args));
    }
    // The secret's content given where a name is expected.
    let as_name = payload.clone();
    let as_name_args = vec!["secret", "inspect", as_name.as_str()];

    let mut leaks = Vec::new();
    let mut outputs = 0;
    for (host, args) in commands.iter().map(|(h, a)| (*h, a.as_slice())) {
        let out = lab.meshctl_output(host, args);
        outputs += 1;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for (what, needle) in &needles {
            if text.contains(needle.as_str()) {
                leaks.push(format!("{host}: meshctl {args:?} printed {what}"));
            }
        }
    }
    // An error naming the unknown secret may echo what the user typed, but nothing more.
    let out = lab.meshctl_output("m1", &as_name_args);
    assert!(!out.status.success());
    outputs += 1;
    let text = String::from_utf8_lossy(&out.stderr);
    for (what, needle) in needles.iter().skip(1) {
        if text.contains(needle.as_str()) {
            leaks.push(format!(
                "m1: meshctl secret inspect <payload> printed {what}"
            ));
        }
    }
    assert!(
        report::verdict(
            "security",
            "meshctl prints no secret or private key",
            leaks.is_empty(),
            &format!(
                "{outputs} meshctl outputs (state reads in table and JSON, join tokens, diag, logs, error paths) searched for the secret, its base64, \"PRIVATE KEY\" and {} lines of the hosts' key files: {} leaks",
                needles.len() - 3,
                leaks.len()
            )
        ),
        "{leaks:#?}"
    );
}
