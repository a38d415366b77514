//! Asking whether a port or a host answers: VXLAN probes to a responder, TCP connects, and
//! pings from a task's namespace. Each function blocks until it has a verdict (at most its
//! timeout): call it from `tokio::task::spawn_blocking` in async code.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::error::ProbeError;
use super::errqueue::Finding;
use super::sys;
use super::transport::{EchoTransport, Event, Transport, VxlanTransport};
use super::ProbeOutcome;

/// Tries per probe: one lost packet should not read as a blocked path.
pub const ATTEMPTS: u32 = 3;
/// How long to wait for a reply after an ICMP error arrived: a responder that sees the probe
/// answers within milliseconds, and the target's kernel may have sent the error first.
const GRACE: Duration = Duration::from_millis(100);
/// The IPv4 size of `ping_in`'s echo requests (the classic 56 bytes of data).
const PING_SIZE: u32 = 84;

/// Sends a VXLAN probe from an ephemeral UDP port of `local` to a `ProbeResponder` at
/// `target:port` and waits for its reply, trying `ATTEMPTS` times within `timeout`.
///
/// The request names the socket's bound port, where the responder (which sees it decapsulated,
/// without its UDP header) sends the reply. `Answered` means the request crossed the path and
/// the target's firewall and the reply came back through them; `Refused`, that `target` is up
/// but nothing there takes the port (no vxlan socket, or a firewall `reject` with its default
/// port-unreachable); `Unreachable`, an ICMP error or a local routing or firewall error (in
/// `detail`); `NoAnswer`, silence: a firewall drops the packets, the host is down, or it runs
/// no probe tap and responder (its vxlan socket drops the unknown VNI).
pub fn vxlan_probe(
    local: Ipv4Addr,
    target: Ipv4Addr,
    port: u16,
    timeout: Duration,
) -> Result<ProbeOutcome, ProbeError> {
    let mut transport = VxlanTransport::open(local, SocketAddrV4::new(target, port), false)?;
    let size = transport.min_size();
    exchange(&mut transport, size, timeout)
}

/// Pings `target` from inside the network namespace pinned at `netns` (a task's), trying
/// `ATTEMPTS` times within `timeout`.
pub fn ping_in(
    netns: &Path,
    target: Ipv4Addr,
    timeout: Duration,
) -> Result<ProbeOutcome, ProbeError> {
    let mut transport = EchoTransport::open(Some(netns), None, target, false)?;
    exchange(&mut transport, PING_SIZE, timeout)
}

/// Opens a TCP connection from `local` to `target` (then closes it): `Answered` with the
/// handshake time, `Refused` on a reset, `Unreachable` on an ICMP error, `NoAnswer` when
/// nothing came back within `timeout`.
pub fn tcp_probe(
    local: Ipv4Addr,
    target: SocketAddr,
    timeout: Duration,
) -> Result<ProbeOutcome, ProbeError> {
    if target.is_ipv6() {
        return Err(ProbeError::Ipv6(target));
    }
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| ProbeError::io("opening a TCP socket", e))?;
    // Without it a host unreachable is a soft error and connect would wait for its timeout.
    sys::enable_recverr(socket.as_fd())
        .map_err(|e| ProbeError::io("enabling IP_RECVERR on a TCP socket", e))?;
    socket
        .bind(&SockAddr::from(SocketAddrV4::new(local, 0)))
        .map_err(|e| ProbeError::io(format!("binding a TCP socket to {local}"), e))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| ProbeError::io("making a TCP socket non-blocking", e))?;
    let start = Instant::now();
    let deadline = start + timeout;
    match socket.connect(&SockAddr::from(target)) {
        Ok(()) => {
            return Ok(ProbeOutcome::Answered {
                rtt: start.elapsed(),
            })
        }
        Err(err) if err.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(err) => return outcome_of_io(err),
    }
    loop {
        let ready = sys::poll(&[socket.as_fd()], libc::POLLOUT, Some(deadline))
            .map_err(|e| ProbeError::io("polling a TCP socket", e))?;
        if ready[0].ready || ready[0].error {
            break;
        }
        if Instant::now() >= deadline {
            return Ok(ProbeOutcome::NoAnswer);
        }
    }
    let rtt = start.elapsed();
    match socket.take_error() {
        Ok(None) => Ok(ProbeOutcome::Answered { rtt }),
        Ok(Some(err)) | Err(err) => outcome_of_io(err),
    }
}

