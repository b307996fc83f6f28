//! Every Redis key name leadscore uses is built here.
//!
//! Layout (SPEC §7): `{prefix}:{p<N>}:lead:<id>` (the lead's record), where
//! `N` is the lead's partition. The `{p<N>}` hash tag puts all of a partition's keys — leads,
//! feed, triggers, indexes and aggregates — in one Redis Cluster slot, so
//! one script call can update them atomically. Ids are
//! percent-encoded, so `{`, `}`, `:`, spaces and non-ASCII in an id can
//! neither move the hash tag nor collide with a suffix.

use std::fmt::Write as _;

use crate::domain::LeadId;
use crate::domain::state::Due;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpace {
    prefix: String,
    partitions: u32,
}

/// The keys of one lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeadKeys {
    /// String: the record's version (16 hex digits) and the record
    /// (`record.rs`).
    pub lead: String,
    /// Stream: the qualification change feed of the lead's partition.
    pub feed: String,
    /// Sorted set: the partition's lead ids by created_at.
    pub index: String,
    /// Stream: the partition's fired nurture triggers.
    pub triggers: String,
    /// List: the ids of the lead's own entries in `feed` (`f<id>`) and
    /// `triggers` (`t<id>`), newest first, for as long as the streams keep
    /// them: what an erasure deletes.
    pub entries: String,
}

/// The keys of one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountKeys {
    /// Hash: `a:<name>` attributes, `u` set once upserted, `q` the
    /// qualifying rule and when (`<rule>␟<unix ms>`).
    pub account: String,
    /// Set: the ids of the leads that name the account.
    pub leads: String,
}

impl KeySpace {
    /// `partitions` must never change for a deployment: it decides where
    /// every lead lives.
    pub fn new(prefix: impl Into<String>, partitions: u32) -> Self {
        Self { prefix: prefix.into(), partitions: partitions.max(1) }
    }

    /// Stable across versions and machines: FNV-1a of the id's bytes.
    pub fn partition(&self, lead: &LeadId) -> u32 {
        self.partition_of(lead.as_str())
    }

