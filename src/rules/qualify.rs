//! Qualification rules: CEL conditions that move leads forward through the
//! lifecycle (SPEC §4). Compiled and checked once when the rule set loads;
//! evaluated against a lead after every score or profile change.
//!
//! A condition sees these names:
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `score.total`, `score.behavior`, `score.fit` | double | primary model's score now |
//! | `scores.<model>.total` (`.behavior`, `.fit`, `.grade`) | double / string | any model's score |
//! | `grade` | string | `"A"` … `"D"` (primary model) |
//! | `stage` | string | current stage, e.g. `"LEAD"` |
//! | `signals.<type>.count` | int | counted signals of the type, ever |
//! | `signals.<type>.last_at` | timestamp | newest counted `occurred_at` (epoch if none) |
//! | `signals.<type>.count_<N>d` | int | counted in the last N UTC days, today included |
//! | `lead.attributes.<name>` | string | profile attribute (missing: use `has(...)`) |
//! | `lead.created_at` | timestamp | |
//! | `lead.account_id` | string | empty if none |
//! | `now` | timestamp | evaluation time |
//! | `days(n)` | function → duration | `n` × 24 h (CEL's `duration()` has no days) |

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use cel::common::types::{CelDouble, CelInt, CelMap, CelMapKey, CelString, CelTimestamp};
use cel::{Context, ExecutionError, Program, Value};

use super::expr;
use crate::domain::{Grade, LeadSnapshot, Score, Stage, Timestamp};

/// Longest condition accepted, in bytes.
const MAX_CONDITION_BYTES: usize = 4096;
/// Longest window a `count_<N>d` may ask for.
pub const MAX_WINDOW_DAYS: u32 = 365;

const NAMES: [&str; 7] = ["score", "scores", "grade", "stage", "signals", "lead", "now"];
const SCORE_FIELDS: [&str; 3] = ["total", "behavior", "fit"];
const LEAD_FIELDS: [&str; 3] = ["attributes", "created_at", "account_id"];

/// One compiled qualification rule.
#[derive(Debug)]
pub struct QualificationRule {
    pub id: String,
    pub to: Stage,
    /// Stages the rule applies from; `None` for any.
    pub from: Option<Vec<Stage>>,
    /// The CEL source, as written.
    pub when: String,
    program: Program,
}

impl QualificationRule {
    pub fn dry_run(&self, ctx: &Context<'_, '_>) -> Result<(), String> {
        dry_run_program(&self.program, ctx)
    }

    pub fn admits(&self, stage: Stage) -> bool {
        self.from.as_ref().is_none_or(|from| from.contains(&stage))
    }
}

/// What conditions read, gathered at compile time so evaluation builds
/// only that.
#[derive(Debug, Default, Clone)]
pub struct Needs {
    /// Signal types referenced as `signals.<type>`.
    pub signal_types: BTreeSet<String>,
    /// Windows referenced as `count_<N>d`.
    pub windows: BTreeSet<u32>,
    pub scores: bool,
    /// `lead.…` is read.
    pub lead: bool,
    /// `days(…)` is called.
    pub days: bool,
}

/// Why a condition is refused: a message for the user and, when one part
/// of the condition is at fault, that part as written (to locate it).
#[derive(Debug, Clone, PartialEq)]
pub struct ConditionError {
    pub message: String,
    pub snippet: Option<String>,
}

impl From<String> for ConditionError {
    fn from(message: String) -> Self {
        Self { message, snippet: None }
    }
}

/// Checks one condition and compiles it: bounded in depth, size and cost
/// (see [`super::expr`]), every name known, every sub-expression typed.
pub fn compile_condition(
    id: &str,
    when: &str,
    signal_types: &BTreeSet<String>,
    models: &BTreeSet<String>,
    needs: &mut Needs,
) -> Result<Program, ConditionError> {
    if when.trim().is_empty() {
        return Err(format!("rule '{id}': 'when' must not be empty").into());
    }
    if when.len() > MAX_CONDITION_BYTES {
        return Err(format!("rule '{id}': 'when' is longer than {MAX_CONDITION_BYTES} bytes").into());
    }
    let refused = |e: expr::ExprError| ConditionError {
        message: match &e.snippet {
            Some(part) => format!("rule '{id}': `{part}`: {}", e.message),
            None => format!("rule '{id}': {}", e.message),
        },
        snippet: e.snippet,
    };
    expr::scan(when).map_err(refused)?;
    let program = Program::compile(when).map_err(|e| {
        let first = e.to_string().lines().next().unwrap_or_default().replace("ERROR: <input>:", "at ");
        format!("rule '{id}': CEL syntax error {first}")
    })?;
    expr::bound(&program).map_err(refused)?;
    check_names(id, when, &program, signal_types, models, needs)?;
    expr::check_types(&program, &expr::Names { signal_types, models }).map_err(refused)?;
    Ok(program)
}

