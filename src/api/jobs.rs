//! Background rescore jobs of this replica.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::domain::Timestamp;
use crate::engine::RescoreProgress;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    Running,
    Done,
    Failed(String),
}

#[derive(Debug)]
pub struct RescoreJob {
    pub id: String,
    pub rule_set_version: String,
    pub started_at: Timestamp,
    pub progress: RescoreProgress,
    outcome: Mutex<(JobState, Option<Timestamp>)>,
}

impl RescoreJob {
    pub fn state(&self) -> (JobState, Option<Timestamp>) {
        self.outcome.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn finish(&self, state: JobState, at: Timestamp) {
        *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = (state, Some(at));
    }
}

/// The most recent jobs, newest first; at most one running.
#[derive(Debug, Default)]
pub struct Jobs {
    jobs: Mutex<VecDeque<Arc<RescoreJob>>>,
}

/// Finished jobs remembered for GetRescoreJob.
const KEPT: usize = 20;

impl Jobs {
    /// A new running job, or the one already running (`false`).
    pub fn start(&self, rule_set_version: &str, now: Timestamp) -> (Arc<RescoreJob>, bool) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(running) = jobs.iter().find(|j| j.state().0 == JobState::Running) {
            return (running.clone(), false);
        }
        let job = Arc::new(RescoreJob {
            id: format!("rescore-{}-{}", now.millis(), jobs.len()),
            rule_set_version: rule_set_version.to_owned(),
            started_at: now,
            progress: RescoreProgress::default(),
            outcome: Mutex::new((JobState::Running, None)),
        });
        jobs.push_front(job.clone());
        jobs.truncate(KEPT);
        (job, true)
    }

    pub fn get(&self, id: &str) -> Option<Arc<RescoreJob>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|j| j.id == id).cloned()
    }
}
