//! What the kernel tells a probe socket about its packets (`IP_RECVERR`): ICMP errors sent back
//! by a host or router on the path, and local errors (a packet too big for the local link).
//! Parsing `struct sock_extended_err` and saying what each error means for a probe.

use std::fmt;
use std::net::Ipv4Addr;

/// `SO_EE_ORIGIN_LOCAL`: the error arose on this host.
const ORIGIN_LOCAL: u8 = 1;
/// `SO_EE_ORIGIN_ICMP`: an ICMP error came back.
const ORIGIN_ICMP: u8 = 2;
/// ICMP "destination unreachable" and "time exceeded".
const DEST_UNREACH: u8 = 3;
const TIME_EXCEEDED: u8 = 11;
// Codes of "destination unreachable" (RFC 792, RFC 1812).
const NET_UNREACH: u8 = 0;
const HOST_UNREACH: u8 = 1;
const PROTO_UNREACH: u8 = 2;
const PORT_UNREACH: u8 = 3;
const FRAG_NEEDED: u8 = 4;
const NET_PROHIBITED: u8 = 9;
const HOST_PROHIBITED: u8 = 10;
const ADMIN_PROHIBITED: u8 = 13;

/// One error-queue entry (`struct sock_extended_err` and the offender's address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockErr {
    /// The errno the kernel maps it to.
    pub errno: i32,
    /// Who raised it: `ORIGIN_LOCAL` or `ORIGIN_ICMP` (0 when it came as a bare errno).
    pub origin: u8,
    /// ICMP type (ICMP origin).
    pub icmp_type: u8,
    /// ICMP code (ICMP origin).
    pub icmp_code: u8,
    /// The MTU, for "fragmentation needed" and local "message too long".
    pub info: u32,
    /// The host that sent the ICMP error, or the local address.
    pub offender: Option<Ipv4Addr>,
}

impl SockErr {
    /// An error known only by its errno (a pending socket error without a queue entry).
    pub fn bare(errno: i32) -> SockErr {
        SockErr {
            errno,
            origin: 0,
            icmp_type: 0,
            icmp_code: 0,
            info: 0,
            offender: None,
        }
    }
}

/// Parses the data of an `IP_RECVERR` control message.
pub fn parse_extended_err(bytes: &[u8]) -> Option<SockErr> {
    // struct sock_extended_err: u32 errno, u8 origin, type, code, pad, u32 info, u32 data;
    // then, as SO_EE_OFFENDER, a sockaddr_in (family u16, port u16, address 4 bytes).
    let header = bytes.get(..16)?;
    let offender = bytes.get(16..24).and_then(|sin| {
        let family = u16::from_ne_bytes([sin[0], sin[1]]);
        (i32::from(family) == libc::AF_INET).then(|| Ipv4Addr::new(sin[4], sin[5], sin[6], sin[7]))
    });
    Some(SockErr {
        errno: i32::from_ne_bytes([header[0], header[1], header[2], header[3]]),
        origin: header[4],
        icmp_type: header[5],
        icmp_code: header[6],
        info: u32::from_ne_bytes([header[8], header[9], header[10], header[11]]),
        offender,
    })
}

/// What an error means for a probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// ICMP port unreachable: the host is up, nothing takes the port (or a firewall rejects
    /// with this code, as `reject` does by default).
    PortUnreachable {
        /// Who said so.
        from: Option<Ipv4Addr>,
    },
    /// ICMP fragmentation needed: a router on the path has a smaller MTU and says so.
    FragNeeded {
        /// The next-hop MTU it reported (0 when it did not).
        mtu: u32,
        /// The router.
        from: Option<Ipv4Addr>,
    },
    /// The packet is larger than the local link's MTU.
    LocalTooBig {
        /// The local MTU.
        mtu: u32,
    },
    /// Unreachable for another reason, in words.
    Unreachable {
        /// What happened and who said so.
        detail: String,
        /// An "administratively prohibited": a firewall rejected the packet.
        firewall: bool,
    },
}

struct ReportedBy(Option<Ipv4Addr>);

impl fmt::Display for ReportedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(ip) => write!(f, " (reported by {ip})"),
            None => Ok(()),
        }
    }
}

impl Finding {
    /// What the error `err` means.
    pub fn of(err: &SockErr) -> Finding {
        let from = ReportedBy(err.offender);
        match (err.origin, err.icmp_type, err.icmp_code) {
            (ORIGIN_ICMP, DEST_UNREACH, PORT_UNREACH) => Finding::PortUnreachable { from: from.0 },
            (ORIGIN_ICMP, DEST_UNREACH, FRAG_NEEDED) => Finding::FragNeeded {
                mtu: err.info,
                from: from.0,
            },
            (ORIGIN_ICMP, DEST_UNREACH, NET_PROHIBITED | HOST_PROHIBITED | ADMIN_PROHIBITED) => {
                Finding::Unreachable {
                    detail: format!(
                        "administratively prohibited{from}: a firewall rejects this traffic"
                    ),
                    firewall: true,
                }
            }
            (ORIGIN_ICMP, DEST_UNREACH, code) => {
                let what = match code {
                    NET_UNREACH => "network unreachable".to_string(),
                    HOST_UNREACH => "host unreachable".to_string(),
                    PROTO_UNREACH => "protocol unreachable".to_string(),
                    other => format!("destination unreachable (ICMP code {other})"),
                };
                Finding::Unreachable {
                    detail: format!("{what}{from}"),
                    firewall: false,
                }
            }
            (ORIGIN_ICMP, TIME_EXCEEDED, _) => Finding::Unreachable {
                detail: format!("TTL exceeded in transit{from}: a routing loop?"),
                firewall: false,
            },
            (ORIGIN_LOCAL, _, _) if err.errno == libc::EMSGSIZE => {
                Finding::LocalTooBig { mtu: err.info }
            }
            (ORIGIN_ICMP, icmp_type, code) => Finding::Unreachable {
                detail: format!("ICMP type {icmp_type} code {code}{from}"),
                firewall: false,
            },
            _ => Finding::of_errno(err.errno),
        }
    }

