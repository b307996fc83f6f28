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

fn timestamps() -> impl Strategy<Value = Option<pbjson_types::Timestamp>> {
    prop_oneof![
        Just(None),
        (any::<i64>(), any::<i32>()).prop_map(|(seconds, nanos)| Some(pbjson_types::Timestamp { seconds, nanos })),
        (-200 * 86_400i64..10 * 86_400, 0..1_000_000_000i32)
            .prop_map(|(offset, nanos)| Some(pbjson_types::Timestamp { seconds: NOW.millis() / 1000 + offset, nanos })),
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

/// Stack of the thread the bounded-expression checks run on: Tokio's
/// default 2 MiB, a quarter of what the service gives its runtime threads,
/// in a debug build (frames several times deeper than release).
const SMALL_STACK: usize = 2 * 1024 * 1024;

/// Runs `f` on a thread with `SMALL_STACK`; a stack overflow aborts the
/// whole test binary, which fails the run.
fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new().stack_size(SMALL_STACK).spawn(f).expect("a thread").join().expect("no panic");
}

/// Every shape the rule language nests or chains, `n` deep or long.
fn shapes(n: usize) -> Vec<(&'static str, String)> {
    let chain = |term: &str, op: &str| vec![term; n].join(op);
    let mut shapes = Vec::new();
    for op in [" + ", " - ", " * ", " / "] {
        shapes.push(("arithmetic", format!("{} > 1.0", chain("score.total", op))));
    }
    shapes.push(("modulo", format!("{} > 0", chain("signals.demo_requested.count", " % "))));
    for op in [" == ", " != ", " < ", " <= ", " > ", " >= ", " && ", " || ", " in "] {
        shapes.push(("relation or logic", chain("true", op)));
    }
    shapes.extend([
        ("or of comparisons", chain("grade == 'A'", " || ")),
        ("parentheses", format!("{}true{}", "(".repeat(n), ")".repeat(n))),
        ("parenthesised sums", format!("{}score.total{} > 1.0", "(score.total + ".repeat(n), ")".repeat(n))),
        ("not", format!("{}true", "!".repeat(n))),
        ("negation", format!("{}1 > 0", "-".repeat(n))),
        ("negation in brackets", format!("{}1{} > 0", "-(".repeat(n), ")".repeat(n))),
        ("lists", format!("{}1{} != []", "[".repeat(n), "]".repeat(n))),
        ("maps", format!("{}1{} != {{}}", "{'a': ".repeat(n), "}".repeat(n))),
        ("ternary, right", format!("{} : false", chain("true ? true", " : "))),
        ("ternary, left", format!("{}true{}", "(true ? ".repeat(n), " : false)".repeat(n))),
        ("member", format!("lead.attributes{} == 'x'", ".a".repeat(n))),
        ("index", format!("lead.attributes{} == 'x'", "['a']".repeat(n))),
        ("calls", format!("{}'a'{} > 0", "size(".repeat(n), ")".repeat(n))),
        ("conversions", format!("{}1{} == '1'", "string(".repeat(n), ")".repeat(n))),
        ("comprehensions", format!("{}true{}", "[1].all(x, ".repeat(n), ")".repeat(n))),
        ("has", format!("{}lead.attributes.a{}", "has(".repeat(n), ")".repeat(n))),
    ]);
    shapes
}

/// A lead for the conditions to run on.
fn sample_lead() -> leadscore::domain::LeadSnapshot {
    let id = leadscore::domain::LeadId::parse("deep").unwrap();
    let mut lead = leadscore::domain::LeadSnapshot::new(id, NOW);
    lead.attributes.insert("a".into(), "x".into());
    lead
}

/// Deep and long expressions of every shape are refused with the line of
/// their rule, or compile and evaluate: on a small stack, nothing overflows.
#[test]
fn deep_and_long_expressions_are_bounded_on_a_small_stack() {
    on_small_stack(|| {
        let mut accepted = std::collections::BTreeSet::new();
        for n in [1, 2, 8, 16, 24, 25, 31, 32, 33, 48, 64, 100, 400, 1400, 4000] {
            for (shape, expr) in shapes(n) {
                let file = with_condition(&expr);
                let line =
                    file.lines().position(|l| l.starts_with("when = ") && l.contains(&expr[..expr.len().min(20)]));
                match RuleSet::parse(&file) {
                    Ok(rules) => {
                        let _ = rules.qualify(&sample_lead(), NOW);
                        accepted.insert((shape, n.min(8)));
                    }
                    Err(errors) => {
                        let line = line.expect("the condition's line") + 1;
                        assert!(
                            errors.iter().any(|e| e.line == line),
                            "{shape} × {n}: no error on line {line}: {:?}",
                            errors.iter().map(|e| format!("{}:{} {}", e.line, e.column, e.message)).collect::<Vec<_>>()
                        );
                    }
                }
            }
        }
        // The bounds leave room for real conditions (member, index and call
        // chains of 8 are type errors here: a string has no fields).
        for shape in
            ["arithmetic", "parentheses", "not", "lists", "maps", "ternary, left", "ternary, right", "conversions"]
        {
            assert!(accepted.contains(&(shape, 8)), "{shape} × 8 refused; accepted: {accepted:?}");
        }
    });
}

/// Random nestings of every shape, on a small stack.
fn nested() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("true".to_string()),
        Just("score.total".to_string()),
        Just("1".to_string()),
        Just("'a'".to_string()),
        Just("lead.attributes".to_string()),
    ];
    leaf.prop_recursive(64, 4096, 3, |inner| {
        prop_oneof![
            (
                inner.clone(),
                prop_oneof![Just("+"), Just("&&"), Just("||"), Just("<"), Just("=="), Just("in")],
                inner.clone()
            )
                .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
            inner.clone().prop_map(|a| format!("({a})")),
            inner.clone().prop_map(|a| format!("!{a}")),
            inner.clone().prop_map(|a| format!("[{a}, {a}]")),
            inner.clone().prop_map(|a| format!("{{'k': {a}}}")),
            (inner.clone(), inner.clone(), inner.clone()).prop_map(|(a, b, c)| format!("{a} ? {b} : {c}")),
            inner.clone().prop_map(|a| format!("{a}.a")),
            inner.clone().prop_map(|a| format!("{a}['a']")),
            inner.clone().prop_map(|a| format!("size({a})")),
            inner.prop_map(|a| format!("[1].exists(x, {a})")),
        ]
    })
}

#[test]
fn random_nestings_never_overflow_a_small_stack() {
    on_small_stack(|| {
        TestRunner::new(config(200))
            .run(&nested(), |expr| {
                if let Ok(rules) = RuleSet::parse(&with_condition(&expr)) {
                    let _ = rules.qualify(&sample_lead(), NOW);
                }
                Ok(())
            })
            .unwrap();
    });
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
