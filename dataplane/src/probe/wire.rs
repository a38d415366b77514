//! The VXLAN probe: a VXLAN header with the reserved probe VNI, then an inner Ethernet frame of
//! the "local experimental" ethertype whose payload says who asks, what it asks and how big the
//! answer may be.
//!
//! ```text
//!  0               1               2               3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +---------------+-----------------------------------------------+
//! | flags = 0x08  |                reserved                       |   VXLAN
//! +---------------+-------------------------------+---------------+
//! |          VNI = PROBE_VNI (0xFFFFF0)           |   reserved    |
//! +-----------------------------------------------+---------------+
//! |             inner destination MAC, source MAC (12)            |   inner Ethernet
//! |               ...             |    ethertype = 0x88B5         |
//! +-------------------------------+-------------------------------+
//! |                     magic "MESHPRB1" (8)                      |   probe body
//! +---------------+---------------+-------------------------------+
//! |     kind      |     flags     |    reply size (IPv4 bytes)    |
//! +---------------+---------------+-------------------------------+
//! | seen size (replies: request's IPv4 length) | sender's UDP port |
//! +---------------------------------------------------------------+
//! |                           nonce (8)                           |
//! +---------------------------------------------------------------+
//! |                 sender's claimed underlay IPv4                |
//! +---------------------------------------------------------------+
//! |                  zero padding up to the size                  |
//! ```
//!
//! Sizes are those of the whole IPv4 packet (20-byte header, UDP 8, then this), because that is
//! what a path MTU limits. All fields are big-endian.
//!
//! The responder receives requests decapsulated by a kernel vxlan device, as inner Ethernet
//! frames: the outer IPv4 and UDP headers are gone. So a request names its sender's address
//! *and* UDP port itself (where the reply goes), and the responder reconstructs the request's
//! IPv4 size from the inner frame: see `DECAP_OVERHEAD`. Requests from probers older than the
//! sender port (the field was reserved, so 0) are not answered.

use std::net::Ipv4Addr;

/// VNI of probe packets. Mesh allocates network VNIs from 4097 upward, lowest free first
/// (`control::network::alloc`), so this one would be reached only with some 16.7 million
/// networks alive at once. A kernel vxlan device drops a packet whose VNI it has no device for,
/// which is why probes never enter an overlay network.
pub const PROBE_VNI: u32 = 0x00FF_FFF0;
/// The only VXLAN flags a probe carries: "I" (the VNI is valid), as RFC 7348 requires.
pub const VXLAN_FLAGS: u8 = 0x08;
/// IEEE 802 "local experimental" ethertype: no protocol stack will take the inner frame.
pub const PROBE_ETHERTYPE: u16 = 0x88B5;
/// First bytes of every probe body (the 1 is the format version).
pub const MAGIC: [u8; 8] = *b"MESHPRB1";
/// Inner source MAC of requests, destination of replies: locally administered, unicast.
pub const REQUESTER_MAC: [u8; 6] = [0x02, b'M', b'E', b'S', b'H', 0x01];
/// Inner source MAC of replies, destination of requests.
pub const RESPONDER_MAC: [u8; 6] = [0x02, b'M', b'E', b'S', b'H', 0x02];
/// Bytes in front of a probe on the underlay: IPv4 header without options (20) and UDP (8).
pub const IP_UDP_OVERHEAD: usize = 28;
/// VXLAN header bytes, which a vxlan device strips on decapsulation.
pub const VXLAN_HEADER_LEN: usize = 8;
/// Inner Ethernet header bytes (no VLAN tag).
pub const ETHERNET_HEADER_LEN: usize = 14;
/// What a request's outer IPv4 packet has beyond the inner Ethernet *payload* (the body from the
/// magic on): outer IPv4 20 (no options) + UDP 8 + VXLAN 8 + inner Ethernet 14 = 50. A
/// responder that receives the decapsulated frame knows the request's IPv4 size only as
/// payload + 50 (or whole inner frame + 36); outer IPv4 options, which probers never send,
/// would make the real packet larger than that.
pub const DECAP_OVERHEAD: usize = IP_UDP_OVERHEAD + VXLAN_HEADER_LEN + ETHERNET_HEADER_LEN;

