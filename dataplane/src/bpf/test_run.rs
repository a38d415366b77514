//! `BPF_PROG_TEST_RUN`: runs a loaded XDP or TC program once on a packet built in memory and
//! returns its verdict and the packet as the program left it. Nothing is attached and nothing
//! is sent: redirects and transmits are only verdicts here. aya 0.14 has no wrapper for it.
//!
//! The kernel refuses test packets shorter than an Ethernet header, and at TC IPv4 packets
//! shorter than their IPv4 header, with `EINVAL` (`io::ErrorKind::InvalidInput`); on this
//! kernel (6.18) XDP metadata in front does not get a shorter frame past that check either.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `BPF_PROG_TEST_RUN` of `enum bpf_cmd` (`linux/bpf.h`).
const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// Room for what a program may add in front (`bpf_xdp_adjust_head`, `bpf_skb_adjust_room`).
const OUT_SLACK: usize = 512;

/// The `test` member of `union bpf_attr` (`linux/bpf.h`), zero-padded to its full size: the
/// kernel rejects attributes with non-zero bytes past the ones it knows.
#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    pad: u32,
}

/// `struct xdp_md`: the XDP context a test run may take and give back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// One run's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRun {
    /// The program's return value: an `XDP_*` or `TC_ACT_*` verdict.
    pub verdict: u32,
    /// The packet after the program ran (rewrites and encapsulation included).
    pub packet: Vec<u8>,
}

/// Runs `prog` once on `frame`, with `ctx` (input, output) when the program type takes one.
fn run(
    prog: BorrowedFd<'_>,
    frame: &[u8],
    ctx: Option<(&XdpMd, &mut XdpMd)>,
) -> io::Result<TestRun> {
    let mut output = vec![0u8; frame.len() + OUT_SLACK];
    let mut attr = TestAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: output.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: output.as_mut_ptr() as u64,
        repeat: 1,
        ..TestAttr::default()
    };
    if let Some((ctx_in, ctx_out)) = ctx {
        attr.ctx_size_in = size_of::<XdpMd>() as u32;
        attr.ctx_size_out = size_of::<XdpMd>() as u32;
        attr.ctx_in = ctx_in as *const XdpMd as u64;
        attr.ctx_out = ctx_out as *mut XdpMd as u64;
    }
    // SAFETY: BPF_PROG_TEST_RUN reads `attr` (a valid, fully initialized TestAttr of the size
    // passed) and the buffers it points at, and writes `retval`, the sizes, the output buffers
    // (at most their stated sizes) and `duration`. Every pointer in it comes from a live
    // buffer of the caller that outlives this call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestAttr,
            size_of::<TestAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = (attr.data_size_out as usize).min(output.len());
    Ok(TestRun {
        verdict: attr.retval,
        packet: output[..len].to_vec(),
    })
}

/// Runs the XDP program `prog` on `frame` as if it arrived on interface `ingress_ifindex` of
/// the calling thread's network namespace (0: loopback).
pub fn run_xdp(prog: BorrowedFd<'_>, frame: &[u8], ingress_ifindex: u32) -> io::Result<TestRun> {
    let ctx_in = XdpMd {
        data_end: frame.len() as u32,
        ingress_ifindex,
        ..XdpMd::default()
    };
    let mut ctx_out = XdpMd::default();
    run(prog, frame, Some((&ctx_in, &mut ctx_out)))
}

/// Runs the TC (`sched_cls`) program `prog` on `frame`. The skb arrives on the calling
/// thread's namespace's loopback.
pub fn run_tc(prog: BorrowedFd<'_>, frame: &[u8]) -> io::Result<TestRun> {
    run(prog, frame, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attribute_has_the_kernels_layout() {
        // union bpf_attr's `test` member: 76 bytes of fields, 8-byte aligned.
        assert_eq!(size_of::<TestAttr>(), 80);
        assert_eq!(std::mem::offset_of!(TestAttr, ctx_in), 48);
        assert_eq!(std::mem::offset_of!(TestAttr, batch_size), 72);
        assert_eq!(size_of::<XdpMd>(), 24);
    }
}
