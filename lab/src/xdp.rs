//! The XDP pass program a lab in XDP mode puts on every switch-side port.
//!
//! A veth delivers the frames its peer sends with `XDP_TX` or `XDP_REDIRECT` only when it has an
//! XDP program itself; without one they sit in its ring and are dropped. meshd's XDP balancer
//! transmits that way out of a host's `eth0`, so the switch port `p-<host>` at the other end
//! gets a program that passes everything.
//!
//! The program is two instructions (`r0 = XDP_PASS; exit`), loaded with the bpf(2) syscall and
//! attached with rtnetlink (`IFLA_XDP`, driver mode) rather than a BPF link: a netlink attachment
//! belongs to the interface, so it outlives `meshctl lab up` and goes when the port is deleted.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::{LabError, Result};
use crate::sys;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_XDP: u32 = 6;
const XDP_PASS: i32 = 2;
/// `BPF_ALU64 | BPF_MOV | BPF_K`.
const OP_MOV64_IMM: u8 = 0xb7;
/// `BPF_JMP | BPF_EXIT`.
const OP_EXIT: u8 = 0x95;

const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_FLAGS: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// `struct bpf_insn`.
#[repr(C)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// The head of `union bpf_attr` for `BPF_PROG_LOAD`; the kernel zero-fills the rest.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

fn failed(operation: &str, source: io::Error) -> LabError {
    LabError::Command {
        command: operation.to_string(),
        detail: source.to_string(),
    }
}

/// Loads the pass program; the descriptor holds it until attached.
fn load_pass() -> io::Result<OwnedFd> {
    let insns = [
        Insn {
            code: OP_MOV64_IMM,
            regs: 0,
            off: 0,
            imm: XDP_PASS,
        },
        Insn {
            code: OP_EXIT,
            regs: 0,
            off: 0,
            imm: 0,
        },
    ];
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..9].copy_from_slice(b"lab_pass\0");
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        prog_ifindex: 0,
        expected_attach_type: 0,
    };
    // SAFETY: BPF_PROG_LOAD reads `attr` (size given) and the instructions and license it
    // points at, all alive for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            size_of::<ProgLoadAttr>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor the kernel just gave us and nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn push_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// The RTM_SETLINK request putting program `prog_fd` on interface `ifindex` in driver mode.
fn setlink_xdp(ifindex: u32, prog_fd: i32) -> Vec<u8> {
    let mut nested = Vec::new();
    push_attr(&mut nested, IFLA_XDP_FD, &prog_fd.to_ne_bytes());
    push_attr(
        &mut nested,
        IFLA_XDP_FLAGS,
        &XDP_FLAGS_DRV_MODE.to_ne_bytes(),
    );
    let mut body = Vec::new();
    // struct ifinfomsg: family, pad, type, index, flags, change.
    body.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    body.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    body.extend_from_slice(&[0u8; 8]);
    push_attr(&mut body, IFLA_XDP | NLA_F_NESTED, &nested);
    let mut msg = Vec::new();
    let len = 16 + body.len();
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&libc::RTM_SETLINK.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    msg.extend_from_slice(&body);
    msg
}

/// Attaches `prog` to interface `name` in the calling thread's namespace.
fn attach(name: &str, prog: &OwnedFd) -> io::Result<()> {
    let c_name = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: a valid NUL-terminated string that outlives the call.
    let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket takes no pointers.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let msg = setlink_xdp(ifindex, prog.as_raw_fd());
    // SAFETY: the buffer is valid for its length; a NULL address sends to the kernel.
    let sent = unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut reply = [0u8; 512];
    // SAFETY: the buffer is valid for writes of its length.
    let got = unsafe { libc::recv(sock.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    let got = got as usize;
    // nlmsghdr (16 bytes), then for NLMSG_ERROR the errno (0: acknowledged) as a negative int.
    if got < 20 || u16::from_ne_bytes([reply[4], reply[5]]) != libc::NLMSG_ERROR as u16 {
        return Err(io::Error::other(
            "unexpected rtnetlink answer to RTM_SETLINK",
        ));
    }
    let errno = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
    if errno != 0 {
        return Err(io::Error::from_raw_os_error(-errno));
    }
    Ok(())
}

/// Puts the pass program on interface `ifname` of namespace `netns` (driver mode), replacing
/// whatever XDP program it had.
pub fn attach_pass(netns: &str, ifname: &str) -> Result<()> {
    let operation = format!("attaching an XDP pass program to {ifname} in {netns}");
    let prog = load_pass().map_err(|e| failed(&format!("{operation} (loading it)"), e))?;
    let name = ifname.to_string();
    sys::in_netns(netns, move || attach(&name, &prog))?.map_err(|e| failed(&operation, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setlink_request_nests_fd_and_driver_mode() {
        let msg = setlink_xdp(7, 9);
        assert_eq!(msg.len(), 52);
        assert_eq!(u32::from_ne_bytes(msg[0..4].try_into().unwrap()), 52);
        assert_eq!(
            u16::from_ne_bytes(msg[4..6].try_into().unwrap()),
            libc::RTM_SETLINK
        );
        assert_eq!(i32::from_ne_bytes(msg[20..24].try_into().unwrap()), 7);
        // IFLA_XDP, nested, 20 bytes: FD 9, then flags DRV_MODE.
        assert_eq!(u16::from_ne_bytes(msg[32..34].try_into().unwrap()), 20);
        assert_eq!(
            u16::from_ne_bytes(msg[34..36].try_into().unwrap()),
            IFLA_XDP | NLA_F_NESTED
        );
        assert_eq!(
            u16::from_ne_bytes(msg[38..40].try_into().unwrap()),
            IFLA_XDP_FD
        );
        assert_eq!(i32::from_ne_bytes(msg[40..44].try_into().unwrap()), 9);
        assert_eq!(
            u16::from_ne_bytes(msg[46..48].try_into().unwrap()),
            IFLA_XDP_FLAGS
        );
        assert_eq!(u32::from_ne_bytes(msg[48..52].try_into().unwrap()), 4);
    }
}
