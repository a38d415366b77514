//! Secrets and configs: small immutable blobs an operator stores in the cluster and services
//! mount into their tasks as files.
//!
//! The model, end to end:
//! - **At rest.** The store (and so the Raft log and every snapshot) holds only ciphertext:
//!   [`crypto::DataKey::seal`] (ChaCha20-Poly1305, a random nonce per blob, the record's ID,
//!   kind and name as associated data). The 32-byte data key is drawn at `swarm init` and kept
//!   in each manager's `<state_dir>/cluster/data.key` (0600); it reaches managers only, in the
//!   mTLS join and renewal answers, and is never written to the Raft log (the cluster CA key
//!   is, so deriving from it would not be encryption at rest). Workers never hold it.
//! - **In flight.** The leader decrypts a blob only into the assignments of a node that runs
//!   a task referencing it; assignments travel over mTLS.
//! - **On the node.** The agent writes the task's files into a tmpfs of its own
//!   (`<state_dir>/secrets/<task>`, 0700), with the requested owner and mode, and the runtime
//!   binds each file read-only into the task: secrets at `/run/secrets/<target>`, configs at
//!   their absolute target path. The tmpfs is unmounted when the task is removed and when the
//!   node leaves. Nothing is ever written to a disk in plain text, put in the environment, or
//!   logged; the `Debug` of every type that can hold plaintext is redacted.
//! - **Immutable.** A blob never changes; rotation is a new one and a service update that
//!   swaps the references (`--secret-rm old --secret-add new`). A blob in use by a service
//!   cannot be removed.
//!
//! Configs go through exactly the same path; they differ only in where they appear in the
//! task and in their default mode (0444 instead of 0400).

pub mod crypto;
pub mod files;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The largest secret or config, in bytes (as Docker's 500 KB).
pub const MAX_SIZE: usize = 500 * 1024;

/// Where secrets appear inside a task.
pub const SECRETS_DIR: &str = "/run/secrets";

/// A secret or a config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Sensitive: mounted under /run/secrets, mode 0400 by default.
    Secret,
    /// Configuration: mounted at its target path, mode 0444 by default.
    Config,
}

impl Kind {
    /// `secret` or `config`, as the CLI names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Secret => "secret",
            Kind::Config => "config",
        }
    }

    /// The mode a file gets when the reference gives none.
    pub fn default_mode(self) -> u32 {
        match self {
            Kind::Secret => 0o400,
            Kind::Config => 0o444,
        }
    }
}

/// Bytes that may be plaintext: serialized as base64 (compact in JSON), never printed by
/// `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Blob(pub Vec<u8>);

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes redacted>", self.0.len())
    }
}

impl Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64_encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        base64_decode(&text)
            .map(Blob)
            .ok_or_else(|| serde::de::Error::custom("not base64"))
    }
}

/// A secret or config in the store: metadata and ciphertext.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    /// 25 lowercase alphanumerics.
    pub id: String,
    /// Secret or config.
    pub kind: Kind,
    /// Unique name among its kind.
    pub name: String,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// Milliseconds since the epoch it was created (leader's clock).
    pub created_ms: u64,
    /// Plaintext length in bytes.
    pub size: u64,
    /// `crypto::seal` output: version, nonce, ciphertext and tag.
    pub sealed: Blob,
}

impl SecretRecord {
    /// The associated data its ciphertext is bound to: a blob moved to another record, or
    /// renamed, no longer opens.
    pub fn aad(&self) -> Vec<u8> {
        aad(&self.id, self.kind, &self.name)
    }
}

/// The associated data of a record with this ID, kind and name.
pub fn aad(id: &str, kind: Kind, name: &str) -> Vec<u8> {
    format!("mesh-secret-v1\0{}\0{id}\0{name}", kind.as_str()).into_bytes()
}

/// A service's use of a secret or config: which one, and the file it becomes in the task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRef {
    /// The record's ID, filled in by the manager at service create (empty from the CLI).
    #[serde(default)]
    pub id: String,
    /// The record's name.
    pub name: String,
    /// Secrets: the file name under /run/secrets (may contain '/'); configs: an absolute path.
    pub target: String,
    /// Owner of the file.
    pub uid: u32,
    /// Group of the file.
    pub gid: u32,
    /// Permission bits of the file.
    pub mode: u32,
}

