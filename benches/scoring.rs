//! Micro-benchmarks of the pure hot paths: scoring a lead from its
//! aggregates, and running the default rule set's qualification rules.
//!
//!     cargo bench --bench scoring

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use leadscore::domain::{EventId, IngestPolicy, LeadId, LeadLedger, LeadSnapshot, ScoredSignal, Timestamp};
use leadscore::rules::RuleSet;

const DAY: i64 = 86_400_000;

/// A lead with 20 signals over 15 types and a full profile (it matches the
/// first rule: one of its types is an unsubscribe).
fn busy_lead(rules: &RuleSet, now: Timestamp) -> LeadSnapshot {
    let types: Vec<String> = rules.signal_types.keys().cloned().collect();
    lead_with(rules, now, &types)
}

/// The same profile with 20 page views: no rule holds, so every condition
/// of the stage is evaluated (the worst case).
fn quiet_lead(rules: &RuleSet, now: Timestamp) -> LeadSnapshot {
    lead_with(rules, now, &["page_view".to_string()])
}

fn lead_with(rules: &RuleSet, now: Timestamp, types: &[String]) -> LeadSnapshot {
    let mut lead = LeadSnapshot::new(LeadId::parse("bench").unwrap(), now);
    lead.attributes = [("seniority", "director"), ("company_size", "800"), ("country", "de"), ("industry", "saas")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let policy = IngestPolicy { dedupe_window_ms: 7 * DAY, retention_ms: 90 * DAY, history_limit: 0 };
    let mut ledger = LeadLedger::default();
    for i in 0..20 {
        let t = types[i % types.len()].clone();
        let properties = BTreeMap::new();
        let signal = ScoredSignal {
            event_id: EventId::parse(format!("e{i}")).unwrap(),
            daily_cap: rules.signal_type(&t).unwrap().daily_cap,
            weights: rules.weigh(&t, &properties),
            signal_type: t,
            occurred_at: now.plus_millis(-(i as i64) * 2 * DAY),
            properties,
        };
        ledger.record(&mut lead, &signal, now, &policy);
    }
    lead
}

fn benches(c: &mut Criterion) {
    let rules = RuleSet::parse(leadscore::DEFAULT_RULES).unwrap();
    let now = Timestamp::from_millis(1_800_000_000_000);
    let lead = busy_lead(&rules, now);
    c.bench_function("score a lead (20 signals, 15 types, 9 fit rules)", |b| {
        b.iter(|| black_box(rules.primary().score(black_box(&lead), now)))
    });
    c.bench_function("qualify a lead (default rule set)", |b| {
        b.iter(|| black_box(rules.qualify(black_box(&lead), now)))
    });
    let quiet = quiet_lead(&rules, now);
    assert!(rules.qualify(&quiet, now).is_empty(), "no rule holds for the quiet lead");
    c.bench_function("qualify a lead no rule moves (default rule set)", |b| {
        b.iter(|| black_box(rules.qualify(black_box(&quiet), now)))
    });
}

criterion_group!(scoring, benches);
criterion_main!(scoring);
