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
    /// Keyed by signal type.
    pub tallies: BTreeMap<String, TypeTally>,
}

impl LeadSnapshot {
    /// A lead first seen at `now`, with nothing counted yet.
    pub fn new(lead_id: LeadId, now: Timestamp) -> Self {
        Self {
            lead_id,
            account_id: None,
            attributes: BTreeMap::new(),
            created_at: now,
            stage: Stage::Lead,
            tallies: BTreeMap::new(),
        }
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
