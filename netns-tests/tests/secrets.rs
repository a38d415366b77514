//! Secrets and configs on a real lab (1 manager, 2 workers): the files a task sees (content,
//! mode, read-only), and where the plaintext never is: inspect output, the task's environment,
//! the logs, any host's state directory (Raft log and snapshots included), the host that runs
//! no task of the service. Removal is refused while in use, and bad input changes nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lab::LabSpec;
use netns_tests::{report, until_ok, TestLab};
use serde_json::Value;

const IMAGE: &str = "mesh-test:latest";

fn ok(lab: &TestLab, args: &[&str]) -> String {
    lab.meshctl_ok("m1", args)
}

/// A host's directory: meshd's state directory, its configuration and its log.
fn host_dir(lab: &TestLab, host: &str) -> PathBuf {
    let state = lab.lab().files(host).unwrap().state_dir();
    state.parent().unwrap().to_path_buf()
}

/// Files under `dir` (not crossing into other filesystems, so a task's tmpfs is skipped when
/// `one_fs`) that contain `needle`.
fn files_containing(dir: &Path, needle: &str, one_fs: bool) -> Vec<String> {
    let dir = dir.display().to_string();
    let mut find = vec![dir.as_str(), "-type", "f"];
    if one_fs {
        find.insert(1, "-xdev");
    }
    let listing = Command::new("find").args(&find).output().unwrap();
    let files: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let mut hits = Vec::new();
    for chunk in files.chunks(200) {
        let out = Command::new("grep")
            .args(["-l", "-a", "-F", "--devices=skip", "-e", needle, "--"])
            .args(chunk)
            .output()
            .unwrap();
        hits.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string),
        );
    }
    hits
}

/// Mount points under `dir`, from /proc/mounts.
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| p.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

fn sha256(data: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", "printf %s \"$1\" | sha256sum", "sh", data])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn base64(data: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", "printf %s \"$1\" | base64 -w0", "sh", data])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn tasks(lab: &TestLab, service: &str) -> Vec<Value> {
    serde_json::from_str(&ok(lab, &["service", "ps", service, "--format", "json"])).unwrap()
}

fn meshctl_path() -> String {
    lab::find_binary(lab::MESHCTL)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Whether the writable memory of `host`'s meshd holds `needle` (read through
/// /proc/PID/mem, as root).
fn meshd_memory_holds(lab: &TestLab, host: &str, needle: &str) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let info: Value =
        serde_json::from_str(&lab.meshctl_ok(host, &["info", "--format", "json"])).unwrap();
    let pid = info["pid"].as_u64().unwrap();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "meshd", "pid {pid} of {host} is not meshd");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let needle = needle.as_bytes();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with("rw") {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let mut region = vec![0; usize::try_from(end - start).unwrap()];
        // Some regions (guard pages, vsyscall) cannot be read: skip them.
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut region).is_err() {
            continue;
        }
        if region.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
    }
    false
}

#[test]
fn secrets_reach_only_their_tasks_and_never_rest_in_plain_text() {
    scenario("secrets", false);
}

#[test]
fn secrets_reach_only_their_tasks_with_containerd() {
    scenario("secretsc", true);
}

