//! What travels inside the envelope, encoded with postcard (compact varints, no schema on the
//! wire). Datagrams start with a kind byte: SWIM messages are foca's own encoding, gossip
//! messages are [`GossipMsg`]. Stream frames are [`SyncMsg`], length-prefixed on the TCP stream.
//!
//! Decoding never panics: postcard checks every length against the bytes that remain, so a
//! forged length cannot make it allocate more than the (bounded) input.

use serde::{Deserialize, Serialize};

use super::entry::EntryBody;
use super::envelope::OVERHEAD;
use crate::store::NodeId;

/// The largest datagram gossip sends: below a 1500-byte underlay MTU with room for IP, UDP and
/// a tunnel header on the way.
pub const MAX_DATAGRAM: usize = 1400;
/// The largest plaintext inside a datagram.
pub const MAX_DATAGRAM_PLAINTEXT: usize = MAX_DATAGRAM - OVERHEAD;
/// The largest stream frame accepted, sealed: a full table for a fresh node of a large cluster
/// fits (1000 hosts × 10 tasks ≈ 2 MiB), a runaway does not.
pub const MAX_FRAME: usize = 16 << 20;

/// Datagram kind: a SWIM message (foca's encoding) follows.
pub const KIND_SWIM: u8 = 1;
/// Datagram kind: a [`GossipMsg`] follows.
pub const KIND_GOSSIP: u8 = 2;

/// One change (or, in a snapshot, one live row) of an origin's rows on one network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The origin's version of this change.
    pub version: u64,
    /// The version of the origin's previous change on this network: receivers that hold
    /// exactly that one know they are complete up to `version` (0 in snapshots).
    pub prev: u64,
    /// The task: with the group's network, the row's key.
    pub task_id: String,
    /// The row, or None for a deletion (tombstone).
    pub body: Option<EntryBody>,
}

/// Records of one origin on one network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// The node that owns the rows.
    pub origin: NodeId,
    /// The network.
    pub network: String,
    /// Some(v): the records are the origin's complete live set as of version v (plus changes
    /// after v); any row of this origin and network at or below v that is absent is deleted.
    pub snapshot: Option<u64>,
    /// The records.
    pub records: Vec<Record>,
}

/// A node's declaration of the networks it is on. Newer versions replace older ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Declaration {
    /// The node.
    pub node: NodeId,
    /// Its version (the node's hybrid clock).
    pub version: u64,
    /// Network IDs, sorted.
    pub networks: Vec<String>,
}

/// A gossip datagram's message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GossipMsg {
    /// Endpoint changes, pushed epidemically to peers on the groups' networks.
    Push {
        /// The sender (not necessarily the origin).
        from: NodeId,
        /// The changes.
        groups: Vec<Group>,
    },
    /// Network declarations, pushed epidemically to every member.
    Decls {
        /// The sender.
        from: NodeId,
        /// The declarations.
        decls: Vec<Declaration>,
    },
    // Variants below were added later: postcard tags a variant by its index, so new ones go
    // at the end and the older ones keep their encoding.
    /// A reachability check (`meshctl diag ports`): any node that opens it answers with
    /// [`GossipMsg::Pong`] to the datagram's source address, member or not.
    Ping {
        /// Chosen by the sender, echoed in the answer.
        nonce: u64,
    },
    /// The answer to [`GossipMsg::Ping`].
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
}

/// How complete a node's knowledge of one origin on one network is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginDigest {
    /// The origin.
    pub origin: NodeId,
    /// The version the node holds the origin's complete set at.
    pub complete: u64,
    /// The highest version of any record it holds.
    pub highest: u64,
}

/// Digests of every origin on one network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetDigest {
    /// The network.
    pub network: String,
    /// One digest per origin.
    pub origins: Vec<OriginDigest>,
}

/// What one side of an anti-entropy exchange knows, in summary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    /// The side's node.
    pub from: NodeId,
    /// The networks it is on: the other side sends rows of these networks only.
    pub networks: Vec<String>,
    /// (node, version) of every declaration it holds.
    pub decl_digest: Vec<(NodeId, u64)>,
    /// Per network it is on, per origin, how complete it is.
    pub digest: Vec<NetDigest>,
}

/// A frame of an anti-entropy exchange: the initiator opens with its state, the responder
/// answers with its state and what the initiator lacks, the initiator closes with what the
/// responder lacks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncMsg {
    /// Initiator → responder.
    Open(SyncState),
    /// Responder → initiator.
    Answer {
        /// The responder's state.
        state: SyncState,
        /// Declarations the initiator lacks.
        decls: Vec<Declaration>,
        /// Rows the initiator lacks.
        groups: Vec<Group>,
    },
    /// Initiator → responder.
    Close {
        /// Declarations the responder lacks.
        decls: Vec<Declaration>,
        /// Rows the responder lacks.
        groups: Vec<Group>,
    },
    // Appended, like GossipMsg's: existing variants keep their tags.
    /// A reachability check on TCP, in place of [`SyncMsg::Open`]: the responder answers
    /// [`SyncMsg::Pong`] and the stream ends.
    Ping {
        /// Chosen by the initiator, echoed in the answer.
        nonce: u64,
    },
    /// The answer to [`SyncMsg::Ping`].
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
}