/// Every name a condition reads is known; records what it reads in `needs`.
fn check_names(
    id: &str,
    when: &str,
    program: &Program,
    signal_types: &BTreeSet<String>,
    models: &BTreeSet<String>,
    needs: &mut Needs,
) -> Result<(), String> {
    let references = program.references();
    for name in references.variables() {
        let bound_by_macro = when.contains(&format!("({name},")) || when.contains(&format!("({name} ,"));
        if !NAMES.contains(&name) && !bound_by_macro {
            return Err(format!("rule '{id}': unknown name '{name}'; conditions can use {}", NAMES.join(", ")));
        }
    }
    needs.lead |= references.has_variable("lead");
    needs.days |= references.has_function("days");
    check_fields(id, when, "score", &SCORE_FIELDS)?;
    check_fields(id, when, "lead", &LEAD_FIELDS)?;
    for (model, _) in member_paths(when, "scores") {
        if !models.contains(&model) {
            return Err(format!("rule '{id}': scores.{model}: no such model"));
        }
        needs.scores = true;
    }
    for (signal_type, field) in member_paths(when, "signals") {
        if !signal_types.contains(&signal_type) {
            return Err(format!("rule '{id}': signals.{signal_type}: '{signal_type}' is not a declared signal type"));
        }
        match field.as_deref() {
            Some("count" | "last_at") => {}
            Some(f) if window_days(f).is_some() => {
                let days = window_days(f).unwrap_or_default();
                if days == 0 || days > MAX_WINDOW_DAYS {
                    return Err(format!(
                        "rule '{id}': signals.{signal_type}.{f}: windows are 1 to {MAX_WINDOW_DAYS} days"
                    ));
                }
                needs.windows.insert(days);
            }
            other => {
                return Err(format!(
                    "rule '{id}': signals.{signal_type}.{}: use .count, .last_at or .count_<N>d",
                    other.unwrap_or("")
                ));
            }
        }
        needs.signal_types.insert(signal_type);
    }
    Ok(())
}

