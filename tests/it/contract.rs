//! The store contract: every `LeadStore` keeps and applies the scoring
//! core's changes the same way. Each test runs against the embedded store,
//! Redis and a 3-node Redis Cluster, and the numbers are held to the pure
//! domain's reference computation.

use leadscore::store::{Leads, TriggerQueue};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use leadscore::domain::state::{LeadChange, LeadState};
use leadscore::domain::{
    AccountId, Cause, Delivery, EventId, FiredTrigger, IngestPolicy, LeadId, LeadLedger, LeadProfile, LeadSnapshot,
    ScoreSnapshot, ScoredSignal, SignalStatus, Stage, StageChange, Timestamp,
};
use leadscore::rules::RuleSet;
use leadscore::store::redis::{RedisSettings, RedisStore};
use leadscore::store::{Applied, DeliveryPolicy, FeedPolicy, LeadStore, MemoryStore};
use leadscore::transition::{self, Settings};

use crate::helpers::{DAY, RedisServer};

const POLICY: IngestPolicy = IngestPolicy { dedupe_window_ms: 7 * DAY, retention_ms: 90 * DAY, history_limit: 100 };
const NOW: Timestamp = Timestamp::from_millis(20_000 * DAY + 12 * 3_600_000);

fn rules() -> RuleSet {
    RuleSet::parse(leadscore::DEFAULT_RULES).unwrap()
}

fn id(s: &str) -> LeadId {
    LeadId::parse(s).unwrap()
}

fn scored(rules: &RuleSet, event: &str, signal_type: &str, at: Timestamp, props: &[(&str, &str)]) -> ScoredSignal {
    let properties: BTreeMap<_, _> = props.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    ScoredSignal {
        event_id: EventId::parse(event).unwrap(),
        signal_type: signal_type.into(),
        occurred_at: at,
        daily_cap: rules.signal_type(signal_type).unwrap().daily_cap,
        weights: rules.weigh(signal_type, &properties),
        properties,
    }
}

/// What the pure domain says a lead looks like after these signals.
fn reference(lead: &LeadId, signals: &[ScoredSignal]) -> (Vec<SignalStatus>, LeadSnapshot) {
    let mut snapshot = LeadSnapshot::new(lead.clone(), NOW);
    let mut ledger = LeadLedger::default();
    let statuses = signals.iter().map(|s| ledger.record(&mut snapshot, s, NOW, &POLICY)).collect();
    (statuses, snapshot)
}

fn assert_same_score(rules: &RuleSet, a: &LeadSnapshot, b: &LeadSnapshot) {
    let (sa, sb) = (rules.primary().score(a, NOW), rules.primary().score(b, NOW));
    assert!((sa.total - sb.total).abs() < 1e-9, "{} vs {}", sa.total, sb.total);
    assert_eq!(sa.contributions.len(), sb.contributions.len());
    for (ta, tb) in a.tallies.iter().zip(&b.tallies) {
        assert_eq!((ta.0, ta.1.counted, ta.1.last_at), (tb.0, tb.1.counted, tb.1.last_at));
    }
}

fn settings() -> Settings {
    Settings { stage_history: FEED.history_limit, ..Settings::new(POLICY) }
}

/// Records batches of signals (one per lead) the way the service does:
/// one read, the scoring core, one write. Every write must land.
async fn record_many(
    store: &dyn LeadStore,
    batches: Vec<(LeadId, Vec<ScoredSignal>)>,
) -> Vec<(Vec<SignalStatus>, LeadSnapshot)> {
    let rules = rules();
    let ids: Vec<LeadId> = batches.iter().map(|b| b.0.clone()).collect();
    let stored = store.load(&ids).await.unwrap();
    let mut changes = Vec::new();
    let mut out = Vec::new();
    for ((lead, signals), stored) in batches.iter().zip(stored) {
        let stage = if lead.visitor().is_some() { Stage::Anonymous } else { Stage::Lead };
        let recorded = transition::record_signals(&rules, &settings(), NOW, stored, lead, stage, signals);
        changes.extend(recorded.change);
        out.push((recorded.statuses, recorded.lead));
    }
    for applied in store.apply(&changes, &FEED).await.unwrap() {
        assert!(matches!(applied, Applied::Written { .. }), "{applied:?}");
    }
    out
}

async fn record(store: &dyn LeadStore, lead: &LeadId, signals: Vec<ScoredSignal>) -> (Vec<SignalStatus>, LeadSnapshot) {
    record_many(store, vec![(lead.clone(), signals)]).await.pop().unwrap()
}

async fn upsert(store: &dyn LeadStore, profile: LeadProfile) -> LeadSnapshot {
    let stored = store.load(std::slice::from_ref(&profile.lead_id)).await.unwrap().pop().unwrap();
    let change = transition::upsert_profile(&rules(), &settings(), NOW, stored, profile);
    let applied = store.apply(std::slice::from_ref(&change), &FEED).await.unwrap();
    assert!(matches!(applied[0], Applied::Written { .. }));
    change.state.lead
}

async fn load_state(store: &dyn LeadStore, lead: &LeadId) -> Option<LeadState> {
    store.load(std::slice::from_ref(lead)).await.unwrap().pop().unwrap()
}

/// A change made by hand (stores keep whatever the core computes): the
/// lead moves through `changes`, `triggers` fire with them.
fn moved(state: &LeadState, changes: &[StageChange], triggers: Vec<FiredTrigger>) -> LeadChange {
    let mut next = state.clone();
    for c in changes {
        next.lead.stage = c.to;
        next.lead.stage_since = c.at;
        next.stages.push_front(c.clone());
    }
    next.stages.truncate(FEED.history_limit);
    next.version = state.version + 1;
    LeadChange {
        expected_version: state.version,
        state: next,
        feed: changes.to_vec(),
        triggers,
        aggregates: Vec::new(),
        indexed_at: None,
        due: Vec::new(),
        account: None,
        erase: None,
    }
}

