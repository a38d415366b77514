//! The legs: `lb_reply` on every network's `mg-<id>` and, at XDP, `lb_peer_pass` on its `gw0`,
//! attached as networks come and re-attached when a leg is recreated.

use std::collections::BTreeMap;
use std::io;

use aya::programs::links::PinnedLink;
use aya::programs::TcAttachType;

use super::attach::{attach_xdp, detach_pinned, pin_link, take_over_xdp, tc_program, xdp_program};
use super::maps::LegValue;
use super::{io_error, map_error, pins, program_error, BpfBalancer, BpfHook, PEER_PASS, REPLY};
use crate::lb::LbError;
use crate::overlay::names;
use crate::overlay::netns::Netns;

/// What is attached for one network's leg.
pub(super) struct LegLinks {
    /// mg-<id>'s index when attached (a recreated leg gets a new one).
    pub(super) ifindex: u32,
    /// The network's ID, which names its pins.
    network: String,
    /// `lb_reply` on mg-<id>.
    reply: Option<PinnedLink>,
    /// `lb_peer_pass` on gw0 (XDP hook only).
    peer: Option<PinnedLink>,
}

impl BpfBalancer {
    /// Attaches `lb_reply` to every wanted network's leg (and, at XDP, `lb_peer_pass` to its
    /// gw0), re-attaching a recreated leg, and detaches from legs no longer wanted.
    pub(super) fn sync_legs(&mut self, leg_indexes: &BTreeMap<String, u32>) -> Result<(), LbError> {
        let gone: Vec<String> = self
            .legs
            .iter()
            .filter(|(id, links)| leg_indexes.get(*id) != Some(&links.ifindex))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            if let Some(links) = self.legs.remove(&id) {
                self.detach_leg(links);
            }
        }
        let mut first_error = None;
        let wanted = self.written.networks.clone();
        for network in &wanted {
            if self.legs.contains_key(network) {
                continue;
            }
            let Some(&ifindex) = leg_indexes.get(network) else {
                first_error.get_or_insert(LbError::InvalidState(format!(
                    "network {network}'s leg {} is missing: apply the overlay first",
                    names::leg_host(network)
                )));
                continue;
            };
            match self.attach_leg(network, ifindex) {
                Ok(links) => {
                    self.legs.insert(network.clone(), links);
                }
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        // A previous run's legs that no wanted network replaced: their networks are gone.
        // Those of wanted networks whose attach failed stay until the retry replaces them.
        let unwanted: Vec<String> = self
            .stale_pins
            .iter()
            .filter(|name| {
                !wanted
                    .iter()
                    .any(|n| **name == pins::reply_name(n) || **name == pins::peer_name(n))
            })
            .cloned()
            .collect();
        for name in unwanted {
            self.stale_pins.remove(&name);
            pins::remove(&self.pin_dir, &name);
        }
        first_error.map_or(Ok(()), Err)
    }

    fn attach_leg(&mut self, network: &str, ifindex: u32) -> Result<LegLinks, LbError> {
        let leg = names::leg(network);
        let value = LegValue {
            host_mac: leg.host_mac,
            ns_mac: leg.ns_mac,
            flags: 0,
        };
        self.leg_map
            .insert(ifindex, value, 0)
            .map_err(map_error("writing", "LB_LEGS"))?;
        let mut links = LegLinks {
            ifindex,
            network: network.to_string(),
            reply: None,
            peer: None,
        };
        // A previous run's `lb_reply` goes right after this run's comes (tcx, where the new one
        // queues behind the old); its `lb_peer_pass` is taken over (XDP, one per device).
        let (reply_pin, peer_pin) = (pins::reply_name(network), pins::peer_name(network));
        if self.hook == BpfHook::Xdp {
            let pass = xdp_program(&mut self.ebpf, PEER_PASS)?;
            let taken = if self.stale_pins.remove(&peer_pin) {
                let taken = take_over_xdp(pass, &self.pin_dir, &peer_pin, &peer_pin).ok();
                if taken.is_none() {
                    pins::remove(&self.pin_dir, &peer_pin);
                }
                taken
            } else {
                None
            };
            links.peer = match taken {
                Some(link) => Some(link),
                None => {
                    let path = self.overlay_dir.join(names::netns_file(network));
                    let ns = Netns::open_pinned(&path)
                        .map_err(|e| {
                            io_error(format!("opening {}", path.display()), io::Error::other(e))
                        })?
                        .ok_or_else(|| {
                            LbError::InvalidState(format!(
                                "network {network} has no namespace at {}: apply the overlay \
                                 first",
                                path.display()
                            ))
                        })?;
                    let pin_dir = &self.pin_dir;
                    Some(
                        ns.run(|| {
                            Ok(attach_xdp(
                                pass,
                                PEER_PASS,
                                names::LEG_NS_IF,
                                pin_dir,
                                &peer_pin,
                            ))
                        })
                        .map_err(|e| io_error(format!("entering {}", path.display()), e))??,
                    )
                }
            };
        } else if self.stale_pins.remove(&peer_pin) {
            pins::remove(&self.pin_dir, &peer_pin);
        }
        let reply = tc_program(&mut self.ebpf, REPLY)?;
        let attached = self
            .host_ns
            .run(|| Ok(reply.attach(&leg.host_if, TcAttachType::Ingress)))
            .map_err(|e| io_error("entering the host namespace", e))?;
        let pinned = attached
            .map_err(program_error("attaching", REPLY, &leg.host_if))
            .and_then(|id| {
                reply.take_link(id).map_err(program_error(
                    "taking the link of",
                    REPLY,
                    &leg.host_if,
                ))
            })
            .and_then(|link| {
                self.stale_pins.remove(&reply_pin);
                pins::remove(&self.pin_dir, &reply_pin);
                pin_link(link, &self.pin_dir, &reply_pin, REPLY, &leg.host_if)
            });
        match pinned {
            Ok(link) => links.reply = Some(link),
            Err(err) => {
                self.detach_leg(links);
                return Err(err);
            }
        }
        Ok(links)
    }

    /// Detaches a leg's programs; a leg already gone took its attachments along.
    pub(super) fn detach_leg(&mut self, links: LegLinks) {
        for link in [links.reply, links.peer].into_iter().flatten() {
            detach_pinned(link);
        }
        // A pin whose link could not be read back (taken above) is removed by name.
        pins::remove(&self.pin_dir, &pins::reply_name(&links.network));
        pins::remove(&self.pin_dir, &pins::peer_name(&links.network));
        let _ = self.leg_map.remove(&links.ifindex);
    }
}