    /// What a bare errno (from send, connect or a pending socket error) means.
    pub fn of_errno(errno: i32) -> Finding {
        let detail = match errno {
            libc::ECONNREFUSED => return Finding::PortUnreachable { from: None },
            libc::EMSGSIZE => return Finding::LocalTooBig { mtu: 0 },
            libc::ENETUNREACH => "network unreachable: no route to it from here".to_string(),
            libc::EHOSTUNREACH => {
                "host unreachable (ICMP host unreachable or prohibited, or no ARP answer)".into()
            }
            libc::EPERM | libc::EACCES => {
                "blocked by a firewall rule on this host (sending was not permitted)".into()
            }
            other => std::io::Error::from_raw_os_error(other).to_string(),
        };
        Finding::Unreachable {
            detail,
            firewall: matches!(errno, libc::EPERM | libc::EACCES),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ICMP port unreachable from 198.18.200.2 as the kernel queues it (x86-64).
    fn port_unreachable_bytes() -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&(libc::ECONNREFUSED as u32).to_ne_bytes());
        bytes.extend_from_slice(&[ORIGIN_ICMP, 3, 3, 0]);
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // info
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // data
        bytes.extend_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        bytes.extend_from_slice(&[0, 0, 198, 18, 200, 2]);
        bytes.extend_from_slice(&[0; 8]);
        bytes
    }

    #[test]
    fn parse_an_icmp_error() {
        let err = parse_extended_err(&port_unreachable_bytes()).unwrap();
        assert_eq!(
            err,
            SockErr {
                errno: libc::ECONNREFUSED,
                origin: ORIGIN_ICMP,
                icmp_type: 3,
                icmp_code: 3,
                info: 0,
                offender: Some(Ipv4Addr::new(198, 18, 200, 2)),
            }
        );
        assert_eq!(
            Finding::of(&err),
            Finding::PortUnreachable {
                from: Some(Ipv4Addr::new(198, 18, 200, 2))
            }
        );
    }

    #[test]
    fn short_or_offenderless_entries() {
        let bytes = port_unreachable_bytes();
        assert_eq!(parse_extended_err(&bytes[..15]), None);
        assert_eq!(parse_extended_err(&bytes[..16]).unwrap().offender, None);
        let mut unspec = bytes.clone();
        unspec[16..18].copy_from_slice(&0u16.to_ne_bytes()); // AF_UNSPEC: no offender
        assert_eq!(parse_extended_err(&unspec).unwrap().offender, None);
    }

    fn icmp(code: u8, info: u32) -> SockErr {
        SockErr {
            origin: ORIGIN_ICMP,
            icmp_type: DEST_UNREACH,
            icmp_code: code,
            info,
            offender: Some(Ipv4Addr::new(198, 18, 0, 1)),
            ..SockErr::bare(0)
        }
    }

    #[test]
    fn findings() {
        assert_eq!(
            Finding::of(&icmp(FRAG_NEEDED, 1400)),
            Finding::FragNeeded {
                mtu: 1400,
                from: Some(Ipv4Addr::new(198, 18, 0, 1))
            }
        );
        for code in [NET_PROHIBITED, HOST_PROHIBITED, ADMIN_PROHIBITED] {
            let Finding::Unreachable { detail, firewall } = Finding::of(&icmp(code, 0)) else {
                panic!("code {code}");
            };
            assert!(firewall);
            assert_eq!(
                detail,
                "administratively prohibited (reported by 198.18.0.1): a firewall rejects this traffic"
            );
        }
        let Finding::Unreachable { detail, firewall } = Finding::of(&icmp(HOST_UNREACH, 0)) else {
            panic!()
        };
        assert_eq!(detail, "host unreachable (reported by 198.18.0.1)");
        assert!(!firewall);
        let local = SockErr {
            origin: ORIGIN_LOCAL,
            info: 1500,
            ..SockErr::bare(libc::EMSGSIZE)
        };
        assert_eq!(Finding::of(&local), Finding::LocalTooBig { mtu: 1500 });
        assert_eq!(
            Finding::of(&SockErr::bare(libc::ECONNREFUSED)),
            Finding::PortUnreachable { from: None }
        );
        assert!(matches!(
            Finding::of_errno(libc::EPERM),
            Finding::Unreachable { firewall: true, .. }
        ));
    }
}
