//! Images of the process runtime: OCI image layout tarballs in one directory, unpacked once
//! into a cached root filesystem.
//!
//! A tarball holds `oci-layout`, `index.json` and `blobs/sha256/<hex>`. Each manifest in the
//! index names an image through its `io.containerd.image.name` annotation, or else its
//! `org.opencontainers.image.ref.name` (a bare tag there is joined to the tarball's file stem:
//! `mesh-test.tar` with `latest` is `mesh-test:latest`). A manifest may also point to an image
//! index, from which the manifest of this machine's platform is taken.
//!
//! Layers (gzip or plain tar) are unpacked in order into `<cache>/<manifest hex>/rootfs.partial-*`,
//! then renamed to `rootfs`, so a crash never leaves a half-unpacked rootfs behind. Whiteouts
//! (`.wh.NAME`, `.wh..wh..opq`) remove what lower layers put there. Device nodes and FIFOs in
//! layers are skipped: tasks get the host's /dev. Every blob's digest is checked.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use ring::digest::{Context, SHA256};
use serde::Deserialize;
use thiserror::Error;

mod layout;
mod unpack;

pub use layout::write_layout;

/// The largest JSON blob (index, manifest, config) read into memory.
const MAX_JSON: u64 = 4 << 20;
/// The PATH a task gets when neither the image nor `--env` sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why an image could not be listed, read or unpacked.
#[derive(Debug, Error)]
pub enum ImageError {
    /// A file operation failed.
    #[error("{operation} {}: {source}", path.display())]
    Io {
        operation: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// The tarball is not a usable OCI image layout.
    #[error("image tarball {}: {why}", tarball.display())]
    Invalid { tarball: PathBuf, why: String },
}

fn io_err(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ImageError {
    let path = path.to_path_buf();
    move |source| ImageError::Io {
        operation,
        path,
        source,
    }
}

fn invalid(tarball: &Path, why: impl Into<String>) -> ImageError {
    ImageError::Invalid {
        tarball: tarball.to_path_buf(),
        why: why.into(),
    }
}

// ---- The OCI documents, the fields used ----

/// A content descriptor (OCI image spec).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What the blob is.
    #[serde(default)]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Names and other annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The platform, in an image index.
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// The platform of a manifest in an image index.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Platform {
    /// e.g. `amd64`.
    #[serde(default)]
    pub architecture: String,
    /// e.g. `linux`.
    #[serde(default)]
    pub os: String,
}

/// `index.json` or a nested image index.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Index {
    /// The manifests (or nested indexes) it lists.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// An image manifest.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Manifest {
    /// The image config blob.
    pub config: Descriptor,
    /// The layers, lowest first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<RawConfig>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawConfig {
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Option<Vec<String>>,
    working_dir: Option<String>,
}

/// What an image's config says about running it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// Entrypoint; kept when a task gives its own command.
    pub entrypoint: Vec<String>,
    /// Default arguments; a task's command replaces them.
    pub cmd: Vec<String>,
    /// `KEY=VALUE` pairs the task's environment starts from.
    pub env: Vec<String>,
    /// The working directory; `/` when unset.
    pub working_dir: String,
}

impl ImageConfig {
    /// Parses an image config blob.
    pub fn parse(json: &[u8]) -> Result<ImageConfig, serde_json::Error> {
        let raw = serde_json::from_slice::<ConfigFile>(json)?
            .config
            .unwrap_or_default();
        let working_dir = raw.working_dir.filter(|dir| !dir.is_empty());
        Ok(ImageConfig {
            entrypoint: raw.entrypoint.unwrap_or_default(),
            cmd: raw.cmd.unwrap_or_default(),
            env: raw.env.unwrap_or_default(),
            working_dir: working_dir.unwrap_or_else(|| "/".into()),
        })
    }

    /// The task's argv: the entrypoint, then the task's command if it gives one (like
    /// `docker run IMAGE CMD...`, which replaces Cmd and keeps Entrypoint), else Cmd.
    pub fn argv(&self, command: &[String]) -> Vec<String> {
        let args = if command.is_empty() {
            &self.cmd
        } else {
            command
        };
        self.entrypoint.iter().chain(args).cloned().collect()
    }

    /// The task's environment: the image's Env, then `task_env` (later values of a key win,
    /// in the position of its first), and PATH=[`DEFAULT_PATH`] if neither sets PATH.
    pub fn environment(&self, task_env: &[String]) -> Vec<(String, String)> {
        let mut merged: Vec<(String, String)> = Vec::new();
        for entry in self.env.iter().chain(task_env) {
            let (key, value) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
            if key.is_empty() {
                continue;
            }
            match merged.iter_mut().find(|(k, _)| k == key) {
                Some(existing) => existing.1 = value.to_string(),
                None => merged.push((key.to_string(), value.to_string())),
            }
        }
        if !merged.iter().any(|(k, _)| k == "PATH") {
            merged.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
        }
        merged
    }
}

