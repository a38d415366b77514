//! The OCI runtime spec a task's container runs with, built from the task and its image's
//! configuration. Pure functions over plain data: nothing here talks to containerd.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::runtime::{ExitStatus, Limits};

/// The CFS period every task's CPU quota is expressed in, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
/// How many characters of the task ID become the container's hostname (as Docker does).
const HOSTNAME_LEN: usize = 12;
/// Capabilities a task keeps: Docker's default set.
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];
/// Kernel files a task must not read.
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];
/// Kernel files a task may read but not write.
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The parts of an OCI image configuration a task's process depends on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    /// Fixed leading arguments.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments after the entrypoint; a task's command replaces them.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// `KEY=VALUE` pairs every process starts with.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// The process's working directory.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `uid[:gid]` (names are not resolved).
    #[serde(default)]
    pub user: Option<String>,
}

impl ImageConfig {
    /// Parses an image configuration blob (`application/vnd.oci.image.config.v1+json`); only
    /// its `config` object matters here.
    pub fn parse(blob: &[u8]) -> Result<Self, serde_json::Error> {
        #[derive(Deserialize)]
        struct Outer {
            #[serde(default)]
            config: Option<ImageConfig>,
        }
        Ok(serde_json::from_slice::<Outer>(blob)?
            .config
            .unwrap_or_default())
    }

    /// The numeric user and group the process runs as; names and garbage fall back to root.
    pub fn uid_gid(&self) -> (u32, u32) {
        let Some(user) = self.user.as_deref().filter(|u| !u.is_empty()) else {
            return (0, 0);
        };
        let mut parts = user.splitn(2, ':');
        let uid = parts.next().and_then(|u| u.parse().ok()).unwrap_or(0);
        let gid = parts.next().and_then(|g| g.parse().ok()).unwrap_or(uid);
        (uid, gid)
    }
}

/// What the container of one task is made of, besides its root filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecInput {
    /// The process's argv.
    pub args: Vec<String>,
    /// Its environment, `KEY=VALUE`.
    pub env: Vec<String>,
    /// Its working directory.
    pub cwd: String,
    /// User and group IDs.
    pub uid_gid: (u32, u32),
    /// The container's hostname.
    pub hostname: String,
    /// The network namespace to join.
    pub netns: PathBuf,
    /// The cgroup path runc creates in every hierarchy.
    pub cgroups_path: String,
    /// CPU and memory ceilings.
    pub limits: Limits,
    /// Bound read-only over /etc/resolv.conf when given.
    pub resolv_conf: Option<PathBuf>,
    /// Files bound read-only at their targets (secrets and configs); runc creates a missing
    /// target inside the rootfs.
    pub files: Vec<crate::runtime::FileMount>,
}

/// The process's arguments: the image's entrypoint, then the task's command, or the image's
/// Cmd when the task gives none.
pub fn process_args(image: &ImageConfig, command: &[String]) -> Vec<String> {
    let entrypoint = image.entrypoint.clone().unwrap_or_default();
    let rest = if command.is_empty() {
        image.cmd.clone().unwrap_or_default()
    } else {
        command.to_vec()
    };
    entrypoint.into_iter().chain(rest).collect()
}

/// The image's environment followed by the task's, a later `KEY=` replacing an earlier one in
/// place of appearing twice.
pub fn merge_env(image: &[String], task: &[String]) -> Vec<String> {
    let key = |kv: &str| kv.split('=').next().unwrap_or_default().to_string();
    let mut merged: Vec<String> = Vec::new();
    for kv in image.iter().chain(task) {
        let k = key(kv);
        merged.retain(|existing| key(existing) != k);
        merged.push(kv.clone());
    }
    merged
}

/// The container's hostname: the first 12 characters of its task ID.
pub fn hostname(task_id: &str) -> String {
    task_id.chars().take(HOSTNAME_LEN).collect()
}

/// The cgroup path of a task's container under `parent` (absolute, so runc places it at the
/// same path in every hierarchy, where `remove` and the lab's teardown find it).
pub fn cgroups_path(parent: &str, task_id: &str) -> String {
    format!("/{}/{task_id}", parent.trim_matches('/'))
}

/// The CFS quota for `nano_cpus` billionths of a CPU over a CPU_PERIOD_US period; None for
/// no limit. A tiny nonzero share still gets the kernel's 1 ms minimum.
pub fn cpu_quota_us(nano_cpus: u64) -> Option<u64> {
    let quota = u128::from(nano_cpus) * u128::from(CPU_PERIOD_US) / 1_000_000_000;
    (nano_cpus > 0).then(|| u64::try_from(quota).unwrap_or(u64::MAX).max(1_000))
}

