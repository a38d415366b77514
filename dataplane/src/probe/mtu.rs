//! Path MTU discovery that trusts only answers: a binary search over the IPv4 packet size,
//! each size sent with DF and proven by a reply.
//!
//! A black hole (a link with a smaller MTU that drops without sending ICMP, the usual overlay
//! failure) is silence, so silence counts as "too big". ICMP "fragmentation needed" and local
//! "message too long" errors are used when they come, as hints: the MTU they state is tried
//! next. The search first proves the smallest size (three tries: if it fails, the path is down,
//! which is not an MTU problem), then the largest, then halves the gap.
//!
//! A lost probe makes its size look too big, so on a lossy path the result can be low: run it
//! again if it is surprising.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

use super::error::ProbeError;
use super::errqueue::Finding;
use super::prober::{exchange, ATTEMPTS};
use super::sys;
use super::transport::{EchoTransport, Event, Transport, VxlanTransport};
use super::{PathMtu, ProbeOutcome};

/// The largest IPv4 packet.
const MAX_IP_SIZE: u32 = 65_535;

/// The underlay path MTU from `local` to the responder at `target:port`: the largest IPv4
/// packet in `range` (inclusive) that crosses the path with DF set, each size proven by a
/// VXLAN probe padded to it and answered (with a small reply). Sizes below the probe's own
/// (78 bytes) are refused. With `range` 576..=9000 and 300 ms per probe it takes at most
/// about five seconds, and well under one when the path is clean.
pub fn path_mtu(
    local: Ipv4Addr,
    target: Ipv4Addr,
    port: u16,
    range: (u32, u32),
    per_probe_timeout: Duration,
) -> Result<PathMtu, ProbeError> {
    let mut transport = VxlanTransport::open(local, SocketAddrV4::new(target, port), true)?;
    search(&mut transport, range, per_probe_timeout)
}

/// The overlay path MTU from the task whose namespace is pinned at `netns` (source
/// `local_overlay_ip`) to `target_overlay_ip`: the same search with ICMP echo requests, which
/// the target's kernel answers with replies of the same size, so both directions are tested.
pub fn overlay_path_mtu(
    netns: &Path,
    local_overlay_ip: Ipv4Addr,
    target_overlay_ip: Ipv4Addr,
    range: (u32, u32),
    per_probe_timeout: Duration,
) -> Result<PathMtu, ProbeError> {
    let mut transport =
        EchoTransport::open(Some(netns), Some(local_overlay_ip), target_overlay_ip, true)?;
    search(&mut transport, range, per_probe_timeout)
}

/// What is known during a search: the bounds, and the sizes worth trying first.
#[derive(Debug)]
struct Search {
    /// The largest size answered.
    lo: u32,
    /// The smallest size known to be too big (one past the range when none is).
    hi: u32,
    /// Whether the top of the range was tried.
    tried_top: bool,
    /// MTUs stated by ICMP or local errors, to try next.
    hints: Vec<u32>,
}

impl Search {
    /// A search over `lo+1..=max` once `lo` has been answered.
    fn new(lo: u32, max: u32) -> Search {
        Search {
            lo,
            hi: max + 1,
            tried_top: false,
            hints: Vec::new(),
        }
    }

    /// The next size to try, or None when the answer is `lo`.
    fn next(&mut self) -> Option<u32> {
        if self.hi - self.lo <= 1 {
            return None;
        }
        if !self.tried_top {
            self.tried_top = true;
            return Some(self.hi - 1);
        }
        while let Some(hint) = self.hints.pop() {
            if hint > self.lo && hint < self.hi {
                return Some(hint);
            }
        }
        Some(self.lo + (self.hi - self.lo) / 2)
    }

    /// `size` was answered (maybe late: a reply after its timeout still proves it).
    fn fits(&mut self, size: u32) {
        if size > self.lo && size < self.hi {
            self.lo = size;
        }
    }