/// The image names a manifest descriptor carries, given the tarball's file stem.
pub fn image_name(annotations: &BTreeMap<String, String>, stem: &str) -> Option<String> {
    if let Some(name) = annotations.get("io.containerd.image.name") {
        return Some(name.clone());
    }
    let reference = annotations.get("org.opencontainers.image.ref.name")?;
    // A bare tag (`latest`) names the tag only; a full reference (`repo:tag`) stands alone.
    if reference.contains(':') || reference.contains('/') {
        Some(reference.clone())
    } else {
        Some(format!("{stem}:{reference}"))
    }
}

/// `name` with the tag `latest` added when it has none, for comparing names.
pub fn normalize(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') || last.contains('@') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

/// The hex part of a `sha256:<64 hex>` digest; anything else is refused (digests become
/// paths).
pub fn digest_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    let valid = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    valid.then_some(hex)
}

fn sha256_hex(context: Context) -> String {
    context
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// This machine's architecture as OCI platforms name it.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn is_index(media_type: &str) -> bool {
    media_type == "application/vnd.oci.image.index.v1+json"
        || media_type == "application/vnd.docker.distribution.manifest.list.v2+json"
}

// ---- Reading tarballs ----

/// A path inside an archive made relative; `None` for `..` anywhere or an empty path.
fn clean_path(path: &Path) -> Option<PathBuf> {
    let mut clean = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Normal(part) => clean.push(part),
            Component::ParentDir => return None,
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    (!clean.as_os_str().is_empty()).then_some(clean)
}

/// Runs `f` on the member `name` of the tarball; `None` if there is no such member.
fn with_member<T>(
    tarball: &Path,
    name: &str,
    f: impl FnOnce(&mut dyn Read) -> Result<T, ImageError>,
) -> Result<Option<T>, ImageError> {
    let file = File::open(tarball).map_err(io_err("opening", tarball))?;
    let mut archive = tar::Archive::new(file);
    let entries = archive
        .entries_with_seek()
        .map_err(io_err("reading", tarball))?;
    for entry in entries {
        let mut entry = entry.map_err(io_err("reading", tarball))?;
        let path = entry.path().map_err(io_err("reading", tarball))?;
        if clean_path(&path).as_deref() == Some(Path::new(name)) {
            return f(&mut entry).map(Some);
        }
    }
    Ok(None)
}

/// Reads a JSON blob and checks its digest.
fn read_blob(tarball: &Path, descriptor: &Descriptor) -> Result<Vec<u8>, ImageError> {
    let hex = digest_hex(&descriptor.digest)
        .ok_or_else(|| invalid(tarball, format!("bad digest {:?}", descriptor.digest)))?;
    let member = format!("blobs/sha256/{hex}");
    let bytes = with_member(tarball, &member, |reader| {
        let mut bytes = Vec::new();
        reader
            .take(MAX_JSON + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err("reading", tarball))?;
        Ok(bytes)
    })?
    .ok_or_else(|| invalid(tarball, format!("{member} is missing")))?;
    if bytes.len() as u64 > MAX_JSON {
        return Err(invalid(
            tarball,
            format!("{member} is larger than {MAX_JSON} bytes"),
        ));
    }
    let mut context = Context::new(&SHA256);
    context.update(&bytes);
    if sha256_hex(context) != hex {
        return Err(invalid(
            tarball,
            format!("{member} does not match its digest"),
        ));
    }
    Ok(bytes)
}

fn parse_json<T: serde::de::DeserializeOwned>(
    tarball: &Path,
    what: &str,
    bytes: &[u8],
) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|err| invalid(tarball, format!("{what}: {err}")))
}

/// One image found in a tarball.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// Its name, as the tarball gives it.
    pub name: String,
    /// The tarball holding it.
    pub tarball: PathBuf,
    /// The manifest's digest, which keys the unpacked rootfs.
    pub manifest_digest: String,
    /// How to run it.
    pub config: ImageConfig,
    /// The layers, lowest first.
    pub layers: Vec<Descriptor>,
}

/// Images in a directory of OCI layout tarballs, and their unpacked root filesystems.
#[derive(Clone, Debug)]
pub struct ImageStore {
    image_dir: PathBuf,
    cache_dir: PathBuf,
}

impl ImageStore {
    /// Images are read from `image_dir/*.tar` and unpacked under `cache_dir`.
    pub fn new(image_dir: PathBuf, cache_dir: PathBuf) -> ImageStore {
        ImageStore {
            image_dir,
            cache_dir,
        }
    }

