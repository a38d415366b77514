//! Writing OCI image layout tarballs.

use std::fs::{self, File};
use std::io;
use std::path::Path;

use ring::digest::{Context, SHA256};

use super::{io_err, normalize, oci_arch, sha256_hex, ImageError};

/// Writes an OCI image layout tarball at `path` holding one image called `name` (`repo:tag`),
/// whose layers are the given uncompressed tar archives (stored gzip-compressed, lowest
/// first) and whose config object (Entrypoint, Cmd, Env, WorkingDir) is `config`. Returns the
/// manifest digest. This is the layout `docker save`/`ctr export` produce and that
/// [`ImageStore`] and containerd's import read; tests and tools build images with it.
pub fn write_layout(
    path: &Path,
    name: &str,
    config: &serde_json::Value,
    layers: &[Vec<u8>],
) -> Result<String, ImageError> {
    use flate2::{write::GzEncoder, Compression};
    use std::io::Write;
    use tar::{Builder, Header};

    fn digest_of(bytes: &[u8]) -> String {
        let mut context = Context::new(&SHA256);
        context.update(bytes);
        format!("sha256:{}", sha256_hex(context))
    }
    let write_err = io_err("writing", path);
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let (mut layer_descriptors, mut diff_ids) = (Vec::new(), Vec::new());
    for layer in layers {
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(layer)
            .map_err(io_err("compressing a layer for", path))?;
        let compressed = gz
            .finish()
            .map_err(io_err("compressing a layer for", path))?;
        diff_ids.push(digest_of(layer));
        layer_descriptors.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest_of(&compressed),
            "size": compressed.len(),
        }));
        blobs.push((digest_of(&compressed), compressed));
    }
    let config_blob = serde_json::to_vec(&serde_json::json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .expect("JSON values serialize");
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest_of(&config_blob),
            "size": config_blob.len(),
        },
        "layers": layer_descriptors,
    }))
    .expect("JSON values serialize");
    let manifest_digest = digest_of(&manifest);
    let tag = normalize(name).rsplit_once(':').map(|(_, t)| t.to_string());
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag.unwrap_or_default(),
            },
        }],
    }))
    .expect("JSON values serialize");
    blobs.push((digest_of(&config_blob), config_blob));
    blobs.push((manifest_digest.clone(), manifest));

    let partial = path.with_extension("tar.partial");
    let file = File::create(&partial).map_err(io_err("creating", &partial))?;
    let mut builder = Builder::new(file);
    fn add(builder: &mut Builder<File>, member: &str, data: &[u8]) -> io::Result<()> {
        let mut header = Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        builder.append_data(&mut header, member, data)
    }
    let result = (|| {
        add(
            &mut builder,
            "oci-layout",
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        add(&mut builder, "index.json", &index)?;
        for (digest, blob) in &blobs {
            let hex = digest.trim_start_matches("sha256:");
            add(&mut builder, &format!("blobs/sha256/{hex}"), blob)?;
        }
        builder.into_inner()?.sync_all()
    })();
    if let Err(err) = result.and_then(|()| fs::rename(&partial, path)) {
        let _ = fs::remove_file(&partial);
        return Err(write_err(err));
    }
    Ok(manifest_digest)
}