mod field {
    pub type Field = std::ops::Range<usize>;

    pub const VXLAN_FLAGS: usize = 0;
    pub const VXLAN_VNI: Field = 4..7;
    pub const DST_MAC: Field = 8..14;
    pub const SRC_MAC: Field = 14..20;
    pub const ETHERTYPE: Field = 20..22;
    pub const MAGIC: Field = 22..30;
    pub const KIND: usize = 30;
    pub const FLAGS: usize = 31;
    pub const REPLY_SIZE: Field = 32..34;
    pub const SEEN_SIZE: Field = 34..36;
    pub const SENDER_PORT: Field = 36..38;
    pub const NONCE: Field = 38..46;
    pub const SENDER: Field = 46..50;
    pub const PADDING: usize = 50;
}

/// Bytes of a probe without padding (the UDP payload of the smallest probe).
pub const HEADER_LEN: usize = field::PADDING;
/// The smallest IPv4 packet a probe makes.
pub const MIN_PROBE_SIZE: usize = HEADER_LEN + IP_UDP_OVERHEAD;

/// Why bytes are not a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Fewer bytes than a probe header.
    #[error("truncated: {0} bytes, a probe has at least {HEADER_LEN}")]
    Truncated(usize),
    /// VXLAN flags other than "VNI valid".
    #[error("VXLAN flags {0:#04x}, a probe has {VXLAN_FLAGS:#04x}")]
    BadFlags(u8),
    /// A VNI other than the probe VNI: overlay traffic.
    #[error("VNI {0:#08x} is not the probe VNI {PROBE_VNI:#08x}")]
    WrongVni(u32),
    /// The inner frame is not of the probe ethertype.
    #[error("inner ethertype {0:#06x}, a probe has {PROBE_ETHERTYPE:#06x}")]
    WrongEthertype(u16),
    /// The body does not start with the magic.
    #[error("bad magic: not a Mesh probe, or a future version")]
    BadMagic,
    /// A kind byte this version does not know.
    #[error("unknown probe kind {0}")]
    UnknownKind(u8),
}

/// A read/write view of a probe in a buffer.
#[derive(Debug, Clone)]
pub struct ProbePacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ProbePacket<T> {
    /// Wraps a buffer without checking it: accessors may panic on a short one.
    pub const fn new_unchecked(buffer: T) -> ProbePacket<T> {
        ProbePacket { buffer }
    }