    /// `size` was not answered; an error may have said what the MTU is.
    fn too_big(&mut self, size: u32, stated_mtu: Option<u32>) {
        if size > self.lo {
            self.hi = self.hi.min(size);
        }
        if let Some(mtu) = stated_mtu.filter(|&mtu| mtu > self.lo && mtu < self.hi) {
            self.hi = mtu + 1;
            self.hints.push(mtu);
        }
    }
}

/// Checks the range against what the transport can send.
fn check_range(range: (u32, u32), min_size: u32) -> Result<(), ProbeError> {
    let (min, max) = range;
    let detail = if min > max {
        format!("{min} is above {max}")
    } else if min < min_size {
        format!("this probe needs at least {min_size} bytes: start the range there or above")
    } else if max > MAX_IP_SIZE {
        format!("no IPv4 packet is larger than {MAX_IP_SIZE} bytes")
    } else {
        return Ok(());
    };
    Err(ProbeError::InvalidRange { min, max, detail })
}

/// Runs the search over `transport`.
fn search(
    transport: &mut impl Transport,
    range: (u32, u32),
    per_probe_timeout: Duration,
) -> Result<PathMtu, ProbeError> {
    check_range(range, transport.min_size())?;
    let started = Instant::now();
    let (min, max) = range;
    match exchange(transport, min, per_probe_timeout * ATTEMPTS)? {
        ProbeOutcome::Answered { .. } => {}
        outcome => {
            return Err(ProbeError::NoBaseline {
                target: transport.target(),
                size: min,
                outcome,
            })
        }
    }
    let mut search = Search::new(min, max);
    let mut result = PathMtu {
        mtu: min,
        probes: 0,
        frag_needed: None,
        local_mtu: None,
        elapsed: Duration::ZERO,
    };
    // Every probe of the search by nonce, so that late replies still count.
    let mut sizes: HashMap<u64, u32> = HashMap::new();
    while let Some(size) = search.next() {
        let nonce = sys::random_u64();
        sizes.insert(nonce, size);
        let stated = match transport.send(size, nonce) {
            Ok(()) => await_size(
                transport,
                nonce,
                per_probe_timeout,
                &sizes,
                &mut search,
                &mut result,
            )?,
            // Larger than the local link: the error queue says how large it is.
            Err(err) if err.raw_os_error() == Some(libc::EMSGSIZE) => {
                let mut stated = None;
                while let Event::Error(err) = transport
                    .wait(Instant::now())
                    .map_err(|e| ProbeError::io("reading the error queue of a probe socket", e))?
                {
                    if let Finding::LocalTooBig { mtu } = Finding::of(&err) {
                        result.local_mtu = Some(mtu);
                        stated = Some(mtu);
                    }
                }
                Some(stated)
            }
            // Dropped on transmit (veth says so when its peer's MTU is smaller): lost.
            Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => Some(None),
            Err(err) => {
                return Err(ProbeError::io(
                    format!("sending a {size}-byte probe to {}", transport.target()),
                    err,
                ))
            }
        };
        match stated {
            None => search.fits(size),
            Some(mtu) => search.too_big(size, mtu),
        }
    }
    result.mtu = search.lo;
    result.probes = transport.probes_sent();
    result.elapsed = started.elapsed();
    Ok(result)
}

