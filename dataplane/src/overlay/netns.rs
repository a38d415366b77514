//! Network namespaces: pinning one at a path (a bind mount of its nsfs file, so it outlives
//! every process), opening a pinned one, and running a short closure inside one.
//!
//! `setns` and `unshare` change only the calling thread, so every namespace switch happens on a
//! scratch thread that ends with the closure: the caller's threads (tokio's among them) never
//! leave their namespace. What such a closure creates keeps its namespace after the thread
//! ends: a netlink socket opened there speaks to that namespace for life, which is how the
//! overlay drives other namespaces from async code (see `netlink::Netlink::connect`).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::error::{OverlayError, Result};

/// `statfs` magic of nsfs: a file of this type is a namespace.
const NSFS_MAGIC: i64 = 0x6e73_6673;
/// The calling thread's own network namespace.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// An open network namespace and a label for messages (its pinned path, or "underlay").
#[derive(Debug)]
pub struct Netns {
    file: File,
    label: String,
}

impl Netns {
    /// The calling thread's network namespace, labelled `label`.
    pub fn current(label: &str) -> Result<Netns> {
        let file = File::open(THREAD_NETNS).map_err(|source| OverlayError::Namespace {
            operation: "opening",
            path: THREAD_NETNS.into(),
            source,
        })?;
        Ok(Netns {
            file,
            label: label.to_string(),
        })
    }

    /// The namespace pinned at `path`, or None when nothing is pinned there (the file is
    /// missing, or is a plain file whose mount is gone).
    pub fn open_pinned(path: &Path) -> Result<Option<Netns>> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(OverlayError::Namespace {
                    operation: "opening",
                    path: path.into(),
                    source,
                })
            }
        };
        if !is_nsfs(&file) {
            return Ok(None);
        }
        Ok(Some(Netns {
            file,
            label: path.display().to_string(),
        }))
    }

    /// What messages call this namespace.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The descriptor, for IFLA_NET_NS_FD (moving a device into this namespace).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Runs `f` on a scratch thread that has entered this namespace, and returns its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        let fd = self.file.as_raw_fd();
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns on a descriptor `self` keeps open for the whole scope; it
                    // changes only this scratch thread's network namespace.
                    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

/// Creates a new, empty network namespace pinned at `path` (whose parent must exist). An
/// existing namespace at `path` is kept.
pub fn create_pinned(path: &Path) -> Result<()> {
    if is_pinned(path) {
        return Ok(());
    }
    let failed = |source| OverlayError::Namespace {
        operation: "creating",
        path: path.to_path_buf(),
        source,
    };
    File::create(path).map_err(failed)?;
    let target = c_path(path).map_err(failed)?;
    let result = std::thread::spawn(move || -> io::Result<()> {
        // SAFETY: unshare takes no pointers; it moves only this scratch thread to a new
        // namespace, which the bind mount below keeps alive after the thread ends.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let source = CString::new(THREAD_NETNS).expect("no NUL in a constant");
        // SAFETY: both paths are valid NUL-terminated strings that outlive the call; the
        // other arguments may be null for a bind mount.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")));
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result.map_err(failed)
}

/// Unpins a namespace and deletes its file: the namespace itself goes when nothing else holds
/// it. A missing file is not an error.
pub fn remove_pinned(path: &Path) -> Result<()> {
    let failed = |source| OverlayError::Namespace {
        operation: "unpinning",
        path: PathBuf::from(path),
        source,
    };
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    let target = c_path(path).map_err(failed)?;
    // SAFETY: target is a valid NUL-terminated path.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
        let err = io::Error::last_os_error();
        // EINVAL: not a mount point (a half-created file); just delete it.
        if err.raw_os_error() != Some(libc::EINVAL) {
            return Err(failed(err));
        }
    }
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(failed(err)),
        _ => Ok(()),
    }
}

/// Whether `path` holds a namespace (an nsfs mount) rather than a plain file.
pub fn is_pinned(path: &Path) -> bool {
    File::open(path).is_ok_and(|file| is_nsfs(&file))
}

fn is_nsfs(file: &File) -> bool {
    // SAFETY: statfs is plain old data; all zeroes is a valid value.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: the descriptor is open and `stat` is a valid out pointer.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut stat) };
    // f_type is an alias whose width differs between architectures.
    rc == 0 && stat.f_type as i64 == NSFS_MAGIC
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::other(format!("{} contains a NUL byte", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        // SAFETY: geteuid takes nothing and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn a_namespace_is_pinned_entered_and_unpinned() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns-test");
        assert!(Netns::open_pinned(&path).unwrap().is_none());
        create_pinned(&path).unwrap();
        create_pinned(&path).unwrap();
        assert!(is_pinned(&path));
        let ns = Netns::open_pinned(&path).unwrap().expect("pinned");
        let inode = |p: &str| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        let inside = ns.run(|| inode(THREAD_NETNS)).unwrap();
        let pinned = std::fs::metadata(&path).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        assert_eq!(inside, pinned.unwrap());
        assert_ne!(inside, inode(THREAD_NETNS).unwrap());
        drop(ns);
        remove_pinned(&path).unwrap();
        assert!(!path.exists());
        remove_pinned(&path).unwrap();
        // A plain file is not a namespace.
        std::fs::write(&path, b"").unwrap();
        assert!(Netns::open_pinned(&path).unwrap().is_none());
        remove_pinned(&path).unwrap();
        assert!(!path.exists());
    }
}
