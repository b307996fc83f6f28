//! Property tests of the scoring invariants (SPEC §3): the score does not
//! depend on arrival order (when no daily cap is exceeded) nor on batching,
//! duplicates change nothing, and decay is exactly exponential.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

const DAY: i64 = 86_400_000;
const POLICY: IngestPolicy = IngestPolicy { dedupe_window_ms: 7 * DAY, retention_ms: 90 * DAY, history_limit: 10 };
const TYPES: [(&str, f64, Decay); 3] = [
    ("page_view", 1.0, Decay::HalfLife { millis: 30.0 * DAY as f64 }),
    ("demo_requested", 40.0, Decay::HalfLife { millis: 3.0 * DAY as f64 }),
    ("unsubscribe", -30.0, Decay::None),
];

fn model() -> ScoringModel {
    let signals = TYPES
        .iter()
        .map(|(t, points, decay)| {
            (t.to_string(), model::SignalPoints { points: *points, decay: *decay, refinements: Vec::new() })
        })
        .collect();
    ScoringModel {
        name: "m".into(),
        signals,
        fit_rules: Vec::new(),
        grades: GradeThresholds { a: 3.0, b: 2.0, c: 1.0 },
    }
}

fn signal(model: &ScoringModel, n: usize, type_index: usize, at: i64) -> ScoredSignal {
    let signal_type = TYPES[type_index].0.to_string();
    let properties = BTreeMap::new();
    ScoredSignal {
        event_id: EventId::parse(format!("e{n}")).unwrap(),
        weights: vec![model.weigh(&signal_type, &properties)],
        signal_type,
        occurred_at: Timestamp::from_millis(at),
        daily_cap: None,
        properties,
    }
}

fn record_all(signals: &[ScoredSignal], now: Timestamp) -> LeadSnapshot {
    let mut lead = LeadSnapshot::new(LeadId::parse("l").unwrap(), now);
    let mut ledger = LeadLedger::default();
    for s in signals {
        ledger.record(&mut lead, s, now, &POLICY);
    }
    lead
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
}

/// Up to 40 signals of the three types within 80 days before `now`.
fn signals() -> impl Strategy<Value = Vec<(usize, i64)>> {
    prop::collection::vec((0..TYPES.len(), 0..80 * DAY), 1..40)
}

proptest! {
    #[test]
    fn order_does_not_matter(raw in signals(), seed in any::<u64>()) {
        let m = model();
        let now = Timestamp::from_millis(100 * DAY);
        let in_order: Vec<_> = raw.iter().enumerate().map(|(n, (t, at))| signal(&m, n, *t, 20 * DAY + at)).collect();
        let mut shuffled = in_order.clone();
        // A deterministic shuffle driven by the seed.
        let mut s = seed;
        for i in (1..shuffled.len()).rev() {
            s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        let a = m.score(&record_all(&in_order, now), now);
        let b = m.score(&record_all(&shuffled, now), now);
        prop_assert!(close(a.total, b.total), "{} vs {}", a.total, b.total);
        prop_assert_eq!(a.contributions.len(), b.contributions.len());
    }

    #[test]
    fn duplicates_change_nothing(raw in signals(), repeat in 0usize..40) {
        let m = model();
        let now = Timestamp::from_millis(100 * DAY);
        let mut signals: Vec<_> = raw.iter().enumerate().map(|(n, (t, at))| signal(&m, n, *t, 20 * DAY + at)).collect();
        let once = m.score(&record_all(&signals, now), now);
        let again = signals[repeat % signals.len()].clone();
        signals.push(again);
        let twice = m.score(&record_all(&signals, now), now);
        prop_assert_eq!(once, twice);
    }

    #[test]
    fn decay_is_exponential_at_any_age(points in -100.0f64..100.0, age_days in 0i64..365, half_life_days in 1i64..90) {
        let decay = Decay::HalfLife { millis: (half_life_days * DAY) as f64 };
        let mut tally = TypeTally::default();
        tally.add(Timestamp::from_millis(0), &[ModelWeight { model: "m".into(), points, decay }]);
        let now = Timestamp::from_millis(age_days * DAY);
        let one_more = Timestamp::from_millis(age_days * DAY + half_life_days * DAY);
        let expected = points * 0.5f64.powf(age_days as f64 / half_life_days as f64);
        prop_assert!(close(tally.value_at("m", decay, now), expected));
        prop_assert!(close(tally.value_at("m", decay, one_more), tally.value_at("m", decay, now) / 2.0));
    }

    #[test]
    fn caps_bound_what_counts_per_day(arrivals in 1usize..30, cap in 1u32..10) {
        let m = model();
        let now = Timestamp::from_millis(100 * DAY);
        let signals: Vec<_> = (0..arrivals)
            .map(|n| ScoredSignal { daily_cap: Some(cap), ..signal(&m, n, 0, 99 * DAY + n as i64 * 1000) })
            .collect();
        let lead = record_all(&signals, now);
        prop_assert_eq!(lead.tallies["page_view"].counted, arrivals.min(cap as usize) as u64);
    }
}
