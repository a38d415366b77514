//! DNS wire format: a typed view over the 12-byte header, and a checked parse of a query that
//! every datagram and TCP message goes through before anything else looks at it.
//!
//! The parse reads every byte of the message once, bounds-checks before every access, and
//! allocates nothing. It checks what the server relies on later: one question whose name has
//! no compression pointer (so its bytes can be echoed and pointed to at offset 12), records
//! that end where the message ends, at most one OPT record, in the additional section, owned
//! by the root.

use std::ops::Range;

/// Length of the DNS header.
pub const HEADER_LEN: usize = 12;
/// Longest domain name in wire format, root label included (RFC 1035 2.3.4).
pub const MAX_NAME_LEN: usize = 255;
/// Longest label (RFC 1035 2.3.4).
pub const MAX_LABEL_LEN: usize = 63;

/// Resource record types and classes the server looks at.
pub const TYPE_A: u16 = 1;
pub const TYPE_SRV: u16 = 33;
pub const TYPE_OPT: u16 = 41;
pub const CLASS_IN: u16 = 1;

/// Response codes (the low four bits of the flags).
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NOTIMP: u8 = 4;

/// Header flag bits.
pub mod flags {
    pub const QR: u16 = 0x8000;
    pub const OPCODE_MASK: u16 = 0x7800;
    pub const OPCODE_SHIFT: u16 = 11;
    pub const AA: u16 = 0x0400;
    pub const TC: u16 = 0x0200;
    pub const RD: u16 = 0x0100;
    pub const RA: u16 = 0x0080;
    pub const CD: u16 = 0x0010;
    pub const RCODE_MASK: u16 = 0x000f;
}

mod field {
    use std::ops::Range;
    pub type Field = Range<usize>;
    pub const ID: Field = 0..2;
    pub const FLAGS: Field = 2..4;
    pub const QDCOUNT: Field = 4..6;
    pub const ANCOUNT: Field = 6..8;
    pub const NSCOUNT: Field = 8..10;
    pub const ARCOUNT: Field = 10..12;
}

/// A read/write view over a DNS header at the start of a buffer.
#[derive(Debug, Clone, Copy)]
pub struct Header<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Header<T> {
    /// A view without a length check: accessors panic if the buffer is shorter than a header.
    pub fn new_unchecked(buffer: T) -> Self {
        Header { buffer }
    }

    /// A view over `buffer`, or None if it is shorter than a header. Once this succeeds, no
    /// accessor panics.
    pub fn new_checked(buffer: T) -> Option<Self> {
        let header = Header::new_unchecked(buffer);
        header.check_len().then_some(header)
    }

    /// Whether the buffer holds a whole header.
    pub fn check_len(&self) -> bool {
        self.buffer.as_ref().len() >= HEADER_LEN
    }

    fn u16_at(&self, field: Range<usize>) -> u16 {
        let bytes = &self.buffer.as_ref()[field];
        u16::from_be_bytes([bytes[0], bytes[1]])
    }

    /// The message ID.
    pub fn id(&self) -> u16 {
        self.u16_at(field::ID)
    }

    /// The flags word (QR, opcode, AA, TC, RD, RA, Z, AD, CD, rcode).
    pub fn flags(&self) -> u16 {
        self.u16_at(field::FLAGS)
    }

    /// Whether the message is a response.
    pub fn is_response(&self) -> bool {
        self.flags() & flags::QR != 0
    }

    /// The operation code (0 is a standard query).
    pub fn opcode(&self) -> u8 {
        // Four bits after the shift: the cast cannot lose anything.
        ((self.flags() & flags::OPCODE_MASK) >> flags::OPCODE_SHIFT) as u8
    }

    /// The response code in the header (its low four bits).
    pub fn rcode(&self) -> u8 {
        (self.flags() & flags::RCODE_MASK) as u8
    }

    /// Number of questions.
    pub fn qdcount(&self) -> u16 {
        self.u16_at(field::QDCOUNT)
    }

    /// Number of answer records.
    pub fn ancount(&self) -> u16 {
        self.u16_at(field::ANCOUNT)
    }

    /// Number of authority records.
    pub fn nscount(&self) -> u16 {
        self.u16_at(field::NSCOUNT)
    }

