//! `leadscore migrate`: converts data written in layout format 1 (releases
//! up to d384684: a hash per lead plus five side keys, JSON in the streams,
//! sorted sets per cohort distribution) to format 2 in place, with the
//! service stopped. `tests/fixtures/format1/LAYOUT.md` maps every key.
//!
//! Idempotent and resumable: each step checks what it finds (a lead key
//! that is no longer a hash, a stream whose entries are no longer JSON) and
//! is atomic per lead, per chunk or per stream, so a run stopped anywhere is
//! finished by running it again. `ls:format` is written last.

use std::collections::{BTreeMap, HashMap, VecDeque};

use futures::StreamExt;
use redis::{Script, Value};
use serde::Deserialize;

use super::{RedisStore, record};
use crate::domain::ledger::{HistoryEntry, fingerprint};
use crate::domain::profiles::{ModelScore, Month, ScoreBucket, ScoreHistoryEntry};
use crate::domain::state::{CohortPlace, FirstTouch, LeadState};
use crate::domain::{
    AccountId, Cause, FiredTrigger, LeadId, LeadLedger, LeadSnapshot, ScoreSnapshot, Stage, StageChange, Timestamp,
    TypeTally,
};
use crate::store::StoreError;

/// Leads read and written per round trip.
const CHUNK: usize = 200;
/// Stream entries read per round trip.
const STREAM_CHUNK: usize = 1000;
const DAY_MS: i64 = 86_400_000;
/// Partitions converted at once.
const PARALLEL_PARTITIONS: usize = 4;

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    /// The format found before the run (`None`: nothing stored).
    pub found: Option<u32>,
    /// Leads converted by this run.
    pub leads: u64,
    /// Leads an earlier run had converted.
    pub already: u64,
    /// Cohort score distributions rebuilt from the leads' records.
    pub distributions: u64,
    /// Feed and trigger stream entries rewritten, with the same ids.
    pub stream_entries: u64,
    /// Pending trigger deliveries (dead letters included) carried over.
    pub pending: u64,
}

/// Where a run is, for a progress bar.
pub trait MigrateProgress: Sync {
    /// Leads to look at, over all partitions.
    fn start(&self, leads: u64);
    /// `n` more leads looked at.
    fn advance(&self, n: u64);
}

impl RedisStore {
    /// Converts format-1 data under the key prefix to this build's format;
    /// does nothing on format-2 data or an empty prefix.
    pub async fn migrate(&self, progress: &dyn MigrateProgress) -> Result<MigrateReport, StoreError> {
        let mut report = MigrateReport::default();
        let format_key = self.keys.format();
        let found: Option<String> =
            self.call(|mut c| async move { redis::cmd("GET").arg(&format_key).query_async(&mut c).await }).await?;
        match found.as_deref() {
            Some(f) if f == record::FORMAT.to_string() => {
                report.found = Some(record::FORMAT);
                return Ok(report);
            }
            Some(other) => {
                return Err(StoreError::Internal(format!(
                    "the data under Redis key prefix '{}' is in layout format {other}, which this build cannot \
                     migrate",
                    self.keys.prefix()
                )));
            }
            None => {}
        }
        let mut pipe = redis::pipe();
        for partition in 0..self.keys.partitions() {
            pipe.cmd("ZCARD").arg(self.keys.index(partition));
        }
        // One index past the last: data written with more partitions.
        pipe.cmd("EXISTS").arg(self.keys.index(self.keys.partitions()));
        let mut sizes: Vec<u64> = self.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
        let beyond = sizes.pop().unwrap_or(0);
        if beyond > 0 {
            return Err(partitions_differ(self.keys.partitions(), true));
        }
        if sizes.iter().all(|n| *n == 0) {
            return Ok(report);
        }
        // Before converting anything: the first leads of every index must
        // live in its partition under the configured partition count.
        let mut pipe = redis::pipe();
        for partition in 0..self.keys.partitions() {
            pipe.cmd("ZRANGE").arg(self.keys.index(partition)).arg(0).arg(99);
        }
        let firsts: Vec<Vec<String>> = self.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
        for (partition, members) in (0..self.keys.partitions()).zip(firsts) {
            for member in members {
                let id = LeadId::from_stored(member).map_err(|e| StoreError::Internal(format!("lead index: {e}")))?;
                if self.keys.partition(&id) != partition {
                    return Err(partitions_differ(self.keys.partitions(), true));
                }
            }
        }
        report.found = Some(1);
        progress.start(sizes.iter().sum());
        let scripts = (Script::new(include_str!("migrate.lua")), Script::new(include_str!("replace.lua")));
        // Partitions are independent: a few at once keep Redis and the
        // encoder busy while the other waits for its reply.
        let mut partitions = futures::stream::iter((0..self.keys.partitions()).zip(sizes))
            .map(|(partition, size)| self.migrate_partition(partition, size, &scripts, progress))
            .buffer_unordered(PARALLEL_PARTITIONS);
        while let Some(done) = partitions.next().await {
            let done = done?;
            report.leads += done.leads;
            report.already += done.already;
            report.distributions += done.distributions;
            report.stream_entries += done.stream_entries;
            report.pending += done.pending;
        }
        drop(partitions);
        let format_key = self.keys.format();
        let _: () = self
            .call(
                |mut c| async move { redis::cmd("SET").arg(&format_key).arg(record::FORMAT).query_async(&mut c).await },
            )
            .await?;
        Ok(report)
    }