    /// Wraps a buffer after `check_len`: untrusted bytes go through this.
    pub fn new_checked(buffer: T) -> Result<ProbePacket<T>, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds a whole header; once it has, no accessor panics.
    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated(len));
        }
        Ok(())
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// VXLAN flags byte.
    pub fn vxlan_flags(&self) -> u8 {
        self.buffer.as_ref()[field::VXLAN_FLAGS]
    }

    /// VXLAN network identifier.
    pub fn vni(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VXLAN_VNI];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    /// Inner destination MAC.
    pub fn dst_mac(&self) -> [u8; 6] {
        array(&self.buffer.as_ref()[field::DST_MAC])
    }

    /// Inner source MAC.
    pub fn src_mac(&self) -> [u8; 6] {
        array(&self.buffer.as_ref()[field::SRC_MAC])
    }

    /// Inner ethertype.
    pub fn ethertype(&self) -> u16 {
        u16::from_be_bytes(array(&self.buffer.as_ref()[field::ETHERTYPE]))
    }

    /// The 8 magic bytes.
    pub fn magic(&self) -> [u8; 8] {
        array(&self.buffer.as_ref()[field::MAGIC])
    }

    /// Raw kind byte (see `ProbeKind`).
    pub fn kind(&self) -> u8 {
        self.buffer.as_ref()[field::KIND]
    }

    /// Flags (none defined yet: senders put 0, receivers ignore them).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Requested reply size in IPv4 bytes (0: the smallest).
    pub fn reply_size(&self) -> u16 {
        u16::from_be_bytes(array(&self.buffer.as_ref()[field::REPLY_SIZE]))
    }

    /// In a reply, the IPv4 length of the request as the responder saw it.
    pub fn seen_size(&self) -> u16 {
        u16::from_be_bytes(array(&self.buffer.as_ref()[field::SEEN_SIZE]))
    }

    /// The UDP port the sender sends from: where a reply to a request goes.
    pub fn sender_port(&self) -> u16 {
        u16::from_be_bytes(array(&self.buffer.as_ref()[field::SENDER_PORT]))
    }

    /// The request's nonce, echoed in the reply.
    pub fn nonce(&self) -> u64 {
        u64::from_be_bytes(array(&self.buffer.as_ref()[field::NONCE]))
    }

    /// The sender's claimed underlay address.
    pub fn sender(&self) -> Ipv4Addr {
        Ipv4Addr::from(array::<4>(&self.buffer.as_ref()[field::SENDER]))
    }

    /// Bytes after the header.
    pub fn padding(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PADDING..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ProbePacket<T> {
    /// Sets the VXLAN flags byte and clears VXLAN's reserved bytes.
    pub fn set_vxlan_flags(&mut self, flags: u8) {
        let b = self.buffer.as_mut();
        b[field::VXLAN_FLAGS] = flags;
        b[field::VXLAN_FLAGS + 1..field::VXLAN_VNI.start].fill(0);
        b[field::VXLAN_VNI.end] = 0;
    }

    /// Sets the VNI (its low 24 bits).
    pub fn set_vni(&mut self, vni: u32) {
        let [_, b0, b1, b2] = vni.to_be_bytes();
        self.buffer.as_mut()[field::VXLAN_VNI].copy_from_slice(&[b0, b1, b2]);
    }

    /// Sets the inner destination MAC.
    pub fn set_dst_mac(&mut self, mac: [u8; 6]) {
        self.buffer.as_mut()[field::DST_MAC].copy_from_slice(&mac);
    }

    /// Sets the inner source MAC.
    pub fn set_src_mac(&mut self, mac: [u8; 6]) {
        self.buffer.as_mut()[field::SRC_MAC].copy_from_slice(&mac);
    }

    /// Sets the inner ethertype.
    pub fn set_ethertype(&mut self, ethertype: u16) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&ethertype.to_be_bytes());
    }

    /// Sets the magic.
    pub fn set_magic(&mut self, magic: [u8; 8]) {
        self.buffer.as_mut()[field::MAGIC].copy_from_slice(&magic);
    }

    /// Sets the kind byte.
    pub fn set_kind(&mut self, kind: u8) {
        self.buffer.as_mut()[field::KIND] = kind;
    }

    /// Sets the flags.
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the requested reply size.
    pub fn set_reply_size(&mut self, size: u16) {
        self.buffer.as_mut()[field::REPLY_SIZE].copy_from_slice(&size.to_be_bytes());
    }

    /// Sets the seen size.
    pub fn set_seen_size(&mut self, size: u16) {
        self.buffer.as_mut()[field::SEEN_SIZE].copy_from_slice(&size.to_be_bytes());
    }

    /// Sets the sender's UDP port.
    pub fn set_sender_port(&mut self, port: u16) {
        self.buffer.as_mut()[field::SENDER_PORT].copy_from_slice(&port.to_be_bytes());
    }

    /// Sets the nonce.
    pub fn set_nonce(&mut self, nonce: u64) {
        self.buffer.as_mut()[field::NONCE].copy_from_slice(&nonce.to_be_bytes());
    }

    /// Sets the claimed sender.
    pub fn set_sender(&mut self, ip: Ipv4Addr) {
        self.buffer.as_mut()[field::SENDER].copy_from_slice(&ip.octets());
    }

    /// The bytes after the header, to fill.
    pub fn padding_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PADDING..]
    }
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(bytes);
    out
}

