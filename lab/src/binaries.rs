//! Finding the binaries a lab starts (meshd, mesh-linkshim): an environment override, then next
//! to the running executable (cargo puts tests in target/*/deps, binaries one level up), then PATH.

use std::path::{Path, PathBuf};

use crate::error::{LabError, Result};

/// A binary the lab starts.
#[derive(Clone, Copy, Debug)]
pub struct Binary {
    /// File name.
    pub name: &'static str,
    /// Environment variable that overrides the search.
    pub env: &'static str,
}

/// The node daemon.
pub const MESHD: Binary = Binary {
    name: "meshd",
    env: "MESH_MESHD_BIN",
};

/// The CLI (tests run it inside lab hosts).
pub const MESHCTL: Binary = Binary {
    name: "meshctl",
    env: "MESH_MESHCTL_BIN",
};

/// The userspace link emulator for delayed links.
pub const LINKSHIM: Binary = Binary {
    name: "mesh-linkshim",
    env: "MESH_LINKSHIM_BIN",
};

/// Locates `binary`, as an absolute path.
pub fn find(binary: Binary) -> Result<PathBuf> {
    let mut looked = Vec::new();
    if let Some(path) = std::env::var_os(binary.env) {
        let path = PathBuf::from(path);
        if is_executable(&path) {
            return Ok(path);
        }
        looked.push(format!("{}={}", binary.env, path.display()));
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join(binary.name);
            if is_executable(&candidate) {
                return Ok(candidate);
            }
            looked.push(dir.display().to_string());
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(binary.name);
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
        looked.push("$PATH".into());
    }
    Err(LabError::MissingBinary {
        name: binary.name,
        env: binary.env,
        looked: looked.join(", "),
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
