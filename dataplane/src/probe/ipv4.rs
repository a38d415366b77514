//! The IPv4 and UDP headers around a probe: read from what the packet socket captures, written
//! in front of the replies the responder sends through its raw socket (which, with
//! `IP_HDRINCL`, leaves both headers, checksums included, to us).

use std::net::Ipv4Addr;

mod field {
    pub type Field = std::ops::Range<usize>;

    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const LENGTH: Field = 2..4;
    pub const IDENT: Field = 4..6;
    pub const FLAGS_FRAG: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC: Field = 12..16;
    pub const DST: Field = 16..20;

    pub const UDP_SRC_PORT: Field = 0..2;
    pub const UDP_DST_PORT: Field = 2..4;
    pub const UDP_LENGTH: Field = 4..6;
    pub const UDP_CHECKSUM: Field = 6..8;
}

/// An IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// A UDP header.
pub const UDP_HEADER_LEN: usize = 8;
/// IP protocol number of UDP.
const PROTO_UDP: u8 = 17;
/// "Don't fragment": replies must cross the path whole, as overlay traffic must.
const FLAG_DF: u16 = 0x4000;
/// "More fragments" and the fragment offset: set on every fragment.
const FRAGMENT_MASK: u16 = 0x3fff;
/// TTL of replies (Linux's default).
const TTL: u8 = 64;

/// Why captured bytes are not one whole-header IPv4/UDP datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IpError {
    /// Fewer bytes than the headers need.
    #[error("truncated IPv4/UDP headers ({0} bytes)")]
    Truncated(usize),
    /// Not IPv4.
    #[error("IP version {0}, expected 4")]
    NotIpv4(u8),
    /// An IHL below 5 words.
    #[error("IPv4 header length {0} words is below the minimum 5")]
    BadHeaderLen(u8),
    /// Another protocol.
    #[error("IP protocol {0}, expected UDP (17)")]
    NotUdp(u8),
    /// A fragment: only whole datagrams are probes.
    #[error("an IPv4 fragment")]
    Fragment,
}

/// A parsed IPv4/UDP datagram, whose payload may be cut short by the capture length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// IPv4 source.
    pub src: Ipv4Addr,
    /// IPv4 destination.
    pub dst: Ipv4Addr,
    /// The IPv4 total length the header states (what travelled, not what was captured).
    pub total_len: u16,
    /// UDP source port.
    pub src_port: u16,
    /// UDP destination port.
    pub dst_port: u16,
    /// The UDP payload, as much of it as was captured.
    pub payload: &'a [u8],
}

/// Parses the IPv4 and UDP headers at the start of `bytes`.
pub fn parse_ipv4_udp(bytes: &[u8]) -> Result<Datagram<'_>, IpError> {
    if bytes.len() < IPV4_HEADER_LEN {
        return Err(IpError::Truncated(bytes.len()));
    }
    let version = bytes[field::VER_IHL] >> 4;
    if version != 4 {
        return Err(IpError::NotIpv4(version));
    }
    let ihl = bytes[field::VER_IHL] & 0x0f;
    if ihl < 5 {
        return Err(IpError::BadHeaderLen(ihl));
    }
    let header_len = usize::from(ihl) * 4;
    if bytes.len() < header_len + UDP_HEADER_LEN {
        return Err(IpError::Truncated(bytes.len()));
    }
    if bytes[field::PROTOCOL] != PROTO_UDP {
        return Err(IpError::NotUdp(bytes[field::PROTOCOL]));
    }
    if be16(&bytes[field::FLAGS_FRAG]) & FRAGMENT_MASK != 0 {
        return Err(IpError::Fragment);
    }
    let total_len = be16(&bytes[field::LENGTH]);
    let udp = &bytes[header_len..];
    let udp_len = usize::from(be16(&udp[field::UDP_LENGTH]));
    // The payload ends where the first of capture, IPv4 length and UDP length ends.
    let end = udp
        .len()
        .min(usize::from(total_len).saturating_sub(header_len))
        .min(udp_len)
        .max(UDP_HEADER_LEN);
    Ok(Datagram {
        src: ip(&bytes[field::SRC]),
        dst: ip(&bytes[field::DST]),
        total_len,
        src_port: be16(&udp[field::UDP_SRC_PORT]),
        dst_port: be16(&udp[field::UDP_DST_PORT]),
        payload: &udp[UDP_HEADER_LEN..end],
    })
}