impl SecretRef {
    /// Parses `--secret NAME` or `--secret source=NAME,target=T,uid=0,gid=0,mode=0400` (and
    /// the same for `--config`, whose target defaults to `/NAME`).
    pub fn parse(kind: Kind, text: &str) -> Result<Self, String> {
        let flag = kind.as_str();
        let bad = |why: &str| {
            format!("--{flag} {text:?}: {why}; write it like --{flag} NAME or --{flag} source=NAME,target={},mode={:04o}",
                match kind { Kind::Secret => "NAME", Kind::Config => "/etc/NAME.conf" },
                kind.default_mode())
        };
        let mut source = None;
        let mut target = None;
        let (mut uid, mut gid, mut mode) = (0, 0, kind.default_mode());
        if !text.contains('=') {
            source = Some(text.to_string());
        } else {
            for part in text.split(',') {
                let (key, value) = part
                    .split_once('=')
                    .ok_or_else(|| bad(&format!("{part:?} is not key=value")))?;
                let number = |what: &str| {
                    value
                        .parse::<u32>()
                        .map_err(|_| bad(&format!("{what} {value:?} is not a number")))
                };
                match key.trim() {
                    "source" | "src" => source = Some(value.to_string()),
                    "target" => target = Some(value.to_string()),
                    "uid" => uid = number("uid")?,
                    "gid" => gid = number("gid")?,
                    "mode" => {
                        mode = u32::from_str_radix(value, 8)
                            .ok()
                            .filter(|m| *m <= 0o777)
                            .ok_or_else(|| {
                                bad(&format!("mode {value:?} is not octal permission bits"))
                            })?
                    }
                    other => return Err(bad(&format!("unknown key {other:?}"))),
                }
            }
        }
        let name = source.ok_or_else(|| bad("source is missing"))?;
        let target = target.unwrap_or_else(|| match kind {
            Kind::Secret => name.clone(),
            Kind::Config => format!("/{name}"),
        });
        let reference = SecretRef {
            id: String::new(),
            name,
            target,
            uid,
            gid,
            mode,
        };
        reference.validate(kind)?;
        Ok(reference)
    }

    /// Checks the name and the target path.
    pub fn validate(&self, kind: Kind) -> Result<(), String> {
        let flag = kind.as_str();
        validate_name(kind, &self.name).map_err(|e| format!("--{flag}: {e}"))?;
        if self.mode > 0o777 {
            return Err(format!(
                "--{flag} {}: mode {:o} is not permission bits (0000-0777)",
                self.name, self.mode
            ));
        }
        let path = self.target.as_str();
        let relative = path.strip_prefix('/').unwrap_or(path);
        let clean = !relative.is_empty()
            && relative.len() <= 4096
            && relative
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..")
            && !path.contains('\0');
        let fits = match kind {
            Kind::Secret => !path.starts_with('/') || path.starts_with("/run/secrets/"),
            Kind::Config => path.starts_with('/'),
        };
        if !clean || !fits {
            let want = match kind {
                Kind::Secret => "a file name under /run/secrets, like db_password",
                Kind::Config => "an absolute file path, like /etc/app.conf",
            };
            return Err(format!(
                "--{flag} {}: target {path:?} is not {want}",
                self.name
            ));
        }
        Ok(())
    }

    /// The absolute path of the file inside the task.
    pub fn path_in_task(&self, kind: Kind) -> String {
        match kind {
            Kind::Secret if !self.target.starts_with('/') => {
                format!("{SECRETS_DIR}/{}", self.target)
            }
            _ => self.target.clone(),
        }
    }
}

/// One secret or config's plaintext, as the leader hands it to the node whose task uses it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretData {
    /// Secret or config.
    pub kind: Kind,
    /// The record's ID.
    pub id: String,
    /// The plaintext.
    pub data: Blob,
}

/// A secret or config as `ls` and `inspect` show it: never its data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretView {
    /// ID.
    pub id: String,
    /// Secret or config.
    pub kind: Kind,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Milliseconds since the epoch it was created.
    pub created_ms: u64,
    /// Size of the data in bytes.
    pub size: u64,
    /// Names of the services that use it.
    pub services: Vec<String>,
}

impl SecretView {
    /// The view of a record, with the services that reference it.
    pub fn of(record: &SecretRecord, state: &crate::store::ClusterState) -> Self {
        SecretView {
            id: record.id.clone(),
            kind: record.kind,
            name: record.name.clone(),
            labels: record.labels.clone(),
            created_ms: record.created_ms,
            size: record.size,
            services: state.services_using(record),
        }
    }
}

/// Secret and config names: 1-64 letters, digits, '-', '_' or '.', starting with a letter or
/// digit.
pub fn validate_name(kind: Kind, name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} name {name:?} is not valid; use 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit",
            kind.as_str()
        ))
    }
}