/// Encodes a gossip message as datagram plaintext (kind byte first).
pub fn encode_gossip(msg: &GossipMsg) -> Vec<u8> {
    let mut out = vec![KIND_GOSSIP];
    out.extend(postcard::to_allocvec(msg).expect("encoding to a Vec cannot fail"));
    out
}

/// Decodes a gossip message from datagram plaintext after its kind byte; trailing bytes are an
/// error.
pub fn decode_gossip(body: &[u8]) -> Result<GossipMsg, postcard::Error> {
    match postcard::take_from_bytes(body)? {
        (msg, []) => Ok(msg),
        _ => Err(postcard::Error::DeserializeBadEncoding),
    }
}

/// Encodes a stream frame's plaintext.
pub fn encode_sync(msg: &SyncMsg) -> Vec<u8> {
    postcard::to_allocvec(msg).expect("encoding to a Vec cannot fail")
}

/// Decodes a stream frame's plaintext.
pub fn decode_sync(body: &[u8]) -> Result<SyncMsg, postcard::Error> {
    match postcard::take_from_bytes(body)? {
        (msg, []) => Ok(msg),
        _ => Err(postcard::Error::DeserializeBadEncoding),
    }
}

fn encoded_len<T: Serialize>(value: &T) -> usize {
    postcard::to_allocvec(value).map_or(usize::MAX, |v| v.len())
}

/// Upper bound of a group's bytes without its records: origin and snapshot varints (10 and
/// 11), the network's length prefix and bytes, the records' count.
fn group_overhead(network: &str) -> usize {
    10 + 11 + 3 + network.len() + 3
}

/// Upper bound of a message's bytes around its groups: kind, variant, sender, group count.
const MSG_OVERHEAD: usize = 1 + 1 + 10 + 3;

/// Splits pushed groups into datagram plaintexts of at most `MAX_DATAGRAM_PLAINTEXT` bytes,
/// splitting a group's records across datagrams when they do not fit one. A record that alone
/// exceeds a datagram is left out (entries are validated well below that size).
pub fn pack_push(from: NodeId, groups: &[Group]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut current: Vec<Group> = Vec::new();
    let mut size = MSG_OVERHEAD;
    let flush = |current: &mut Vec<Group>, size: &mut usize, out: &mut Vec<Vec<u8>>| {
        if !current.is_empty() {
            let msg = GossipMsg::Push {
                from,
                groups: std::mem::take(current),
            };
            let bytes = encode_gossip(&msg);
            debug_assert!(bytes.len() <= MAX_DATAGRAM_PLAINTEXT, "{}", bytes.len());
            out.push(bytes);
        }
        *size = MSG_OVERHEAD;
    };
    for group in groups {
        let header = group_overhead(&group.network);
        let mut open = false;
        for record in &group.records {
            let len = encoded_len(record);
            if MSG_OVERHEAD + header + len > MAX_DATAGRAM_PLAINTEXT {
                continue;
            }
            let need = len + if open { 0 } else { header };
            if size + need > MAX_DATAGRAM_PLAINTEXT {
                flush(&mut current, &mut size, &mut out);
                open = false;
            }
            if !open {
                current.push(Group {
                    origin: group.origin,
                    network: group.network.clone(),
                    snapshot: group.snapshot,
                    records: Vec::new(),
                });
                size += header;
                open = true;
            }
            current
                .last_mut()
                .expect("a group was just opened")
                .records
                .push(record.clone());
            size += len;
        }
    }
    flush(&mut current, &mut size, &mut out);
    out
}