/// `count_30d` → 30.
fn window_days(field: &str) -> Option<u32> {
    field.strip_prefix("count_")?.strip_suffix('d')?.parse().ok()
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every `root.a` or `root.a.b` in the source: (a, b).
fn member_paths(source: &str, root: &str) -> Vec<(String, Option<String>)> {
    let pattern = format!("{root}.");
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(found) = source[from..].find(&pattern) {
        let start = from + found;
        from = start + pattern.len();
        if source[..start].chars().next_back().is_some_and(|c| is_ident_char(c) || c == '.') {
            continue;
        }
        let rest = &source[from..];
        let first: String = rest.chars().take_while(|c| is_ident_char(*c)).collect();
        if first.is_empty() {
            continue;
        }
        let after = &rest[first.len()..];
        let second = after
            .strip_prefix('.')
            .map(|r| r.chars().take_while(|c| is_ident_char(*c)).collect::<String>())
            .filter(|s| !s.is_empty());
        out.push((first, second));
    }
    out
}

fn check_fields(id: &str, source: &str, root: &str, allowed: &[&str]) -> Result<(), String> {
    for (field, _) in member_paths(source, root) {
        if !allowed.contains(&field.as_str()) {
            return Err(format!(
                "rule '{id}': {root}.{field}: use {}",
                allowed.iter().map(|f| format!("{root}.{f}")).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    Ok(())
}

fn grade_str(grade: Grade) -> &'static str {
    match grade {
        Grade::A => "A",
        Grade::B => "B",
        Grade::C => "C",
        Grade::D => "D",
    }
}

/// A CEL value built as the interpreter holds it (a `Value` would be
/// converted, map by map, when bound).
type CelVal = Box<dyn cel::common::value::Val + 'static>;

fn cel_map(entries: impl IntoIterator<Item = (String, CelVal)>) -> CelVal {
    let map: HashMap<CelMapKey<'static>, CelVal> =
        entries.into_iter().map(|(k, v)| (CelMapKey::String(CelString::from(k)), v)).collect();
    Box::new(CelMap::from(map))
}

fn cel_int(n: i64) -> CelVal {
    Box::new(CelInt::from(n))
}

fn cel_string(s: String) -> CelVal {
    Box::new(CelString::from(s))
}

fn cel_timestamp(t: Timestamp) -> CelVal {
    let at = chrono::DateTime::from_timestamp_millis(t.millis()).unwrap_or_default();
    Box::new(CelTimestamp::from(at.fixed_offset()))
}

fn score_value(score: &Score) -> CelVal {
    cel_map([
        ("total".to_owned(), Box::new(CelDouble::from(score.total)) as CelVal),
        ("behavior".to_owned(), Box::new(CelDouble::from(score.behavior))),
        ("fit".to_owned(), Box::new(CelDouble::from(score.fit))),
        ("grade".to_owned(), cel_string(grade_str(score.grade).to_owned())),
    ])
}

/// What a condition is evaluated against.
pub struct Facts<'a> {
    pub lead: &'a LeadSnapshot,
    pub stage: Stage,
    pub primary: &'a Score,
    pub scores: &'a [Score],
    pub daily_caps: &'a BTreeMap<String, Option<u32>>,
    pub now: Timestamp,
}

/// Builds the CEL context for `facts`, with only what `needs` says is read.
pub fn context<'c>(env: &Arc<cel::Env>, needs: &Needs, facts: &Facts<'_>) -> Context<'c, 'c> {
    let mut ctx = base_context(env, needs, facts);
    set_stage(&mut ctx, facts.stage);
    ctx
}

/// Binds `stage`: in a scope over a base context, it is all that changes
/// between the rounds of one qualification.
pub fn set_stage(ctx: &mut Context<'_, '_>, stage: Stage) {
    ctx.add_variable_as_val("stage", cel_string(stage.as_str().to_owned()));
}

/// Everything of the context but `stage` (`facts.stage` is not read).
pub fn base_context<'c>(env: &Arc<cel::Env>, needs: &Needs, facts: &Facts<'_>) -> Context<'c, 'c> {
    let mut ctx = Context::with_env(env.clone());
    for name in VARIABLES {
        if let Some(value) = variable(name, needs, facts) {
            ctx.add_variable_as_val(name, value);
        }
    }
    add_functions(&mut ctx, needs);
    ctx
}

/// The functions conditions may call beyond CEL's own.
pub fn add_functions(ctx: &mut Context<'_, '_>, needs: &Needs) {
    if needs.days {
        // Fails only if `days` were declared already; the standard library has none.
        let _ = ctx.add_function("days", days);
    }
}

/// `days(n)`: `n` × 24 h; an error, not a panic, past what a duration holds
/// (`n` may come from a lead's attribute).
pub fn days(n: i64) -> Result<chrono::Duration, ExecutionError> {
    chrono::Duration::try_days(n).ok_or_else(|| ExecutionError::function_error("days", "out of range"))
}

/// The variables of a context, `stage` aside.
const VARIABLES: [&str; 6] = ["score", "grade", "now", "scores", "signals", "lead"];

/// One variable's value; `None` for names conditions do not read.
fn variable(name: &str, needs: &Needs, facts: &Facts<'_>) -> Option<CelVal> {
    Some(match name {
        "score" => score_value(facts.primary),
        "grade" => cel_string(grade_str(facts.primary.grade).to_owned()),
        "now" => cel_timestamp(facts.now),
        "scores" if needs.scores => cel_map(facts.scores.iter().map(|s| (s.model.clone(), score_value(s)))),
        "signals" if !needs.signal_types.is_empty() => cel_map(needs.signal_types.iter().map(|t| {
            let tally = facts.lead.tallies.get(t);
            let cap = facts.daily_caps.get(t).copied().flatten();
            let fields = [
                ("count".to_owned(), cel_int(tally.map_or(0, |t| t.counted) as i64)),
                (
                    "last_at".to_owned(),
                    cel_timestamp(tally.and_then(|t| t.last_at).unwrap_or(Timestamp::from_millis(0))),
                ),
            ]
            .into_iter()
            .chain(needs.windows.iter().map(|days| {
                let n = facts.lead.count_within(t, *days, cap, facts.now);
                (format!("count_{days}d"), cel_int(n as i64))
            }));
            (t.clone(), cel_map(fields))
        })),
        "lead" if needs.lead => {
            let attributes = cel_map(facts.lead.attributes.iter().map(|(k, v)| (k.clone(), cel_string(v.clone()))));
            let account = facts.lead.account_id.as_ref().map(|a| a.to_string()).unwrap_or_default();
            cel_map([
                ("attributes".to_owned(), attributes),
                ("created_at".to_owned(), cel_timestamp(facts.lead.created_at)),
                ("account_id".to_owned(), cel_string(account)),
            ])
        }
        _ => return None,
    })
}

/// The context's variables, each built the first time a condition reads
/// it and kept for the next: a lead that one cheap condition moves never
/// has its profile or signal windows built. Bind `stage` in the context
/// (or a scope over it) as usual.
pub struct LazyFacts<'a> {
    needs: &'a Needs,
    facts: Facts<'a>,
    built: [std::sync::OnceLock<Option<CelVal>>; 6],
}

impl<'a> LazyFacts<'a> {
    pub fn new(needs: &'a Needs, facts: Facts<'a>) -> Self {
        Self { needs, facts, built: Default::default() }
    }
}

