//! Cohort score profiles from the aggregates the apply script keeps: per
//! partition and creation month, a hash of the leads' score buckets per
//! (model, group) and a hash of stage counters. Nothing here reads a lead,
//! and nothing here computes a figure: `CohortProfile::from_aggregates`
//! does, for every store.
//!
//! Cost: one pipelined round trip of P·M `HGETALL`s and P·M `HMGET`s (P
//! partitions, M months), each hash holding at most one field per whole
//! point of score the cohort spans — independent of the cohort's size.

use super::RedisStore;
use super::codec::cohort_field;
use crate::domain::Stage;
use crate::domain::profiles::{CohortCounter, CohortProfile, CohortQuery, ScoreBucket, ScoreDistribution};
use crate::store::StoreError;

pub(super) async fn profile(store: &RedisStore, query: &CohortQuery) -> Result<CohortProfile, StoreError> {
    let group = query.group();
    let months: Vec<String> = query.from.until(query.to).map(|m| m.key()).collect();
    let counters: Vec<CohortCounter> =
        Stage::ALL.iter().map(|s| CohortCounter::InStage(*s)).chain([CohortCounter::ReachedMql]).collect();
    let fields: Vec<String> = counters.iter().map(|c| cohort_field(&group, *c)).collect();
    let mut pipe = redis::pipe();
    let mut distributions = Vec::new();
    for partition in 0..store.keys.partitions() {
        for month in &months {
            let key = store.keys.cohort_scores(partition, month, &query.model, &group);
            pipe.hgetall(&key);
            distributions.push(key);
            pipe.cmd("HMGET").arg(store.keys.cohort_counts(partition, month)).arg(&fields);
        }
    }
    let replies: Vec<redis::Value> = store.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
    let mut replies = replies.into_iter();
    let mut distribution = ScoreDistribution::default();
    let mut sums = vec![0i64; counters.len()];
    for key in &distributions {
        let buckets: Vec<(String, i64)> = parse(replies.next())?;
        for (field, n) in buckets {
            let index = field.parse::<i64>().map_err(|_| {
                StoreError::Internal(format!("cohort distribution {key}: a field is not a score bucket"))
            })?;
            distribution.add(ScoreBucket::from_index(index), n);
        }
        let values: Vec<Option<i64>> = parse(replies.next())?;
        for (sum, n) in sums.iter_mut().zip(values) {
            *sum += n.unwrap_or(0);
        }
    }
    Ok(CohortProfile::from_aggregates(&distribution, counters.into_iter().zip(sums), query.buckets))
}

fn parse<T: redis::FromRedisValue>(value: Option<redis::Value>) -> Result<T, StoreError> {
    let value = value.ok_or_else(|| StoreError::Internal("cohort: missing reply".into()))?;
    redis::from_redis_value(value).map_err(|e| StoreError::Internal(format!("cohort: {e}")))
}