/// Splits declarations into datagram plaintexts; a declaration too large for one datagram is
/// left to anti-entropy, which has no such limit.
pub fn pack_decls(from: NodeId, decls: &[Declaration]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut size = MSG_OVERHEAD;
    for decl in decls {
        let len = encoded_len(decl);
        if MSG_OVERHEAD + len > MAX_DATAGRAM_PLAINTEXT {
            continue;
        }
        if size + len > MAX_DATAGRAM_PLAINTEXT {
            out.push(encode_gossip(&GossipMsg::Decls {
                from,
                decls: std::mem::take(&mut current),
            }));
            size = MSG_OVERHEAD;
        }
        current.push(decl.clone());
        size += len;
    }
    if !current.is_empty() {
        out.push(encode_gossip(&GossipMsg::Decls {
            from,
            decls: current,
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::entry::sample;

    fn record(i: u64) -> Record {
        Record {
            version: 1_700_000_000_000_000 + i,
            prev: 1_700_000_000_000_000 + i - 1,
            task_id: format!("task{i:021}"),
            body: Some(sample("n", "t", (i % 250) as u8 + 2).body()),
        }
    }

    #[test]
    fn gossip_messages_round_trip() {
        let msg = GossipMsg::Push {
            from: 3,
            groups: vec![Group {
                origin: 9,
                network: "net".into(),
                snapshot: Some(5),
                records: vec![
                    record(1),
                    Record {
                        version: 7,
                        prev: 6,
                        task_id: "gone".into(),
                        body: None,
                    },
                ],
            }],
        };
        let bytes = encode_gossip(&msg);
        assert_eq!(bytes[0], KIND_GOSSIP);
        assert_eq!(decode_gossip(&bytes[1..]).unwrap(), msg);
    }

    #[test]
    fn golden_declaration_bytes() {
        let msg = GossipMsg::Decls {
            from: 1,
            decls: vec![Declaration {
                node: 2,
                version: 300,
                networks: vec!["ab".into()],
            }],
        };
        // kind 2, variant 1, from 1, one decl: node 2, version 300 (varint ac 02), one
        // network of two bytes.
        assert_eq!(
            encode_gossip(&msg),
            vec![2, 1, 1, 1, 2, 0xac, 0x02, 1, 2, b'a', b'b']
        );
    }

    #[test]
    fn golden_ping_bytes_keep_older_tags() {
        // kind 2, then the variant index: Push 0 and Decls 1 are unchanged, Ping 2, Pong 3;
        // nonce 300 is the varint ac 02.
        assert_eq!(
            encode_gossip(&GossipMsg::Ping { nonce: 300 }),
            [2, 2, 0xac, 0x02]
        );
        assert_eq!(encode_gossip(&GossipMsg::Pong { nonce: 1 }), [2, 3, 1]);
        assert_eq!(
            encode_gossip(&GossipMsg::Push {
                from: 1,
                groups: vec![]
            }),
            [2, 0, 1, 0]
        );
        // Open 0, Answer 1 and Close 2 are unchanged, Ping 3, Pong 4.
        let close = SyncMsg::Close {
            decls: vec![],
            groups: vec![],
        };
        assert_eq!(encode_sync(&close), [2, 0, 0]);
        assert_eq!(encode_sync(&SyncMsg::Ping { nonce: 300 }), [3, 0xac, 0x02]);
        assert_eq!(encode_sync(&SyncMsg::Pong { nonce: u64::MAX }).len(), 11);
        for msg in [SyncMsg::Ping { nonce: 7 }, SyncMsg::Pong { nonce: 7 }] {
            assert_eq!(decode_sync(&encode_sync(&msg)).unwrap(), msg);
        }
        let pong = encode_gossip(&GossipMsg::Pong { nonce: 7 });
        assert_eq!(
            decode_gossip(&pong[1..]).unwrap(),
            GossipMsg::Pong { nonce: 7 }
        );
    }

    #[test]
    fn a_truncated_or_padded_ping_is_an_error() {
        assert!(decode_gossip(&[2]).is_err());
        assert!(decode_gossip(&[2, 0x80]).is_err());
        assert!(decode_gossip(&[2, 1, 0]).is_err());
        assert!(decode_sync(&[3]).is_err());
        assert!(decode_sync(&[4, 1, 0]).is_err());
        // A variant index past the last one.
        assert!(decode_gossip(&[4, 1]).is_err());
        assert!(decode_sync(&[5, 1]).is_err());
    }

    #[test]
    fn trailing_bytes_and_garbage_are_errors_not_panics() {
        let mut bytes = encode_gossip(&GossipMsg::Decls {
            from: 1,
            decls: vec![],
        });
        bytes.push(0);
        assert!(decode_gossip(&bytes[1..]).is_err());
        // A pseudo-random walk over junk of every length up to 300 bytes.
        let mut x: u32 = 12345;
        for len in 0..300 {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            let _ = decode_gossip(&junk);
            let _ = decode_sync(&junk);
        }
        // A forged huge length does not allocate it.
        assert!(decode_sync(&[0, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }

    #[test]
    fn pushes_split_below_the_datagram_limit_and_lose_nothing() {
        let groups: Vec<Group> = (0..3)
            .map(|g| Group {
                origin: g,
                network: format!("network-{g:019}"),
                snapshot: None,
                records: (1..=40).map(record).collect(),
            })
            .collect();
        let packets = pack_push(1, &groups);
        assert!(packets.len() > 3);
        let mut seen = 0;
        for packet in &packets {
            assert!(packet.len() <= MAX_DATAGRAM_PLAINTEXT, "{}", packet.len());
            let GossipMsg::Push { groups: got, .. } = decode_gossip(&packet[1..]).unwrap() else {
                panic!("not a push");
            };
            seen += got.iter().map(|g| g.records.len()).sum::<usize>();
        }
        assert_eq!(seen, 120);
    }

    #[test]
    fn declarations_split_below_the_datagram_limit() {
        let decls: Vec<Declaration> = (0..100)
            .map(|n| Declaration {
                node: n,
                version: u64::MAX,
                networks: vec!["x".repeat(25); 3],
            })
            .collect();
        let packets = pack_decls(1, &decls);
        let mut seen = 0;
        for packet in &packets {
            assert!(packet.len() <= MAX_DATAGRAM_PLAINTEXT);
            if let GossipMsg::Decls { decls, .. } = decode_gossip(&packet[1..]).unwrap() {
                seen += decls.len();
            }
        }
        assert_eq!(seen, 100);
    }
}