/// Whether a probe asks or answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// Sent by a prober to a responder.
    Request,
    /// Sent back by the responder.
    Reply,
}

impl ProbeKind {
    const REQUEST: u8 = 1;
    const REPLY: u8 = 2;

    fn to_byte(self) -> u8 {
        match self {
            ProbeKind::Request => Self::REQUEST,
            ProbeKind::Reply => Self::REPLY,
        }
    }

    fn from_byte(byte: u8) -> Result<Self, WireError> {
        match byte {
            Self::REQUEST => Ok(ProbeKind::Request),
            Self::REPLY => Ok(ProbeKind::Reply),
            other => Err(WireError::UnknownKind(other)),
        }
    }
}

/// What a probe means, apart from its padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeRepr {
    /// Request or reply.
    pub kind: ProbeKind,
    /// Chosen by the prober, echoed by the responder: it pairs a reply with its request.
    pub nonce: u64,
    /// The sender's underlay address as it claims it (the responder checks it against the
    /// IPv4 source).
    pub sender: Ipv4Addr,
    /// Requests: the IPv4 size the reply should have (0: the smallest).
    pub reply_size: u16,
    /// Replies: the IPv4 length of the request the responder received (0 in requests).
    pub seen_size: u16,
    /// The UDP port the sender sends from (requests: where the reply goes; replies: the
    /// data-path port).
    pub sender_port: u16,
    /// Flag bits: none is defined yet (unknown bits are kept, for newer versions).
    pub flags: u8,
}