    /// Converts one partition: its leads in chunks, then its cohort score
    /// distributions, then its feed and trigger streams.
    async fn migrate_partition(
        &self,
        partition: u32,
        size: u64,
        (leads_script, replace_script): &(Script, Script),
        progress: &dyn MigrateProgress,
    ) -> Result<MigrateReport, StoreError> {
        let mut report = MigrateReport::default();
        let mut places: Vec<CohortPlace> = Vec::new();
        let mut start = 0u64;
        while start < size {
            let stop = (start + CHUNK as u64 - 1).min(size - 1);
            let index = self.keys.index(partition);
            let members: Vec<String> =
                self.call(|mut c| async move {
                    redis::cmd("ZRANGE").arg(&index).arg(start).arg(stop).query_async(&mut c).await
                })
                .await?;
            let ids = members
                .into_iter()
                .map(|m| LeadId::from_stored(m).map_err(|e| StoreError::Internal(format!("lead index: {e}"))))
                .collect::<Result<Vec<_>, _>>()?;
            // Every listed lead must live in this partition under the configured
            // partition count; otherwise the data was written with another.
            if ids.iter().any(|id| self.keys.partition(id) != partition) {
                return Err(partitions_differ(self.keys.partitions(), false));
            }
            let (written, already) = self.migrate_leads(&ids, leads_script, &mut places).await?;
            report.leads += written;
            report.already += already;
            progress.advance(ids.len() as u64);
            start = stop + 1;
        }
        report.distributions += self.rebuild_distributions(partition, &places, replace_script).await?;
        for (stream, field) in [(self.keys.feed(partition), "c"), (self.keys.triggers(partition), "t")] {
            let (entries, pending) = self.rebuild_stream(&stream, field).await?;
            report.stream_entries += entries;
            report.pending += pending;
        }
        Ok(report)
    }

