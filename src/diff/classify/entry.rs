//! Partition entries: each row's identifier as a hash, with its row hash, row number and,
//! once joined, its verdict, in the partition the hash's top bits choose.

use datafusion::arrow::array::{Array, FixedSizeBinaryArray};

use crate::identity;
use crate::strings::Strings;

/// A row of one side, numbered across its batches in arrival order; NONE for no row.
pub(super) type Row = u32;
pub(super) const NONE: Row = Row::MAX;

/// Rows are spread over 2^PART_BITS partitions by the top bits of their identifier's hash,
/// so that each partition's hash tables fit the CPU caches: one table over the whole
/// state made every probe wait on memory (about 250 ns per row against 30 here).
const PART_BITS: u32 = 8;
pub(super) const PARTS: usize = 1 << PART_BITS;

/// Verdicts: the kind of a model row, and for invalid rows why.
pub(super) const V_NEW: u8 = 0;
pub(super) const V_CHANGED: u8 = 1;
pub(super) const V_UNCHANGED: u8 = 2;
/// Invalid: `V_INVALID + i` for reason `REASONS[i]`.
pub(super) const V_INVALID: u8 = 3;
pub(super) const REASONS: [&str; 4] = [
    identity::REASON_EMPTY,
    identity::REASON_EMAIL,
    identity::REASON_PHONE,
    identity::REASON_DUPLICATE,
];

pub(super) fn invalid(reason: &str) -> u8 {
    V_INVALID + REASONS.iter().position(|r| *r == reason).unwrap_or(0) as u8
}

fn part_of(id: u128) -> usize {
    (id >> (128 - PART_BITS)) as usize
}

/// One identifier of one side, copied next to the others of its partition so that joining
/// a partition reads memory that is close together. Identifiers are compared by their
/// 128-bit XXH3 hash rather than their bytes, less the top 8 bits that choose the partition
/// (the same for all of its entries): two different identifiers share the other 120 with a
/// probability below 10^-21 even among 30 M rows, and no bytes need copying. The hash is
/// seeded at random for each classification, so identifiers cannot be chosen in advance
/// (an e-mail address signed up with) to collide with someone else's.
///
/// Row hashes are compared by their first 8 bytes: a changed row passes for unchanged only
/// if its new hash agrees with its own old one there, a chance of 2^-64 per changed row.
#[derive(Clone, Copy)]
pub(super) struct Entry {
    /// The identifier's hash, with `flags` in the top 8 bits instead of the partition.
    pub(super) id: u128,
    pub(super) row_hash: u64,
    pub(super) row: Row,
    /// Model side, after the join: the first state row with this identifier (its index in
    /// the same partition), or NO_MATCH.
    pub(super) matched: u32,
}

/// An entry's flags: whether the row has a row hash (a null one never equals anything, as
/// in SQL), and on the model side, after the join, the row's verdict.
const HAS_HASH: u8 = 0x80;
const VERDICT: u8 = 0x7f;
const FLAGS_AT: u32 = 128 - PART_BITS;
const ID_BITS: u128 = (1 << FLAGS_AT) - 1;

impl Entry {
    /// A row's entry, its verdict not yet known (0).
    pub(super) fn new(id: u128, row_hash: Option<u64>, row: Row) -> Self {
        let flags = if row_hash.is_some() { HAS_HASH } else { 0 };
        Entry {
            id: (id & ID_BITS) | (u128::from(flags) << FLAGS_AT),
            row_hash: row_hash.unwrap_or_default(),
            row,
            matched: NO_MATCH,
        }
    }

    /// The identifier's hash as compared (without the partition bits).
    pub(super) fn ident(&self) -> u128 {
        self.id & ID_BITS
    }

    fn flags(&self) -> u8 {
        (self.id >> FLAGS_AT) as u8
    }

    pub(super) fn verdict(&self) -> u8 {
        self.flags() & VERDICT
    }

    pub(super) fn set_verdict(&mut self, verdict: u8) {
        let flags = (self.flags() & HAS_HASH) | verdict;
        self.id = self.ident() | (u128::from(flags) << FLAGS_AT);
    }

    /// Equal row hashes, neither null.
    pub(super) fn same_values(&self, other: &Entry) -> bool {
        self.flags() & other.flags() & HAS_HASH != 0 && self.row_hash == other.row_hash
    }
}

pub(super) const NO_MATCH: u32 = u32::MAX;
/// 32 bytes: the join's partitions are read and written whole, so size is time.
const _: () = assert!(std::mem::size_of::<Entry>() == 32);
const _: () = assert!(V_INVALID as usize + REASONS.len() <= VERDICT as usize);

pub(super) type Part = Vec<Entry>;

/// The hash table key of an identifier hash (its partition is from its top bits).
pub(super) fn low(id: u128) -> u64 {
    id as u64
}

// Row hashes are compared by their first 8 bytes: all that a count's bucket files keep.
const _: () = assert!(crate::functions::row_hash::PREFIX_BYTES == 8);

/// Adds every identifier of `ids` (rows from `first` on) to its partition by its hash under
/// `seed`, with its row hash.
pub(super) fn scatter(
    ids: &Strings,
    hashes: &FixedSizeBinaryArray,
    first: Row,
    seed: u64,
    parts: &mut [Part],
) {
    for i in 0..ids.len() {
        if let Some(id) = ids.get(i) {
            let h = xxhash_rust::xxh3::xxh3_128_with_seed(id.as_bytes(), seed);
            let row_hash = hashes
                .is_valid(i)
                .then(|| hashes.value(i).first_chunk::<8>());
            let row_hash = row_hash.flatten().map(|b| u64::from_le_bytes(*b));
            parts[part_of(h)].push(Entry::new(h, row_hash, first + i as Row));
        }
    }
}

/// Sizes each partition for `entries` when its side's first batch arrives rather than up
/// front: the model's first rows come once its own aggregates and joins have freed their
/// memory, which the allocator then gives to the partitions instead of fresh pages.
pub(super) fn reserve(parts: &mut [Part], entries: usize) {
    for p in parts {
        p.reserve(entries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_keeps_its_identifier_row_hash_and_verdict_apart() {
        let id = u128::MAX - 5;
        let mut e = Entry::new(id, Some(9), 3);
        assert_eq!(e.verdict(), 0);
        e.set_verdict(invalid(identity::REASON_PHONE));
        assert_eq!(e.verdict(), invalid(identity::REASON_PHONE));
        e.set_verdict(V_UNCHANGED);
        assert_eq!(
            (e.verdict(), e.ident(), e.row),
            (V_UNCHANGED, id & ID_BITS, 3)
        );
        // Same identifier in another partition's bits, same row hash: same values.
        let other = Entry::new(id & ID_BITS, Some(9), 4);
        assert_eq!(other.ident(), e.ident());
        assert!(e.same_values(&other));
        assert!(!e.same_values(&Entry::new(id, Some(8), 4)));
        // A null row hash equals nothing, not even another null one.
        let null = Entry::new(id, None, 5);
        assert!(!null.same_values(&null) && !e.same_values(&null));
    }
}