/// A feed entry that is a move: (lead id, change).
fn as_move(c: leadscore::domain::QualificationChange) -> (String, StageChange) {
    match c.event {
        leadscore::domain::FeedEvent::Moved { lead_id, change } => (lead_id.to_string(), change),
        leadscore::domain::FeedEvent::Erased(t) => panic!("a tombstone: {t:?}"),
    }
}

/// Applies one change; `None` for a conflict.
async fn apply_one(store: &dyn LeadStore, change: &LeadChange) -> Option<(Vec<String>, Vec<String>)> {
    match store.apply(std::slice::from_ref(change), &FEED).await.unwrap().pop().unwrap() {
        Applied::Written { feed_ids, trigger_ids } => Some((feed_ids, trigger_ids)),
        Applied::Conflict => None,
    }
}

/// Moves a stored lead through `changes` (which must land).
async fn move_stage(store: &dyn LeadStore, lead: &LeadId, changes: &[StageChange], triggers: Vec<FiredTrigger>) {
    let state = load_state(store, lead).await.expect("stored");
    apply_one(store, &moved(&state, changes, triggers)).await.expect("written");
}

async fn upsert_replaces_the_profile(store: &dyn LeadStore) {
    let lead = id("crm-1");
    let attrs = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let first = upsert(
        store,
        LeadProfile {
            lead_id: lead.clone(),
            account_id: Some(AccountId::parse("acme").unwrap()),
            attributes: attrs(&[("seniority", "vp"), ("country", "de")]),
            created_at: Some(Timestamp::from_millis(19_000 * DAY)),
        },
    )
    .await;
    assert_eq!(first.created_at, Timestamp::from_millis(19_000 * DAY));
    assert_eq!(first.account_id.as_ref().unwrap().as_str(), "acme");
    let second = upsert(
        store,
        LeadProfile {
            lead_id: lead.clone(),
            account_id: None,
            attributes: attrs(&[("seniority", "director")]),
            created_at: None,
        },
    )
    .await;
    assert_eq!(second.attributes, attrs(&[("seniority", "director")]), "attributes are replaced as a whole");
    assert_eq!(second.created_at, first.created_at, "created_at is kept when not sent");
    assert_eq!(second.account_id, None);
    assert_eq!(store.load_leads(std::slice::from_ref(&lead)).await.unwrap()[0].as_ref(), Some(&second));
}

async fn signals_match_the_domain_reference(store: &dyn LeadStore) {
    let rules = rules();
    let lead = id("lead-ref");
    let at = |d: i64| NOW.plus_millis(-d * DAY);
    let signals = vec![
        scored(&rules, "e1", "page_view", at(3), &[("url", "/pricing/teams")]),
        scored(&rules, "e2", "demo_requested", at(1), &[]),
        scored(&rules, "e3", "email_open", at(10), &[]),
        scored(&rules, "e4", "page_view", at(30), &[]), // late: older than e1
        scored(&rules, "e5", "unsubscribe", at(60), &[]),
        scored(&rules, "e1", "page_view", at(3), &[]), // duplicate
    ];
    let (want_statuses, want) = reference(&lead, &signals);
    let (statuses, got) = record(store, &lead, signals).await;
    assert_eq!(statuses, want_statuses);
    assert_eq!(statuses[5], SignalStatus::Duplicate);
    assert_same_score(&rules, &got, &want);
    let loaded = store.load_leads(std::slice::from_ref(&lead)).await.unwrap().pop().unwrap().unwrap();
    assert_eq!(loaded, got);
}

async fn duplicates_change_nothing(store: &dyn LeadStore) {
    let rules = rules();
    let lead = id("lead-dup");
    let s = scored(&rules, "evt-1", "demo_requested", NOW.plus_millis(-DAY), &[]);
    let (first, before) = record(store, &lead, vec![s.clone()]).await;
    assert_eq!(first, [SignalStatus::Accepted]);
    let (again, after) = record(store, &lead, vec![s.clone(), s]).await;
    assert_eq!(again, [SignalStatus::Duplicate, SignalStatus::Duplicate]);
    assert_eq!(before, after);
    // The same event id on another lead is another event.
    let (other, _) = record(store, &id("lead-dup-2"), vec![scored(&rules, "evt-1", "page_view", NOW, &[])]).await;
    assert_eq!(other, [SignalStatus::Accepted]);
}

async fn daily_caps_count_first_arrivals(store: &dyn LeadStore) {
    let rules = rules();
    let cap = rules.signal_type("pricing_page_view").unwrap().daily_cap.unwrap() as usize;
    let lead = id("lead-cap");
    let day = NOW.plus_millis(-2 * DAY);
    let signals: Vec<_> = (0..cap + 2)
        .map(|i| scored(&rules, &format!("p{i}"), "pricing_page_view", day.plus_millis(i as i64 * 60_000), &[]))
        .collect();
    let (statuses, lead_after) = record(store, &lead, signals.clone()).await;
    let (want, reference_lead) = reference(&lead, &signals);
    assert_eq!(statuses, want);
    assert_eq!(statuses.iter().filter(|s| **s == SignalStatus::Capped).count(), 2);
    assert_eq!(lead_after.tallies["pricing_page_view"].counted, cap as u64);
    assert_same_score(&rules, &lead_after, &reference_lead);
    // The next UTC day has its own allowance.
    let (next, _) =
        record(store, &lead, vec![scored(&rules, "next-day", "pricing_page_view", day.plus_millis(DAY), &[])]).await;
    assert_eq!(next, [SignalStatus::Accepted]);
}