    /// Number of additional records.
    pub fn arcount(&self) -> u16 {
        self.u16_at(field::ARCOUNT)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    fn set_u16_at(&mut self, field: Range<usize>, value: u16) {
        self.buffer.as_mut()[field].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the message ID.
    pub fn set_id(&mut self, value: u16) {
        self.set_u16_at(field::ID, value);
    }

    /// Sets the flags word.
    pub fn set_flags(&mut self, value: u16) {
        self.set_u16_at(field::FLAGS, value);
    }

    /// Sets the four section counts.
    pub fn set_counts(&mut self, qd: u16, an: u16, ns: u16, ar: u16) {
        self.set_u16_at(field::QDCOUNT, qd);
        self.set_u16_at(field::ANCOUNT, an);
        self.set_u16_at(field::NSCOUNT, ns);
        self.set_u16_at(field::ARCOUNT, ar);
    }
}

/// The flags of a reply to a query with flags `query_flags`: QR set, the opcode and the RD and
/// CD bits copied, RA set (we forward), and `rcode`.
pub fn reply_flags(query_flags: u16, rcode: u8) -> u16 {
    flags::QR
        | flags::RA
        | (query_flags & (flags::OPCODE_MASK | flags::RD | flags::CD))
        | (u16::from(rcode) & flags::RCODE_MASK)
}

/// What a query's OPT record asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdnsInfo {
    /// The largest UDP reply the client accepts (never taken below 512).
    pub payload: u16,
    /// EDNS version; only 0 exists.
    pub version: u8,
    /// The DO bit, which a reply must copy (RFC 3225 3).
    pub dnssec_ok: bool,
}

/// A query that passed every check: offsets into the message, and what they hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query {
    /// Offset just past the question's name (its root label included).
    pub name_end: usize,
    /// Offset just past the question.
    pub question_end: usize,
    /// QTYPE.
    pub qtype: u16,
    /// QCLASS.
    pub qclass: u16,
    /// The OPT record, if any.
    pub edns: Option<EdnsInfo>,
    /// Whether there are records besides one OPT (answers, authorities, other additionals).
    pub extra_records: bool,
}

impl Query {
    /// The question's name in wire format, as received (so in the client's case).
    pub fn name<'p>(&self, packet: &'p [u8]) -> &'p [u8] {
        &packet[HEADER_LEN..self.name_end]
    }
}

/// Why a message is not a query we answer normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryError {
    /// Shorter than a header: nothing to reply to.
    TooShort,
    /// The QR bit is set: a response is never answered.
    IsResponse,
    /// An operation other than a standard query.
    Opcode(u8),
    /// Not exactly one question.
    QuestionCount(u16),
    /// The question's name is malformed.
    Name(NameError),
    /// The message ends inside the question or a record.
    Truncated,
    /// An OPT record outside the additional section, not owned by the root, or a second one.
    BadOpt,
    /// Bytes after the last record.
    TrailingBytes,
}

impl QueryError {
    /// The response code to reply with, or None when the message is dropped.
    pub fn rcode(self) -> Option<u8> {
        match self {
            QueryError::TooShort | QueryError::IsResponse => None,
            QueryError::Opcode(_) => Some(RCODE_NOTIMP),
            _ => Some(RCODE_FORMERR),
        }
    }
}

/// What is wrong with a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    /// The message ends inside the name.
    Truncated,
    /// A label longer than 63 bytes, or a reserved label type (0x40, 0x80).
    BadLabel,
    /// More than 255 bytes.
    TooLong,
    /// A compression pointer that does not point strictly backwards to an earlier, not yet
    /// visited part of the message (which is what makes loops impossible), or any pointer in
    /// the question.
    BadPointer,
}

/// Walks the name at `start` and returns the offset just past it where it was found (after its
/// first compression pointer, or its root label). Pointers are followed only when
/// `allow_pointers`; each must point before everything read so far, so the walk ends.
pub fn skip_name(packet: &[u8], start: usize, allow_pointers: bool) -> Result<usize, NameError> {
    let mut pos = start;
    // Everything at or after `floor` was already read: a pointer must go below it.
    let mut floor = start;
    let mut end = None;
    let mut len = 0usize;
    loop {
        let &byte = packet.get(pos).ok_or(NameError::Truncated)?;
        match byte & 0xc0 {
            0x00 => {
                let label = usize::from(byte);
                len += label + 1;
                if len > MAX_NAME_LEN {
                    return Err(NameError::TooLong);
                }
                if label == 0 {
                    return Ok(end.unwrap_or(pos + 1));
                }
                if pos + 1 + label > packet.len() {
                    return Err(NameError::Truncated);
                }
                pos += 1 + label;
            }
            0xc0 => {
                let &low = packet.get(pos + 1).ok_or(NameError::Truncated)?;
                let target = usize::from(u16::from_be_bytes([byte & 0x3f, low]));
                if !allow_pointers || target < HEADER_LEN || target >= floor {
                    return Err(NameError::BadPointer);
                }
                end.get_or_insert(pos + 2);
                floor = target;
                pos = target;
            }
            _ => return Err(NameError::BadLabel),
        }
    }
}