fn outcome_of_io(err: io::Error) -> Result<ProbeOutcome, ProbeError> {
    match err.raw_os_error() {
        Some(libc::ETIMEDOUT) => Ok(ProbeOutcome::NoAnswer),
        Some(errno) => Ok(outcome_of(&Finding::of_errno(errno))),
        None => Err(ProbeError::io("probing", err)),
    }
}

/// The outcome an error alone gives.
pub(crate) fn outcome_of(finding: &Finding) -> ProbeOutcome {
    match finding {
        Finding::PortUnreachable { .. } => ProbeOutcome::Refused,
        Finding::FragNeeded { mtu, from } => ProbeOutcome::Unreachable {
            detail: match from {
                Some(from) => {
                    format!("fragmentation needed: {from} reports a next-hop MTU of {mtu}")
                }
                None => format!("fragmentation needed (next-hop MTU {mtu})"),
            },
        },
        Finding::LocalTooBig { mtu } => ProbeOutcome::Unreachable {
            detail: format!("the probe is larger than the local link's MTU ({mtu})"),
        },
        Finding::Unreachable { detail, .. } => ProbeOutcome::Unreachable {
            detail: detail.clone(),
        },
    }
}

/// Probes with `ATTEMPTS` tries spread over `timeout`, and gives the verdict.
pub(crate) fn exchange(
    transport: &mut impl Transport,
    size: u32,
    timeout: Duration,
) -> Result<ProbeOutcome, ProbeError> {
    let target = transport.target();
    let wait_err = |e| ProbeError::io(format!("waiting for a reply from {target}"), e);
    let start = Instant::now();
    let mut sent: Vec<(u64, Instant)> = Vec::new();
    let mut findings: Vec<Finding> = Vec::new();
    let mut first_finding_at: Option<Instant> = None;
    for attempt in 1..=ATTEMPTS {
        let attempt_end = start + timeout * attempt / ATTEMPTS;
        let nonce = sys::random_u64();
        // Timed from before the send: over veth the whole round trip can complete inside it.
        let sending = Instant::now();
        match transport.send(size, nonce) {
            Ok(()) => sent.push((nonce, sending)),
            // Dropped on transmit (a full queue, or a veth peer with a smaller MTU): as if
            // lost on the way, which the next attempt may survive.
            Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => {}
            Err(err) => return outcome_of_io(err),
        }
        loop {
            let deadline = match first_finding_at {
                Some(at) => attempt_end.min(at + GRACE),
                None => attempt_end,
            };
            match transport.wait(deadline).map_err(wait_err)? {
                // The responder sees a request only once the target's firewall let it in, so a
                // reply proves the path whatever errors came with earlier attempts.
                Event::Reply { nonce } => {
                    if let Some(&(_, sent_at)) = sent.iter().find(|(n, _)| *n == nonce) {
                        return Ok(ProbeOutcome::Answered {
                            rtt: sent_at.elapsed(),
                        });
                    }
                }
                Event::Error(err) => {
                    findings.push(Finding::of(&err));
                    first_finding_at.get_or_insert_with(Instant::now);
                }
                Event::Timeout => {
                    if let Some(finding) = findings.first() {
                        return Ok(outcome_of(finding));
                    }
                    break;
                }
            }
        }
    }
    Ok(ProbeOutcome::NoAnswer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_alone() {
        assert_eq!(
            outcome_of(&Finding::PortUnreachable { from: None }),
            ProbeOutcome::Refused
        );
        assert_eq!(
            outcome_of_io(io::Error::from_raw_os_error(libc::ETIMEDOUT)).unwrap(),
            ProbeOutcome::NoAnswer
        );
        assert_eq!(
            outcome_of_io(io::Error::from_raw_os_error(libc::ECONNREFUSED)).unwrap(),
            ProbeOutcome::Refused
        );
    }
}