async fn batching_does_not_change_the_score(store: &dyn LeadStore) {
    let rules = rules();
    let types = ["page_view", "email_click", "demo_requested", "content_download", "email_bounce", "webinar_attended"];
    let signals: Vec<_> = (0..24)
        .map(|i| {
            scored(
                &rules,
                &format!("b{i}"),
                types[i % types.len()],
                NOW.plus_millis(-((i as i64 * 7919) % 40) * DAY - i as i64),
                &[],
            )
        })
        .collect();
    let (one, many, reversed) = (id("batch-one"), id("batch-many"), id("batch-rev"));
    let (_, in_one) = record(store, &one, signals.clone()).await;
    let mut in_many = None;
    for chunk in signals.chunks(5) {
        in_many = Some(record(store, &many, chunk.to_vec()).await.1);
    }
    let mut in_reverse = None;
    for s in signals.iter().rev() {
        in_reverse = Some(record(store, &reversed, vec![s.clone()]).await.1);
    }
    assert_same_score(&rules, &in_one, &in_many.unwrap());
    assert_same_score(&rules, &in_one, &in_reverse.unwrap());
}

async fn several_leads_in_one_call(store: &dyn LeadStore) {
    let rules = rules();
    let batches = vec![
        (id("multi-a"), vec![scored(&rules, "x", "form_fill", NOW, &[])]),
        (id("multi-b"), vec![scored(&rules, "x", "form_fill", NOW, &[]), scored(&rules, "x", "form_fill", NOW, &[])]),
    ];
    let out = record_many(store, batches).await;
    assert_eq!(out[0].0, [SignalStatus::Accepted]);
    assert_eq!(out[1].0, [SignalStatus::Accepted, SignalStatus::Duplicate]);
    assert_eq!(out[1].1.lead_id.as_str(), "multi-b");
    let loaded = store.load_leads(&[id("multi-a"), id("multi-b")]).await.unwrap();
    assert_eq!(loaded[1].as_ref(), Some(&out[1].1));
}

async fn unknown_leads_are_none(store: &dyn LeadStore) {
    assert_eq!(store.load_leads(&[id("never-seen")]).await.unwrap(), vec![None]);
}

async fn hostile_ids_are_kept_apart(store: &dyn LeadStore) {
    let rules = rules();
    let ids = ["{p1}", "a:seen", "a", "a b", "é}{:", "*", "%41", "A"];
    for (n, raw) in ids.iter().enumerate() {
        let signals = (0..=n)
            .map(|i| scored(&rules, &format!("h{i}"), "form_fill", NOW.plus_millis(-(i as i64) * DAY), &[]))
            .collect();
        record(store, &id(raw), signals).await;
    }
    let loaded = store.load_leads(&ids.iter().map(|r| id(r)).collect::<Vec<_>>()).await.unwrap();
    for (n, lead) in loaded.into_iter().enumerate() {
        let lead = lead.unwrap_or_else(|| panic!("{} is missing", ids[n]));
        assert_eq!(lead.lead_id.as_str(), ids[n]);
        assert_eq!(lead.tallies["form_fill"].counted, n as u64 + 1, "{}", ids[n]);
    }
}

const FEED: FeedPolicy = FeedPolicy { history_limit: 3, retention_ms: 30 * DAY, trigger_retention_ms: 7 * DAY };

fn change(from: Stage, to: Stage, rule: &str, minute: i64) -> StageChange {
    StageChange {
        from,
        to,
        cause: Cause::Rule { rule_id: rule.into() },
        reason: "because".into(),
        rule_set_version: "v1".into(),
        score: ScoreSnapshot { total: 42.5, behavior: 30.0, fit: 12.5, grade: 'C' },
        at: NOW.plus_millis(minute * 60_000),
        deal_amount: None,
    }
}

async fn changes_apply_only_onto_the_lead_as_read(store: &dyn LeadStore) {
    let rules = rules();
    let lead = id("stage-lead");
    record(store, &lead, vec![scored(&rules, "s", "form_fill", NOW, &[])]).await;
    let read = load_state(store, &lead).await.unwrap();
    assert_eq!(read.version, 1);
    let two = [change(Stage::Lead, Stage::Mql, "to_mql", 1), change(Stage::Mql, Stage::Sql, "to_sql", 1)];
    let alert = trigger("mql_alert", &lead, &two[0]);
    let (feed_ids, trigger_ids) = apply_one(store, &moved(&read, &two, vec![alert.clone()])).await.unwrap();
    assert_eq!((feed_ids.len(), trigger_ids.len()), (2, 1));
    assert_ne!(feed_ids[0], feed_ids[1]);
    let now = load_state(store, &lead).await.unwrap();
    assert_eq!((now.lead.stage, now.lead.stage_since, now.version), (Stage::Sql, NOW.plus_millis(60_000), 2));
    assert_eq!(now.stages.iter().map(|c| c.to).collect::<Vec<_>>(), [Stage::Sql, Stage::Mql]);
    assert_eq!(now.stages[1], two[0]);
    // A change computed from what was read before is refused whole: no
    // stage, no feed entry, no trigger.
    let stale = moved(&read, &[change(Stage::Lead, Stage::Mql, "again", 2)], vec![alert]);
    assert_eq!(apply_one(store, &stale).await, None);
    assert_eq!(load_state(store, &lead).await.unwrap(), now);
    assert_eq!(store.list_changes("", 100).await.unwrap().changes.len(), 2);
    assert_eq!(store.trigger_stats("g").await.unwrap().fired, 1);
    // A lead read as new must still not exist.
    let fresh = LeadState::new(LeadSnapshot::new(lead.clone(), NOW));
    assert_eq!(apply_one(store, &moved(&fresh, &[], Vec::new())).await, None);
    assert_eq!(load_state(store, &lead).await.unwrap(), now);
}