impl cel::context::VariableResolver for LazyFacts<'_> {
    fn resolve<'b>(&'b self, name: &str) -> Option<cel::common::value::CowVal<'b, 'b>> {
        let index = VARIABLES.iter().position(|v| *v == name)?;
        let value = self.built[index].get_or_init(|| variable(name, self.needs, &self.facts)).as_ref()?;
        Some(cel::common::value::CowVal::Borrowed(value.as_ref()))
    }
}

/// Outcome of one condition.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Holds,
    DoesNotHold,
    /// Evaluation failed (e.g. a missing attribute): treated as not holding.
    Failed(String),
}

pub fn evaluate(rule: &QualificationRule, ctx: &Context<'_, '_>) -> Verdict {
    evaluate_program(&rule.program, ctx)
}

/// Runs a condition; a failure is described without the lead's values.
pub fn evaluate_program(program: &Program, ctx: &Context<'_, '_>) -> Verdict {
    match execute(program, ctx) {
        Ok(Value::Bool(true)) => Verdict::Holds,
        Ok(Value::Bool(false)) => Verdict::DoesNotHold,
        Ok(other) => Verdict::Failed(format!("the result is a {:?}, not true or false", other.type_of())),
        Err(e) => Verdict::Failed(describe(&e)),
    }
}

/// Runs a program; a panic inside the interpreter (e.g. chrono's on a
/// timestamp past year 262,143) is an evaluation error, not a dead task.
pub fn execute(program: &Program, ctx: &Context<'_, '_>) -> cel::ResolveResult {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| program.execute(ctx))).unwrap_or_else(|_| {
        Err(ExecutionError::function_error("condition", "the interpreter failed on this lead's values"))
    })
}

/// An evaluation error in words, naming keys and functions of the rule but
/// no value of the lead's (`ExecutionError`'s own text quotes them).
fn describe(e: &ExecutionError) -> String {
    match e {
        ExecutionError::NoSuchKey(key) => format!("no such key '{key}' (guard it with has(...))"),
        ExecutionError::FunctionError { function, .. } if function == "condition" => {
            "the interpreter failed on this lead's values".to_owned()
        }
        ExecutionError::FunctionError { function, .. } => format!("{function}() failed on this lead's value"),
        ExecutionError::NoSuchOverload(o) => format!("no overload of '{}' for these values", o.function()),
        ExecutionError::DivisionByZero(_) | ExecutionError::RemainderByZero(_) => "division by zero".to_owned(),
        ExecutionError::Overflow(op, ..) => format!("overflow in '{op}'"),
        ExecutionError::IndexOutOfBounds(_) => "index out of bounds".to_owned(),
        ExecutionError::UndeclaredReference(name) => format!("undeclared reference to '{name}'"),
        _ => "a value of the wrong type".to_owned(),
    }
}

/// Runs a compiled condition once against a made-up lead to find type
/// errors: every referenced attribute is set to "0" so comparisons of a
/// string with a number show up. Missing keys are not errors.
pub fn dry_run_program(program: &Program, ctx: &Context<'_, '_>) -> Result<(), String> {
    match execute(program, ctx) {
        Ok(Value::Bool(_)) | Err(ExecutionError::NoSuchKey(_)) => Ok(()),
        Ok(other) => Err(format!("the condition must be true or false, not {:?}", other.type_of())),
        Err(e) => Err(format!("type error: {e}")),
    }
}

pub fn build(id: String, to: Stage, from: Option<Vec<Stage>>, when: String, program: Program) -> QualificationRule {
    QualificationRule { id, to, from, when, program }
}

/// Attribute names a condition reads as `lead.attributes.<name>`.
pub fn referenced_attributes(when: &str) -> Vec<String> {
    member_paths(when, "lead")
        .into_iter()
        .filter(|(root, _)| root == "attributes")
        .filter_map(|(_, name)| name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_out_of_range_is_an_error_not_a_panic() {
        assert!(days(i64::MAX).is_err());
        assert_eq!(days(2).unwrap(), chrono::Duration::hours(48));
        // chrono panics past year 262,143: an evaluation error instead.
        let program = Program::compile("now + days(100000000) > now").unwrap();
        let mut ctx = Context::default();
        ctx.add_variable_as_val("now", cel_timestamp(Timestamp::from_millis(0)));
        let _ = ctx.add_function("days", days);
        assert!(matches!(evaluate_program(&program, &ctx), Verdict::Failed(_)));
    }

    #[test]
    fn finds_member_paths() {
        let paths = member_paths("signals.demo_requested.count_30d > 0 || xsignals.a.b || signals.x", "signals");
        assert_eq!(paths, [("demo_requested".to_string(), Some("count_30d".to_string())), ("x".to_string(), None)]);
        assert_eq!(window_days("count_30d"), Some(30));
        assert_eq!(window_days("count_d"), None);
        assert_eq!(referenced_attributes("has(lead.attributes.title) && lead.created_at < now"), ["title"]);
    }
}