/// The addresses of a datagram to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpEndpoints {
    /// IPv4 source.
    pub src: Ipv4Addr,
    /// IPv4 destination.
    pub dst: Ipv4Addr,
    /// UDP source port.
    pub src_port: u16,
    /// UDP destination port.
    pub dst_port: u16,
}

/// A whole IPv4/UDP datagram (DF set, TTL 64, both checksums) carrying `payload`, or None when
/// it would exceed 65535 bytes.
pub fn build_ipv4_udp(ends: &UdpEndpoints, ident: u16, payload: &[u8]) -> Option<Vec<u8>> {
    let total = IPV4_HEADER_LEN + UDP_HEADER_LEN + payload.len();
    let total_len = u16::try_from(total).ok()?;
    let udp_len = total_len - IPV4_HEADER_LEN as u16;
    let mut buf = vec![0; total];
    let (ip_header, udp) = buf.split_at_mut(IPV4_HEADER_LEN);
    ip_header[field::VER_IHL] = 0x45;
    ip_header[field::TOS] = 0;
    ip_header[field::LENGTH].copy_from_slice(&total_len.to_be_bytes());
    ip_header[field::IDENT].copy_from_slice(&ident.to_be_bytes());
    ip_header[field::FLAGS_FRAG].copy_from_slice(&FLAG_DF.to_be_bytes());
    ip_header[field::TTL] = TTL;
    ip_header[field::PROTOCOL] = PROTO_UDP;
    ip_header[field::SRC].copy_from_slice(&ends.src.octets());
    ip_header[field::DST].copy_from_slice(&ends.dst.octets());
    let sum = checksum(&[ip_header]);
    ip_header[field::CHECKSUM].copy_from_slice(&sum.to_be_bytes());

    udp[field::UDP_SRC_PORT].copy_from_slice(&ends.src_port.to_be_bytes());
    udp[field::UDP_DST_PORT].copy_from_slice(&ends.dst_port.to_be_bytes());
    udp[field::UDP_LENGTH].copy_from_slice(&udp_len.to_be_bytes());
    udp[UDP_HEADER_LEN..].copy_from_slice(payload);
    // The pseudo-header: source, destination, zero, protocol, UDP length.
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&ends.src.octets());
    pseudo[4..8].copy_from_slice(&ends.dst.octets());
    pseudo[9] = PROTO_UDP;
    pseudo[10..12].copy_from_slice(&udp_len.to_be_bytes());
    let sum = match checksum(&[&pseudo, udp]) {
        // RFC 768: a computed zero is sent as all ones (zero means "no checksum").
        0 => 0xffff,
        sum => sum,
    };
    udp[field::UDP_CHECKSUM].copy_from_slice(&sum.to_be_bytes());
    Some(buf)
}

