//! Load shedding: at most `max_in_flight` calls are handled at once; the
//! next ones are answered `RESOURCE_EXHAUSTED` at once instead of queueing
//! (a queue only adds latency to calls whose callers will give up). Health
//! and reflection are never shed, so probes keep answering under load.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::gate::Gate;

#[derive(Clone)]
pub struct LoadShed {
    slots: Option<Arc<Semaphore>>,
}

impl LoadShed {
    /// `max_in_flight` 0: no limit.
    pub fn new(max_in_flight: usize) -> Self {
        Self { slots: (max_in_flight > 0).then(|| Arc::new(Semaphore::new(max_in_flight))) }
    }
}

impl Gate for LoadShed {
    type Ticket = Option<OwnedSemaphorePermit>;

    fn admit(&self, path: &str, _: &http::HeaderMap) -> Result<Self::Ticket, tonic::Status> {
        match &self.slots {
            Some(slots) if crate::auth::required_scope(path).is_some() => {
                slots.clone().try_acquire_owned().map(Some).map_err(|_| {
                    tonic::Status::resource_exhausted(
                        "the service is at its limit of calls in flight (max_in_flight): retry with backoff",
                    )
                })
            }
            _ => Ok(None),
        }
    }
}
