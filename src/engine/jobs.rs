//! Background rescore jobs of this replica.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::RescoreProgress;
use crate::domain::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    Running,
    Done,
    Failed(String),
    /// Stopped for a rescore under a newer rule set: that job's id.
    Superseded(String),
}

#[derive(Debug)]
pub struct RescoreJob {
    pub id: String,
    pub rule_set_version: String,
    pub started_at: Timestamp,
    pub progress: RescoreProgress,
    outcome: Mutex<(JobState, Option<Timestamp>)>,
    /// Set when a rescore under a newer rule set takes over: the job's id.
    superseded_by: Mutex<Option<String>>,
    /// Turns true when the job has finished, whatever its outcome.
    finished: tokio::sync::watch::Sender<bool>,
    /// The job this one superseded: it starts once that one stopped, so
    /// the older rule set never writes after the newer one (taken then).
    previous: Mutex<Option<Arc<RescoreJob>>>,
}

impl RescoreJob {
    pub fn state(&self) -> (JobState, Option<Timestamp>) {
        self.outcome.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn finish(&self, state: JobState, at: Timestamp) {
        *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = (state, Some(at));
        self.finished.send_replace(true);
    }

    /// The job this one superseded, once (see `previous`).
    pub fn take_previous(&self) -> Option<Arc<RescoreJob>> {
        self.previous.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Waits until the job has finished.
    pub async fn wait_finished(&self) {
        let mut finished = self.finished.subscribe();
        let _ = finished.wait_for(|done| *done).await;
    }

    /// The job that takes over, once a newer rule set's rescore started:
    /// this one stops at its next chunk of leads.
    pub fn superseded_by(&self) -> Option<String> {
        self.superseded_by.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn is_running(&self) -> bool {
        self.state().0 == JobState::Running && self.superseded_by().is_none()
    }
}

/// The most recent jobs, newest first; at most one running.
#[derive(Debug, Default)]
pub struct Jobs {
    jobs: Mutex<VecDeque<Arc<RescoreJob>>>,
    /// Jobs started so far (for unique ids).
    started: std::sync::atomic::AtomicU64,
}

/// Finished jobs remembered for GetRescoreJob.
const KEPT: usize = 20;

impl Jobs {
    /// A new running job under `rule_set_version`, or the one already
    /// running under it (`false`). A job running under another rule set is
    /// superseded by the new one: after any sequence of reloads, the last
    /// job covers every lead under the rule set in force.
    pub fn start(&self, rule_set_version: &str, now: Timestamp) -> (Arc<RescoreJob>, bool) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let running = jobs.iter().find(|j| j.is_running()).cloned();
        if let Some(running) = &running
            && running.rule_set_version == rule_set_version
        {
            return (running.clone(), false);
        }
        let seq = self.started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let job = Arc::new(RescoreJob {
            id: format!("rescore-{}-{seq}", now.millis()),
            rule_set_version: rule_set_version.to_owned(),
            started_at: now,
            progress: RescoreProgress::default(),
            outcome: Mutex::new((JobState::Running, None)),
            superseded_by: Mutex::new(None),
            finished: tokio::sync::watch::channel(false).0,
            previous: Mutex::new(running.clone()),
        });
        if let Some(old) = running {
            *old.superseded_by.lock().unwrap_or_else(|p| p.into_inner()) = Some(job.id.clone());
        }
        jobs.push_front(job.clone());
        jobs.truncate(KEPT);
        (job, true)
    }

    pub fn get(&self, id: &str) -> Option<Arc<RescoreJob>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|j| j.id == id).cloned()
    }
}