async fn the_feed_pages_in_order_and_resumes(store: &dyn LeadStore) {
    let rules = rules();
    let leads: Vec<_> = (0..5).map(|i| id(&format!("feed-{i}"))).collect();
    for (i, lead) in leads.iter().enumerate() {
        record(store, lead, vec![scored(&rules, "s", "form_fill", NOW, &[])]).await;
        let changes = [change(Stage::Lead, Stage::Mql, "a", i as i64), change(Stage::Mql, Stage::Sql, "b", i as i64)];
        move_stage(store, lead, &changes, Vec::new()).await;
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = store.list_changes(&cursor, 3).await.unwrap();
        if page.changes.is_empty() {
            assert_eq!(page.next_cursor, cursor);
            break;
        }
        assert!(page.changes.len() <= 3);
        assert_eq!(page.changes.last().unwrap().cursor, page.next_cursor);
        seen.extend(page.changes.into_iter().map(|c| {
            let id = c.id.clone();
            let (lead, change) = as_move(c);
            (lead, change.to, id)
        }));
        cursor = page.next_cursor;
    }
    assert_eq!(seen.len(), 10, "{seen:?}");
    let ids: std::collections::BTreeSet<_> = seen.iter().map(|s| s.2.clone()).collect();
    assert_eq!(ids.len(), 10, "change ids are unique");
    for lead in &leads {
        let order: Vec<_> = seen.iter().filter(|s| s.0 == lead.as_str()).map(|s| s.1).collect();
        assert_eq!(order, [Stage::Mql, Stage::Sql], "{lead}");
    }
    assert_eq!(store.feed_end().await.unwrap(), cursor, "the end of the feed is where paging stopped");
    // New changes after the last cursor, and only those.
    record(store, &id("late"), vec![scored(&rules, "s", "form_fill", NOW, &[])]).await;
    move_stage(store, &id("late"), &[change(Stage::Lead, Stage::Mql, "a", 9)], Vec::new()).await;
    let page = store.list_changes(&cursor, 100).await.unwrap();
    assert_eq!(page.changes.len(), 1);
    assert_eq!(page.changes[0].lead_key(), "late");
    assert!(matches!(store.list_changes("garbage", 10).await, Err(leadscore::store::StoreError::BadCursor(_))));
}

fn trigger(definition: &str, lead: &LeadId, change: &StageChange) -> FiredTrigger {
    FiredTrigger {
        definition_id: definition.into(),
        program: "p".into(),
        lead_id: lead.to_string(),
        fired_at: change.at,
        reason: "r".into(),
        score: change.score.clone(),
        stage: change.to,
        breach: None,
    }
}

/// Fires `n` MQL triggers on `n` new leads.
async fn fire_triggers(store: &dyn LeadStore, prefix: &str, n: usize) {
    let rules = rules();
    for i in 0..n {
        let lead = id(&format!("{prefix}-{i}"));
        record(store, &lead, vec![scored(&rules, "s", "form_fill", NOW, &[])]).await;
        let up = change(Stage::Lead, Stage::Mql, "up", 0);
        move_stage(store, &lead, std::slice::from_ref(&up), vec![trigger("mql_alert", &lead, &up)]).await;
    }
}

/// Redis measures the visibility timeout with its own clock: the test waits
/// for real.
const DELIVERY: DeliveryPolicy = DeliveryPolicy { visibility_timeout_ms: 1_000, max_deliveries: 2 };

async fn wall_clock_after(ms: u64) -> Timestamp {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    leadscore::domain::Clock::now(&leadscore::domain::SystemClock)
}

fn ids(deliveries: &[Delivery]) -> std::collections::BTreeSet<String> {
    deliveries.iter().map(|d| d.trigger_id.clone()).collect()
}

async fn triggers_are_delivered_at_least_once_per_group(store: &dyn LeadStore) {
    fire_triggers(store, "deliver", 4).await;
    let t0 = wall_clock_after(0).await;
    // Group "a": two consumers share the triggers without overlap.
    let first = store.deliver_triggers("a", "c1", 3, &DELIVERY, t0).await.unwrap();
    let second = store.deliver_triggers("a", "c2", 10, &DELIVERY, t0).await.unwrap();
    assert_eq!((first.len(), second.len()), (3, 1));
    assert!(ids(&first).is_disjoint(&ids(&second)));
    assert!(first.iter().chain(&second).all(|d| d.delivery_count == 1 && d.trigger.definition_id == "mql_alert"));
    assert_eq!(store.triggers_in_flight("a", "c1").await.unwrap(), 3);
    // Group "b" gets every trigger too.
    assert_eq!(store.deliver_triggers("b", "x", 10, &DELIVERY, t0).await.unwrap().len(), 4);

    // c2 acks its trigger; c1 acks one and dies; after the visibility
    // timeout c2 gets c1's other two, as delivery 2.
    assert_eq!(store.ack_triggers("a", &[second[0].trigger_id.clone()]).await.unwrap(), 1);
    assert_eq!(store.ack_triggers("a", &[first[0].trigger_id.clone()]).await.unwrap(), 1);
    assert!(store.deliver_triggers("a", "c2", 10, &DELIVERY, t0.plus_millis(100)).await.unwrap().is_empty());
    let later = wall_clock_after(1_100).await;
    let redelivered = store.deliver_triggers("a", "c2", 2, &DELIVERY, later).await.unwrap();
    let expected: std::collections::BTreeSet<_> = first[1..].iter().map(|d| d.trigger_id.clone()).collect();
    assert_eq!(ids(&redelivered), expected);
    assert!(redelivered.iter().all(|d| d.delivery_count == 2));

    // Delivered twice (the maximum) and not acked: dead letters, not delivered again.
    let much_later = wall_clock_after(1_100).await;
    let again = store.deliver_triggers("a", "c3", 10, &DELIVERY, much_later).await.unwrap();
    assert!(again.is_empty(), "{again:?}");
    let dead = store.dead_letters("a", 10).await.unwrap();
    assert_eq!(ids(&dead), expected);
    assert!(dead.iter().all(|d| d.delivery_count == 2));
    assert!(store.dead_letters("b", 10).await.unwrap().is_empty());
    let with_dead = store.trigger_stats("a").await.unwrap();
    assert_eq!((with_dead.pending, with_dead.dead_letters), (0, 2));

    // Replayed, they are delivered again, counting from 1.
    let replay: Vec<String> = dead.iter().map(|d| d.trigger_id.clone()).collect();
    assert_eq!(store.replay_dead_letters("a", &replay).await.unwrap(), 2);
    assert!(store.dead_letters("a", 10).await.unwrap().is_empty());
    let replayed = store.deliver_triggers("a", "c4", 10, &DELIVERY, much_later).await.unwrap();
    assert_eq!(ids(&replayed), expected);
    assert!(replayed.iter().all(|d| d.delivery_count == 1));
    let mid = store.trigger_stats("a").await.unwrap();
    assert_eq!((mid.fired, mid.delivered, mid.pending, mid.dead_letters), (4, 4, 2, 0));
    assert_eq!((mid.acked, mid.redelivered), (2, 2));
    assert_eq!(store.ack_triggers("a", &replay).await.unwrap(), 2);
    assert_eq!(store.ack_triggers("a", &["nonsense".to_string()]).await.unwrap(), 0);
    let done = store.trigger_stats("a").await.unwrap();
    assert_eq!((done.fired, done.delivered, done.pending, done.dead_letters), (4, 4, 0, 0));
    assert_eq!((done.acked, done.redelivered), (4, 2));
    let b = store.trigger_stats("b").await.unwrap();
    assert_eq!((b.delivered, b.pending), (4, 4));
}

