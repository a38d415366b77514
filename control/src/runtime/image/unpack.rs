//! Unpacking image layers into a rootfs, whiteouts included.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use ring::digest::{Context, SHA256};

use super::{
    clean_path, digest_hex, invalid, io_err, sha256_hex, with_member, Descriptor, ImageError,
};

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    context: Context,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.context.update(&buf[..n]);
        Ok(n)
    }
}

pub(super) fn apply_layer(
    tarball: &Path,
    layer: &Descriptor,
    dst: &Path,
) -> Result<(), ImageError> {
    let hex = digest_hex(&layer.digest)
        .ok_or_else(|| invalid(tarball, format!("bad layer digest {:?}", layer.digest)))?;
    let gzip = match layer.media_type.as_str() {
        t if t.ends_with("tar+gzip") || t.ends_with("tar.gzip") => true,
        t if t.ends_with(".tar") || t.ends_with("layer.v1.tar") => false,
        t => {
            return Err(invalid(
                tarball,
                format!("layer media type {t:?} is not supported (use gzip or plain tar layers)"),
            ))
        }
    };
    let member = format!("blobs/sha256/{hex}");
    with_member(tarball, &member, |reader| {
        let mut hashing = Hashing {
            inner: reader,
            context: Context::new(&SHA256),
        };
        if gzip {
            unpack_layer(tarball, flate2::read::GzDecoder::new(&mut hashing), dst)?;
        } else {
            unpack_layer(tarball, &mut hashing, dst)?;
        }
        // The digest covers the whole blob, including what follows the tar's end marker.
        io::copy(&mut hashing, &mut io::sink()).map_err(io_err("reading", tarball))?;
        if sha256_hex(hashing.context) != hex {
            return Err(invalid(
                tarball,
                format!("layer {member} does not match its digest"),
            ));
        }
        Ok(())
    })?
    .ok_or_else(|| invalid(tarball, format!("layer {member} is missing")))
}

/// The existing directory `dst/relative`, checked to resolve inside `dst` (a layer's symlinks
/// must not steer a removal outside the rootfs); `None` if it does not exist.
fn inside(tarball: &Path, dst: &Path, relative: &Path) -> Result<Option<PathBuf>, ImageError> {
    let canonical_dst = dst.canonicalize().map_err(io_err("resolving", dst))?;
    match dst.join(relative).canonicalize() {
        Ok(dir) if dir.starts_with(&canonical_dst) => Ok(Some(dir)),
        Ok(_) => Err(invalid(
            tarball,
            format!(
                "a layer entry under {} leads outside the rootfs",
                relative.display()
            ),
        )),
        Err(_) => Ok(None),
    }
}

/// Removes a file, symlink or whole directory; a missing one is fine.
fn remove_any(path: &Path) -> Result<(), ImageError> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => return Ok(()),
    };
    result.map_err(io_err("removing", path))
}