fn scenario(tag: &str, containerd: bool) {
    let lab = TestLab::up(tag, |spec: &mut LabSpec| {
        spec.managers = 1;
        spec.workers = 2;
        if containerd {
            spec.runtime = lab::TaskRuntime::Containerd;
        }
    });
    ok(&lab, &["node", "update", "--availability", "drain", "m1"]);
    // Random, so no other file holds it by chance.
    let nonce = std::fs::read("/proc/sys/kernel/random/uuid").unwrap();
    let plaintext = format!(
        "pw-{}",
        String::from_utf8_lossy(&nonce).trim().replace('-', "")
    );
    let config_text = format!("listen=8080 # {}", &plaintext[3..15]);

    // Create: the secret from standard input, the config from a file.
    let created = lab.sh(
        "m1",
        &[
            "sh",
            "-c",
            "printf %s \"$2\" | \"$1\" secret create --label team=db pw -",
            "sh",
            &meshctl_path(),
            &plaintext,
        ],
    );
    assert_eq!(created.trim().len(), 25, "{created}");
    let config_file = std::env::temp_dir().join(format!("mesh-config-{}", std::process::id()));
    std::fs::write(&config_file, &config_text).unwrap();
    ok(
        &lab,
        &["config", "create", "appconf", config_file.to_str().unwrap()],
    );
    std::fs::remove_file(&config_file).unwrap();

    // Bad input: a clear error naming the fix, and no change.
    let dup = lab
        .meshctl("m1", &["secret", "create", "pw", "/etc/hostname"])
        .unwrap_err();
    assert!(dup.contains("already exists"), "{dup}");
    let big_file = std::env::temp_dir().join(format!("mesh-big-{}", std::process::id()));
    std::fs::write(&big_file, vec![b'x'; 500 * 1024 + 1]).unwrap();
    let big = lab
        .meshctl(
            "m1",
            &["secret", "create", "big", big_file.to_str().unwrap()],
        )
        .unwrap_err();
    assert!(big.contains("500 KiB"), "{big}");
    // Exactly the limit goes through the local socket and Raft.
    std::fs::write(&big_file, vec![b'x'; 500 * 1024]).unwrap();
    ok(
        &lab,
        &["secret", "create", "max", big_file.to_str().unwrap()],
    );
    std::fs::remove_file(&big_file).unwrap();
    ok(&lab, &["secret", "rm", "max"]);
    let unknown = lab
        .meshctl(
            "m1",
            &[
                "service", "create", "--name", "bad", "--secret", "nope", IMAGE, "true",
            ],
        )
        .unwrap_err();
    assert!(unknown.contains("meshctl secret create nope"), "{unknown}");
    assert!(!ok(&lab, &["service", "ls"]).contains("bad"));
    let listed: Vec<Value> =
        serde_json::from_str(&ok(&lab, &["secret", "ls", "--format", "json"])).unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["name"], "pw");

    // A task on w1 reads its files and reports what it sees.
    let script = "stat -c 'secret %a %u %g' /run/secrets/db_pw; \
        echo \"sha $(sha256sum /run/secrets/db_pw)\"; \
        stat -c 'config %a' /etc/app.conf; echo \"conf $(cat /etc/app.conf)\"; \
        (echo x > /run/secrets/db_pw) 2>/dev/null && echo writable || echo read-only; \
        exec sleep 3600";
    ok(
        &lab,
        &[
            "service",
            "create",
            "--name",
            "app",
            "--constraint",
            "node.hostname==w1",
            "--secret",
            "source=pw,target=db_pw,uid=0,gid=0,mode=0400",
            "--config",
            "source=appconf,target=/etc/app.conf,mode=0444",
            IMAGE,
            "sh",
            "-c",
            script,
        ],
    );
    let (logs, _) = until_ok(Duration::from_secs(30), || {
        let logs = ok(&lab, &["service", "logs", "app"]);
        if logs.contains("read-only") || logs.contains("writable") {
            Ok(logs)
        } else {
            Err(format!(
                "no output yet: {logs:?}; tasks: {:#?}",
                tasks(&lab, "app")
            ))
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(logs.contains("secret 400 0 0"), "{logs}");
    assert!(
        logs.contains(&format!("sha {}", sha256(&plaintext))),
        "{logs}"
    );
    assert!(logs.contains("config 444"), "{logs}");
    assert!(logs.contains(&format!("conf {config_text}")), "{logs}");
    assert!(logs.contains("read-only"), "{logs}");
    assert!(
        !logs.contains(&plaintext),
        "the secret is in the logs: {logs}"
    );

    // The content, read from inside the task's mount namespace.
    let task = &tasks(&lab, "app")[0];
    assert_eq!(task["node"], "w1");
    let task_id = task["id"].as_str().unwrap().to_string();
    let w1_state = lab.lab().files("w1").unwrap().state_dir();
    if !containerd {
        let pid = std::fs::read_to_string(w1_state.join("tasks").join(&task_id).join("pid"))
            .unwrap()
            .trim()
            .to_string();
        let read = lab.sh(
            "w1",
            &[
                "nsenter",
                "-t",
                &pid,
                "-m",
                "-r",
                "cat",
                "/run/secrets/db_pw",
            ],
        );
        assert_eq!(read, plaintext);
        // Not in the task's environment.
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(!String::from_utf8_lossy(&environ).contains(&plaintext));
    }

    // Never shown by inspect; inspect says who uses it.
    for args in [
        &["service", "inspect", "app"][..],
        &["secret", "inspect", "pw"],
        &["secret", "ls"],
        &["config", "inspect", "appconf"],
        &["service", "ps", "app", "--format", "json"],
    ] {
        let out = ok(&lab, args);
        assert!(!out.contains(&plaintext), "{args:?}: {out}");
        assert!(!out.contains(&base64(&plaintext)), "{args:?}: {out}");
    }
    let inspected: Vec<Value> =
        serde_json::from_str(&ok(&lab, &["secret", "inspect", "pw"])).unwrap();
    assert_eq!(inspected[0]["services"], serde_json::json!(["app"]));
    assert_eq!(inspected[0]["labels"]["team"], "db");

    // Only w1 holds the files, on a tmpfs; w2 runs no task of the service and has nothing:
    // no secret mount, no secret file, the plain text in no file of its directory (tmpfs
    // mounts included) and nowhere in its meshd's memory (what the managers sent it).
    let w1_mounts = mounts_under(&w1_state.join("secrets"));
    assert_eq!(w1_mounts.len(), 1, "{w1_mounts:?}");
    let w2_state = lab.lab().files("w2").unwrap().state_dir();
    let w2_mounts: Vec<String> = mounts_under(&w2_state)
        .into_iter()
        .filter(|m| m.contains("/secrets/"))
        .collect();
    let w2_files = w2_state.join("secrets").exists()
        && std::fs::read_dir(w2_state.join("secrets"))
            .unwrap()
            .next()
            .is_some();
    let w2_hits = files_containing(&host_dir(&lab, "w2"), &plaintext, false);
    let w2_memory = meshd_memory_holds(&lab, "w2", &plaintext);
    let w1_memory = meshd_memory_holds(&lab, "w1", &plaintext);
    assert!(
        report::verdict(
            "security",
            &format!("secrets never reach a host that does not run the task ({})", if containerd { "containerd" } else { "process runtime" }),
            w2_mounts.is_empty() && !w2_files && w2_hits.is_empty() && !w2_memory,
            &format!(
                "w2 (no task of the service): {} secret mounts, secret files: {w2_files}, {} files holding the plain text, in meshd's memory: {w2_memory} (w1, which runs the task: {w1_memory})",
                w2_mounts.len(),
                w2_hits.len()
            )
        ),
        "w2 holds the secret: mounts {w2_mounts:?}, files {w2_hits:?}, memory {w2_memory}"
    );

    // No plain text on any host's disk: Raft log and snapshots, task files, meshd's log. The
    // only copy is in w1's tmpfs, which -xdev skips.
    for host in ["m1", "w1", "w2"] {
        let dir = host_dir(&lab, host);
        for needle in [plaintext.clone(), base64(&plaintext)] {
            let hits = files_containing(&dir, &needle, true);
            assert!(hits.is_empty(), "{host}: {needle} in {hits:?}");
        }
        if host != "w1" {
            let hits = files_containing(&dir, &plaintext, false);
            assert!(hits.is_empty(), "{host}: plain text in {hits:?}");
        }
    }

    // Removal is refused while in use, and changes nothing.
    let in_use = lab.meshctl("m1", &["secret", "rm", "pw"]).unwrap_err();
    assert!(in_use.contains("in use by service app"), "{in_use}");
    let in_use = lab.meshctl("m1", &["config", "rm", "appconf"]).unwrap_err();
    assert!(in_use.contains("in use by service app"), "{in_use}");

    // Rotation: a new secret replaces the old one at the same path, through a rolling update;
    // the old one is then free to go.
    let rotated = format!("{plaintext}-2");
    lab.sh(
        "m1",
        &[
            "sh",
            "-c",
            "printf %s \"$2\" | \"$1\" secret create pw2 -",
            "sh",
            &meshctl_path(),
            &rotated,
        ],
    );
    ok(
        &lab,
        &[
            "service",
            "update",
            "--secret-rm",
            "pw",
            "--secret-add",
            "source=pw2,target=db_pw,mode=0400",
            "--update-monitor",
            "1s",
            "app",
        ],
    );
    until_ok(Duration::from_secs(30), || {
        let logs = ok(&lab, &["service", "logs", "app"]);
        logs.contains(&format!("sha {}", sha256(&rotated)))
            .then_some(())
            .ok_or(logs)
    })
    .unwrap_or_else(|e| panic!("the rotated secret never reached the task: {e}"));
    ok(&lab, &["secret", "rm", "pw"]);
    let task_id = tasks(&lab, "app")
        .iter()
        .find(|t| t["desired"] == "running")
        .and_then(|t| t["id"].as_str())
        .unwrap()
        .to_string();

    // Once the service and its task are gone, so is the tmpfs, and the secret can go.
    ok(&lab, &["service", "rm", "app"]);
    until_ok(Duration::from_secs(30), || {
        let left = mounts_under(&w1_state.join("secrets"));
        let dir_left = w1_state.join("secrets").join(&task_id).exists();
        if left.is_empty() && !dir_left {
            Ok(())
        } else {
            Err(format!(
                "still mounted: {left:?}, directory left: {dir_left}"
            ))
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    for host in ["m1", "w1", "w2"] {
        let hits = files_containing(&host_dir(&lab, host), &plaintext, false);
        assert!(hits.is_empty(), "{host}: plain text in {hits:?}");
    }
    ok(&lab, &["secret", "rm", "pw2"]);
    ok(&lab, &["config", "rm", "appconf"]);
    let listed: Vec<Value> =
        serde_json::from_str(&ok(&lab, &["secret", "ls", "--format", "json"])).unwrap();
    assert!(listed.is_empty(), "{listed:?}");
}
