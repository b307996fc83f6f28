//! Embedded store: everything in process memory, lost on exit.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{LeadBatch, LeadOutcome, LeadStore, StoreError};
use crate::domain::{IngestPolicy, LeadId, LeadLedger, LeadProfile, LeadSnapshot, Timestamp};

#[derive(Debug)]
struct StoredLead {
    snapshot: LeadSnapshot,
    ledger: LeadLedger,
}

#[derive(Debug, Default)]
pub struct MemoryStore {
    leads: Mutex<HashMap<LeadId, StoredLead>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn leads(&self) -> std::sync::MutexGuard<'_, HashMap<LeadId, StoredLead>> {
        // A panic while holding the lock cannot leave a lead half-updated in
        // a way later calls could not read, so a poisoned lock is still used.
        self.leads.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn entry<'a>(leads: &'a mut HashMap<LeadId, StoredLead>, id: &LeadId, now: Timestamp) -> &'a mut StoredLead {
    leads
        .entry(id.clone())
        .or_insert_with(|| StoredLead { snapshot: LeadSnapshot::new(id.clone(), now), ledger: LeadLedger::default() })
}

#[async_trait]
impl LeadStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn upsert_lead(&self, profile: LeadProfile, now: Timestamp) -> Result<LeadSnapshot, StoreError> {
        let mut leads = self.leads();
        let lead = entry(&mut leads, &profile.lead_id.clone(), now);
        lead.snapshot.apply_profile(profile);
        Ok(lead.snapshot.clone())
    }

    async fn record_signals(
        &self,
        batches: Vec<LeadBatch>,
        now: Timestamp,
        policy: &IngestPolicy,
    ) -> Result<Vec<LeadOutcome>, StoreError> {
        let mut leads = self.leads();
        Ok(batches
            .into_iter()
            .map(|batch| {
                let lead = entry(&mut leads, &batch.lead_id, now);
                let statuses =
                    batch.signals.iter().map(|s| lead.ledger.record(&mut lead.snapshot, s, now, policy)).collect();
                LeadOutcome { statuses, lead: lead.snapshot.clone() }
            })
            .collect())
    }

    async fn load_leads(&self, ids: &[LeadId]) -> Result<Vec<Option<LeadSnapshot>>, StoreError> {
        let leads = self.leads();
        Ok(ids.iter().map(|id| leads.get(id).map(|l| l.snapshot.clone())).collect())
    }
}