impl ProbeRepr {
    /// Parses a probe (the UDP payload), checking everything a probe must be.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &ProbePacket<&T>) -> Result<Self, WireError> {
        packet.check_len()?;
        if packet.vxlan_flags() != VXLAN_FLAGS {
            return Err(WireError::BadFlags(packet.vxlan_flags()));
        }
        if packet.vni() != PROBE_VNI {
            return Err(WireError::WrongVni(packet.vni()));
        }
        if packet.ethertype() != PROBE_ETHERTYPE {
            return Err(WireError::WrongEthertype(packet.ethertype()));
        }
        if packet.magic() != MAGIC {
            return Err(WireError::BadMagic);
        }
        Ok(ProbeRepr {
            kind: ProbeKind::from_byte(packet.kind())?,
            nonce: packet.nonce(),
            sender: packet.sender(),
            reply_size: packet.reply_size(),
            seen_size: packet.seen_size(),
            sender_port: packet.sender_port(),
            flags: packet.flags(),
        })
    }

    /// Bytes of the probe without padding.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the probe into `packet` (at least `buffer_len` bytes) and zeroes the rest, which
    /// is the padding.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut ProbePacket<T>) {
        let (src, dst) = match self.kind {
            ProbeKind::Request => (REQUESTER_MAC, RESPONDER_MAC),
            ProbeKind::Reply => (RESPONDER_MAC, REQUESTER_MAC),
        };
        packet.set_vxlan_flags(VXLAN_FLAGS);
        packet.set_vni(PROBE_VNI);
        packet.set_dst_mac(dst);
        packet.set_src_mac(src);
        packet.set_ethertype(PROBE_ETHERTYPE);
        packet.set_magic(MAGIC);
        packet.set_kind(self.kind.to_byte());
        packet.set_flags(self.flags);
        packet.set_reply_size(self.reply_size);
        packet.set_seen_size(self.seen_size);
        packet.set_sender_port(self.sender_port);
        packet.set_nonce(self.nonce);
        packet.set_sender(self.sender);
        packet.padding_mut().fill(0);
    }

    /// The probe as a UDP payload for an IPv4 packet of `ip_size` bytes (at least
    /// `MIN_PROBE_SIZE`; smaller sizes give the smallest probe).
    pub fn to_payload(&self, ip_size: usize) -> Vec<u8> {
        let mut buf = vec![0; ip_size.max(MIN_PROBE_SIZE) - IP_UDP_OVERHEAD];
        self.emit(&mut ProbePacket::new_unchecked(&mut buf[..]));
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request for a 1400-byte reply, nonce 0x0102030405060708, from 198.18.200.1:40000.
    static REQUEST: [u8; 50] = [
        0x08, 0x00, 0x00, 0x00, 0xff, 0xff, 0xf0, 0x00, // VXLAN
        0x02, 0x4d, 0x45, 0x53, 0x48, 0x02, // dst MAC
        0x02, 0x4d, 0x45, 0x53, 0x48, 0x01, // src MAC
        0x88, 0xb5, // ethertype
        b'M', b'E', b'S', b'H', b'P', b'R', b'B', b'1', // magic
        0x01, 0x00, 0x05, 0x78, // kind, flags, reply size
        0x00, 0x00, 0x9c, 0x40, // seen size, sender port
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // nonce
        198, 18, 200, 1, // sender
    ];

    fn request_repr() -> ProbeRepr {
        ProbeRepr {
            kind: ProbeKind::Request,
            nonce: 0x0102_0304_0506_0708,
            sender: Ipv4Addr::new(198, 18, 200, 1),
            reply_size: 1400,
            seen_size: 0,
            sender_port: 40000,
            flags: 0,
        }
    }

    #[test]
    fn deconstruct() {
        let packet = ProbePacket::new_checked(&REQUEST[..]).unwrap();
        assert_eq!(packet.vxlan_flags(), 0x08);
        assert_eq!(packet.vni(), PROBE_VNI);
        assert_eq!(packet.dst_mac(), RESPONDER_MAC);
        assert_eq!(packet.src_mac(), REQUESTER_MAC);
        assert_eq!(packet.ethertype(), 0x88b5);
        assert_eq!(&packet.magic(), b"MESHPRB1");
        assert_eq!(packet.kind(), 1);
        assert_eq!(packet.flags(), 0);
        assert_eq!(packet.reply_size(), 1400);
        assert_eq!(packet.seen_size(), 0);
        assert_eq!(packet.sender_port(), 40000);
        assert_eq!(packet.nonce(), 0x0102_0304_0506_0708);
        assert_eq!(packet.sender(), Ipv4Addr::new(198, 18, 200, 1));
        assert!(packet.padding().is_empty());
    }

    #[test]
    fn construct() {
        let mut bytes = [0xa5; 50];
        let mut packet = ProbePacket::new_unchecked(&mut bytes[..]);
        packet.set_vxlan_flags(0x08);
        packet.set_vni(PROBE_VNI);
        packet.set_dst_mac(RESPONDER_MAC);
        packet.set_src_mac(REQUESTER_MAC);
        packet.set_ethertype(0x88b5);
        packet.set_magic(MAGIC);
        packet.set_kind(1);
        packet.set_flags(0);
        packet.set_reply_size(1400);
        packet.set_seen_size(0);
        packet.set_sender_port(40000);
        packet.set_nonce(0x0102_0304_0506_0708);
        packet.set_sender(Ipv4Addr::new(198, 18, 200, 1));
        assert_eq!(bytes, REQUEST);
    }

    #[test]
    fn parse_and_emit() {
        let packet = ProbePacket::new_checked(&REQUEST[..]).unwrap();
        assert_eq!(ProbeRepr::parse(&packet), Ok(request_repr()));
        let mut bytes = [0xa5; 50];
        request_repr().emit(&mut ProbePacket::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, REQUEST);
    }

    #[test]
    fn a_payload_is_padded_to_the_ip_size_with_zeroes() {
        let payload = request_repr().to_payload(1400);
        assert_eq!(payload.len(), 1400 - IP_UDP_OVERHEAD);
        assert_eq!(&payload[..HEADER_LEN], &REQUEST[..]);
        assert!(payload[HEADER_LEN..].iter().all(|&b| b == 0));
        assert_eq!(request_repr().to_payload(10).len(), HEADER_LEN);
        let parsed = ProbeRepr::parse(&ProbePacket::new_checked(&payload[..]).unwrap());
        assert_eq!(parsed, Ok(request_repr()));
    }

    #[test]
    fn a_reply_swaps_the_macs() {
        let reply = ProbeRepr {
            kind: ProbeKind::Reply,
            seen_size: 1400,
            reply_size: 0,
            sender_port: 4789,
            flags: 0x80,
            ..request_repr()
        };
        let payload = reply.to_payload(0);
        let packet = ProbePacket::new_checked(&payload[..]).unwrap();
        assert_eq!(packet.src_mac(), RESPONDER_MAC);
        assert_eq!(packet.kind(), 2);
        assert_eq!(packet.flags(), 0x80, "unknown flags are kept");
        assert_eq!(packet.sender_port(), 4789);
        assert_eq!(ProbeRepr::parse(&packet), Ok(reply));
    }

    fn parse_modified(at: usize, value: u8) -> Result<ProbeRepr, WireError> {
        let mut bytes = REQUEST;
        bytes[at] = value;
        ProbeRepr::parse(&ProbePacket::new_unchecked(&bytes[..]))
    }

    #[test]
    fn short_input_is_rejected_at_every_length() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                ProbePacket::new_checked(&REQUEST[..len]).map(|_| ()),
                Err(WireError::Truncated(len))
            );
            // parse checks too, so an unchecked view of a short buffer cannot panic.
            let packet = ProbePacket::new_unchecked(&REQUEST[..len]);
            assert_eq!(ProbeRepr::parse(&packet), Err(WireError::Truncated(len)));
        }
    }

    #[test]
    fn wrong_flags_are_rejected() {
        assert_eq!(parse_modified(0, 0x0c), Err(WireError::BadFlags(0x0c)));
        assert_eq!(parse_modified(0, 0x00), Err(WireError::BadFlags(0x00)));
    }

    #[test]
    fn another_vni_is_rejected() {
        assert_eq!(parse_modified(6, 0x01), Err(WireError::WrongVni(0xffff01)));
        let mut bytes = REQUEST;
        bytes[4..7].copy_from_slice(&[0x00, 0x10, 0x01]); // 4097, Mesh's first network
        let packet = ProbePacket::new_unchecked(&bytes[..]);
        assert_eq!(ProbeRepr::parse(&packet), Err(WireError::WrongVni(4097)));
    }

    #[test]
    fn another_ethertype_is_rejected() {
        assert_eq!(
            parse_modified(21, 0x00),
            Err(WireError::WrongEthertype(0x8800))
        );
    }

    #[test]
    fn bad_magic_is_rejected() {
        assert_eq!(parse_modified(29, b'2'), Err(WireError::BadMagic));
        assert_eq!(parse_modified(22, 0), Err(WireError::BadMagic));
    }

    #[test]
    fn an_unknown_kind_is_rejected() {
        assert_eq!(parse_modified(30, 0), Err(WireError::UnknownKind(0)));
        assert_eq!(parse_modified(30, 3), Err(WireError::UnknownKind(3)));
    }

    #[test]
    fn reserved_bytes_are_ignored_on_receipt() {
        // RFC 7348: reserved fields are ignored by receivers.
        assert_eq!(parse_modified(1, 0xff), Ok(request_repr()));
        assert_eq!(parse_modified(3, 0xff), Ok(request_repr()));
        assert_eq!(parse_modified(7, 0xff), Ok(request_repr()));
    }

    #[test]
    fn the_decapsulation_overhead_is_fifty_bytes() {
        assert_eq!(DECAP_OVERHEAD, 50);
        // The body after the inner Ethernet header, plus the overhead, is the IPv4 size.
        let payload = request_repr().to_payload(1400);
        let body = payload.len() - field::MAGIC.start;
        assert_eq!(body + DECAP_OVERHEAD, 1400);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: every length, pseudo-random contents.
        let mut state = 0x9e37_79b9_u32;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    state.to_be_bytes()[0]
                })
                .collect();
            if let Ok(packet) = ProbePacket::new_checked(&bytes[..]) {
                let _ = ProbeRepr::parse(&packet);
            }
        }
    }
}