    /// The directory images are read from.
    pub fn image_dir(&self) -> &Path {
        &self.image_dir
    }

    fn tarballs(&self) -> Result<Vec<PathBuf>, ImageError> {
        let entries = match fs::read_dir(&self.image_dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(io_err("listing", &self.image_dir)(err)),
        };
        let mut tarballs: Vec<PathBuf> = entries
            .filter_map(|entry| Some(entry.ok()?.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "tar"))
            .collect();
        tarballs.sort();
        Ok(tarballs)
    }

    /// The named manifest descriptors of one tarball.
    fn names_in(tarball: &Path) -> Result<Vec<(String, Descriptor)>, ImageError> {
        let index = with_member(tarball, "index.json", |reader| {
            let mut bytes = Vec::new();
            reader
                .take(MAX_JSON)
                .read_to_end(&mut bytes)
                .map_err(io_err("reading", tarball))?;
            parse_json::<Index>(tarball, "index.json", &bytes)
        })?
        .ok_or_else(|| invalid(tarball, "no index.json: not an OCI image layout"))?;
        let stem = tarball
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(index
            .manifests
            .into_iter()
            .filter_map(|d| Some((image_name(&d.annotations, &stem)?, d)))
            .collect())
    }

    /// Every image name in the directory, sorted. Unreadable tarballs are skipped (and logged).
    pub fn list(&self) -> Result<Vec<String>, ImageError> {
        let mut names = Vec::new();
        for tarball in self.tarballs()? {
            match Self::names_in(&tarball) {
                Ok(found) => names.extend(found.into_iter().map(|(name, _)| name)),
                Err(err) => tracing::warn!(error = %err, "skipping an unreadable image tarball"),
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// The image called `name` (a missing tag means `latest`), if a tarball has it.
    pub fn find(&self, name: &str) -> Result<Option<Image>, ImageError> {
        let wanted = normalize(name);
        for tarball in self.tarballs()? {
            let found = match Self::names_in(&tarball) {
                Ok(found) => found,
                Err(err) => {
                    tracing::warn!(error = %err, "skipping an unreadable image tarball");
                    continue;
                }
            };
            if let Some((found_name, descriptor)) =
                found.into_iter().find(|(n, _)| normalize(n) == wanted)
            {
                return Self::load(&tarball, found_name, descriptor).map(Some);
            }
        }
        Ok(None)
    }

    fn load(tarball: &Path, name: String, mut descriptor: Descriptor) -> Result<Image, ImageError> {
        if is_index(&descriptor.media_type) {
            let nested: Index =
                parse_json(tarball, "image index", &read_blob(tarball, &descriptor)?)?;
            let for_us = |d: &&Descriptor| {
                d.platform
                    .as_ref()
                    .is_none_or(|p| p.os == "linux" && p.architecture == oci_arch())
            };
            descriptor = nested
                .manifests
                .iter()
                .find(for_us)
                .cloned()
                .ok_or_else(|| {
                    invalid(
                        tarball,
                        format!("{name} has no linux/{} manifest", oci_arch()),
                    )
                })?;
        }
        let manifest: Manifest =
            parse_json(tarball, "manifest", &read_blob(tarball, &descriptor)?)?;
        let config = ImageConfig::parse(&read_blob(tarball, &manifest.config)?)
            .map_err(|err| invalid(tarball, format!("image config: {err}")))?;
        Ok(Image {
            name,
            tarball: tarball.to_path_buf(),
            manifest_digest: descriptor.digest,
            config,
            layers: manifest.layers,
        })
    }

    /// The unpacked rootfs of `image`, unpacking it first if no earlier call did. Slow on
    /// first use: call it off the async executor.
    pub fn rootfs(&self, image: &Image) -> Result<PathBuf, ImageError> {
        let hex = digest_hex(&image.manifest_digest)
            .ok_or_else(|| invalid(&image.tarball, "bad manifest digest"))?;
        let dir = self.cache_dir.join(hex);
        let rootfs = dir.join("rootfs");
        if rootfs.is_dir() {
            return Ok(rootfs);
        }
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        // Leftovers of an unpack that crashed.
        for entry in fs::read_dir(&dir)
            .map_err(io_err("listing", &dir))?
            .flatten()
        {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with("rootfs.partial")
            {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        let partial = dir.join(format!("rootfs.partial-{}", std::process::id()));
        fs::create_dir(&partial).map_err(io_err("creating", &partial))?;
        let unpacked = image
            .layers
            .iter()
            .try_for_each(|layer| unpack::apply_layer(&image.tarball, layer, &partial));
        if let Err(err) = unpacked {
            let _ = fs::remove_dir_all(&partial);
            return Err(err);
        }
        if let Err(err) = fs::rename(&partial, &rootfs) {
            let _ = fs::remove_dir_all(&partial);
            // Another meshd unpacked it meanwhile.
            if !rootfs.is_dir() {
                return Err(io_err("renaming into", &rootfs)(err));
            }
        }
        Ok(rootfs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn names_come_from_annotations() {
        let containerd = "io.containerd.image.name";
        let oci = "org.opencontainers.image.ref.name";
        let both = annotations(&[(containerd, "mesh-test:latest"), (oci, "latest")]);
        assert_eq!(image_name(&both, "x").as_deref(), Some("mesh-test:latest"));
        let tag = annotations(&[(oci, "v2")]);
        assert_eq!(
            image_name(&tag, "mesh-test").as_deref(),
            Some("mesh-test:v2")
        );
        let full = annotations(&[(oci, "example.org/app:1")]);
        assert_eq!(image_name(&full, "x").as_deref(), Some("example.org/app:1"));
        assert_eq!(image_name(&BTreeMap::new(), "x"), None);
        assert_eq!(normalize("busybox"), "busybox:latest");
        assert_eq!(normalize("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(normalize("app:1"), "app:1");
    }

    #[test]
    fn digests_must_be_sha256_hex() {
        let hex = "a".repeat(64);
        assert_eq!(digest_hex(&format!("sha256:{hex}")), Some(hex.as_str()));
        assert_eq!(digest_hex(&format!("sha512:{hex}")), None);
        assert_eq!(digest_hex("sha256:../../etc"), None);
        assert_eq!(digest_hex(&format!("sha256:{}", "A".repeat(64))), None);
    }

    #[test]
    fn index_and_manifest_parse() {
        let index: Index = serde_json::from_value(json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:abc", "size": 10,
                "annotations": {"io.containerd.image.name": "a:1"},
                "platform": {"architecture": "amd64", "os": "linux"}
            }]
        }))
        .unwrap();
        assert_eq!(
            index.manifests[0].annotations["io.containerd.image.name"],
            "a:1"
        );
        assert_eq!(index.manifests[0].platform.as_ref().unwrap().os, "linux");
        let manifest: Manifest = serde_json::from_value(json!({
            "config": {"digest": "sha256:c"}, "layers": [{"digest": "sha256:l"}]
        }))
        .unwrap();
        assert_eq!(manifest.layers.len(), 1);
        assert!(serde_json::from_value::<Manifest>(json!({"layers": []})).is_err());
    }

    #[test]
    fn config_gives_argv_env_and_workdir() {
        let config = ImageConfig::parse(
            br#"{"config":{"Entrypoint":["/init"],"Cmd":["serve","-v"],
                 "Env":["PATH=/bin","A=1"],"WorkingDir":"/srv"}}"#,
        )
        .unwrap();
        assert_eq!(config.argv(&[]), ["/init", "serve", "-v"]);
        // A task's command replaces Cmd and keeps Entrypoint.
        assert_eq!(config.argv(&["run".into()]), ["/init", "run"]);
        assert_eq!(config.working_dir, "/srv");
        let env = config.environment(&["A=2".into(), "B=x=y".into(), "C".into()]);
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [("PATH", "/bin"), ("A", "2"), ("B", "x=y"), ("C", "")]
        );
        let bare = ImageConfig::parse(b"{}").unwrap();
        assert_eq!(bare.working_dir, "/");
        assert!(bare.argv(&[]).is_empty());
        assert_eq!(bare.argv(&["sh".into()]), ["sh"]);
        assert_eq!(
            bare.environment(&[])[0],
            ("PATH".into(), DEFAULT_PATH.into())
        );
        assert!(ImageConfig::parse(b"[").is_err());
    }

    #[test]
    fn a_blob_that_does_not_match_its_digest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tarball = dir.path().join("bad.tar");
        let hex = "0".repeat(64);
        let mut builder = tar::Builder::new(File::create(&tarball).unwrap());
        let mut header = tar::Header::new_ustar();
        header.set_size(2);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, format!("blobs/sha256/{hex}"), &b"{}"[..])
            .unwrap();
        builder.into_inner().unwrap();
        let descriptor = Descriptor {
            digest: format!("sha256:{hex}"),
            ..Descriptor::default()
        };
        let err = read_blob(&tarball, &descriptor).unwrap_err().to_string();
        assert!(err.contains("does not match its digest"), "{err}");
        let missing = Descriptor {
            digest: format!("sha256:{}", "1".repeat(64)),
            ..Descriptor::default()
        };
        assert!(read_blob(&tarball, &missing)
            .unwrap_err()
            .to_string()
            .contains("missing"));
    }
}