/// The Internet checksum (RFC 1071) of the concatenated chunks. Every chunk but the last must
/// have an even length, which the headers above all do.
pub fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in chunks {
        let mut words = chunk.chunks_exact(2);
        for word in &mut words {
            sum += u32::from(u16::from_be_bytes([word[0], word[1]]));
        }
        if let [last] = words.remainder() {
            sum += u32::from(*last) << 8;
        }
        // Fold often enough that a 64 KiB datagram cannot overflow.
        sum = (sum & 0xffff) + (sum >> 16);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn be16(bytes: &[u8]) -> u16 {
    u16::from_be_bytes([bytes[0], bytes[1]])
}

fn ip(bytes: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends() -> UdpEndpoints {
        UdpEndpoints {
            src: Ipv4Addr::new(198, 18, 200, 2),
            dst: Ipv4Addr::new(198, 18, 200, 1),
            src_port: 4789,
            dst_port: 40000,
        }
    }

    /// `build_ipv4_udp(&ends(), 0x1234, b"mesh")`, checksums computed independently
    /// (a few lines of Python over the same bytes).
    static DATAGRAM: [u8; 32] = [
        0x45, 0x00, 0x00, 0x20, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x0c, 0x70, // IPv4
        198, 18, 200, 2, 198, 18, 200, 1, //
        0x12, 0xb5, 0x9c, 0x40, 0x00, 0x0c, 0x53, 0xe9, // UDP
        b'm', b'e', b's', b'h',
    ];

    #[test]
    fn build_golden() {
        assert_eq!(build_ipv4_udp(&ends(), 0x1234, b"mesh").unwrap(), DATAGRAM);
    }

    #[test]
    fn checksums_verify() {
        let bytes = build_ipv4_udp(&ends(), 7, &[0xa5; 1001]).unwrap();
        // A header with its checksum sums to zero.
        assert_eq!(checksum(&[&bytes[..20]]), 0);
        let mut pseudo = [0u8; 12];
        pseudo[0..8].copy_from_slice(&bytes[12..20]);
        pseudo[9] = 17;
        pseudo[10..12].copy_from_slice(&bytes[24..26]);
        assert_eq!(checksum(&[&pseudo, &bytes[20..]]), 0);
    }

    #[test]
    fn a_zero_udp_checksum_is_sent_as_all_ones() {
        // Find a payload whose checksum computes to zero by adjusting its last word.
        let mut payload = [0u8; 2];
        let bytes = build_ipv4_udp(&ends(), 0, &payload).unwrap();
        let sum = u16::from_be_bytes([bytes[26], bytes[27]]);
        payload.copy_from_slice(&sum.to_be_bytes());
        let bytes = build_ipv4_udp(&ends(), 0, &payload).unwrap();
        assert_eq!(&bytes[26..28], &[0xff, 0xff]);
    }

    #[test]
    fn oversized_payloads_are_refused() {
        assert!(build_ipv4_udp(&ends(), 0, &vec![0; 65_507]).is_some());
        assert!(build_ipv4_udp(&ends(), 0, &vec![0; 65_508]).is_none());
    }

    #[test]
    fn parse_golden() {
        let datagram = parse_ipv4_udp(&DATAGRAM).unwrap();
        assert_eq!(
            datagram,
            Datagram {
                src: ends().src,
                dst: ends().dst,
                total_len: 32,
                src_port: 4789,
                dst_port: 40000,
                payload: b"mesh",
            }
        );
    }

    #[test]
    fn a_capture_shorter_than_the_datagram_parses() {
        let datagram = parse_ipv4_udp(&DATAGRAM[..30]).unwrap();
        assert_eq!(datagram.total_len, 32);
        assert_eq!(datagram.payload, b"me");
    }

    #[test]
    fn options_are_skipped() {
        let mut bytes = DATAGRAM[..20].to_vec();
        bytes[0] = 0x46;
        bytes.extend_from_slice(&[1, 1, 1, 0]); // NOP, NOP, NOP, end of options
        bytes.extend_from_slice(&DATAGRAM[20..]);
        bytes[3] = 36;
        assert_eq!(parse_ipv4_udp(&bytes).unwrap().payload, b"mesh");
    }

    #[test]
    fn trailing_bytes_beyond_the_lengths_are_not_payload() {
        let mut bytes = DATAGRAM.to_vec();
        bytes.extend_from_slice(&[0; 6]); // Ethernet padding
        assert_eq!(parse_ipv4_udp(&bytes).unwrap().payload, b"mesh");
    }

    fn parse_modified(at: usize, value: u8) -> Result<(), IpError> {
        let mut bytes = DATAGRAM;
        bytes[at] = value;
        parse_ipv4_udp(&bytes).map(|_| ())
    }

    #[test]
    fn each_error() {
        assert_eq!(parse_ipv4_udp(&DATAGRAM[..19]), Err(IpError::Truncated(19)));
        assert_eq!(parse_ipv4_udp(&DATAGRAM[..27]), Err(IpError::Truncated(27)));
        assert_eq!(parse_modified(0, 0x65), Err(IpError::NotIpv4(6)));
        assert_eq!(parse_modified(0, 0x44), Err(IpError::BadHeaderLen(4)));
        assert_eq!(parse_modified(0, 0x4f), Err(IpError::Truncated(32)));
        assert_eq!(parse_modified(9, 6), Err(IpError::NotUdp(6)));
        assert_eq!(parse_modified(6, 0x20), Err(IpError::Fragment)); // more fragments
        assert_eq!(parse_modified(7, 0x01), Err(IpError::Fragment)); // an offset
    }
}