/// Waits for the reply to `nonce` (None: it fits), or for its timeout or an error (Some, with
/// the MTU an error stated, if any).
fn await_size(
    transport: &mut impl Transport,
    nonce: u64,
    timeout: Duration,
    sizes: &HashMap<u64, u32>,
    search: &mut Search,
    result: &mut PathMtu,
) -> Result<Option<Option<u32>>, ProbeError> {
    let deadline = Instant::now() + timeout;
    loop {
        let event = transport.wait(deadline).map_err(|e| {
            ProbeError::io(
                format!("waiting for a reply from {}", transport.target()),
                e,
            )
        })?;
        match event {
            Event::Reply { nonce: got, .. } if got == nonce => return Ok(None),
            Event::Reply { nonce: got, .. } => {
                if let Some(&size) = sizes.get(&got) {
                    search.fits(size);
                }
            }
            Event::Error(err) => match Finding::of(&err) {
                Finding::FragNeeded { mtu, .. } => {
                    result.frag_needed = Some(mtu);
                    return Ok(Some(Some(mtu).filter(|&mtu| mtu > 0)));
                }
                Finding::LocalTooBig { mtu } => {
                    result.local_mtu = Some(mtu);
                    return Ok(Some(Some(mtu)));
                }
                // A port unreachable comes with every probe to a host with no vxlan socket;
                // the reply may still come.
                _ => {}
            },
            Event::Timeout => return Ok(Some(None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search against a path that passes sizes up to `mtu`, with `stated` the MTU an
    /// error reports for larger ones; returns the answer and the sizes tried.
    fn simulate(range: (u32, u32), mtu: u32, stated: Option<u32>) -> (u32, Vec<u32>) {
        let mut search = Search::new(range.0, range.1);
        let mut tried = Vec::new();
        while let Some(size) = search.next() {
            tried.push(size);
            if size <= mtu {
                search.fits(size);
            } else {
                search.too_big(size, stated);
            }
        }
        (search.lo, tried)
    }

    #[test]
    fn a_black_hole_is_found_by_halving() {
        for mtu in [576, 577, 1000, 1400, 1450, 1499, 1500, 8999, 9000] {
            let (found, tried) = simulate((576, 9000), mtu, None);
            assert_eq!(found, mtu);
            assert!(tried.len() <= 15, "{mtu}: {} probes", tried.len());
        }
    }

    #[test]
    fn a_clean_path_takes_one_probe() {
        assert_eq!(simulate((576, 1500), 9000, None), (1500, vec![1500]));
    }

    #[test]
    fn a_stated_mtu_is_tried_next() {
        let (found, tried) = simulate((576, 9000), 1400, Some(1400));
        assert_eq!((found, tried), (1400, vec![9000, 1400]));
    }

    #[test]
    fn a_local_limit_above_a_black_hole_still_searches() {
        // The local link takes 1500, a hop beyond silently drops above 1400.
        let mut search = Search::new(576, 9000);
        let mut tried = Vec::new();
        while let Some(size) = search.next() {
            tried.push(size);
            match size {
                ..=1400 => search.fits(size),
                1401..=1500 => search.too_big(size, None),
                _ => search.too_big(size, Some(1500)),
            }
        }
        assert_eq!(search.lo, 1400);
        assert_eq!(&tried[..2], &[9000, 1500]);
        assert!(tried.len() <= 13);
    }

    #[test]
    fn bogus_stated_mtus_are_ignored() {
        assert_eq!(simulate((576, 1500), 1400, Some(0)).0, 1400);
        assert_eq!(simulate((576, 1500), 1400, Some(100)).0, 1400);
        assert_eq!(simulate((576, 1500), 1400, Some(60_000)).0, 1400);
    }

    #[test]
    fn a_late_reply_raises_the_floor() {
        let mut search = Search::new(576, 1500);
        assert_eq!(search.next(), Some(1500));
        search.too_big(1500, None);
        assert_eq!(search.next(), Some(1038));
        search.too_big(1038, None);
        search.fits(1038); // its reply came after the timeout
        assert_eq!(
            search.lo, 576,
            "a size already judged too big is not revived"
        );
        search.fits(700);
        assert_eq!(search.lo, 700);
    }

    #[test]
    fn ranges_are_checked() {
        assert!(check_range((576, 9000), 78).is_ok());
        assert!(check_range((78, 78), 78).is_ok());
        for bad in [(1500, 576), (50, 1500), (576, 65_536)] {
            let err = check_range(bad, 78).unwrap_err().to_string();
            assert!(err.starts_with("MTU search range"), "{err}");
        }
    }
}