/// Checks a whole message as a query and says where its parts are.
pub fn parse_query(packet: &[u8]) -> Result<Query, QueryError> {
    let header = Header::new_checked(packet).ok_or(QueryError::TooShort)?;
    if header.is_response() {
        return Err(QueryError::IsResponse);
    }
    if header.opcode() != 0 {
        return Err(QueryError::Opcode(header.opcode()));
    }
    if header.qdcount() != 1 {
        return Err(QueryError::QuestionCount(header.qdcount()));
    }
    let name_end = skip_name(packet, HEADER_LEN, false).map_err(QueryError::Name)?;
    let question_end = name_end + 4;
    let fixed = packet
        .get(name_end..question_end)
        .ok_or(QueryError::Truncated)?;
    let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let qclass = u16::from_be_bytes([fixed[2], fixed[3]]);

    let (an, ns, ar) = (header.ancount(), header.nscount(), header.arcount());
    let mut pos = question_end;
    let mut edns = None;
    let mut extra_records = false;
    for index in 0..u32::from(an) + u32::from(ns) + u32::from(ar) {
        let in_additional = index >= u32::from(an) + u32::from(ns);
        let owner = pos;
        pos = skip_name(packet, pos, true).map_err(QueryError::Name)?;
        let fixed = packet.get(pos..pos + 10).ok_or(QueryError::Truncated)?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let class = u16::from_be_bytes([fixed[2], fixed[3]]);
        let rdlen = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        let ttl = [fixed[4], fixed[5], fixed[6], fixed[7]];
        pos += 10;
        if pos + rdlen > packet.len() {
            return Err(QueryError::Truncated);
        }
        pos += rdlen;
        if rtype != TYPE_OPT {
            extra_records = true;
            continue;
        }
        if !in_additional || edns.is_some() || packet[owner] != 0 {
            return Err(QueryError::BadOpt);
        }
        edns = Some(EdnsInfo {
            payload: class.max(512),
            version: ttl[1],
            dnssec_ok: ttl[2] & 0x80 != 0,
        });
    }
    if pos != packet.len() {
        return Err(QueryError::TrailingBytes);
    }
    Ok(Query {
        name_end,
        question_end,
        qtype,
        qclass,
        edns,
        extra_records,
    })
}

/// Writes into `out` the reply to a query that cannot be answered: its header with `rcode`, no
/// records, and its question when `question_end` says where it ends. Returns false (and writes
/// nothing) when the message has no header to reply to.
pub fn error_reply(
    packet: &[u8],
    rcode: u8,
    question_end: Option<usize>,
    out: &mut Vec<u8>,
) -> bool {
    let Some(query) = Header::new_checked(packet) else {
        return false;
    };
    let end = question_end.unwrap_or(HEADER_LEN);
    out.clear();
    out.extend_from_slice(&packet[..end]);
    let mut reply = Header::new_unchecked(&mut out[..]);
    reply.set_flags(reply_flags(query.flags(), rcode));
    reply.set_counts(u16::from(question_end.is_some()), 0, 0, 0);
    true
}