async fn spend_is_replaced_by_campaign_source_channel_and_day_and_read_by_period(store: &dyn LeadStore) {
    use leadscore::domain::spend::{Micros, SpendEntry};
    let entry = |campaign: &str, day: i64, micros: i64| SpendEntry {
        campaign: campaign.into(),
        source: "google".into(),
        channel: "paid_search".into(),
        day,
        amount: Micros(micros),
    };
    // Days across a month boundary (2024-10-31 is day 20027), a campaign
    // name with the characters keys and fields must keep apart.
    let odd = "q4 {launch}: é␟,x";
    store
        .record_spend(&[entry("q4", 20_026, 1_000_000), entry("q4", 20_027, 2_000_000), entry(odd, 20_028, 5)])
        .await
        .unwrap();
    // A correction replaces the day; others stay, and so does the same
    // campaign's day through another source.
    let mut other_source = entry("q4", 20_027, 700_000);
    other_source.source = "linkedin".into();
    store.record_spend(&[entry("q4", 20_027, 3_500_000), other_source.clone()]).await.unwrap();
    let all = store.spend(20_000, 20_100).await.unwrap();
    assert_eq!(
        all,
        vec![
            entry("q4", 20_026, 1_000_000),
            entry("q4", 20_027, 3_500_000),
            other_source.clone(),
            entry(odd, 20_028, 5)
        ]
    );
    assert_eq!(store.spend(20_027, 20_028).await.unwrap(), vec![entry("q4", 20_027, 3_500_000), other_source]);
    assert_eq!(store.spend(20_029, 20_400).await.unwrap(), vec![]);
    assert_eq!(store.spend(20_028, 20_028).await.unwrap(), vec![]);
}

async fn a_group_started_at_the_end_gets_only_new_triggers_and_a_leads_own(store: &dyn LeadStore) {
    fire_triggers(store, "old", 3).await;
    store.start_group_at_end("late").await.unwrap();
    let t0 = wall_clock_after(0).await;
    assert!(store.deliver_triggers("late", "c", 10, &DELIVERY, t0).await.unwrap().is_empty());
    fire_triggers(store, "new", 2).await;
    let got = store.deliver_triggers("late", "c", 10, &DELIVERY, t0).await.unwrap();
    let leads: std::collections::BTreeSet<String> = got.iter().map(|d| d.lead_id.to_string()).collect();
    assert_eq!(leads, ["new-0", "new-1"].map(String::from).into());
    // Moved again while one is pending: the pending one stays pending.
    store.start_group_at_end("late").await.unwrap();
    assert_eq!(store.triggers_in_flight("late", "c").await.unwrap(), 2);
    // A lead's own triggers, newest first, whatever the groups did.
    let own = store.lead_triggers(&id("old-1"), 1000).await.unwrap();
    assert_eq!(own.len(), 1);
    assert_eq!((own[0].lead_id.as_str(), own[0].trigger.definition_id.as_str()), ("old-1", "mql_alert"));
    assert!(store.lead_triggers(&id("nobody"), 1000).await.unwrap().is_empty());
}

