//! Network namespaces the agent prepares for tasks: created empty (loopback up), pinned by a
//! bind mount at a path the runtimes join, and removed with the task. Pinning is the
//! dataplane's (the overlay pins its network namespaces the same way); loopback is the task's.

use std::io;
use std::path::Path;

use dataplane::overlay::netns::{create_pinned, remove_pinned, Netns};

/// Creates a network namespace pinned at `path` (whose parent must exist), with `lo` up.
/// An existing namespace at `path` is kept, so a restarted agent can call it again.
pub fn create(path: &Path) -> io::Result<()> {
    create_pinned(path).map_err(io::Error::other)?;
    let netns = Netns::open_pinned(path)
        .map_err(io::Error::other)?
        .ok_or_else(|| io::Error::other(format!("{} is not a namespace", path.display())))?;
    netns.run(loopback_up)
}

/// Unmounts and deletes a pinned namespace; the namespace itself goes when its last process
/// does. A missing path is not an error.
pub fn remove(path: &Path) -> io::Result<()> {
    remove_pinned(path).map_err(io::Error::other)
}

/// Whether `path` holds a namespace (an nsfs mount) rather than a plain file.
pub fn is_pinned(path: &Path) -> bool {
    dataplane::overlay::netns::is_pinned(path)
}

fn loopback_up() -> io::Result<()> {
    // SAFETY: socket takes no pointers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: fd is an open socket and req a valid ifreq naming "lo".
    let mut rc = unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) };
    if rc == 0 {
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        // SAFETY: as above.
        rc = unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) };
    }
    let err = io::Error::last_os_error();
    // SAFETY: fd is ours and closed once.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(err);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_is_created_pinned_and_removed() {
        // SAFETY: geteuid takes nothing.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns");
        create(&path).unwrap();
        assert!(is_pinned(&path));
        let lo = std::process::Command::new("nsenter")
            .arg(format!("--net={}", path.display()))
            .args(["ip", "-o", "link", "show", "lo"])
            .output()
            .unwrap();
        let lo = String::from_utf8_lossy(&lo.stdout);
        assert!(lo.contains("state UNKNOWN") && lo.contains(",UP"), "{lo}");
        create(&path).unwrap();
        remove(&path).unwrap();
        assert!(!path.exists());
        remove(&path).unwrap();
    }
}