    fn partition_of(&self, id: &str) -> u32 {
        let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        (hash % u64::from(self.partitions)) as u32
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every key of a partition starts with this.
    pub fn base(&self, partition: u32) -> String {
        format!("{}:{{p{partition}}}:", self.prefix)
    }

    /// A cohort month's stage counters (hash: `group␟STAGE`, `group␟q`).
    pub fn cohort_counts(&self, partition: u32, month: &str) -> String {
        format!("{}cohort:{month}", self.base(partition))
    }

    /// A cohort month's score distribution of one model and group (hash:
    /// score bucket index → leads).
    pub fn cohort_scores(&self, partition: u32, month: &str, model: &str, group: &str) -> String {
        format!("{}cohort:{month}:{model}:{group}", self.base(partition))
    }

    /// A UTC day's funnel counters (hash).
    pub fn funnel(&self, partition: u32, day: i64) -> String {
        format!("{}funnel:{day}", self.base(partition))
    }

    /// A UTC day's credits under a multi-touch attribution model (hash).
    pub fn credit(&self, partition: u32, model: &str, day: i64) -> String {
        format!("{}credit:{model}:{day}", self.base(partition))
    }

    /// An account lives in the partition of its id.
    pub fn account(&self, account: &crate::domain::AccountId) -> AccountKeys {
        let partition = self.partition_of(account.as_str());
        let base = format!("{}account:{}", self.base(partition), encode(account.as_str()));
        AccountKeys { leads: format!("{base}:leads"), account: base }
    }

    /// The qualification change feed of a partition.
    pub fn feed(&self, partition: u32) -> String {
        format!("{}:{{p{partition}}}:feed:stages", self.prefix)
    }

    /// The nurture triggers fired for a partition's leads.
    pub fn triggers(&self, partition: u32) -> String {
        format!("{}:{{p{partition}}}:triggers", self.prefix)
    }

    /// A consumer group's counters on a partition's trigger stream.
    pub fn trigger_counters(&self, group: &str, partition: u32) -> String {
        format!("{}:{{p{partition}}}:triggers:counters:{group}", self.prefix)
    }

    /// A partition's index `due` (sorted set of lead ids): leads waiting
    /// for an inactivity trigger by last engagement, hand-overs waiting for
    /// sales by hand-over time, and by deadline until it passes.
    pub fn due(&self, due: &Due, partition: u32) -> String {
        match due {
            Due::Inactivity(definition) => format!("{}:{{p{partition}}}:inactive:{definition}", self.prefix),
            Due::Waiting => format!("{}:{{p{partition}}}:handover:waiting", self.prefix),
            Due::Deadline => format!("{}:{{p{partition}}}:handover:deadline", self.prefix),
        }
    }

    /// A UTC month's marketing spend (hash: `<day>␟<campaign>␟<source>␟<channel>`
    /// → millionths).
    pub fn spend(&self, month: &str) -> String {
        format!("{}:spend:{month}", self.prefix)
    }

    /// The currency of all spend under this prefix (string, ISO 4217).
    pub fn spend_currency(&self) -> String {
        format!("{}:spend:currency", self.prefix)
    }

    /// A webhook endpoint's delivery state, all in the endpoint's own slot
    /// (endpoint names are `[a-z0-9_-]`): `lease` (string: the holder),
    /// `position` (hash: `cursor`, `since`), `dead` and `replay` (sorted
    /// sets of event ids by time), `letters` (hash: event id → letter as
    /// JSON), `counts` (hash).
    pub fn webhook(&self, endpoint: &str, part: &str) -> String {
        format!("{}:webhook:{{{endpoint}}}:{part}", self.prefix)
    }

    /// The audit trail (stream: `e` → the event as JSON; ids by time).
    pub fn audit(&self) -> String {
        format!("{}:audit", self.prefix)
    }

    /// The layout format of the data under this prefix (`record::FORMAT`).
    pub fn format(&self) -> String {
        format!("{}:format", self.prefix)
    }

    /// Rule-set versions and their content digests (one small hash).
    pub fn rule_set_versions(&self) -> String {
        format!("{}:rulesets", self.prefix)
    }

    /// The digest of the rule set last activated (string).
    pub fn active_rule_set(&self) -> String {
        format!("{}:rulesets:active", self.prefix)
    }

    /// The ids of a partition's leads, by created_at.
    pub fn index(&self, partition: u32) -> String {
        format!("{}:{{p{partition}}}:leads", self.prefix)
    }

    /// The keys layout format 1 kept beside a lead's hash, which format 2
    /// holds in the record: event ids seen, per-day counters, raw history,
    /// stage history, score history. Read and removed by `leadscore
    /// migrate` only.
    pub fn format1_lead_parts(&self, lead: &LeadId) -> [String; 5] {
        let base = self.lead(lead).lead;
        [":seen", ":days", ":hist", ":stages", ":scores"].map(|suffix| format!("{base}{suffix}"))
    }

    /// Where `leadscore migrate` rebuilds a stream before renaming it over
    /// `stream` (same hash slot).
    pub fn rebuilding(&self, stream: &str) -> String {
        format!("{stream}:migrating")
    }

    pub fn lead(&self, lead: &LeadId) -> LeadKeys {
        let partition = self.partition(lead);
        let base = format!("{}:{{p{partition}}}:lead:{}", self.prefix, encode(lead.as_str()));
        LeadKeys {
            feed: self.feed(partition),
            index: self.index(partition),
            triggers: self.triggers(partition),
            entries: format!("{base}:entries"),
            lead: base,
        }
    }
}

/// Percent-encodes every byte outside `[A-Za-z0-9._~-]`.
fn encode(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> LeadId {
        LeadId::parse(s).unwrap()
    }

    #[test]
    fn layout_and_hash_tag() {
        let ks = KeySpace::new("ls", 256);
        let keys = ks.lead(&id("lead-42"));
        let tag = format!("{{p{}}}", ks.partition(&id("lead-42")));
        assert_eq!(keys.lead, format!("ls:{tag}:lead:lead-42"));
    }

    #[test]
    fn hostile_ids_cannot_move_the_tag_or_collide() {
        let ks = KeySpace::new("ls", 256);
        for raw in ["{p1}", "a:b", "a b", "é}{", "50%"] {
            let keys = ks.lead(&id(raw));
            // The first '{' … '}' pair is still the partition tag.
            let tag_end = keys.lead.find('}').unwrap();
            assert!(keys.lead[..tag_end].ends_with(&ks.partition(&id(raw)).to_string()));
            assert_eq!(keys.lead.matches(['{', '}']).count(), 2, "{}", keys.lead);
            assert_eq!(keys.lead.matches(':').count(), 3, "{}", keys.lead);
        }
        assert_ne!(ks.lead(&id("a:b")).lead, ks.lead(&id("a")).lead);
        assert_ne!(ks.lead(&id("%41")).lead, ks.lead(&id("A")).lead);
    }

    #[test]
    fn partition_is_stable() {
        // Pinned: changing the hash would strand every stored lead.
        assert_eq!(KeySpace::new("ls", 256).partition(&id("lead-1")), 21);
    }
}