async fn webhook_state_is_kept_per_endpoint(store: &dyn LeadStore) {
    use leadscore::store::{LetterLine, WebhookCounters, WebhookLetter, WebhookPosition};
    // One holder at a time; the holder renews; another takes over once it lapses.
    assert!(store.webhook_lease("crm", "replica-a", 300).await.unwrap());
    assert!(!store.webhook_lease("crm", "replica-b", 300).await.unwrap());
    assert!(store.webhook_lease("crm", "replica-a", 300).await.unwrap());
    assert!(store.webhook_lease("other", "replica-b", 300).await.unwrap(), "leases are per endpoint");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(store.webhook_lease("crm", "replica-b", 300).await.unwrap());
    assert!(!store.webhook_lease("crm", "replica-a", 300).await.unwrap());

    assert_eq!(store.webhook_position("crm").await.unwrap(), None);
    let position = WebhookPosition { cursor: store.feed_end().await.unwrap(), since_ms: 17 };
    store.set_webhook_position("crm", &position).await.unwrap();
    assert_eq!(store.webhook_position("crm").await.unwrap(), Some(position));
    assert_eq!(store.webhook_position("other").await.unwrap(), None);

    let letter = |id: &str, dead_at_ms: i64| WebhookLetter {
        event_id: id.into(),
        lead_id: "lead {1}: é".into(),
        event_type: "trigger.fired".into(),
        occurred_at_ms: 5,
        body: r#"{"type":"trigger.fired","data":{"x":"␟,\""}}"#.into(),
        attempts: 3,
        last_error: "HTTP 500".into(),
        dead_at_ms,
    };
    store.park_webhook_letters("crm", &[letter("trigger:2/9-0", 20), letter("change:1/7-0", 10)]).await.unwrap();
    assert_eq!(store.webhook_letter_counts("crm").await.unwrap(), (2, 0));
    let dead = store.webhook_letters("crm", LetterLine::Dead, 10).await.unwrap();
    assert_eq!(dead.iter().map(|l| l.event_id.as_str()).collect::<Vec<_>>(), ["change:1/7-0", "trigger:2/9-0"]);
    assert_eq!(dead[1], letter("trigger:2/9-0", 20), "kept as parked");
    assert_eq!(store.webhook_letters("crm", LetterLine::Dead, 1).await.unwrap().len(), 1);
    assert_eq!(store.webhook_letter_counts("other").await.unwrap(), (0, 0));

    // Replay moves dead letters (unknown ids ignored) to the replay line;
    // delivered, they are dropped; failing again, parked again.
    let ids = ["trigger:2/9-0".to_owned(), "change:1/7-0".to_owned(), "nope".to_owned()];
    assert_eq!(store.replay_webhook_letters("crm", &ids).await.unwrap(), 2);
    assert_eq!(store.replay_webhook_letters("crm", &ids).await.unwrap(), 0);
    assert_eq!(store.webhook_letter_counts("crm").await.unwrap(), (0, 2));
    assert_eq!(store.webhook_letters("crm", LetterLine::Replay, 10).await.unwrap().len(), 2);
    store.drop_webhook_letters("crm", &ids[..1]).await.unwrap();
    store.park_webhook_letters("crm", &[letter("change:1/7-0", 30)]).await.unwrap();
    assert_eq!(store.webhook_letter_counts("crm").await.unwrap(), (1, 0));
    assert_eq!(store.webhook_letters("crm", LetterLine::Dead, 10).await.unwrap(), vec![letter("change:1/7-0", 30)]);

    let delta = |delivered, error: &str, at| WebhookCounters {
        delivered,
        failed: 1,
        retried: 2,
        dead_lettered: 0,
        last_error: error.into(),
        last_error_at_ms: at,
        last_success_at_ms: at,
    };
    store.add_webhook_counters("crm", &delta(3, "HTTP 503", 100)).await.unwrap();
    store.add_webhook_counters("crm", &delta(1, "", 0)).await.unwrap();
    let counts = store.webhook_counters("crm").await.unwrap();
    assert_eq!(counts, WebhookCounters { delivered: 4, failed: 2, retried: 4, ..delta(0, "HTTP 503", 100) });
    assert_eq!(store.webhook_counters("other").await.unwrap(), WebhookCounters::default());
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test]
            async fn $name() {
                super::$name(&leadscore::store::MemoryStore::new()).await;
            })*
        }
        mod redis {
            $(#[tokio::test]
            async fn $name() {
                let (_server, store) = super::redis_store();
                super::$name(&store).await;
            })*
        }
        mod redis_cluster {
            $(#[tokio::test]
            async fn $name() {
                let Some(cluster) = crate::helpers::RedisCluster::start() else { return };
                let store = super::cluster_store(&cluster);
                super::$name(&store).await;
                drop(cluster);
            })*
        }
    };
}

contract!(
    upsert_replaces_the_profile,
    signals_match_the_domain_reference,
    duplicates_change_nothing,
    daily_caps_count_first_arrivals,
    batching_does_not_change_the_score,
    several_leads_in_one_call,
    unknown_leads_are_none,
    hostile_ids_are_kept_apart,
    changes_apply_only_onto_the_lead_as_read,
    the_feed_pages_in_order_and_resumes,
    triggers_are_delivered_at_least_once_per_group,
    spend_is_replaced_by_campaign_source_channel_and_day_and_read_by_period,
    webhook_state_is_kept_per_endpoint,
    a_group_started_at_the_end_gets_only_new_triggers_and_a_leads_own,
);

fn redis_store() -> (RedisServer, RedisStore) {
    redis_store_with_partitions(256)
}

fn redis_store_with_partitions(partitions: u32) -> (RedisServer, RedisStore) {
    let server = RedisServer::start();
    let store = RedisStore::connect(&RedisSettings {
        url: server.url(),
        key_prefix: "ls".into(),
        partitions,
        command_timeout: Duration::from_secs(2),
        tls: Default::default(),
    })
    .unwrap();
    (server, store)
}

fn cluster_store(cluster: &crate::helpers::RedisCluster) -> RedisStore {
    RedisStore::connect(&RedisSettings {
        url: cluster.url(),
        key_prefix: "ls".into(),
        partitions: 256,
        command_timeout: Duration::from_secs(2),
        tls: Default::default(),
    })
    .unwrap()
}

