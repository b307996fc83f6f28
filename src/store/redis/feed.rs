//! The qualification change feed on Redis Streams: one stream per key
//! partition (so a lead's stage change and its feed entry are written by one
//! script in one slot), read together through a composite cursor.
//!
//! Cursor format (opaque to clients): `r1:` then, per partition in order,
//! the last stream id consumed (`ms-seq`, empty for none), comma-separated.
//! A lead's changes are in one stream, so they always come in order; across
//! partitions entries are merged by stream id (time).

use crate::store::StoreError;

/// A stream entry id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

impl EntryId {
    pub fn parse(text: &str) -> Option<Self> {
        let (ms, seq) = text.split_once('-')?;
        Some(Self { ms: ms.parse().ok()?, seq: seq.parse().ok()? })
    }

    /// The XRANGE start just after this id.
    pub fn range_after(self) -> String {
        if self == EntryId::default() { "-".to_owned() } else { format!("({}-{}", self.ms, self.seq) }
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Last entry consumed per partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedCursor(pub Vec<EntryId>);

impl FeedCursor {
    pub fn decode(text: &str, partitions: u32) -> Result<Self, StoreError> {
        if text.is_empty() {
            return Ok(Self(vec![EntryId::default(); partitions as usize]));
        }
        let bad = |why: &str| StoreError::BadCursor(why.to_owned());
        let body = text.strip_prefix("r1:").ok_or_else(|| bad("not a cursor of this service"))?;
        let ids: Vec<EntryId> = body
            .split(',')
            .map(|p| if p.is_empty() { Some(EntryId::default()) } else { EntryId::parse(p) })
            .collect::<Option<_>>()
            .ok_or_else(|| bad("malformed cursor"))?;
        if ids.len() != partitions as usize {
            return Err(bad("the cursor was issued for another partition count"));
        }
        Ok(Self(ids))
    }

    pub fn encode(&self) -> String {
        let parts: Vec<String> =
            self.0.iter().map(|id| if *id == EntryId::default() { String::new() } else { id.to_string() }).collect();
        format!("r1:{}", parts.join(","))
    }
}

/// One feed entry read from a partition.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub partition: usize,
    pub id: EntryId,
    pub body: Body,
}

/// A feed entry's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// `l` (the lead id) and `c` (the stage change record).
    Moved { lead_id: String, record: Vec<u8> },
    /// A tombstone: `e` (the erased lead's reference) and `a` (when, unix ms).
    Erased { lead_ref: String, at: i64 },
}

/// The oldest `limit` entries of all partitions, in (time, partition)
/// order, each with the cursor just after it. Each partition's entries must
/// come in stream order.
pub fn merge(mut cursor: FeedCursor, per_partition: Vec<Vec<Entry>>, limit: usize) -> Vec<(Entry, String)> {
    let mut all: Vec<Entry> = per_partition.into_iter().flatten().collect();
    all.sort_by_key(|e| (e.id, e.partition));
    all.truncate(limit);
    all.into_iter()
        .map(|e| {
            cursor.0[e.partition] = e.id;
            let after = cursor.encode();
            (e, after)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(partition: usize, ms: u64) -> Entry {
        Entry {
            partition,
            id: EntryId { ms, seq: 0 },
            body: Body::Moved { lead_id: format!("l{partition}"), record: Vec::new() },
        }
    }

    #[test]
    fn cursors_round_trip_and_reject_foreign_ones() {
        let c = FeedCursor(vec![EntryId::default(), EntryId { ms: 17, seq: 2 }, EntryId::default()]);
        assert_eq!(c.encode(), "r1:,17-2,");
        assert_eq!(FeedCursor::decode(&c.encode(), 3).unwrap(), c);
        assert_eq!(FeedCursor::decode("", 2).unwrap().0.len(), 2);
        for bad in ["m3", "r1:x", "r1:,1-1"] {
            assert!(matches!(FeedCursor::decode(bad, 3), Err(StoreError::BadCursor(_))), "{bad}");
        }
        assert_eq!(EntryId::default().range_after(), "-");
        assert_eq!(EntryId { ms: 5, seq: 1 }.range_after(), "(5-1");
    }

    #[test]
    fn merges_by_time_and_advances_only_what_was_returned() {
        let cursor = FeedCursor(vec![EntryId::default(); 2]);
        let merged = merge(cursor, vec![vec![entry(0, 10), entry(0, 30)], vec![entry(1, 20), entry(1, 40)]], 3);
        let order: Vec<_> = merged.iter().map(|(e, _)| (e.partition, e.id.ms)).collect();
        assert_eq!(order, [(0, 10), (1, 20), (0, 30)]);
        assert_eq!(merged[2].1, "r1:30-0,20-0");
    }
}