    /// Converts the format-1 leads among `ids` (one partition) and collects
    /// every lead's cohort place. Returns (converted, converted before).
    async fn migrate_leads(
        &self,
        ids: &[LeadId],
        script: &Script,
        places: &mut Vec<CohortPlace>,
    ) -> Result<(u64, u64), StoreError> {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("TYPE").arg(self.keys.lead(id).lead);
        }
        let kinds: Vec<String> = self.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
        let mut old = Vec::new();
        let mut new = Vec::new();
        for (id, kind) in ids.iter().zip(kinds) {
            match kind.as_str() {
                "hash" => old.push(id),
                "string" => new.push(id),
                // Listed but gone: nothing to convert.
                "none" => {}
                other => {
                    return Err(StoreError::Corrupt {
                        lead_id: id.to_string(),
                        detail: format!("the lead's key is a {other}, neither a format-1 hash nor a record"),
                    });
                }
            }
        }
        // Converted by an earlier run: only their cohort places are needed.
        let mut pipe = redis::pipe();
        for id in &new {
            pipe.cmd("GET").arg(self.keys.lead(id).lead);
        }
        let values: Vec<Option<Vec<u8>>> = if new.is_empty() {
            Vec::new()
        } else {
            self.call(|mut c| async move { pipe.query_async(&mut c).await }).await?
        };
        for (id, value) in new.iter().zip(values) {
            let Some(value) = value else { continue };
            let (version, bytes) = record::split_version(&value).ok_or_else(|| StoreError::Corrupt {
                lead_id: id.to_string(),
                detail: "record without version".into(),
            })?;
            places.extend(record::decode(id, version, bytes)?.cohort);
        }
        if old.is_empty() {
            return Ok((0, new.len() as u64));
        }
        let mut pipe = redis::pipe();
        for id in &old {
            let [seen, days, hist, stages, scores] = self.keys.format1_lead_parts(id);
            pipe.cmd("HGETALL").arg(self.keys.lead(id).lead);
            pipe.cmd("ZRANGE").arg(seen).arg(0).arg(-1).arg("WITHSCORES");
            pipe.cmd("HGETALL").arg(days);
            pipe.cmd("LRANGE").arg(hist).arg(0).arg(-1);
            pipe.cmd("LRANGE").arg(stages).arg(0).arg(-1);
            pipe.cmd("LRANGE").arg(scores).arg(0).arg(-1);
        }
        let replies: Vec<Value> = self.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
        let mut replies = replies.into_iter();
        let mut leads = Vec::with_capacity(old.len());
        for id in &old {
            let mut next = || replies.next().unwrap_or(Value::Nil);
            let corrupt =
                |e: redis::ParsingError| StoreError::Corrupt { lead_id: id.to_string(), detail: e.to_string() };
            leads.push(Format1Lead {
                hash: redis::from_redis_value(next()).map_err(corrupt)?,
                seen: redis::from_redis_value(next()).map_err(corrupt)?,
                days: redis::from_redis_value(next()).map_err(corrupt)?,
                history: redis::from_redis_value(next()).map_err(corrupt)?,
                stages: redis::from_redis_value(next()).map_err(corrupt)?,
                scores: redis::from_redis_value(next()).map_err(corrupt)?,
            });
        }
        // The cohort place's scores: its totals in the all-leads
        // distribution of each model it was counted under.
        let registrations = old
            .iter()
            .zip(&leads)
            .map(|(id, lead)| {
                lead.registration().map_err(|detail| StoreError::Corrupt { lead_id: id.to_string(), detail })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let partition = self.keys.partition(old[0]);
        let mut pipe = redis::pipe();
        let mut asked = 0;
        for (id, reg) in old.iter().zip(&registrations) {
            let Some(reg) = reg else { continue };
            for model in &reg.models {
                pipe.cmd("ZSCORE")
                    .arg(self.keys.cohort_scores(partition, &reg.month.key(), model, ""))
                    .arg(id.as_str());
                asked += 1;
            }
        }
        let totals: Vec<Option<f64>> = if asked == 0 {
            Vec::new()
        } else {
            self.call(|mut c| async move { pipe.query_async(&mut c).await }).await?
        };
        let mut totals = totals.into_iter();
        let mut invocation = script.prepare_invoke();
        for ((id, lead), reg) in old.iter().zip(leads).zip(registrations) {
            let reg_totals: Vec<Option<f64>> =
                reg.as_ref().map(|r| r.models.iter().map(|_| totals.next().flatten()).collect()).unwrap_or_default();
            let state = lead
                .state(id, reg, reg_totals)
                .map_err(|detail| StoreError::Corrupt { lead_id: id.to_string(), detail })?;
            places.extend(state.cohort.clone());
            invocation.key(self.keys.lead(id).lead);
            for key in self.keys.format1_lead_parts(id) {
                invocation.key(key);
            }
            let mut value = record::version_prefix(state.version);
            value.extend(record::encode(&state));
            invocation.arg(value);
        }
        let written: u64 = self.call(|mut c| async move { invocation.invoke_async(&mut c).await }).await?;
        Ok((written, new.len() as u64 + old.len() as u64 - written))
    }

    /// Writes a partition's cohort score distributions as the recount of
    /// its leads' places (bucket → leads). Returns how many.
    async fn rebuild_distributions(
        &self,
        partition: u32,
        places: &[CohortPlace],
        script: &Script,
    ) -> Result<u64, StoreError> {
        let mut distributions: BTreeMap<String, BTreeMap<ScoreBucket, i64>> = BTreeMap::new();
        for place in places {
            for (model, group, bucket) in place.score_buckets() {
                let key = self.keys.cohort_scores(partition, &place.month.key(), model, group);
                *distributions.entry(key).or_default().entry(bucket).or_default() += 1;
            }
        }
        let count = distributions.len() as u64;
        let all: Vec<_> = distributions.into_iter().collect();
        for chunk in all.chunks(CHUNK) {
            let mut invocation = script.prepare_invoke();
            for (key, buckets) in chunk {
                invocation.key(key);
                invocation.arg(buckets.len());
                for (bucket, n) in buckets {
                    invocation.arg(bucket.index()).arg(n);
                }
            }
            let _: u64 = self.call(|mut c| async move { invocation.invoke_async(&mut c).await }).await?;
        }
        Ok(count)
    }

    /// Rewrites a stream whose `field` holds format-1 JSON (a stage change
    /// or a fired trigger) as records, keeping entry ids, the last id,
    /// consumer groups and their pending entries. Returns (entries,
    /// pending entries).
    async fn rebuild_stream(&self, stream: &str, field: &'static str) -> Result<(u64, u64), StoreError> {
        let first: redis::streams::StreamRangeReply = {
            let stream = stream.to_owned();
            self.call(|mut c| async move {
                redis::cmd("XRANGE").arg(&stream).arg("-").arg("+").arg("COUNT").arg(1).query_async(&mut c).await
            })
            .await?
        };
        let is_json = first.ids.first().and_then(|e| e.get::<Vec<u8>>(field)).is_some_and(|v| v.first() == Some(&b'{'));
        if !is_json {
            return Ok((0, 0));
        }
        let target = self.keys.rebuilding(stream);
        {
            let target = target.clone();
            let _: () =
                self.call(|mut c| async move { redis::cmd("DEL").arg(&target).query_async(&mut c).await }).await?;
        }
        let mut entries = 0u64;
        let mut after = "-".to_owned();
        loop {
            let page: redis::streams::StreamRangeReply = {
                let (stream, after) = (stream.to_owned(), after.clone());
                self.call(|mut c| async move {
                    redis::cmd("XRANGE")
                        .arg(&stream)
                        .arg(&after)
                        .arg("+")
                        .arg("COUNT")
                        .arg(STREAM_CHUNK)
                        .query_async(&mut c)
                        .await
                })
                .await?
            };
            let Some(last) = page.ids.last() else { break };
            after = format!("({}", last.id);
            let mut pipe = redis::pipe();
            for entry in &page.ids {
                let json = entry.get::<Vec<u8>>(field).unwrap_or_default();
                let record = if field == "c" {
                    stage_change(&json).map(|c| record::encode_change(&c))
                } else {
                    fired_trigger(&json).map(|t| record::encode_trigger(&t))
                }
                .map_err(|e| StoreError::Internal(format!("{stream} entry {}: {e}", entry.id)))?;
                let cmd = pipe.cmd("XADD").arg(&target).arg(&entry.id);
                for (name, value) in &entry.map {
                    if name == field {
                        cmd.arg(name).arg(&record);
                    } else {
                        let value: Vec<u8> = redis::from_redis_value(value.clone())
                            .map_err(|e| StoreError::Internal(format!("{stream} entry {}: {e}", entry.id)))?;
                        cmd.arg(name).arg(value);
                    }
                }
                cmd.ignore();
                entries += 1;
            }
            let _: () = self.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
            if page.ids.len() < STREAM_CHUNK {
                break;
            }
        }
        let info: HashMap<String, Value> = {
            let stream = stream.to_owned();
            self.call(|mut c| async move { redis::cmd("XINFO").arg("STREAM").arg(&stream).query_async(&mut c).await })
                .await?
        };
        let text = |name: &str| info.get(name).and_then(|v| redis::from_redis_value::<String>(v.clone()).ok());
        let mut pipe = redis::pipe();
        let setid = pipe.cmd("XSETID").arg(&target).arg(text("last-generated-id").unwrap_or_else(|| "0-0".into()));
        if let (Some(added), Some(deleted)) = (text("entries-added"), text("max-deleted-entry-id")) {
            setid.arg("ENTRIESADDED").arg(added).arg("MAXDELETEDID").arg(deleted);
        }
        setid.ignore();
        let groups: Vec<HashMap<String, Value>> = {
            let stream = stream.to_owned();
            self.call(|mut c| async move { redis::cmd("XINFO").arg("GROUPS").arg(&stream).query_async(&mut c).await })
                .await?
        };
        let mut pending_total = 0;
        for group in &groups {
            let get = |name: &str| group.get(name).and_then(|v| redis::from_redis_value::<String>(v.clone()).ok());
            let name = get("name").ok_or_else(|| StoreError::Internal(format!("{stream}: a group without a name")))?;
            let create = pipe
                .cmd("XGROUP")
                .arg("CREATE")
                .arg(&target)
                .arg(&name)
                .arg(get("last-delivered-id").unwrap_or_else(|| "0-0".into()));
            if let Some(read) = get("entries-read") {
                create.arg("ENTRIESREAD").arg(read);
            }
            create.ignore();
            let mut from = "-".to_owned();
            loop {
                let page: Vec<(String, String, i64, i64)> = {
                    let (stream, name, from) = (stream.to_owned(), name.clone(), from.clone());
                    self.call(|mut c| async move {
                        redis::cmd("XPENDING")
                            .arg(&stream)
                            .arg(&name)
                            .arg(&from)
                            .arg("+")
                            .arg(STREAM_CHUNK)
                            .query_async(&mut c)
                            .await
                    })
                    .await?
                };
                for (id, consumer, idle, deliveries) in &page {
                    pipe.cmd("XCLAIM")
                        .arg(&target)
                        .arg(&name)
                        .arg(consumer)
                        .arg(0)
                        .arg(id)
                        .arg("IDLE")
                        .arg(idle)
                        .arg("RETRYCOUNT")
                        .arg(deliveries)
                        .arg("FORCE")
                        .arg("JUSTID")
                        .ignore();
                    pending_total += 1;
                }
                match page.last() {
                    Some((id, ..)) if page.len() == STREAM_CHUNK => from = format!("({id}"),
                    _ => break,
                }
            }
        }
        pipe.cmd("RENAME").arg(&target).arg(stream).ignore();
        let _: () = self.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
        Ok((entries, pending_total))
    }
}

fn partitions_differ(configured: u32, nothing_converted: bool) -> StoreError {
    StoreError::Internal(format!(
        "the data was written with another redis_partitions than the {configured} configured here (its leads are \
         indexed in other partitions): give migrate the configuration of the release that wrote it (its \
         redis_partitions and redis_key_prefix){}",
        if nothing_converted { "; nothing was converted" } else { "" }
    ))
}

/// A format-1 lead as read: its hash and side keys.
struct Format1Lead {
    hash: HashMap<String, String>,
    /// Event id → when it was recorded.
    seen: Vec<(String, f64)>,
    /// `<type>:<utc day>` → signals.
    days: HashMap<String, String>,
    /// Newest first, JSON.
    history: Vec<String>,
    /// Newest first, JSON.
    stages: Vec<String>,
    /// Newest first, `<at>␟<cause>␟<model>=<behavior>,<fit>[␟…]`.
    scores: Vec<String>,
}

/// The hash's `rg`: where the lead was counted in the cohort aggregates.
struct Registration {
    month: Month,
    stage: Stage,
    reached_mql: bool,
    groups: Vec<String>,
    models: Vec<String>,
}

#[derive(Deserialize)]
struct HistoryJson {
    e: String,
    y: String,
    t: i64,
    #[serde(default)]
    p: BTreeMap<String, String>,
    a: i64,
}

#[derive(Deserialize)]
struct ScoreJson {
    total: f64,
    behavior: f64,
    fit: f64,
    grade: char,
}

#[derive(Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
enum CauseJson {
    Rule { rule_id: String },
    Manual { actor: String },
}

#[derive(Deserialize)]
struct StageChangeJson {
    from: String,
    to: String,
    cause: CauseJson,
    reason: String,
    rule_set_version: String,
    score: ScoreJson,
    at: i64,
    #[serde(default)]
    deal_amount: Option<f64>,
}

#[derive(Deserialize)]
struct FiredTriggerJson {
    definition_id: String,
    program: String,
    lead_id: String,
    fired_at: i64,
    reason: String,
    score: ScoreJson,
    stage: String,
}

fn stage(name: &str) -> Result<Stage, String> {
    name.parse().map_err(|_| format!("unknown stage '{}'", crate::text::bounded(name, 40)))
}

fn snapshot(s: ScoreJson) -> ScoreSnapshot {
    ScoreSnapshot { total: s.total, behavior: s.behavior, fit: s.fit, grade: s.grade }
}

/// Errors name what is wrong, never quote the entry.
fn stage_change(json: &[u8]) -> Result<StageChange, String> {
    let c: StageChangeJson = serde_json::from_slice(json).map_err(|e| format!("not a format-1 stage change ({e})"))?;
    Ok(StageChange {
        from: stage(&c.from)?,
        to: stage(&c.to)?,
        cause: match c.cause {
            CauseJson::Rule { rule_id } => Cause::Rule { rule_id },
            CauseJson::Manual { actor } => Cause::Manual { actor },
        },
        reason: c.reason,
        rule_set_version: c.rule_set_version,
        score: snapshot(c.score),
        at: Timestamp::from_millis(c.at),
        deal_amount: c.deal_amount,
    })
}

fn fired_trigger(json: &[u8]) -> Result<FiredTrigger, String> {
    let t: FiredTriggerJson = serde_json::from_slice(json).map_err(|e| format!("not a format-1 trigger ({e})"))?;
    Ok(FiredTrigger {
        definition_id: t.definition_id,
        program: t.program,
        lead_id: t.lead_id,
        fired_at: Timestamp::from_millis(t.fired_at),
        reason: t.reason,
        score: snapshot(t.score),
        stage: stage(&t.stage)?,
        breach: None,
    })
}

fn number<T: std::str::FromStr>(field: &str, raw: &str) -> Result<T, String> {
    raw.parse().map_err(|_| format!("field '{}' is not a number", crate::text::bounded(field, 60)))
}

impl Format1Lead {
    fn field(&self, name: &str) -> Option<&str> {
        self.hash.get(name).map(String::as_str)
    }