/// One request over leads of many partitions lands on every node of a
/// cluster, and reads them back in the request's order.
#[tokio::test]
async fn redis_cluster_spreads_partitions_over_its_nodes() {
    let Some(cluster) = crate::helpers::RedisCluster::start() else { return };
    let store = cluster_store(&cluster);
    let rules = rules();
    let leads: Vec<LeadId> = (0..40).map(|i| id(&format!("spread-{i}"))).collect();
    let batches = leads
        .iter()
        .enumerate()
        .map(|(i, lead)| {
            let signals = (0..=i % 3).map(|k| scored(&rules, &format!("e{i}-{k}"), "page_view", NOW, &[])).collect();
            (lead.clone(), signals)
        })
        .collect();
    let outcomes = record_many(&store, batches).await;
    for (i, (lead, outcome)) in leads.iter().zip(&outcomes).enumerate() {
        assert_eq!(&outcome.1.lead_id, lead);
        assert_eq!(outcome.0.len(), i % 3 + 1);
    }
    let read = store.load_leads(&leads).await.unwrap();
    for (i, (lead, snapshot)) in leads.iter().zip(&read).enumerate() {
        let snapshot = snapshot.as_ref().expect("stored");
        assert_eq!(&snapshot.lead_id, lead);
        assert_eq!(snapshot.tallies.values().map(|t| t.counted).sum::<u64>(), (i % 3 + 1) as u64);
    }
    let per_node = cluster.keys_per_node();
    assert!(per_node.iter().all(|keys| !keys.is_empty()), "{:?}", per_node.iter().map(Vec::len).collect::<Vec<_>>());
}

/// All of a lead's keys share one hash tag (one Redis Cluster slot).
#[tokio::test]
async fn redis_keys_of_a_lead_share_a_slot() {
    let (server, store) = redis_store();
    let rules = rules();
    let lead = id("slot {x}:y");
    let signals =
        vec![scored(&rules, "s1", "page_view", NOW, &[]), scored(&rules, "s2", "pricing_page_view", NOW, &[])];
    record(&store, &lead, signals).await;
    let mut conn = server.connection();
    let keys: Vec<String> = ::redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    // The lead's record, the partition's lead index, inactivity index,
    // cohort counts and scores, funnel counters, and the day's credits
    // under each of the five attribution models.
    assert_eq!(keys.len(), 11, "{keys:?}");
    // The partition's feed and trigger stream, and the list of the lead's
    // entries in them, share the lead's slot too.
    let change = change(Stage::Lead, Stage::Mql, "r", 0);
    let alert = trigger("a", &lead, &change);
    move_stage(&store, &lead, &[change], vec![alert]).await;
    let keys: Vec<String> = ::redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    assert_eq!(keys.len(), 14, "{keys:?}");
    // Redis Cluster hashes only the text between the first '{' and the next '}'.
    let tags: std::collections::BTreeSet<&str> = keys
        .iter()
        .map(|k| {
            let open = k.find('{').unwrap();
            &k[open..=open + k[open..].find('}').unwrap()]
        })
        .collect();
    assert_eq!(tags.len(), 1, "{keys:?}");
}

/// The embedded store is usable behind the trait object too.
#[test]
fn stores_are_object_safe() {
    let _: Arc<dyn LeadStore> = Arc::new(MemoryStore::new());
}

/// More dead letters than one page of pending entries must not hide a live
/// trigger waiting behind them.
#[tokio::test]
async fn redis_redelivers_past_a_page_of_dead_letters() {
    let (_server, store) = redis_store_with_partitions(1);
    fire_triggers(&store, "many", 120).await;
    let now = || leadscore::domain::Clock::now(&leadscore::domain::SystemClock);
    assert_eq!(store.deliver_triggers("g", "c", 120, &DELIVERY, now()).await.unwrap().len(), 120);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // Reclaimed a page at a time.
    let mut second = 0;
    for _ in 0..5 {
        second += store.deliver_triggers("g", "c", 200, &DELIVERY, now()).await.unwrap().len();
    }
    assert_eq!(second, 120);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // Delivered twice: these rounds dead-letter all 120.
    for _ in 0..3 {
        assert!(store.deliver_triggers("g", "c", 200, &DELIVERY, now()).await.unwrap().is_empty());
    }
    assert_eq!(store.trigger_stats("g").await.unwrap().dead_letters, 120);
    // A live trigger behind them, delivered once and left unacknowledged.
    fire_triggers(&store, "late", 1).await;
    let live = store.deliver_triggers("g", "c", 10, &DELIVERY, now()).await.unwrap();
    assert_eq!(live.len(), 1);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // Now the dead letters are idle too, ahead of it in the pending list.
    let again = store.deliver_triggers("g", "c", 10, &DELIVERY, now()).await.unwrap();
    assert_eq!(ids(&again), ids(&live), "{again:?}");
    assert_eq!(again[0].delivery_count, 2);
    assert_eq!(store.trigger_stats("g").await.unwrap().dead_letters, 120);
}

/// A small deterministic generator: the equivalence runs are reproducible.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n.max(1)
    }
}

