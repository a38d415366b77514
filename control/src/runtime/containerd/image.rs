//! From an image name to what a container needs: the image's configuration and the chain ID of
//! its unpacked layers (the snapshot a container's writable layer is prepared on). Parsing and
//! the chain ID are pure; `resolve` reads the blobs through containerd's Content service.

use containerd_client::services::v1::{GetImageRequest, ReadContentRequest};
use ring::digest::{digest, SHA256};
use serde::Deserialize;

use super::conn::Connection;
use super::spec::ImageConfig;
use crate::runtime::RuntimeError;

/// Media types of an image index (a manifest list), OCI and Docker.
const INDEX_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// One content-addressed blob an image refers to.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What the blob is.
    #[serde(default)]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Where an index says a manifest runs.
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// An index entry's platform.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, ...
    pub architecture: String,
}

/// A manifest's or an index's JSON, whichever the blob is.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestOrIndex {
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

/// The config blob's layer list.
#[derive(Debug, Deserialize)]
struct RootFs {
    rootfs: DiffIds,
}

#[derive(Debug, Deserialize)]
struct DiffIds {
    diff_ids: Vec<String>,
}

/// What a blob of an image's target points to next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A manifest: its config blob.
    Config(String),
    /// An index: the manifest for this machine.
    Manifest(String),
}

/// Follows one step from a manifest or index blob. `media_type` is what the referring
/// descriptor said (a manifest may leave its own out).
pub fn next_blob(blob: &[u8], media_type: &str) -> Result<Next, String> {
    let parsed: ManifestOrIndex =
        serde_json::from_slice(blob).map_err(|err| format!("not a manifest or index: {err}"))?;
    let is_index = INDEX_TYPES.contains(&media_type)
        || INDEX_TYPES.contains(&parsed.media_type.as_str())
        || (parsed.config.is_none() && !parsed.manifests.is_empty());
    if is_index {
        let arch = machine_arch();
        return parsed
            .manifests
            .iter()
            .find(|m| {
                m.platform
                    .as_ref()
                    .is_none_or(|p| p.os == "linux" && p.architecture == arch)
            })
            .map(|m| Next::Manifest(m.digest.clone()))
            .ok_or_else(|| format!("the index has no manifest for linux/{arch}"));
    }
    parsed
        .config
        .map(|c| Next::Config(c.digest))
        .ok_or_else(|| "the manifest names no config".to_string())
}

/// The layers' uncompressed digests, bottom first, from a config blob.
pub fn diff_ids(config: &[u8]) -> Result<Vec<String>, String> {
    serde_json::from_slice::<RootFs>(config)
        .map(|r| r.rootfs.diff_ids)
        .map_err(|err| format!("the image config has no rootfs.diff_ids: {err}"))
}

/// The chain ID of a stack of layers (OCI image spec): the first layer's diff ID, then
/// `sha256(parent_chain + " " + diff_id)` for each layer above. containerd names committed
/// snapshots by it. None for an image without layers.
pub fn chain_id(diff_ids: &[String]) -> Option<String> {
    let (first, rest) = diff_ids.split_first()?;
    Some(rest.iter().fold(first.clone(), |parent, diff_id| {
        let hash = digest(&SHA256, format!("{parent} {diff_id}").as_bytes());
        format!("sha256:{}", hex(hash.as_ref()))
    }))
}

/// The architecture name images use for this machine.
fn machine_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An image ready to run: its process defaults and the snapshot its layers are unpacked in.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The name containerd knows the image by.
    pub name: String,
    /// Entrypoint, Cmd, Env, ...
    pub config: ImageConfig,
    /// Chain ID of its layers: the parent of a task's snapshot.
    pub chain_id: String,
}

/// Looks an image up by name (trying `NAME:latest` for a name without a tag) and reads its
/// manifest and config. Unknown images are `NoSuchImage`.
pub async fn resolve(conn: &Connection, image: &str) -> Result<Resolved, RuntimeError> {
    let mut found = None;
    for name in candidate_names(image) {
        let request = conn.request(GetImageRequest { name: name.clone() });
        match conn.client().images().get(request).await {
            Ok(response) => {
                found = response.into_inner().image;
                if found.is_some() {
                    break;
                }
            }
            Err(status) if status.code() == containerd_client::tonic::Code::NotFound => {}
            Err(status) => return Err(conn.failed(&format!("looking up image {image}"), status)),
        }
    }
    let Some(found) = found else {
        return Err(RuntimeError::NoSuchImage {
            image: image.to_string(),
            fix: format!(
                "build it with `scripts/build-test-image.sh` and import it with `ctr -a {} -n {} image import <tarball>`",
                conn.socket.display(),
                conn.namespace
            ),
        });
    };
    let target = found
        .target
        .ok_or_else(|| RuntimeError::Failed(format!("image {image} has no target descriptor")))?;
    let bad = |what: String| RuntimeError::Failed(format!("image {}: {what}", found.name));
    let (mut digest, mut media_type) = (target.digest, target.media_type);
    // An index leads to a manifest, a manifest to its config.
    let mut from_index = false;
    let config_digest = loop {
        let blob = read_blob(conn, &digest).await?;
        match next_blob(&blob, &media_type).map_err(bad)? {
            Next::Config(config) => break config,
            Next::Manifest(_) if from_index => return Err(bad("an index inside an index".into())),
            Next::Manifest(manifest) => {
                (digest, media_type, from_index) = (manifest, String::new(), true);
            }
        }
    };
    let blob = read_blob(conn, &config_digest).await?;
    let config = ImageConfig::parse(&blob).map_err(|err| bad(err.to_string()))?;
    let chain_id = chain_id(&diff_ids(&blob).map_err(bad)?)
        .ok_or_else(|| bad("the image has no layers".into()))?;
    Ok(Resolved {
        name: found.name,
        config,
        chain_id,
    })
}