/// Lowercases the ASCII letters of a wire-format name into `buf` and returns the result (names
/// are matched case-insensitively; length bytes are below 0x41 and stay as they are).
pub fn lowercase_name<'b>(name: &[u8], buf: &'b mut [u8; MAX_NAME_LEN]) -> &'b [u8] {
    let len = name.len().min(MAX_NAME_LEN);
    let out = &mut buf[..len];
    out.copy_from_slice(&name[..len]);
    out.make_ascii_lowercase();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tasks.Web A IN`, RD set, ID 0x1234.
    const QUERY: [u8; 31] = [
        0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, // header
        5, b't', b'a', b's', b'k', b's', 3, b'W', b'e', b'b', 0, // name
        0, 1, 0, 1, // A IN
        0, 0, 0, 0, // padding the tests overwrite or cut
    ];
    const QUERY_LEN: usize = 27;
    /// An OPT record: root owner, payload 1232, version 0, DO set, no options.
    const OPT: [u8; 11] = [0, 0, 41, 0x04, 0xd0, 0, 0, 0x80, 0, 0, 0];

    fn query() -> Vec<u8> {
        QUERY[..QUERY_LEN].to_vec()
    }

    fn with_opt(mut packet: Vec<u8>, opt: &[u8]) -> Vec<u8> {
        packet[11] = 1;
        packet.extend_from_slice(opt);
        packet
    }

    #[test]
    fn header_fields_are_read_where_they_are() {
        let header = Header::new_checked(&QUERY[..]).unwrap();
        assert_eq!(header.id(), 0x1234);
        assert_eq!(header.flags(), 0x0100);
        assert!(!header.is_response());
        assert_eq!(header.opcode(), 0);
        assert_eq!(header.qdcount(), 1);
        assert_eq!(
            (header.ancount(), header.nscount(), header.arcount()),
            (0, 0, 0)
        );
        assert!(Header::new_checked(&QUERY[..11]).is_none());
    }

    #[test]
    fn header_fields_are_written_where_they_are() {
        let mut buf = [0xa5u8; HEADER_LEN];
        let mut header = Header::new_unchecked(&mut buf[..]);
        header.set_id(0xbeef);
        header.set_flags(0x8180);
        header.set_counts(1, 2, 3, 4);
        assert_eq!(buf, [0xbe, 0xef, 0x81, 0x80, 0, 1, 0, 2, 0, 3, 0, 4]);
        let header = Header::new_unchecked(&buf[..]);
        assert!(header.is_response());
        assert_eq!(header.rcode(), 0);
    }

    #[test]
    fn a_plain_query_parses() {
        let packet = query();
        let q = parse_query(&packet).unwrap();
        assert_eq!(q.name_end, 23);
        assert_eq!(q.question_end, 27);
        assert_eq!((q.qtype, q.qclass), (TYPE_A, CLASS_IN));
        assert_eq!(q.edns, None);
        assert!(!q.extra_records);
        assert_eq!(q.name(&packet), b"\x05tasks\x03Web\x00");
    }

    #[test]
    fn an_opt_record_gives_edns() {
        let packet = with_opt(query(), &OPT);
        let q = parse_query(&packet).unwrap();
        let edns = EdnsInfo {
            payload: 1232,
            version: 0,
            dnssec_ok: true,
        };
        assert_eq!(q.edns, Some(edns));
        assert!(!q.extra_records);
        // A payload below 512 means 512 (RFC 6891 6.2.5).
        let mut small = OPT;
        small[3..5].copy_from_slice(&100u16.to_be_bytes());
        let q = parse_query(&with_opt(query(), &small)).unwrap();
        assert_eq!(q.edns.unwrap().payload, 512);
    }

    #[test]
    fn short_headers_and_responses_are_dropped() {
        assert_eq!(parse_query(&QUERY[..11]), Err(QueryError::TooShort));
        assert_eq!(parse_query(&[]), Err(QueryError::TooShort));
        let mut packet = query();
        packet[2] |= 0x80;
        assert_eq!(parse_query(&packet), Err(QueryError::IsResponse));
        assert_eq!(QueryError::IsResponse.rcode(), None);
        assert_eq!(QueryError::TooShort.rcode(), None);
    }

    #[test]
    fn other_opcodes_are_not_implemented() {
        let mut packet = query();
        packet[2] |= 5 << 3; // UPDATE
        assert_eq!(parse_query(&packet), Err(QueryError::Opcode(5)));
        assert_eq!(QueryError::Opcode(5).rcode(), Some(RCODE_NOTIMP));
    }

    #[test]
    fn question_counts_other_than_one_are_formerr() {
        for count in [0u8, 2] {
            let mut packet = query();
            packet[5] = count;
            let err = parse_query(&packet).unwrap_err();
            assert_eq!(err, QueryError::QuestionCount(count.into()));
            assert_eq!(err.rcode(), Some(RCODE_FORMERR));
        }
    }

    #[test]
    fn a_label_over_63_bytes_is_rejected() {
        let mut packet = QUERY[..HEADER_LEN].to_vec();
        packet.push(64);
        packet.extend_from_slice(&[b'a'; 64]);
        packet.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(
            parse_query(&packet),
            Err(QueryError::Name(NameError::BadLabel))
        );
    }

    #[test]
    fn a_name_over_255_bytes_is_rejected() {
        let mut packet = QUERY[..HEADER_LEN].to_vec();
        for _ in 0..5 {
            packet.push(50);
            packet.extend_from_slice(&[b'a'; 50]);
        }
        packet.extend_from_slice(&[0, 0, 1, 0, 1]);
        // 5 × 51 + 1 = 256 bytes.
        assert_eq!(
            parse_query(&packet),
            Err(QueryError::Name(NameError::TooLong))
        );
    }

    #[test]
    fn names_that_run_past_the_end_are_truncated() {
        for len in [13, 15, 22] {
            assert_eq!(
                parse_query(&QUERY[..len]),
                Err(QueryError::Name(NameError::Truncated)),
                "cut at {len}"
            );
        }
        assert_eq!(parse_query(&QUERY[..25]), Err(QueryError::Truncated));
    }

    #[test]
    fn pointers_in_the_question_are_rejected() {
        // The question's name pointing at itself: a loop, and a pointer in the question.
        let mut packet = QUERY[..HEADER_LEN].to_vec();
        packet.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(
            parse_query(&packet),
            Err(QueryError::Name(NameError::BadPointer))
        );
    }

    #[test]
    fn record_names_may_point_backwards_only() {
        let mut packet = query();
        let at = packet.len();
        packet.extend_from_slice(&[0xc0, 12]);
        assert_eq!(skip_name(&packet, at, true), Ok(at + 2));
        assert_eq!(skip_name(&packet, at, false), Err(NameError::BadPointer));
        packet.extend_from_slice(&[0xc0, 29]);
        assert_eq!(skip_name(&packet, at + 2, true), Err(NameError::BadPointer));
        // Into the header.
        assert_eq!(skip_name(&[0xc0, 3], 0, true), Err(NameError::BadPointer));
        // The reserved label types.
        assert_eq!(skip_name(&[0x40, 0], 0, true), Err(NameError::BadLabel));
        assert_eq!(skip_name(&[0x80, 0], 0, true), Err(NameError::BadLabel));
    }

    #[test]
    fn pointer_chains_end_even_when_they_loop() {
        // Offsets 12 and 14 point at each other: the second jump would go forwards.
        let mut packet = vec![0u8; HEADER_LEN];
        packet.extend_from_slice(&[0xc0, 14, 0xc0, 12]);
        assert_eq!(skip_name(&packet, 14, true), Err(NameError::BadPointer));
        assert_eq!(skip_name(&packet, 12, true), Err(NameError::BadPointer));
    }

    #[test]
    fn trailing_garbage_is_formerr() {
        let mut packet = query();
        packet.push(0);
        assert_eq!(parse_query(&packet), Err(QueryError::TrailingBytes));
        assert_eq!(QueryError::TrailingBytes.rcode(), Some(RCODE_FORMERR));
    }

    #[test]
    fn records_must_fit_in_the_message() {
        let packet = with_opt(query(), &OPT[..10]);
        assert_eq!(parse_query(&packet), Err(QueryError::Truncated));
        let mut long = OPT;
        long[10] = 4; // rdlength 4, no rdata
        assert_eq!(
            parse_query(&with_opt(query(), &long)),
            Err(QueryError::Truncated)
        );
    }

    #[test]
    fn opt_records_must_be_single_additional_and_root_owned() {
        let mut twice = with_opt(query(), &OPT);
        twice[11] = 2;
        twice.extend_from_slice(&OPT);
        assert_eq!(parse_query(&twice), Err(QueryError::BadOpt));
        let mut in_answers = query();
        in_answers[7] = 1;
        in_answers.extend_from_slice(&OPT);
        assert_eq!(parse_query(&in_answers), Err(QueryError::BadOpt));
        let mut owned = with_opt(query(), &[]);
        owned.extend_from_slice(&[0xc0, 12]);
        owned.extend_from_slice(&OPT[1..]);
        assert_eq!(parse_query(&owned), Err(QueryError::BadOpt));
    }

    #[test]
    fn other_records_are_noted() {
        // An A record in the additional section, owned by the question's name.
        let mut packet = with_opt(query(), &[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        packet.extend_from_slice(&[10, 0, 0, 1]);
        let q = parse_query(&packet).unwrap();
        assert!(q.extra_records);
        assert_eq!(q.edns, None);
    }

    #[test]
    fn error_replies_echo_the_header_and_maybe_the_question() {
        let packet = query();
        let mut out = Vec::new();
        assert!(error_reply(&packet, RCODE_SERVFAIL, Some(27), &mut out));
        assert_eq!(&out[..12], [0x12, 0x34, 0x81, 0x82, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&out[12..], &packet[12..27]);
        assert!(error_reply(&packet, RCODE_FORMERR, None, &mut out));
        assert_eq!(out, [0x12, 0x34, 0x81, 0x81, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(!error_reply(&packet[..5], RCODE_FORMERR, None, &mut out));
    }

    #[test]
    fn names_lowercase_without_touching_lengths() {
        let mut buf = [0u8; MAX_NAME_LEN];
        assert_eq!(
            lowercase_name(b"\x05TaSkS\x03WEB\x00", &mut buf),
            b"\x05tasks\x03web\x00"
        );
    }
}