    fn registration(&self) -> Result<Option<Registration>, String> {
        let Some(raw) = self.field("rg") else { return Ok(None) };
        type Rg = (String, String, u8, Vec<String>, Vec<String>);
        let (month, st, q, groups, models): Rg =
            serde_json::from_str(raw).map_err(|e| format!("cohort registration 'rg': {e}"))?;
        Ok(Some(Registration {
            month: Month::parse_key(&month).ok_or("cohort registration 'rg' has a bad month")?,
            stage: stage(&st)?,
            reached_mql: q == 1,
            groups,
            models,
        }))
    }

    /// The lead's state in this build's terms, at version 1. `totals`: per
    /// model of `reg`, its total in the cohort distribution.
    fn state(self, id: &LeadId, reg: Option<Registration>, totals: Vec<Option<f64>>) -> Result<LeadState, String> {
        let at = |field: &str| -> Result<Option<Timestamp>, String> {
            self.field(field).map(|v| number::<i64>(field, v).map(Timestamp::from_millis)).transpose()
        };
        let created = at("c")?.ok_or("the lead hash has no creation time 'c'")?;
        let mut lead = LeadSnapshot::new(id.clone(), created);
        if let Some(st) = self.field("st") {
            lead.stage = stage(st)?;
        }
        lead.stage_since = at("ss")?.unwrap_or(created);
        lead.last_engaged_at = at("le")?;
        lead.recorded = self.field("nr").map(|v| number("nr", v)).transpose()?.unwrap_or(0);
        lead.merged_into = self
            .field("mi")
            .map(|v| LeadId::from_stored(v.to_owned()))
            .transpose()
            .map_err(|e| format!("'mi': {e}"))?;
        lead.account_id =
            self.field("acc").map(|v| AccountId::parse(v.to_owned())).transpose().map_err(|e| format!("'acc': {e}"))?;
        let mut fits: HashMap<&str, f64> = HashMap::new();
        for (name, value) in &self.hash {
            if let Some(attribute) = name.strip_prefix("a:") {
                lead.attributes.insert(attribute.to_owned(), value.clone());
            } else if let Some(definition) = name.strip_prefix("tf:") {
                lead.trigger_fired.insert(definition.to_owned(), Timestamp::from_millis(number(name, value)?));
            } else if let Some(ty) = name.strip_prefix("n:") {
                lead.tallies.entry(ty.to_owned()).or_default().counted = number(name, value)?;
            } else if let Some(ty) = name.strip_prefix("t:") {
                lead.tallies.entry(ty.to_owned()).or_default().last_at =
                    Some(Timestamp::from_millis(number(name, value)?));
            } else if let Some(rest) = name.strip_prefix("s:") {
                let (model, ty) = rest
                    .split_once(':')
                    .ok_or_else(|| format!("field '{}' names no type", crate::text::bounded(name, 60)))?;
                let sum: f64 = number(name, value)?;
                if !sum.is_finite() {
                    return Err(format!("field '{}' is not finite", crate::text::bounded(name, 60)));
                }
                lead.tallies.entry(ty.to_owned()).or_default().sums.insert(model.to_owned(), sum);
            } else if let Some(model) = name.strip_prefix("f:") {
                fits.insert(model, number(name, value)?);
            }
        }
        if let Some((ty, _)) =
            lead.tallies.iter().find(|(_, t): &(&String, &TypeTally)| t.counted > 0 && t.last_at.is_none())
        {
            return Err(format!("type '{}' has counted signals but no anchor time", crate::text::bounded(ty, 60)));
        }
        for (field, n) in &self.days {
            let (ty, day) = field.rsplit_once(':').ok_or("a per-day counter names no day")?;
            let day: i64 = number("days", day)?;
            lead.daily.entry(ty.to_owned()).or_default().insert(day, number("days", n)?);
        }
        let seen = self
            .seen
            .iter()
            .map(|(event, at)| (fingerprint(event), Timestamp::from_millis(*at as i64)))
            .collect::<Vec<_>>();
        let history = self
            .history
            .iter()
            .map(|raw| {
                let h: HistoryJson = serde_json::from_str(raw).map_err(|e| format!("raw history entry: {e}"))?;
                Ok(HistoryEntry {
                    print: fingerprint(&h.e),
                    signal_type: h.y,
                    occurred_at_ms: h.t,
                    properties: h.p,
                    arrived_at_ms: h.a,
                })
            })
            .collect::<Result<VecDeque<_>, String>>()?;
        let stages =
            self.stages.iter().map(|raw| stage_change(raw.as_bytes())).collect::<Result<VecDeque<_>, String>>()?;
        let score_history = self
            .scores
            .iter()
            .map(|raw| {
                let mut parts = raw.split(super::codec::SEP);
                let at: i64 = number("score history", parts.next().unwrap_or_default())?;
                let cause = parts.next().ok_or("score history entry without a cause")?.to_owned();
                let scores = parts
                    .map(|part| {
                        let (model, pair) = part.split_once('=').ok_or("score history entry without a model")?;
                        let (behavior, fit) = pair.split_once(',').ok_or("score history entry without a fit")?;
                        Ok(ModelScore {
                            model: model.to_owned(),
                            behavior: number("score history", behavior)?,
                            fit: number("score history", fit)?,
                        })
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                Ok(ScoreHistoryEntry { at: Timestamp::from_millis(at), cause, scores })
            })
            .collect::<Result<VecDeque<_>, String>>()?;
        let cohort = reg.map(|r| CohortPlace {
            month: r.month,
            stage: r.stage,
            reached_mql: r.reached_mql,
            groups: r.groups,
            scores: r
                .models
                .iter()
                .zip(totals)
                .map(|(model, total)| {
                    let fit = fits.get(model.as_str()).copied().unwrap_or(0.0);
                    // A lead missing from its distribution counts as scored
                    // by its fit alone until its next change.
                    ModelScore { model: model.clone(), behavior: total.map_or(0.0, |t| t - fit), fit }
                })
                .collect(),
        });
        let first_touch = match (self.field("ft"), at("fta")?) {
            (Some(values), Some(at)) => {
                let v: Vec<&str> = values.split(super::codec::SEP).collect();
                let values: [String; 3] = <[&str; 3]>::try_from(v)
                    .map_err(|_| "first touch 'ft' without its three values")?
                    .map(str::to_owned);
                Some(FirstTouch { at, values })
            }
            _ => None,
        };
        let untouched_creation = match self.field("fe") {
            Some(raw) => {
                let (day, st) = raw.split_once(super::codec::SEP).ok_or("creation entry 'fe' without its stage")?;
                Some((Timestamp::from_millis(number::<i64>("fe", day)? * DAY_MS), stage(st)?))
            }
            None => None,
        };
        Ok(LeadState {
            // Kept only from now on: an erasure takes back what is known.
            contributions: crate::domain::state::Contributions { complete: false, ..Default::default() },
            visitors: Vec::new(),
            journey: Default::default(),
            lead,
            version: 1,
            ledger: LeadLedger::from_parts(seen, history),
            stages,
            cohort,
            first_touch,
            funnel_reached: self.field("mr").map(|v| number("mr", v)).transpose()?.unwrap_or(0),
            reached_mql: self.field("rq") == Some("1"),
            untouched_creation,
            score_history,
            handover: None,
            expansion: Vec::new(),
        })
    }
}
