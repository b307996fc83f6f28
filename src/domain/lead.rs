//! A lead as the scoring sees it: profile plus per-type tallies.

use std::collections::BTreeMap;

use super::{AccountId, LeadId, Stage, Timestamp, TypeTally};

/// Profile data the CRM sends (`UpsertLead`).
#[derive(Debug, Clone, PartialEq)]
pub struct LeadProfile {
    pub lead_id: LeadId,
    pub account_id: Option<AccountId>,
    /// Attribute names are validated identifiers (see `api::convert`).
    pub attributes: BTreeMap<String, String>,
    /// The CRM's creation time, when it sent one.
    pub created_at: Option<Timestamp>,
}

/// Everything stored about a lead that scoring reads.
#[derive(Debug, Clone, PartialEq)]
pub struct LeadSnapshot {
    pub lead_id: LeadId,
    pub account_id: Option<AccountId>,
    pub attributes: BTreeMap<String, String>,
    pub created_at: Timestamp,
    pub stage: Stage,
    /// When the lead entered its stage.
    pub stage_since: Timestamp,
    /// When the last counted signal was recorded (arrival, not occurrence).
    pub last_engaged_at: Option<Timestamp>,
    /// Signals ever recorded (duplicates excluded, capped ones included):
    /// when the raw history holds this many, it holds them all.
    pub recorded: u64,
    /// For an anonymous visitor that was identified: the lead its signals
    /// now go to.
    pub merged_into: Option<LeadId>,
    /// Trigger definition → when it last fired for this lead (cooldowns).
    pub trigger_fired: BTreeMap<String, Timestamp>,
    /// Keyed by signal type.
    pub tallies: BTreeMap<String, TypeTally>,
    /// Signals recorded per type per UTC day of `occurred_at` (capped ones
    /// included), within the retention window: caps and windowed counts.
    pub daily: BTreeMap<String, BTreeMap<i64, u32>>,
}

impl LeadSnapshot {
    /// A lead first seen at `now`, with nothing counted yet: `ANONYMOUS`
    /// for a visitor, `LEAD` otherwise.
    pub fn new(lead_id: LeadId, now: Timestamp) -> Self {
        let stage = if lead_id.visitor().is_some() { Stage::Anonymous } else { Stage::Lead };
        Self {
            lead_id,
            account_id: None,
            attributes: BTreeMap::new(),
            created_at: now,
            stage,
            merged_into: None,
            trigger_fired: BTreeMap::new(),
            stage_since: now,
            last_engaged_at: None,
            recorded: 0,
            tallies: BTreeMap::new(),
            daily: BTreeMap::new(),
        }
    }

    /// Signals of a type that counted during the last `days` UTC days
    /// (today included): per day, what arrived up to the type's daily cap.
    pub fn count_within(&self, signal_type: &str, days: u32, daily_cap: Option<u32>, now: Timestamp) -> u64 {
        let Some(per_day) = self.daily.get(signal_type) else { return 0 };
        let first = now.utc_day() - i64::from(days) + 1;
        per_day.range(first..).map(|(_, n)| u64::from(daily_cap.map_or(*n, |cap| (*n).min(cap)))).sum()
    }

    /// Whether the lead showed engagement (a counted signal arrived) since it
    /// entered its stage: what reopens a recycled lead.
    pub fn engaged_since_stage_change(&self) -> bool {
        self.last_engaged_at.is_some_and(|at| at > self.stage_since)
    }

    /// Replaces the profile; attributes are replaced as a whole and
    /// `created_at` only when the CRM sent one.
    pub fn apply_profile(&mut self, profile: LeadProfile) {
        self.account_id = profile.account_id;
        self.attributes = profile.attributes;
        if let Some(created_at) = profile.created_at {
            self.created_at = created_at;
        }
    }
}