fn unpack_layer(tarball: &Path, reader: impl Read, dst: &Path) -> Result<(), ImageError> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    // Whiteouts hide only what lower layers hold, never what this layer adds.
    let mut added: HashSet<PathBuf> = HashSet::new();
    for entry in archive
        .entries()
        .map_err(io_err("unpacking a layer of", tarball))?
    {
        let mut entry = entry.map_err(io_err("unpacking a layer of", tarball))?;
        let path = entry
            .path()
            .map_err(io_err("unpacking a layer of", tarball))?;
        let Some(relative) = clean_path(&path) else {
            continue;
        };
        let parent = relative.parent().unwrap_or(Path::new("")).to_path_buf();
        let name = relative
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let Some(dir) = inside(tarball, dst, &parent)? else {
                continue;
            };
            if hidden == ".wh..opq" {
                for child in fs::read_dir(&dir)
                    .map_err(io_err("listing", &dir))?
                    .flatten()
                {
                    if !added.contains(&parent.join(child.file_name())) {
                        remove_any(&child.path())?;
                    }
                }
            } else if !added.contains(&parent.join(hidden)) {
                remove_any(&dir.join(hidden))?;
            }
            continue;
        }
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            continue;
        }
        // A layer may replace a directory by a file or the reverse.
        if let Some(dir) = inside(tarball, dst, &parent)? {
            let target = dir.join(&name);
            if let Ok(meta) = fs::symlink_metadata(&target) {
                if kind.is_dir() != meta.is_dir() {
                    remove_any(&target)?;
                }
            }
        }
        entry
            .unpack_in(dst)
            .map_err(io_err("unpacking a layer of", tarball))?;
        added.insert(relative);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{write_layout, ImageStore};
    use super::*;
    use serde_json::json;

    enum Item<'a> {
        File(&'a str, &'a str),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
    }

    fn layer(items: &[Item]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for item in items {
            let mut header = tar::Header::new_gnu();
            let (path, data): (&str, &[u8]) = match item {
                Item::File(path, content) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(0o644);
                    (path, content.as_bytes())
                }
                Item::Dir(path) => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(0o755);
                    (path, b"")
                }
                Item::Symlink(path, target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_link_name(target).unwrap();
                    header.set_mode(0o777);
                    (path, b"")
                }
            };
            header.set_size(data.len() as u64);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(1);
            header.set_cksum();
            builder.append_data(&mut header, path, data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn a_layout_is_listed_found_and_unpacked_once_with_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let (images, cache) = (dir.path().join("images"), dir.path().join("cache"));
        fs::create_dir(&images).unwrap();
        let lower = layer(&[
            Item::Dir("bin/"),
            Item::File("bin/tool", "v1"),
            Item::File("etc/gone", "x"),
            Item::Dir("var/"),
            Item::File("var/old", "x"),
            Item::File("became-dir", "x"),
        ]);
        let upper = layer(&[
            Item::File("bin/tool", "v2"),
            Item::File("etc/.wh.gone", ""),
            Item::File("var/new", "y"),
            Item::File("var/.wh..wh..opq", ""),
            Item::Dir("became-dir/"),
            Item::Symlink("bin/sh", "tool"),
        ]);
        let config = json!({"Cmd": ["/bin/tool"]});
        let digest =
            write_layout(&images.join("app.tar"), "app:1", &config, &[lower, upper]).unwrap();
        fs::write(images.join("junk.tar"), "not a tarball").unwrap();
        let store = ImageStore::new(images, cache.clone());
        assert_eq!(store.list().unwrap(), ["app:1"]);
        assert_eq!(store.find("nope").unwrap(), None);
        let image = store.find("app:1").unwrap().unwrap();
        assert_eq!(image.manifest_digest, digest);
        assert_eq!(image.config.cmd, ["/bin/tool"]);
        let rootfs = store.rootfs(&image).unwrap();
        assert_eq!(
            rootfs,
            cache.join(digest_hex(&digest).unwrap()).join("rootfs")
        );
        assert_eq!(fs::read_to_string(rootfs.join("bin/tool")).unwrap(), "v2");
        assert_eq!(
            fs::read_link(rootfs.join("bin/sh")).unwrap(),
            Path::new("tool")
        );
        assert!(!rootfs.join("etc/gone").exists());
        assert!(rootfs.join("etc").is_dir());
        // The opaque directory keeps what its own layer added and loses the rest.
        assert!(rootfs.join("var/new").exists());
        assert!(!rootfs.join("var/old").exists());
        assert!(rootfs.join("became-dir").is_dir());
        assert!(!rootfs.join(".wh..wh..opq").exists() && !rootfs.join("var/.wh..wh..opq").exists());
        // Cached: a second call reuses it and leaves no partial directory.
        fs::write(rootfs.join("marker"), "").unwrap();
        assert_eq!(store.rootfs(&image).unwrap(), rootfs);
        assert!(rootfs.join("marker").exists());
        assert_eq!(fs::read_dir(rootfs.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn a_whiteout_through_a_symlink_out_of_the_rootfs_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("victim"), "keep").unwrap();
        let escape = layer(&[Item::Symlink("evil", outside.to_str().unwrap())]);
        let attack = layer(&[Item::File("evil/.wh.victim", "")]);
        let images = dir.path().join("images");
        fs::create_dir(&images).unwrap();
        write_layout(&images.join("x.tar"), "x", &json!({}), &[escape, attack]).unwrap();
        let store = ImageStore::new(images, dir.path().join("cache"));
        let image = store.find("x:latest").unwrap().unwrap();
        let err = store.rootfs(&image).unwrap_err().to_string();
        assert!(err.contains("outside the rootfs"), "{err}");
        assert!(outside.join("victim").exists());
        // Nothing half-unpacked is left in the cache.
        let cached = dir
            .path()
            .join("cache")
            .join(digest_hex(&image.manifest_digest).unwrap());
        assert_eq!(fs::read_dir(cached).unwrap().count(), 0);
    }
}
