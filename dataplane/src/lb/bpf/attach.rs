//! Attaching the balancer's programs and pinning their links, and the XDP takeover: how a
//! restarted meshd puts its program into the link a previous run left on a device without the
//! device ever going without one.

use std::fs;
use std::io;
use std::path::Path;

use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::xdp::XdpLink;
use aya::programs::{SchedClassifier, Xdp, XdpMode};
use aya::Ebpf;

use super::{io_error, missing, pins, program_error, BpfBalancer, INGRESS_XDP};
use crate::lb::LbError;

pub(super) fn tc_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, LbError> {
    ebpf.program_mut(name)
        .ok_or_else(|| missing("program", name))?
        .try_into()
        .map_err(program_error("typing", name, "-"))
}

pub(super) fn xdp_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut Xdp, LbError> {
    ebpf.program_mut(name)
        .ok_or_else(|| missing("program", name))?
        .try_into()
        .map_err(program_error("typing", name, "-"))
}

/// Pins the link of an attachment at `pin_dir/name`: the kernel keeps it attached until the
/// pin is removed, whatever happens to this process.
pub(super) fn pin_link<L>(
    link: L,
    pin_dir: &Path,
    name: &str,
    program: &'static str,
    interface: &str,
) -> Result<PinnedLink, LbError>
where
    FdLink: TryFrom<L, Error = LinkError>,
{
    let link = FdLink::try_from(link).map_err(|e| {
        io_error(
            format!("taking the bpf_link of {program} on {interface} (the kernel needs bpf_link support: Linux 6.6 or later, or use --lb-mode nftables)"),
            io::Error::other(e),
        )
    })?;
    pins::pin(link, pin_dir, name).map_err(|e| {
        io_error(
            format!(
                "pinning {program} on {interface} at {}",
                pin_dir.join(name).display()
            ),
            e,
        )
    })
}

/// Detaches a pinned link now: unpinning leaves this descriptor as the last reference.
pub(super) fn detach_pinned(link: PinnedLink) {
    drop(link.unpin());
}

/// Attaches the loaded XDP `program` (`name`) to `interface` in the calling thread's namespace,
/// in driver mode, and pins its link at `pin_dir/pin`.
pub(super) fn attach_xdp(
    program: &mut Xdp,
    name: &'static str,
    interface: &str,
    pin_dir: &Path,
    pin: &str,
) -> Result<PinnedLink, LbError> {
    let id = program
        .attach(interface, XdpMode::Driver)
        .map_err(program_error("attaching", name, interface))?;
    let link =
        program
            .take_link(id)
            .map_err(program_error("taking the link of", name, interface))?;
    pin_link(link, pin_dir, pin, name, interface)
}

/// Puts the loaded XDP `program` into the link pinned at `pin_dir/old`, atomically
/// (`bpf_link_update`), and moves the pin to `pin_dir/new` (which may be `old`).
///
/// A device takes one XDP link, so a previous run's link cannot stay beside this run's while
/// this run's tables fill, as it does at tcx: taking that link over instead of replacing it
/// keeps the device balancing throughout. On any error the pin at `old` still holds the link,
/// which runs the previous program or already this one; nothing is detached.
pub(super) fn take_over_xdp(
    program: &mut Xdp,
    pin_dir: &Path,
    old: &str,
    new: &str,
) -> Result<PinnedLink, TakeoverError> {
    let old_path = pin_dir.join(old);
    // Keeps the pin: this descriptor is one more reference to the link, not the only one.
    let held = FdLink::from(PinnedLink::from_pin(&old_path).map_err(TakeoverError::Link)?);
    let link = XdpLink::try_from(held).map_err(TakeoverError::Link)?;
    let id = program
        .attach_to_link(link)
        .map_err(|e| TakeoverError::Update(Box::new(e)))?;
    // The program's own copy of the descriptor goes; the pin keeps the link.
    drop(
        program
            .take_link(id)
            .map_err(|e| TakeoverError::Update(Box::new(e)))?,
    );
    if old != new {
        fs::rename(&old_path, pin_dir.join(new)).map_err(TakeoverError::Rename)?;
    }
    PinnedLink::from_pin(pin_dir.join(new)).map_err(TakeoverError::Link)
}

impl BpfBalancer {
    /// Puts this run's `lb_ingress` into the XDP link a previous run pinned; when that link
    /// cannot be taken over (a previous run at tcx, or an unreadable pin), replaces it, which
    /// leaves the device without a balancer for the moment between the two.
    pub(super) fn take_over_ingress(&mut self) -> Result<(), LbError> {
        let previous = self.stale_ingress_pins();
        let program = xdp_program(&mut self.ebpf, INGRESS_XDP)?;
        let taken = previous.iter().find_map(|old| {
            take_over_xdp(program, &self.pin_dir, old, &self.ingress_pin)
                .ok()
                .map(|link| (old.clone(), link))
        });
        let link = match taken {
            Some((old, link)) => {
                self.stale_pins.remove(&old);
                link
            }
            None => {
                for name in previous {
                    self.stale_pins.remove(&name);
                    pins::remove(&self.pin_dir, &name);
                }
                let (underlay_if, pin_dir) = (&self.underlay_if, &self.pin_dir);
                self.host_ns
                    .run(|| {
                        Ok(attach_xdp(
                            program,
                            INGRESS_XDP,
                            underlay_if,
                            pin_dir,
                            &self.ingress_pin,
                        ))
                    })
                    .map_err(|e| io_error("entering the host namespace", e))??
            }
        };
        self.ingress = Some(link);
        Ok(())
    }
}

/// Why a previous run's XDP link could not be taken over; the caller replaces it instead.
#[derive(Debug, thiserror::Error)]
pub(super) enum TakeoverError {
    /// Not an XDP bpf_link (a previous run at tcx pinned it), or unreadable.
    #[error("the pinned link is not a usable XDP link: {0}")]
    Link(LinkError),
    #[error("bpf_link_update failed: {0}")]
    Update(Box<aya::programs::ProgramError>),
    #[error("renaming the pin failed: {0}")]
    Rename(io::Error),
}