/// Runs the same random operations — signals in random batches, orders and
/// duplicates, profile upserts, sales decisions, visitor identifications,
/// rescores — through the scoring core against two stores, each step
/// computed from what each store read, and asserts they hold the same:
/// lead states, change feed, triggers, score histories, cohort profiles
/// and funnel counters.
async fn same_history_same_answers(a: &dyn LeadStore, b: &dyn LeadStore, seed: u64) {
    use leadscore::domain::profiles::{CohortQuery, Month};
    let rules = rules();
    let settings = settings();
    let mut rng = Lcg(seed);
    let types = ["demo_requested", "webinar_attended", "form_fill", "page_view", "pricing_page_view", "email_click"];
    let leads: Vec<LeadId> = (0..6)
        .map(|i| {
            if i == 5 {
                LeadId::for_visitor(&leadscore::domain::VisitorId::parse("v1").unwrap())
            } else {
                id(&format!("eq-{i}"))
            }
        })
        .collect();
    for n in 0..60u64 {
        let now = NOW.plus_millis(n as i64 * 3_600_000);
        let lead = leads[rng.below(leads.len() as u64) as usize].clone();
        let op = rng.below(10);
        // Drawn once: both stores get the same inputs.
        let k = 1 + rng.below(4);
        let signals: Vec<ScoredSignal> = (0..k)
            .map(|i| {
                // Event ids repeat now and then: duplicates.
                let event = format!("e{}", (n * 4 + i).saturating_sub(rng.below(3) * 4));
                let ty = types[rng.below(types.len() as u64) as usize];
                let props: &[(&str, &str)] = match rng.below(4) {
                    0 => &[("source", "ads")],
                    1 => &[("source", "ads"), ("campaign", "spring")],
                    2 => &[("campaign", "fall"), ("channel", "email")],
                    _ => &[],
                };
                scored(&rules, &event, ty, now.plus_millis(-(rng.below(40 * 24) as i64) * 3_600_000), props)
            })
            .collect();
        let pick = rng.below(1000);
        let mut changes: Vec<Option<LeadChange>> = Vec::new();
        for store in [a, b] {
            let stored = load_state(store, &lead).await;
            let change = match op {
                0..=5 => {
                    let stage = if lead.visitor().is_some() { Stage::Anonymous } else { Stage::Lead };
                    if stored.as_ref().is_some_and(|s| s.lead.merged_into.is_some()) {
                        None
                    } else {
                        transition::record_signals(&rules, &settings, now, stored, &lead, stage, &signals).change
                    }
                }
                6 if lead.visitor().is_none() => {
                    let seniority = ["vp", "director", "intern"][pick as usize % 3];
                    let attributes = [("seniority".to_owned(), seniority.to_owned())].into();
                    let profile = LeadProfile { lead_id: lead.clone(), account_id: None, attributes, created_at: None };
                    Some(transition::upsert_profile(&rules, &settings, now, stored, profile))
                }
                7 => stored.and_then(|s| {
                    let targets = rules.manual_targets(s.lead.stage);
                    let to = *targets.get(pick as usize % targets.len().max(1))?;
                    let request = transition::StageRequest {
                        to,
                        expected: None,
                        actor: "rep".into(),
                        reason: "call".into(),
                        deal_amount: (to == Stage::Customer).then_some(500.0),
                    };
                    transition::set_stage(&rules, &settings, now, Some(s), request).ok()
                }),
                8 => stored.and_then(|s| transition::rescore(&rules, &settings, now, s)).map(|s| s.change),
                _ => {
                    // The visitor identified as lead 0: marked, then merged.
                    let visitor = load_state(store, &leads[5]).await;
                    match (lead.visitor(), visitor) {
                        (None, Some(v)) if v.lead.merged_into.is_none() => {
                            transition::mark_identified(&rules, &settings, now, Some(v), &lead).ok().flatten()
                        }
                        (None, Some(v)) if v.lead.merged_into.as_ref() == Some(&lead) => {
                            let step = transition::merge_visitor(&rules, &settings, now, stored, &lead, &v, "v1");
                            Some(step.change)
                        }
                        _ => None,
                    }
                }
            };
            if let Some(change) = &change {
                apply_one(store, change).await.expect("written");
            }
            changes.push(change);
        }
        assert_eq!(changes[0], changes[1], "step {n}: the stores read different leads");
    }
    // Same leads.
    assert_eq!(a.load(&leads).await.unwrap(), b.load(&leads).await.unwrap());
    // Same feed, in the same order per lead.
    let feed = |page: leadscore::store::FeedPage| {
        let mut c: Vec<(String, StageChange)> = page.changes.into_iter().map(as_move).collect();
        c.sort_by(|x, y| x.0.cmp(&y.0).then(x.1.at.cmp(&y.1.at)));
        c
    };
    assert_eq!(feed(a.list_changes("", 1000).await.unwrap()), feed(b.list_changes("", 1000).await.unwrap()));
    assert_eq!(a.trigger_stats("g").await.unwrap().fired, b.trigger_stats("g").await.unwrap().fired);
    let month = Month::of(NOW);
    for filter in [None, Some(("seniority".to_owned(), "vp".to_owned()))] {
        let query = CohortQuery { from: month, to: month.next(), model: "b2b".into(), filter, buckets: 10 };
        assert_eq!(a.cohort_profile(&query).await.unwrap(), b.cohort_profile(&query).await.unwrap());
    }
    let (from, to) = (NOW.utc_day() - 60, NOW.utc_day() + 10);
    assert_eq!(a.funnel(from, to).await.unwrap(), b.funnel(from, to).await.unwrap());
    for model in leadscore::domain::attribution::Model::ALL {
        let credits = a.credits(model, from, to).await.unwrap();
        assert!(!credits.groups.is_empty(), "{model:?}: credits kept");
        assert_eq!(credits, b.credits(model, from, to).await.unwrap(), "{model:?}");
    }
}

#[tokio::test]
async fn memory_and_redis_hold_the_same_after_the_same_history() {
    let (_server, redis) = redis_store();
    for seed in 1..=4 {
        let memory = MemoryStore::new();
        let redis_seeded = RedisStore::connect(&RedisSettings {
            url: _server.url(),
            key_prefix: format!("eq{seed}"),
            partitions: 16,
            command_timeout: Duration::from_secs(2),
            tls: Default::default(),
        })
        .unwrap();
        same_history_same_answers(&memory, &redis_seeded, seed).await;
    }
    drop(redis);
}

#[tokio::test]
async fn memory_and_redis_cluster_hold_the_same_after_the_same_history() {
    let Some(cluster) = crate::helpers::RedisCluster::start() else { return };
    let store = cluster_store(&cluster);
    same_history_same_answers(&MemoryStore::new(), &store, 7).await;
}
