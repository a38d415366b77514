//! Compiles every BPF program under `ebpf/` into `$OUT_DIR/<name>.o` with clang, so the
//! objects are embedded in the dataplane crate and always match its source.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let ebpf_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ebpf");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());
    println!("cargo:rerun-if-env-changed=BPF_CLANG");

    let clang = env::var("BPF_CLANG").unwrap_or_else(|_| "clang".to_string());
    // The kernel UAPI headers include <asm/types.h>, which Debian keeps under the multiarch dir.
    let multiarch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "aarch64-linux-gnu",
        _ => "x86_64-linux-gnu",
    };

    let mut sources: Vec<PathBuf> = std::fs::read_dir(&ebpf_dir)
        .expect("read ebpf/")
        .map(|entry| entry.expect("read ebpf/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "c"))
        .collect();
    sources.sort();

    for source in sources {
        let stem = source.file_stem().expect("a .c file has a stem");
        let object = out_dir.join(stem).with_extension("o");
        let status = Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            .arg(format!("-I/usr/include/{multiarch}"))
            .arg(format!("-I{}", ebpf_dir.join("include").display()))
            .arg("-c")
            .arg(&source)
            .arg("-o")
            .arg(&object)
            .status();
        match status {
            Ok(status) if status.success() => {}
            Ok(status) => panic!("clang failed ({status}) compiling {}", source.display()),
            Err(err) => panic!(
                "cannot run `{clang}` to build the BPF programs ({err}): install clang and \
                 libbpf-dev with `bash scripts/setup.sh`, or point BPF_CLANG at a clang binary"
            ),
        }
    }
}
