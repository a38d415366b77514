//! Weighted Maglev lookup tables (Eisenbud et al., NSDI 2016), pure.
//!
//! A table has a prime number of slots, each naming a backend. A flow's slot is its hash
//! modulo the table size. Every backend walks the table in its own permutation (an offset
//! and a skip derived from its key) and claims the next free slot when its turn comes, so:
//! - the slots split between backends in proportion to their weights;
//! - removing a backend frees only its own slots (plus a few others, well under 1/N), so the
//!   flows of the other backends keep their backend.
//!
//! The keys are hashed with a fixed function (FNV-1a, two seeds), so every host that knows
//! the same backend set computes the same table.

/// Default table size: a prime, large enough for about 100 backends within 1 % of their
/// fair share.
pub const DEFAULT_TABLE_SIZE: u32 = 16381;

/// A backend as Maglev sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevBackend<'a> {
    /// Stable identity (the task ID), the same on every host.
    pub key: &'a str,
    /// Relative weight; 0 takes no slot.
    pub weight: u16,
}

/// Builds a table of `size` slots (`size` must be prime; see [`is_prime`]). Each slot holds an
/// index into `backends`. Returns an empty table when no backend has a weight.
pub fn table(backends: &[MaglevBackend<'_>], size: u32) -> Vec<u32> {
    debug_assert!(is_prime(size), "Maglev table size {size} is not prime");
    let size_usize = size as usize;
    let mut live: Vec<(usize, Permutation)> = backends
        .iter()
        .enumerate()
        .filter(|(_, b)| b.weight > 0)
        .map(|(i, b)| (i, Permutation::new(b.key, size)))
        .collect();
    // Turns go in key order, so the table depends on the set, not on the caller's order.
    live.sort_by_key(|(i, _)| backends[*i].key);
    if live.is_empty() || size == 0 {
        return Vec::new();
    }
    let max_weight = live
        .iter()
        .map(|(i, _)| backends[*i].weight)
        .max()
        .unwrap_or(1) as u64;

    const EMPTY: u32 = u32::MAX;
    let mut slots = vec![EMPTY; size_usize];
    let mut next = vec![0u64; live.len()];
    // Weighted turns: each round, a backend earns weight/max_weight of a turn; it claims a
    // slot for every whole turn it holds. Equal weights give the paper's round robin.
    let mut credit = vec![0u64; live.len()];
    let mut filled = 0usize;
    while filled < size_usize {
        for (n, (index, perm)) in live.iter().enumerate() {
            credit[n] += backends[*index].weight as u64;
            if credit[n] < max_weight {
                continue;
            }
            credit[n] -= max_weight;
            let slot = loop {
                let candidate = perm.slot(next[n]);
                next[n] += 1;
                if slots[candidate] == EMPTY {
                    break candidate;
                }
            };
            slots[slot] = *index as u32;
            filled += 1;
            if filled == size_usize {
                break;
            }
        }
    }
    slots
}

/// Whether `n` is prime (table sizes must be).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while (d as u64) * (d as u64) <= n as u64 {
        if n % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}

/// A backend's walk through the table: slot(j) = (offset + j * skip) mod size.
struct Permutation {
    offset: u64,
    skip: u64,
    size: u64,
}

impl Permutation {
    fn new(key: &str, size: u32) -> Self {
        let size = size as u64;
        Permutation {
            offset: fnv1a(key.as_bytes(), OFFSET_SEED) % size,
            skip: if size > 1 {
                fnv1a(key.as_bytes(), SKIP_SEED) % (size - 1) + 1
            } else {
                1
            },
            size,
        }
    }

    fn slot(&self, j: u64) -> usize {
        ((self.offset + (j % self.size) * self.skip) % self.size) as usize
    }
}

const OFFSET_SEED: u64 = 0xcbf2_9ce4_8422_2325;
const SKIP_SEED: u64 = 0x8422_2325_cbf2_9ce4;

