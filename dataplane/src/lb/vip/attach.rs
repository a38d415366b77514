//! The namespace side of the VIP balancer: a network namespace's marker socket (how the program
//! tells networks apart) and the tcx links of the two programs on a task's veth. Everything here runs
//! on a scratch thread that entered the network's namespace (see `overlay::netns::Netns::run`):
//! interface names and indexes, and tcx attachment, are resolved in the caller's namespace.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use aya::programs::tc::SchedClassifierLink;
use aya::programs::{ProgramError, SchedClassifier, TcAttachType};
use aya::Ebpf;

use super::maps::MARKER_PORT;
use crate::bpf::BpfError;

/// The object's file name, for messages.
pub(super) const OBJECT: &str = "vip.o";
/// The program on frames from the task.
pub(super) const INGRESS: &str = "vip_ingress";
/// The program on frames to the task.
pub(super) const EGRESS: &str = "vip_egress";

/// `SO_NETNS_COOKIE` (Linux 5.14): the same number on every architecture Mesh builds for.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Both programs attached to one veth; dropping it detaches them (tcx links are owned by
/// their descriptors).
pub(super) struct Attachment {
    _ingress: SchedClassifierLink,
    _egress: SchedClassifierLink,
}

/// The programs' kernel IDs, to recognise them among a device's tcx programs.
#[derive(Clone, Copy, Debug)]
pub(super) struct ProgramIds {
    pub ingress: u32,
    pub egress: u32,
}

/// A network namespace's marker socket: UDP, bound to 127.0.0.1:`MARKER_PORT` there, marked
/// with the network's ID. The program finds it with a socket lookup, which resolves in the
/// namespace of the packet's device, and reads the mark. Closing it unmarks the namespace.
pub(super) struct Marker {
    _socket: OwnedFd,
    /// The cookie of the namespace it was made in.
    pub cookie: u64,
    /// The mark it carries.
    pub net: u32,
}

/// The cookie of the calling thread's network namespace.
pub(super) fn netns_cookie() -> io::Result<u64> {
    cookie_of(&udp_socket()?)
}

/// A marker for network `net` in the calling thread's network namespace.
pub(super) fn marker(net: u32) -> io::Result<Marker> {
    let socket = udp_socket()?;
    let one: libc::c_int = 1;
    setsockopt(&socket, libc::SOL_IP, libc::IP_FREEBIND, &one)?;
    setsockopt(&socket, libc::SOL_SOCKET, libc::SO_MARK, &net)?;
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: MARKER_PORT.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(Ipv4Addr::LOCALHOST.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: addr is a valid sockaddr_in of the length given; the descriptor is open.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Marker {
        cookie: cookie_of(&socket)?,
        _socket: socket,
        net,
    })
}

fn udp_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket takes no pointers; the descriptor is checked at once and owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setsockopt<T>(
    socket: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: value points to a live T of the size given; the descriptor is open.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The cookie of the network namespace `socket` lives in (`SO_NETNS_COOKIE`).
fn cookie_of(socket: &OwnedFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie and len are valid out pointers of the sizes the call is told.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Whether both programs are attached to `veth` now (false when the device is gone or was
/// recreated since).
pub(super) fn is_attached(veth: &str, ids: ProgramIds) -> bool {
    let has = |attach_type, id: u32| {
        SchedClassifier::query_tcx(veth, attach_type)
            .map(|(_, programs)| programs.iter().any(|p| p.id() == id))
            .unwrap_or(false)
    };
    has(TcAttachType::Ingress, ids.ingress) && has(TcAttachType::Egress, ids.egress)
}

/// Attaches both programs to `veth` (tcx, after any others there).
pub(super) fn attach(ebpf: &mut Ebpf, veth: &str) -> Result<Attachment, BpfError> {
    let ingress = attach_one(ebpf, INGRESS, veth, TcAttachType::Ingress)?;
    let egress = attach_one(ebpf, EGRESS, veth, TcAttachType::Egress)?;
    Ok(Attachment {
        _ingress: ingress,
        _egress: egress,
    })
}

fn attach_one(
    ebpf: &mut Ebpf,
    name: &'static str,
    veth: &str,
    attach_type: TcAttachType,
) -> Result<SchedClassifierLink, BpfError> {
    let failed = |operation, source| BpfError::Program {
        operation,
        program: name,
        interface: veth.to_string(),
        source: Box::new(source),
    };
    let program = classifier(ebpf, name)?;
    let link = program
        .attach(veth, attach_type)
        .map_err(|source| failed("attaching", source))?;
    program
        .take_link(link)
        .map_err(|source| failed("taking the link of", source))
}

/// The program `name` of the object, typed.
pub(super) fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, BpfError> {
    ebpf.program_mut(name)
        .ok_or(BpfError::Missing {
            object: OBJECT,
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(|source: ProgramError| BpfError::Program {
            operation: "typing",
            program: name,
            interface: String::new(),
            source: Box::new(source),
        })
}
