//! BPF programs and their typed userspace handles.
//!
//! The objects are compiled from `ebpf/*.c` by the build script and embedded, so a running
//! binary always carries the programs it was built with. Each program gets a module that loads
//! it once, turns its maps into typed handles and exposes what userspace reads or writes.

pub mod test_run;
pub mod traffic_stats;

use thiserror::Error;

/// Errors from loading, attaching or reading a BPF program.
#[derive(Debug, Error)]
pub enum BpfError {
    /// The object was rejected while loading (verifier, BTF or map creation).
    #[error("loading BPF object {object}: {source}")]
    Load {
        object: &'static str,
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// A program or map the object must contain is missing: the build is out of step.
    #[error("BPF object {object} has no {kind} named {name}; rebuild the dataplane crate")]
    Missing {
        object: &'static str,
        kind: &'static str,
        name: &'static str,
    },
    /// The program could not be loaded into the kernel or attached.
    #[error("{operation} {program} on {interface}: {source}; check the interface exists in this network namespace and that no other XDP program owns it")]
    Program {
        operation: &'static str,
        program: &'static str,
        interface: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// A map operation failed.
    #[error("{operation} map {map}: {source}")]
    Map {
        operation: &'static str,
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
}