/// FNV-1a, 64 bits, seeded through the offset basis, with a final avalanche so that keys
/// differing in their last byte still land far apart.
fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut hash = seed;
    for &b in bytes {
        hash ^= b as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("task-{i:04}")).collect()
    }

    fn backends(keys: &[String], weight: u16) -> Vec<MaglevBackend<'_>> {
        keys.iter()
            .map(|k| MaglevBackend { key: k, weight })
            .collect()
    }

    fn shares(table: &[u32], n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for &slot in table {
            counts[slot as usize] += 1;
        }
        counts
    }

    #[test]
    fn default_size_is_prime() {
        assert!(is_prime(DEFAULT_TABLE_SIZE));
        assert!(is_prime(65537) && !is_prime(65536) && !is_prime(1) && is_prime(2));
    }

    #[test]
    fn every_slot_is_filled_and_shares_are_even() {
        let keys = keys(10);
        let t = table(&backends(&keys, 1), DEFAULT_TABLE_SIZE);
        assert_eq!(t.len(), DEFAULT_TABLE_SIZE as usize);
        let fair = DEFAULT_TABLE_SIZE as f64 / 10.0;
        for share in shares(&t, 10) {
            assert!(
                (share as f64 - fair).abs() <= 1.0,
                "share {share}, fair {fair}"
            );
        }
    }

    #[test]
    fn weights_split_slots_in_proportion() {
        let keys = keys(3);
        let b = vec![
            MaglevBackend {
                key: &keys[0],
                weight: 1,
            },
            MaglevBackend {
                key: &keys[1],
                weight: 2,
            },
            MaglevBackend {
                key: &keys[2],
                weight: 3,
            },
        ];
        let t = table(&b, DEFAULT_TABLE_SIZE);
        let s = shares(&t, 3);
        let total = DEFAULT_TABLE_SIZE as f64;
        for (i, want) in [1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0].iter().enumerate() {
            let got = s[i] as f64 / total;
            assert!((got - want).abs() < 0.01, "backend {i}: {got} vs {want}");
        }
    }

    #[test]
    fn zero_weight_and_empty_sets_take_no_slot() {
        let keys = keys(2);
        assert!(table(&[], 7).is_empty());
        assert!(table(&backends(&keys, 0), 7).is_empty());
        let b = vec![
            MaglevBackend {
                key: &keys[0],
                weight: 0,
            },
            MaglevBackend {
                key: &keys[1],
                weight: 5,
            },
        ];
        assert!(table(&b, 13).iter().all(|&s| s == 1));
    }

    #[test]
    fn removing_one_backend_moves_little_else() {
        for n in [3usize, 10, 50] {
            let keys = keys(n);
            let before = table(&backends(&keys, 1), DEFAULT_TABLE_SIZE);
            let removed = n / 2;
            let rest: Vec<String> = keys
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != removed)
                .map(|(_, k)| k.clone())
                .collect();
            let after = table(&backends(&rest, 1), DEFAULT_TABLE_SIZE);
            // Compare by key: indices shift once a backend is gone.
            let name_before = |slot: usize| keys[before[slot] as usize].as_str();
            let name_after = |slot: usize| rest[after[slot] as usize].as_str();
            let moved = (0..DEFAULT_TABLE_SIZE as usize)
                .filter(|&s| name_before(s) != keys[removed] && name_before(s) != name_after(s))
                .count();
            // Maglev trades a little disruption for balance: besides the removed backend's own
            // slots, at most about as many again change hands (the paper measures 1-2 %).
            // Established flows are pinned by the connection map, so only new flows see this.
            let bound = DEFAULT_TABLE_SIZE as usize / n;
            assert!(
                moved <= bound,
                "n={n}: {moved} slots of surviving backends moved (bound {bound})"
            );
        }
    }

    #[test]
    fn order_of_backends_does_not_change_the_mapping() {
        let keys = keys(8);
        let forward = table(&backends(&keys, 1), 1021);
        let mut reversed_keys = keys.clone();
        reversed_keys.reverse();
        let reversed = table(&backends(&reversed_keys, 1), 1021);
        let by_key = |t: &[u32], keys: &[String]| -> Vec<String> {
            t.iter().map(|&i| keys[i as usize].clone()).collect()
        };
        assert_eq!(by_key(&forward, &keys), by_key(&reversed, &reversed_keys));
    }

    #[test]
    fn hash_is_stable() {
        // Golden values: every host and every version must compute the same tables, so a
        // change here breaks mixed-version clusters.
        assert_eq!(fnv1a(b"task-0000", OFFSET_SEED), 0x4b6b_9d7c_81c3_acf3);
        assert_eq!(table(&backends(&keys(3), 1), 7), vec![0, 2, 0, 2, 1, 1, 0]);
    }
}
