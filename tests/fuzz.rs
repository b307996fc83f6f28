//! Fuzzing on stable Rust: property tests with arbitrary input for the
//! rule-file parser, the rule-expression compiler and request conversion.
//! Any panic fails; errors are fine.
//!
//! In CI each target runs a few hundred cases. The long run keeps drawing
//! fresh random cases until its time is up:
//!
//!     scripts/fuzz.sh 600      # 10 minutes, release build

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use leadscore::api::pb;
use leadscore::domain::Timestamp;
use leadscore::rules::RuleSet;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const DAY: i64 = 86_400_000;
const NOW: Timestamp = Timestamp::from_millis(20_000 * DAY);

fn default_rules() -> &'static str {
    leadscore::DEFAULT_RULES
}

/// Rule files: arbitrary text, or the default file with a few bytes
/// changed (mostly still TOML, so the checks behind the parser run).
fn rule_files() -> impl Strategy<Value = String> {
    let text = default_rules().as_bytes().to_vec();
    let n = text.len();
    prop_oneof![
        any::<String>(),
        proptest::collection::vec((0..n, any::<u8>()), 1..12).prop_map(move |edits| {
            let mut bytes = text.clone();
            for (at, byte) in edits {
                bytes[at] = byte;
            }
            String::from_utf8_lossy(&bytes).into_owned()
        }),
    ]
}

/// Expressions: arbitrary text, or token soup close to the rule language.
fn expressions() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("score.behavior".to_string()),
        Just("score.total".to_string()),
        Just("signals.demo_requested.count".to_string()),
        Just("lead.attributes.country".to_string()),
        Just("has(lead.attributes.x)".to_string()),
        Just("grade".to_string()),
        Just("stage".to_string()),
        Just("days_in_stage".to_string()),
        prop_oneof![Just(">="), Just("<"), Just("=="), Just("&&"), Just("||"), Just("!"), Just("in"), Just("+")]
            .prop_map(str::to_string),
        prop_oneof![Just("("), Just(")"), Just("["), Just("]"), Just(","), Just("."), Just("?"), Just(":")]
            .prop_map(str::to_string),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|x| format!("{x:?}")),
        "'[a-zA-Z ]{0,6}'",
        "[a-z_]{1,10}",
        Just("1e308 * 1e308".to_string()),
        Just("9223372036854775807 + 1".to_string()),
    ];
    prop_oneof![any::<String>(), proptest::collection::vec(token, 0..24).prop_map(|tokens| tokens.join(" ")),]
}

/// The default rule file with its first condition replaced by `expr`.
fn with_condition(expr: &str) -> String {
    let quoted = toml::Value::String(expr.to_string()).to_string();
    let mut done = false;
    default_rules()
        .lines()
        .map(|line| {
            if !done && line.starts_with("when = ") {
                done = true;
                format!("when = {quoted}")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn timestamps() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
    prop_oneof![
        Just(None),
        (any::<i64>(), any::<i32>()).prop_map(|(seconds, nanos)| Some(prost_types::Timestamp { seconds, nanos })),
        (-200 * 86_400i64..10 * 86_400, 0..1_000_000_000i32)
            .prop_map(|(offset, nanos)| Some(prost_types::Timestamp { seconds: NOW.millis() / 1000 + offset, nanos })),
    ]
}

fn signals() -> impl Strategy<Value = Vec<pb::Signal>> {
    let id = prop_oneof![any::<String>(), "[a-z0-9{}:*\\-]{1,12}", Just(String::new())];
    let signal_type = prop_oneof![
        any::<String>(),
        Just("page_view".to_string()),
        Just("demo_requested".to_string()),
        Just("content_download".to_string()),
    ];
    let signal = (
        id.clone(),
        id.clone(),
        id,
        signal_type,
        timestamps(),
        proptest::collection::btree_map(any::<String>(), any::<String>(), 0..6),
    )
        .prop_map(|(event_id, lead_id, visitor_id, r#type, occurred_at, properties)| pb::Signal {
            event_id,
            lead_id,
            visitor_id,
            r#type,
            occurred_at,
            properties: properties.into_iter().collect(),
        });
    proptest::collection::vec(signal, 0..12)
}

fn leads() -> impl Strategy<Value = Option<pb::Lead>> {
    let lead = (
        any::<String>(),
        any::<String>(),
        proptest::collection::btree_map(any::<String>(), any::<String>(), 0..8),
        timestamps(),
    )
        .prop_map(|(lead_id, account_id, attributes, created_at): (_, _, BTreeMap<_, _>, _)| pb::Lead {
            lead_id,
            account_id,
            attributes: attributes.into_iter().collect(),
            created_at,
            ..Default::default()
        });
    proptest::option::of(lead)
}

fn parse_rule_file(text: &str) {
    let _ = RuleSet::parse(text);
}

fn convert_signals(rules: &RuleSet, batch: Vec<pb::Signal>) {
    let _ = leadscore::api::convert::signals(batch, rules, NOW, 1000, 300_000, 90 * DAY);
}

fn convert_lead(lead: Option<pb::Lead>) {
    let _ = leadscore::api::convert::lead_profile(lead);
}

fn config(cases: u32) -> Config {
    Config { cases, failure_persistence: None, ..Config::default() }
}

proptest! {
    #![proptest_config(config(300))]

    #[test]
    fn rule_files_never_panic(text in rule_files()) {
        parse_rule_file(&text);
    }

    #[test]
    fn rule_expressions_never_panic(expr in expressions()) {
        parse_rule_file(&with_condition(&expr));
    }

    #[test]
    fn signal_requests_never_panic(batch in signals()) {
        convert_signals(&RuleSet::parse(default_rules()).unwrap(), batch);
    }

    #[test]
    fn lead_requests_never_panic(lead in leads()) {
        convert_lead(lead);
    }
}

/// A valid condition compiles through the same path the fuzzer uses.
#[test]
fn the_splice_keeps_a_valid_file_valid() {
    assert!(RuleSet::parse(&with_condition("score.behavior >= 30.0")).is_ok());
    assert!(RuleSet::parse(&with_condition("score.behavior >=")).is_err());
}

/// The long run: fresh random cases for every target until
/// `LEADSCORE_FUZZ_SECS` (default 60) is up.
#[test]
#[ignore = "long-running: scripts/fuzz.sh"]
fn fuzz_until_time_is_up() {
    let secs: u64 = std::env::var("LEADSCORE_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let rules = RuleSet::parse(default_rules()).unwrap();
    let mut cases = [0u64; 4];
    while Instant::now() < deadline {
        let round = 500;
        TestRunner::new(config(round))
            .run(&rule_files(), |t| {
                parse_rule_file(&t);
                Ok(())
            })
            .unwrap();
        TestRunner::new(config(round))
            .run(&expressions(), |e| {
                parse_rule_file(&with_condition(&e));
                Ok(())
            })
            .unwrap();
        TestRunner::new(config(round))
            .run(&signals(), |b| {
                convert_signals(&rules, b);
                Ok(())
            })
            .unwrap();
        TestRunner::new(config(round))
            .run(&leads(), |l| {
                convert_lead(l);
                Ok(())
            })
            .unwrap();
        for c in &mut cases {
            *c += u64::from(round);
        }
    }
    println!(
        "fuzzed {secs} s without a panic: {} rule files, {} expressions, {} signal batches, {} leads",
        cases[0], cases[1], cases[2], cases[3]
    );
}
