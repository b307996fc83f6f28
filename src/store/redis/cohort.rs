//! Cohort score profiles from the aggregates `profile.lua` keeps: per
//! partition and creation month, a sorted set of the leads' scores and a
//! hash of stage counts. Nothing here reads a lead.
//!
//! Time: with P partitions, M months, B buckets and R search rounds, a
//! profile costs O(P·M·(B + 4R)·log n) Redis work in 2 + R round trips, R
//! about log2(score range · n / 256) — independent of the cohort's size,
//! except that each percentile ends by reading at most 256 scores.

use std::collections::BTreeMap;

use super::RedisStore;
use super::codec::{cohort_field, num};
use crate::domain::Stage;
use crate::domain::profiles::{
    CohortCounter, CohortProfile, CohortQuery, HistogramBucket, PERCENTILES, histogram_bounds, nearest_rank,
};
use crate::store::StoreError;

/// A percentile's search ends by reading the scores left in its range once
/// at most this many remain.
const FETCH_AT_MOST: u64 = 256;

pub(super) async fn profile(store: &RedisStore, query: &CohortQuery) -> Result<CohortProfile, StoreError> {
    let group = query.group();
    let months: Vec<String> = query.from.until(query.to).map(|m| m.key()).collect();
    let mut zsets = Vec::new();
    let mut counts = Vec::new();
    for partition in 0..store.keys.partitions() {
        for month in &months {
            zsets.push(store.keys.cohort_scores(partition, month, &query.model, &group));
            counts.push(store.keys.cohort_counts(partition, month));
        }
    }

    // Round 1: sizes, extremes and stage counts.
    let stage_fields: Vec<String> =
        Stage::ALL.iter().map(|s| cohort_field(&group, CohortCounter::InStage(*s))).collect();
    let reached_field = cohort_field(&group, CohortCounter::ReachedMql);
    let mut pipe = redis::pipe();
    for key in &zsets {
        pipe.zcard(key).zrange_withscores(key, 0, 0).zrange_withscores(key, -1, -1);
    }
    for key in &counts {
        pipe.cmd("HMGET").arg(key).arg(&stage_fields).arg(&reached_field);
    }
    let replies: Vec<redis::Value> = store.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
    let mut replies = replies.into_iter();
    let mut profile = CohortProfile::default();
    let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
    for _ in &zsets {
        let (card, first, last) = (replies.next(), replies.next(), replies.next());
        profile.lead_count += parse::<u64>(card)?;
        for (_, score) in parse::<Vec<(String, f64)>>(first)?.into_iter().chain(parse::<Vec<(String, f64)>>(last)?) {
            min = min.min(score);
            max = max.max(score);
        }
    }
    let mut by_stage = BTreeMap::new();
    for _ in &counts {
        let values: Vec<Option<i64>> = parse(replies.next())?;
        for (i, n) in values.into_iter().enumerate() {
            let n = u64::try_from(n.unwrap_or(0)).unwrap_or(0);
            match Stage::ALL.get(i) {
                Some(stage) => *by_stage.entry(*stage).or_insert(0) += n,
                None => profile.reached_mql += n,
            }
        }
    }
    by_stage.retain(|_, n| *n > 0);
    profile.by_stage = by_stage;
    if profile.lead_count == 0 {
        return Ok(profile);
    }
    profile.min = min;
    profile.max = max;

    // Round 2: the histogram.
    let bounds = histogram_bounds(min, max, query.buckets);
    let mut pipe = redis::pipe();
    for key in &zsets {
        for (i, (lower, upper)) in bounds.iter().enumerate() {
            let upper = if i + 1 == bounds.len() { num(*upper) } else { format!("({}", num(*upper)) };
            pipe.zcount(key, num(*lower), upper);
        }
    }
    let counts: Vec<u64> = store.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
    profile.histogram = bounds
        .iter()
        .enumerate()
        .map(|(i, (lower, upper))| HistogramBucket {
            lower: *lower,
            upper: *upper,
            count: counts.iter().skip(i).step_by(bounds.len()).sum(),
        })
        .collect();

    // Then the percentiles, all four searched side by side.
    let ranks: Vec<u64> = PERCENTILES.iter().map(|p| nearest_rank(*p, profile.lead_count)).collect();
    profile.percentiles =
        percentiles(store, &zsets, &ranks, (min, max), profile.lead_count).await?.try_into().unwrap_or_default();
    Ok(profile)
}