/// How a task ended, from the exit status containerd reports: runc reports a process killed
/// by signal n as 128 + n.
pub fn exit_status(code: u32) -> ExitStatus {
    match code {
        129..=192 => ExitStatus::Signal(code as i32 - 128),
        _ => ExitStatus::Code(i32::try_from(code).unwrap_or(i32::MAX)),
    }
}

/// The OCI runtime spec (version 1.0.2, as runc 1.1 reads it) of a task's container.
pub fn runtime_spec(input: &SpecInput) -> Value {
    let mount = |destination: &str, kind: &str, source: &str, options: &[&str]| json!({"destination": destination, "type": kind, "source": source, "options": options});
    let mut resources = json!({
        // Deny every device; runc adds its default ones (null, zero, random, tty, ...) back.
        "devices": [{"allow": false, "access": "rwm"}],
    });
    if input.limits.memory_bytes > 0 {
        resources["memory"] = json!({"limit": input.limits.memory_bytes});
    }
    if let Some(quota) = cpu_quota_us(input.limits.nano_cpus) {
        resources["cpu"] = json!({"quota": quota, "period": CPU_PERIOD_US});
    }
    let (uid, gid) = input.uid_gid;
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid},
            "args": input.args,
            "env": input.env,
            "cwd": input.cwd,
            "capabilities": {
                "bounding": CAPABILITIES,
                "effective": CAPABILITIES,
                "permitted": CAPABILITIES,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true,
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": input.hostname,
        "mounts": [
            mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
            mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
            mount("/dev/pts", "devpts", "devpts",
                &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
            mount("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
            mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
            mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
        ],
        "linux": {
            "resources": resources,
            "cgroupsPath": input.cgroups_path,
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "network", "path": input.netns},
            ],
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    });
    if let (Some(file), Some(mounts)) = (&input.resolv_conf, spec["mounts"].as_array_mut()) {
        let source = file.to_string_lossy();
        mounts.push(mount("/etc/resolv.conf", "bind", &source, &["rbind", "ro"]));
    }
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        for file in &input.files {
            let source = file.source.to_string_lossy();
            mounts.push(mount(
                &file.target,
                "bind",
                &source,
                &["rbind", "ro", "nosuid", "nodev", "noexec"],
            ));
        }
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn input() -> SpecInput {
        SpecInput {
            args: strings(&["sh", "-c", "true"]),
            env: strings(&["PATH=/bin", "MESH_TASK_ID=abc"]),
            cwd: "/".into(),
            uid_gid: (0, 0),
            hostname: hostname("0123456789abcdefghijklmno"),
            netns: PathBuf::from("/run/mesh/netns/t1"),
            resolv_conf: None,
            files: Vec::new(),
            cgroups_path: cgroups_path("/mesh-lab/demo/w1/", "t1"),
            limits: Limits {
                nano_cpus: 500_000_000,
                memory_bytes: 64 << 20,
            },
        }
    }

    #[test]
    fn the_container_joins_the_given_network_namespace_and_owns_the_others() {
        let spec = runtime_spec(&input());
        let namespaces = spec["linux"]["namespaces"].as_array().unwrap();
        let types: Vec<&str> = namespaces
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["pid", "ipc", "uts", "mount", "network"]);
        assert_eq!(namespaces[4]["path"], "/run/mesh/netns/t1");
        assert!(namespaces[..4].iter().all(|n| n.get("path").is_none()));
        assert_eq!(spec["hostname"], "0123456789ab");
    }

    #[test]
    fn limits_become_memory_limit_and_cfs_quota() {
        let spec = runtime_spec(&input());
        let resources = &spec["linux"]["resources"];
        assert_eq!(resources["memory"]["limit"], 67_108_864);
        assert_eq!(resources["cpu"]["quota"], 50_000);
        assert_eq!(resources["cpu"]["period"], 100_000);
        assert_eq!(spec["linux"]["cgroupsPath"], "/mesh-lab/demo/w1/t1");
    }

    #[test]
    fn zero_limits_leave_resources_unset() {
        let mut unlimited = input();
        unlimited.limits = Limits::default();
        let resources = &runtime_spec(&unlimited)["linux"]["resources"];
        assert!(resources.get("memory").is_none());
        assert!(resources.get("cpu").is_none());
        assert_eq!(resources["devices"][0]["allow"], false);
    }

    #[test]
    fn process_carries_args_env_cwd_and_user() {
        let mut custom = input();
        custom.uid_gid = (1000, 100);
        custom.cwd = "/www".into();
        let process = &runtime_spec(&custom)["process"];
        assert_eq!(process["args"], json!(["sh", "-c", "true"]));
        assert_eq!(process["env"], json!(["PATH=/bin", "MESH_TASK_ID=abc"]));
        assert_eq!(process["cwd"], "/www");
        assert_eq!(process["user"], json!({"uid": 1000, "gid": 100}));
        assert_eq!(process["terminal"], false);
    }

    #[test]
    fn standard_mounts_are_present_and_sysfs_is_read_only() {
        let spec = runtime_spec(&input());
        let mounts = spec["mounts"].as_array().unwrap();
        let destinations: Vec<&str> = mounts
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert_eq!(
            destinations,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys"
            ]
        );
        let sys = &mounts[5]["options"];
        assert!(sys.as_array().unwrap().contains(&json!("ro")));
    }

    #[test]
    fn command_replaces_cmd_and_keeps_entrypoint() {
        let image = ImageConfig {
            entrypoint: Some(strings(&["/entry", "-x"])),
            cmd: Some(strings(&["serve"])),
            ..Default::default()
        };
        assert_eq!(process_args(&image, &[]), ["/entry", "-x", "serve"]);
        assert_eq!(
            process_args(&image, &strings(&["run", "1"])),
            ["/entry", "-x", "run", "1"]
        );
        let plain = ImageConfig {
            cmd: Some(strings(&["sh"])),
            ..Default::default()
        };
        assert_eq!(process_args(&plain, &[]), ["sh"]);
        assert_eq!(
            process_args(&plain, &strings(&["echo", "hi"])),
            ["echo", "hi"]
        );
        assert!(process_args(&ImageConfig::default(), &[]).is_empty());
    }

    #[test]
    fn task_env_follows_image_env_and_replaces_duplicates() {
        let merged = merge_env(
            &strings(&["PATH=/bin", "A=image"]),
            &strings(&["A=task", "MESH_TASK_ID=t1"]),
        );
        assert_eq!(merged, ["PATH=/bin", "A=task", "MESH_TASK_ID=t1"]);
    }

    #[test]
    fn image_config_is_parsed_from_the_config_blob() {
        let blob = br#"{"architecture":"amd64","config":{"Env":["PATH=/bin"],"Cmd":["sh"],"WorkingDir":"/www","User":"1000:100"},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let config = ImageConfig::parse(blob).unwrap();
        assert_eq!(config.cmd, Some(strings(&["sh"])));
        assert_eq!(config.env, Some(strings(&["PATH=/bin"])));
        assert_eq!(config.working_dir.as_deref(), Some("/www"));
        assert_eq!(config.uid_gid(), (1000, 100));
        assert_eq!(ImageConfig::parse(b"{}").unwrap(), ImageConfig::default());
        assert_eq!(ImageConfig::default().uid_gid(), (0, 0));
        let named = ImageConfig {
            user: Some("nobody".into()),
            ..Default::default()
        };
        assert_eq!(named.uid_gid(), (0, 0));
        assert!(ImageConfig::parse(b"not json").is_err());
    }

    #[test]
    fn signal_kills_map_from_128_plus_n() {
        assert_eq!(exit_status(0), ExitStatus::Code(0));
        assert_eq!(exit_status(3), ExitStatus::Code(3));
        assert_eq!(exit_status(128), ExitStatus::Code(128));
        assert_eq!(exit_status(137), ExitStatus::Signal(9));
        assert_eq!(exit_status(143), ExitStatus::Signal(15));
        assert_eq!(exit_status(255), ExitStatus::Code(255));
    }

    #[test]
    fn cpu_quota_scales_nano_cpus_to_the_period() {
        assert_eq!(cpu_quota_us(0), None);
        assert_eq!(cpu_quota_us(1_000_000_000), Some(100_000));
        assert_eq!(cpu_quota_us(2_500_000_000), Some(250_000));
        assert_eq!(cpu_quota_us(1), Some(1_000));
    }

    #[test]
    fn cgroups_path_is_absolute_whatever_the_parent_looks_like() {
        assert_eq!(cgroups_path("mesh/mesh", "t1"), "/mesh/mesh/t1");
        assert_eq!(cgroups_path("/mesh/mesh/", "t1"), "/mesh/mesh/t1");
    }
}