/// Checks what `create` is given, naming the fix.
pub fn validate_new(kind: Kind, name: &str, size: usize) -> Result<(), String> {
    validate_name(kind, name)?;
    if size > MAX_SIZE {
        return Err(format!(
            "{} {name} is {size} bytes, more than the {MAX_SIZE} bytes (500 KiB) a {} may hold; store a smaller file (or a reference to the data, not the data itself)",
            kind.as_str(),
            kind.as_str()
        ));
    }
    if size == 0 {
        return Err(format!(
            "{} {name} is empty; give a file with the data (or - for standard input)",
            kind.as_str()
        ));
    }
    Ok(())
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 with padding; `None` if it is not.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if bytes.len() % 4 != 0 {
        return None;
    }
    let value = |c: u8| BASE64.iter().position(|b| *b == c).map(|p| p as u32);
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (index, chunk) in bytes.chunks(4).enumerate() {
        let last = index == bytes.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = n << 6 | value(c)?;
        }
        n <<= 6 * pad as u32;
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&decoded[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_refuses_garbage() {
        for len in 0..10 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 250) as u8).collect();
            assert_eq!(base64_decode(&base64_encode(&bytes)).unwrap(), bytes);
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        for bad in ["Zm8", "Zm=8", "Z===", "Zm8=Zm8=", "Zm!="] {
            assert!(base64_decode(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn blobs_never_print_their_bytes() {
        let blob = Blob(b"hunter2".to_vec());
        assert_eq!(format!("{blob:?}"), "<7 bytes redacted>");
        let data = SecretData {
            kind: Kind::Secret,
            id: "s".into(),
            data: blob.clone(),
        };
        assert!(!format!("{data:?}").contains("hunter2"));
        let json = serde_json::to_string(&blob).unwrap();
        assert_eq!(serde_json::from_str::<Blob>(&json).unwrap(), blob);
    }

    #[test]
    fn secret_flags_parse_in_both_forms() {
        let short = SecretRef::parse(Kind::Secret, "db_pw").unwrap();
        assert_eq!(
            short,
            SecretRef {
                id: String::new(),
                name: "db_pw".into(),
                target: "db_pw".into(),
                uid: 0,
                gid: 0,
                mode: 0o400
            }
        );
        assert_eq!(short.path_in_task(Kind::Secret), "/run/secrets/db_pw");
        let long = SecretRef::parse(
            Kind::Secret,
            "source=db_pw,target=pw,uid=100,gid=101,mode=0440",
        )
        .unwrap();
        assert_eq!(
            (long.target.as_str(), long.uid, long.gid, long.mode),
            ("pw", 100, 101, 0o440)
        );
        let config =
            SecretRef::parse(Kind::Config, "source=app,target=/etc/x.conf,mode=0444").unwrap();
        assert_eq!(config.path_in_task(Kind::Config), "/etc/x.conf");
        assert_eq!(
            SecretRef::parse(Kind::Config, "app").unwrap().target,
            "/app"
        );
        for (kind, bad, needle) in [
            (Kind::Secret, "target=x", "source is missing"),
            (Kind::Secret, "source=a,mode=999", "mode"),
            (Kind::Secret, "source=a,mode=1777", "mode"),
            (Kind::Secret, "source=a,uid=-1", "uid"),
            (Kind::Secret, "source=a,colour=red", "unknown key"),
            (Kind::Secret, "source=a,target=../etc/passwd", "target"),
            (Kind::Secret, "source=a,target=/etc/passwd", "target"),
            (Kind::Config, "source=a,target=relative", "target"),
            (Kind::Config, "source=a,target=/etc/../x", "target"),
            (Kind::Secret, "-bad", "name"),
        ] {
            let err = SecretRef::parse(kind, bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
            assert!(
                err.contains(&format!("--{}", kind.as_str())),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn new_secrets_are_validated_with_the_fix_named() {
        validate_new(Kind::Secret, "ok", 10).unwrap();
        validate_new(Kind::Secret, "ok", MAX_SIZE).unwrap();
        let err = validate_new(Kind::Secret, "big", MAX_SIZE + 1).unwrap_err();
        assert!(err.contains("500 KiB") && err.contains("smaller"), "{err}");
        assert!(validate_new(Kind::Config, "bad name", 1)
            .unwrap_err()
            .contains("not valid"));
        assert!(validate_new(Kind::Secret, "empty", 0)
            .unwrap_err()
            .contains("empty"));
    }
}