/// One percentile's search: its rank lies in `(lo, hi]`, with `below` scores
/// at or under `lo` and `within` scores in the range.
#[derive(Debug, Clone, Copy)]
struct Search {
    rank: u64,
    lo: Option<f64>,
    hi: f64,
    below: u64,
    within: u64,
}

async fn percentiles(
    store: &RedisStore,
    zsets: &[String],
    ranks: &[u64],
    (min, max): (f64, f64),
    n: u64,
) -> Result<Vec<f64>, StoreError> {
    // All `n` scores are at most `max`: every search starts with all of them.
    let mut searches: Vec<Search> =
        ranks.iter().map(|&rank| Search { rank, lo: None, hi: max, below: 0, within: n }).collect();
    let mut answers: Vec<Option<f64>> = vec![None; ranks.len()];
    // Bisect until each range holds few scores or a single value. Bounded:
    // halving a range of doubles ends within about 1100 steps, and in
    // practice within 30.
    for _ in 0..1200 {
        let mut open = Vec::new();
        for (i, s) in searches.iter().enumerate() {
            if answers[i].is_some() || s.within <= FETCH_AT_MOST {
                continue;
            }
            match settled(s, min) {
                Some(value) => answers[i] = Some(value),
                None => open.push(i),
            }
        }
        if open.is_empty() {
            break;
        }
        let mids: Vec<f64> = open.iter().map(|&i| midpoint(&searches[i], min)).collect();
        let at_most = count_at_most(store, zsets, &mids).await?;
        for ((&i, mid), count) in open.iter().zip(mids).zip(at_most) {
            let s = &mut searches[i];
            if count >= s.rank {
                s.within = count - s.below;
                s.hi = mid;
            } else {
                s.within -= count - s.below;
                s.below = count;
                s.lo = Some(mid);
            }
        }
    }
    // Read what is left in each range and pick the rank.
    let mut pipe = redis::pipe();
    let pending: Vec<usize> = (0..searches.len()).filter(|&i| answers[i].is_none()).collect();
    for &i in &pending {
        let s = &searches[i];
        let lo = s.lo.map_or("-inf".to_owned(), |lo| format!("({}", num(lo)));
        let limit = (s.rank - s.below) as isize;
        for key in zsets {
            pipe.zrangebyscore_limit_withscores(key, &lo, num(s.hi), 0, limit);
        }
    }
    let replies: Vec<Vec<(String, f64)>> = store.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
    let mut replies = replies.into_iter();
    for &i in &pending {
        let mut scores: Vec<f64> =
            (0..zsets.len()).flat_map(|_| replies.next().unwrap_or_default()).map(|p| p.1).collect();
        scores.sort_by(f64::total_cmp);
        let s = &searches[i];
        let index = (s.rank - s.below).saturating_sub(1) as usize;
        answers[i] = Some(scores.get(index).or(scores.last()).copied().unwrap_or(s.hi));
    }
    Ok(answers.into_iter().map(|a| a.unwrap_or(0.0)).collect())
}

/// The answer when a search's range holds a single value: `min` itself, or
/// two neighbouring doubles.
fn settled(s: &Search, min: f64) -> Option<f64> {
    match s.lo {
        None => (s.hi <= min).then_some(s.hi),
        Some(lo) => {
            let mid = midpoint(s, min);
            (mid <= lo || mid >= s.hi).then_some(s.hi)
        }
    }
}

/// The next value to split a search's range at: the range's middle, or
/// `min` first when the range is still open below.
fn midpoint(s: &Search, min: f64) -> f64 {
    match s.lo {
        None => min,
        Some(lo) => lo + (s.hi - lo) / 2.0,
    }
}

/// How many scores are at most each of `values`, over all `zsets`.
async fn count_at_most(store: &RedisStore, zsets: &[String], values: &[f64]) -> Result<Vec<u64>, StoreError> {
    let mut pipe = redis::pipe();
    for value in values {
        for key in zsets {
            pipe.zcount(key, "-inf", num(*value));
        }
    }
    let counts: Vec<u64> = store.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
    Ok(counts.chunks(zsets.len().max(1)).map(|c| c.iter().sum()).collect())
}

fn parse<T: redis::FromRedisValue>(value: Option<redis::Value>) -> Result<T, StoreError> {
    let value = value.ok_or_else(|| StoreError::Internal("cohort: missing reply".into()))?;
    redis::from_redis_value(value).map_err(|e| StoreError::Internal(format!("cohort: {e}")))
}