/// The names an image may be stored under: as given, then with `:latest` when untagged.
fn candidate_names(image: &str) -> Vec<String> {
    let last = image.rsplit('/').next().unwrap_or(image);
    let mut names = vec![image.to_string()];
    if !last.contains(':') && !image.contains('@') {
        names.push(format!("{image}:latest"));
    }
    names
}

/// Reads a whole blob from the content store.
async fn read_blob(conn: &Connection, digest: &str) -> Result<Vec<u8>, RuntimeError> {
    let request = conn.request(ReadContentRequest {
        digest: digest.to_string(),
        offset: 0,
        size: 0,
    });
    let what = format!("reading blob {digest}");
    let mut stream = conn
        .client()
        .content()
        .read(request)
        .await
        .map_err(|status| conn.failed(&what, status))?
        .into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|status| conn.failed(&what, status))?
    {
        data.extend_from_slice(&chunk.data);
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_id_of_one_layer_is_its_diff_id() {
        let ids = vec!["sha256:aaaa".to_string()];
        assert_eq!(chain_id(&ids).as_deref(), Some("sha256:aaaa"));
        assert_eq!(chain_id(&[]), None);
    }

    #[test]
    fn chain_id_hashes_parent_space_diff_id() {
        let ids = vec!["sha256:aaaa".to_string(), "sha256:bbbb".to_string()];
        let two = chain_id(&ids).unwrap();
        // printf 'sha256:aaaa sha256:bbbb' | sha256sum
        assert_eq!(
            two,
            "sha256:2c4d8760379f05d0ad1ed610712309f0114e7345e6e6a351494cff030ffdf197"
        );
        // A third layer chains on the second's chain ID, not its diff ID.
        let three = chain_id(&[ids[0].clone(), ids[1].clone(), "sha256:cccc".into()]).unwrap();
        let expected = digest(&SHA256, format!("{two} sha256:cccc").as_bytes());
        assert_eq!(three, format!("sha256:{}", hex(expected.as_ref())));
    }

    #[test]
    fn a_manifest_leads_to_its_config() {
        let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:c0","size":1},"layers":[]}"#;
        assert_eq!(
            next_blob(manifest, "application/vnd.oci.image.manifest.v1+json"),
            Ok(Next::Config("sha256:c0".into()))
        );
    }

    #[test]
    fn an_index_leads_to_this_machines_manifest() {
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[
                {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:other","size":1,"platform":{{"os":"linux","architecture":"s390x"}}}},
                {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:mine","size":1,"platform":{{"os":"linux","architecture":"{}"}}}}]}}"#,
            machine_arch()
        );
        assert_eq!(
            next_blob(index.as_bytes(), "application/vnd.oci.image.index.v1+json"),
            Ok(Next::Manifest("sha256:mine".into()))
        );
        let foreign = br#"{"manifests":[{"digest":"sha256:x","platform":{"os":"linux","architecture":"s390x"}}]}"#;
        assert!(next_blob(foreign, "")
            .unwrap_err()
            .contains("no manifest for linux/"));
        assert!(next_blob(b"[]", "").is_err());
        assert!(next_blob(b"{}", "").unwrap_err().contains("no config"));
    }

    #[test]
    fn diff_ids_come_from_the_config_rootfs() {
        let config = br#"{"rootfs":{"type":"layers","diff_ids":["sha256:l1","sha256:l2"]}}"#;
        assert_eq!(diff_ids(config).unwrap(), ["sha256:l1", "sha256:l2"]);
        assert!(diff_ids(b"{}").is_err());
    }

    #[test]
    fn untagged_names_also_try_latest() {
        assert_eq!(
            candidate_names("mesh-test"),
            ["mesh-test", "mesh-test:latest"]
        );
        assert_eq!(candidate_names("mesh-test:1"), ["mesh-test:1"]);
        assert_eq!(
            candidate_names("localhost:5000/web"),
            ["localhost:5000/web", "localhost:5000/web:latest"]
        );
        assert_eq!(candidate_names("web@sha256:00"), ["web@sha256:00"]);
    }
}
