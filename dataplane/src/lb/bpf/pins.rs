//! The balancer's pinned links: every attachment is pinned in a private bpffs, so the kernel keeps
//! it (and the maps its program holds) when meshd dies, and the routing mesh keeps forwarding
//! while meshd is down.
//!
//! A starting balancer replaces what a previous run left, so programs never stack and the
//! device never goes without one: at tcx the old link goes once the new program, queued behind
//! it, has its tables (the first `apply`); at XDP, where a device takes one link (a second fails
//! with EBUSY), the first `apply` puts the new program into the old link (`bpf_link_update`, see
//! `attach::take_over_xdp`). The old maps go with the old
//! programs, but for `LB_REVNAT`, which is pinned too and shared by every run: a reply is
//! translated whichever run's `lb_ingress` saw its request and whichever run's `lb_reply` sees
//! it, while both are attached (without it, a reply to a request the new `lb_ingress` took is
//! dropped by the old `lb_reply`, still ahead of the new one). The flow LRU is not carried over
//! (its backend ids are each run's own), which is acceptable because Maglev picks the same
//! backend for a flow as long as the backend set is the same, and the restarted meshd writes
//! the same backend set it had.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, PinnedLink};

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// The directory the balancer pins in, a bpffs of its own under its state.
pub fn dir(overlay_dir: &Path) -> PathBuf {
    overlay_dir.join("bpf")
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = c_path(path)?;
    // SAFETY: statfs is plain data, for which all zeroes is a valid value.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a NUL-terminated path and stat a valid out buffer.
    if unsafe { libc::statfs(c.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_type as i64 == BPF_FS_MAGIC)
}

/// Creates `dir` and mounts a bpffs on it unless one is there already (a previous run's, whose
/// pins hold the attachments that are still forwarding).
pub fn mount(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    if is_bpffs(dir)? {
        return Ok(());
    }
    let target = c_path(dir)?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call; no data.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Detaches and removes the link pinned at `dir/name`, if any.
pub fn remove(dir: &Path, name: &str) {
    let path = dir.join(name);
    if !path.exists() {
        return;
    }
    match PinnedLink::from_pin(&path) {
        // Dropping the FdLink closes the last reference: the kernel detaches the program.
        Ok(link) => drop(link.unpin()),
        Err(_) => drop(fs::remove_file(&path)),
    }
}

/// The names pinned in `dir` that start with `prefix`.
pub fn names(dir: &Path, prefix: &str) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Detaches everything pinned in `dir` and unmounts it (lazily, so a meshd still using it
/// elsewhere is not disturbed), then removes the directory. Best effort.
pub fn clear(dir: &Path) {
    if !dir.exists() {
        return;
    }
    for name in names(dir, "") {
        remove(dir, &name);
    }
    if is_bpffs(dir).unwrap_or(false) {
        if let Ok(c) = c_path(dir) {
            // SAFETY: c is a NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Pins `link` at `dir/name`, replacing nothing (call [`remove`] first).
pub fn pin(link: FdLink, dir: &Path, name: &str) -> io::Result<PinnedLink> {
    link.pin(dir.join(name)).map_err(io::Error::other)
}

/// The name of a leg's pinned `lb_reply` link.
pub fn reply_name(network: &str) -> String {
    format!("reply-{network}")
}

/// The name of a leg's pinned `lb_peer_pass` link.
pub fn peer_name(network: &str) -> String {
    format!("peer-{network}")
}

/// The pin of the shared `LB_REVNAT` (see the module's documentation). A new name for a new
/// layout: a previous run's map of another layout is then just an unknown pin, and goes.
pub const REVNAT: &str = "revnat-v1";

/// `sizeof(struct lb_revnat_key)` and `sizeof(struct lb_revnat)`, and `LB_MAX_FLOWS`.
const REVNAT_LAYOUT: (u32, u32, u32) = (16, 8, 65536);

/// Where the shared `LB_REVNAT` is pinned, after removing a previous run's map there unless it
/// has the layout this build's program expects.
pub fn shared_revnat(dir: &Path) -> PathBuf {
    let path = dir.join(REVNAT);
    if path.exists() {
        let fits = aya::maps::MapInfo::from_pin(&path).is_ok_and(|info| {
            (info.key_size(), info.value_size(), info.max_entries()) == REVNAT_LAYOUT
        });
        if !fits {
            let _ = fs::remove_file(&path);
        }
    }
    path
}

/// The prefix of the underlay's pinned `lb_ingress` link (then `-<n>`).
pub const INGRESS: &str = "ingress";

/// A name for this run's `lb_ingress` pin that no previous run's pin has, so both can be
/// pinned while one takes over from the other. Not the pid: a meshd restarted as the first
/// process of a PID namespace gets the same one again.
pub fn fresh_ingress_name(dir: &Path) -> String {
    (0u32..)
        .map(|n| format!("{INGRESS}-{n}"))
        .find(|name| !dir.join(name).exists())
        .expect("fewer than 2^32 pins")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_ingress_name_is_one_no_previous_run_has() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(fresh_ingress_name(dir.path()), "ingress-0");
        fs::write(dir.path().join("ingress-0"), "").unwrap();
        assert_eq!(fresh_ingress_name(dir.path()), "ingress-1");
        fs::remove_file(dir.path().join("ingress-0")).unwrap();
        fs::write(dir.path().join("ingress-1"), "").unwrap();
        assert_eq!(fresh_ingress_name(dir.path()), "ingress-0");
    }
}
