//! The rule set: the version-controlled contract between marketing and
//! sales (SPEC §4). Parsed from TOML, validated with line-accurate errors,
//! compiled into the domain's scoring models. Pure: callers read the file.

mod compile;
mod error;
pub mod expr;
mod file;
pub mod qualify;
pub mod triggers;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

pub use crate::domain::duration::{format_duration, parse_duration};
pub use error::RuleError;

use crate::domain::{Decay, LeadSnapshot, ModelWeight, Score, ScoringModel, Stage, Timestamp};
use qualify::{Facts, Needs, QualificationRule, Verdict};

/// Teams that must sign every rule set unless configured otherwise.
pub const DEFAULT_APPROVERS: [&str; 2] = ["marketing", "sales"];

/// A declared signal type.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalTypeDef {
    pub description: String,
    /// At most this many signals of the type count per lead per UTC day.
    pub daily_cap: Option<u32>,
}

/// A validated, compiled rule set.
pub struct RuleSet {
    pub version: String,
    pub agreed_by: Vec<String>,
    pub primary_model: String,
    pub signal_types: BTreeMap<String, SignalTypeDef>,
    pub models: BTreeMap<String, ScoringModel>,
    /// Manual moves `SetStage` may make: from → allowed targets.
    pub manual_transitions: BTreeMap<Stage, Vec<Stage>>,
    /// In file order: the first that applies wins.
    pub qualification: Vec<QualificationRule>,
    /// Nurture trigger definitions.
    pub triggers: Vec<triggers::TriggerDefinition>,
    /// Profile attributes cohort profiles can filter on (`[profiles]`).
    pub cohort_attributes: Vec<String>,
    /// How accounts score and qualify (`[accounts]`).
    pub accounts: crate::domain::account::AccountPolicy,
    /// The time-decay attribution model's half-life (`[attribution]`).
    pub attribution_half_life_ms: i64,
    /// The sales follow-up agreement (`[sla]`), if the teams signed one.
    pub sla: Option<crate::domain::sla::Agreement>,
    /// The file as written.
    pub source: String,
    /// SHA-256 of `source`, hex: what `version` must always name.
    pub digest: String,
    /// Default half-life per model, for the summary.
    half_lives: BTreeMap<String, Decay>,
    needs: Needs,
    daily_caps: BTreeMap<String, Option<u32>>,
    cel_env: Arc<cel::Env>,
    /// Told of every condition that fails to evaluate (see `RuleFailure`).
    on_failure: Option<FailureHook>,
}

/// A condition that could not be evaluated for a lead (a missing attribute
/// read without `has()`, a number that is not one…). It is treated as not
/// holding, and never in silence: the hook counts and logs it, and
/// simulation reports the leads it happened on.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleFailure {
    /// The qualification rule's or trigger's id.
    pub rule_id: String,
    /// What went wrong, without the lead's values (they may be personal).
    pub error: String,
}

/// Receives the rule set's version and each failure.
pub type FailureHook = Arc<dyn Fn(&str, &RuleFailure) + Send + Sync>;

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet").field("version", &self.version).field("models", &self.models.keys()).finish()
    }
}

/// Stack of the thread rule files are compiled on, whoever asks (a Tokio
/// worker has 2 MiB): the CEL parser recurses per bracket level — about
/// 130 KiB a level in a debug build, far less in release — and conditions
/// nest at most `expr::MAX_NESTING` deep. Only the pages used are touched.
const COMPILE_STACK: usize = 32 * 1024 * 1024;

/// Compiles on a thread of its own with `COMPILE_STACK`, so the verdict on a
/// file is the same from `rules check`, an RPC, a reload or start-up.
fn compile_on_own_stack(source: &str, approvers: &[String]) -> Result<RuleSet, Vec<RuleError>> {
    std::thread::scope(|scope| {
        let compiler = std::thread::Builder::new()
            .name("rules-compile".into())
            .stack_size(COMPILE_STACK)
            .spawn_scoped(scope, || compile::compile(source, approvers));
        match compiler {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|_| Err(vec![RuleError::at(source, None, "the rule file could not be compiled")])),
            Err(e) => Err(vec![RuleError::at(source, None, format!("cannot start the rule compiler: {e}"))]),
        }
    })
}

/// A stage change a qualification rule makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleMove {
    pub to: Stage,
    pub rule_id: String,
}

impl RuleSet {
    /// Parses and validates a rule file signed by the default approvers
    /// (marketing and sales). Every error found is returned, each with its
    /// line and column.
    pub fn parse(source: &str) -> Result<RuleSet, Vec<RuleError>> {
        let approvers: Vec<String> = DEFAULT_APPROVERS.iter().map(|a| a.to_string()).collect();
        compile_on_own_stack(source, &approvers)
    }

    /// As `parse`, with the teams that must appear in `agreed_by`.
    pub fn parse_with_approvers(source: &str, required_approvers: &[String]) -> Result<RuleSet, Vec<RuleError>> {
        compile_on_own_stack(source, required_approvers)
    }

    /// Every model's score of `lead` at `now`, primary first.
    pub fn scores(&self, lead: &LeadSnapshot, now: Timestamp) -> Vec<Score> {
        let mut scores = vec![self.primary().score(lead, now)];
        scores.extend(self.models.values().filter(|m| m.name != self.primary_model).map(|m| m.score(lead, now)));
        scores
    }

    /// Installs the hook told of conditions that fail to evaluate.
    pub fn set_failure_hook(&mut self, hook: FailureHook) {
        self.on_failure = Some(hook);
    }

    fn report(&self, failures: &[RuleFailure]) {
        if let Some(hook) = &self.on_failure {
            for f in failures {
                hook(&self.version, f);
            }
        }
    }

    /// The stage changes the qualification rules make to `lead` now, in
    /// order: each move is forward, from a stage its rule admits, by the
    /// first rule (file order) whose condition holds; then again from the
    /// new stage. A recycled lead moves only after new engagement.
    /// Conditions that fail to evaluate do not hold and go to the hook.
    pub fn qualify(&self, lead: &LeadSnapshot, now: Timestamp) -> Vec<RuleMove> {
        let (moves, failures) = self.qualify_reporting(lead, now);
        self.report(&failures);
        moves
    }

    /// As `qualify`, returning the conditions that failed to evaluate
    /// instead of telling the hook.
    pub fn qualify_reporting(&self, lead: &LeadSnapshot, now: Timestamp) -> (Vec<RuleMove>, Vec<RuleFailure>) {
        let mut moves = Vec::new();
        let mut failures = Vec::new();
        if self.qualification.is_empty() || (lead.stage == Stage::Recycled && !lead.engaged_since_stage_change()) {
            return (moves, failures);
        }
        let scores = self.scores(lead, now);
        let mut stage = lead.stage;
        // Variables are built when a condition first reads them, once: a
        // move changes only the stage, bound in a scope over the base.
        let facts = Facts { lead, stage, primary: &scores[0], scores: &scores, daily_caps: &self.daily_caps, now };
        let lazy = qualify::LazyFacts::new(&self.needs, facts);
        let mut base = cel::Context::with_env(self.cel_env.clone());
        base.set_variable_resolver(&lazy);
        qualify::add_functions(&mut base, &self.needs);
        loop {
            let mut ctx = base.new_inner_scope();
            qualify::set_stage(&mut ctx, stage);
            let next = self.qualification.iter().filter(|r| r.admits(stage) && stage.is_forward(r.to)).find(|r| {
                match qualify::evaluate(r, &ctx) {
                    Verdict::Holds => true,
                    Verdict::DoesNotHold => false,
                    Verdict::Failed(error) => {
                        failures.push(RuleFailure { rule_id: r.id.clone(), error });
                        false
                    }
                }
            });
            // Each move raises the stage's rank, so this ends within 8 moves.
            match next {
                Some(rule) => {
                    moves.push(RuleMove { to: rule.to, rule_id: rule.id.clone() });
                    stage = rule.to;
                }
                None => return (moves, failures),
            }
        }
    }

    /// The definitions that fire when `lead` enters `stage` now (their
    /// `when`, if any, evaluated against the lead in that stage).
    pub fn stage_entered_triggers(
        &self,
        lead: &LeadSnapshot,
        stage: Stage,
        now: Timestamp,
    ) -> Vec<&triggers::TriggerDefinition> {
        let candidates: Vec<_> =
            self.triggers.iter().filter(|t| t.on == crate::domain::TriggerOn::StageEntered(stage)).collect();
        if candidates.iter().all(|t| t.when.is_none()) {
            return candidates;
        }
        let scores = self.scores(lead, now);
        let facts = Facts { lead, stage, primary: &scores[0], scores: &scores, daily_caps: &self.daily_caps, now };
        let ctx = qualify::context(&self.cel_env, &self.needs, &facts);
        candidates
            .into_iter()
            .filter(|t| match &t.when {
                None => true,
                Some((_, program)) => self.holds(&t.id, program, &ctx),
            })
            .collect()
    }

    /// Whether recording signals of these types may fire a trigger (then
    /// the ingest takes the read-compute-commit path).
    pub fn ingest_may_fire<'a>(&self, mut types: impl Iterator<Item = &'a str>) -> bool {
        use crate::domain::TriggerOn::*;
        let any_score = self.triggers.iter().any(|t| matches!(t.on, ScoreAbove(_) | ScoreBelow(_) | Reengaged(_)));
        any_score || types.any(|ty| self.triggers.iter().any(|t| matches!(&t.on, Signal(s) if s == ty)))
    }

    /// The definitions a batch of signals fires: `signal(T)` for a counted
    /// signal of type T, `score_above`/`score_below` for a crossing of the
    /// total score between `before` and `after`, `reengaged(D)` for new
    /// engagement after D without (or of a recycled lead). Conditions are
    /// evaluated on `after`; cooldowns are the store's to check.
    pub fn ingest_triggers(
        &self,
        before: &LeadSnapshot,
        after: &LeadSnapshot,
        counted_types: &std::collections::BTreeSet<String>,
        now: Timestamp,
    ) -> Vec<&triggers::TriggerDefinition> {
        use crate::domain::TriggerOn::*;
        if self.triggers.is_empty() {
            return Vec::new();
        }
        let (was, is) = (self.primary().score(before, now).total, self.primary().score(after, now).total);
        self.triggers
            .iter()
            .filter(|t| match &t.on {
                Signal(ty) => counted_types.contains(ty),
                ScoreAbove(n) => was < *n && is >= *n,
                ScoreBelow(n) => was >= *n && is < *n,
                Reengaged(quiet_ms) => {
                    !counted_types.is_empty()
                        && (before.stage == Stage::Recycled
                            || before.last_engaged_at.is_some_and(|at| now.millis() - at.millis() >= *quiet_ms))
                }
                StageEntered(_) | Inactive(_) | SlaBreached => false,
            })
            .filter(|t| self.trigger_condition_holds(t, after, now))
            .collect()
    }

    /// The `inactive(DURATION)` definitions: (definition, duration in ms).
    pub fn inactivity_triggers(&self) -> impl Iterator<Item = (&triggers::TriggerDefinition, i64)> {
        self.triggers.iter().filter_map(|t| match t.on {
            crate::domain::TriggerOn::Inactive(ms) => Some((t, ms)),
            _ => None,
        })
    }

    /// The `sla_breached` definitions.
    pub fn breach_triggers(&self) -> impl Iterator<Item = &triggers::TriggerDefinition> {
        self.triggers.iter().filter(|t| t.on == crate::domain::TriggerOn::SlaBreached)
    }

    /// Whether a trigger definition's condition (if any) holds for `lead` now.
    pub fn trigger_condition_holds(
        &self,
        def: &triggers::TriggerDefinition,
        lead: &LeadSnapshot,
        now: Timestamp,
    ) -> bool {
        let Some((_, program)) = &def.when else { return true };
        let scores = self.scores(lead, now);
        let facts =
            Facts { lead, stage: lead.stage, primary: &scores[0], scores: &scores, daily_caps: &self.daily_caps, now };
        let ctx = qualify::context(&self.cel_env, &self.needs, &facts);
        self.holds(&def.id, program, &ctx)
    }

    /// Whether a trigger's condition holds; a failure goes to the hook.
    fn holds(&self, id: &str, program: &cel::Program, ctx: &cel::Context<'_, '_>) -> bool {
        match qualify::evaluate_program(program, ctx) {
            Verdict::Holds => true,
            Verdict::DoesNotHold => false,
            Verdict::Failed(error) => {
                self.report(&[RuleFailure { rule_id: id.to_owned(), error }]);
                false
            }
        }
    }

    /// Stages `SetStage` may move a lead to from `from`.
    pub fn manual_targets(&self, from: Stage) -> &[Stage] {
        self.manual_transitions.get(&from).map_or(&[], Vec::as_slice)
    }

    pub fn signal_type(&self, name: &str) -> Option<&SignalTypeDef> {
        self.signal_types.get(name)
    }

    pub fn primary(&self) -> &ScoringModel {
        &self.models[&self.primary_model]
    }

    /// The named model; the primary one for an empty name.
    pub fn model(&self, name: &str) -> Option<&ScoringModel> {
        if name.is_empty() { Some(self.primary()) } else { self.models.get(name) }
    }

    /// The points every model gives a signal.
    pub fn weigh(&self, signal_type: &str, properties: &BTreeMap<String, String>) -> Vec<ModelWeight> {
        self.models.values().map(|m| m.weigh(signal_type, properties)).collect()
    }

    /// A human-readable overview, printed by `leadscore rules check`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let capped = self.signal_types.values().filter(|t| t.daily_cap.is_some()).count();
        let _ = writeln!(out, "version {}, agreed by {}", self.version, self.agreed_by.join(", "));
        let _ = writeln!(
            out,
            "{} signal types ({} with a daily cap): {}",
            self.signal_types.len(),
            capped,
            self.signal_types.keys().cloned().collect::<Vec<_>>().join(", ")
        );
        let _ = writeln!(out, "{} nurture triggers", self.triggers.len());
        for t in &self.triggers {
            let when = t.when.as_ref().map_or(String::new(), |(w, _)| format!(" when {w}"));
            let cooldown = if t.cooldown_ms > 0 {
                format!(", cooldown {}", format_duration(t.cooldown_ms))
            } else {
                String::new()
            };
            let _ = writeln!(out, "  {}: on {}{when} -> program {}{cooldown}", t.id, t.on, t.program);
        }
        if let Some(sla) = &self.sla {
            let _ = writeln!(out, "follow-up agreement: every MQL decided on by sales {sla}");
        }
        let _ = writeln!(out, "{} qualification rules", self.qualification.len());
        for rule in &self.qualification {
            let from = rule
                .from
                .as_ref()
                .map_or("any stage".to_owned(), |f| f.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("|"));
            let _ = writeln!(out, "  {}: {from} -> {} when {}", rule.id, rule.to, rule.when);
        }
        for (name, model) in &self.models {
            let half_life = match self.half_lives.get(name) {
                Some(Decay::HalfLife { millis }) => format_duration(*millis as i64),
                _ => "none".to_owned(),
            };
            let g = model.grades;
            let _ = writeln!(
                out,
                "model {name}{}: half-life {half_life}, {} scored types, {} fit rules, grades A >= {}, B >= {}, C >= {}",
                if *name == self.primary_model { " (primary)" } else { "" },
                model.signals.len(),
                model.fit_rules.len(),
                g.a,
                g.b,
                g.c,
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(rules: &RuleSet, signal_type: &str) -> f64 {
        rules.primary().signals[signal_type].points
    }

    #[test]
    fn shipped_default_covers_the_spec_types_with_sensible_weights() {
        let rules = RuleSet::parse(crate::DEFAULT_RULES).expect("the shipped rule set is valid");
        for t in [
            "page_view",
            "pricing_page_view",
            "content_download",
            "form_fill",
            "email_open",
            "email_click",
            "webinar_registered",
            "webinar_attended",
            "event_attended",
            "demo_requested",
            "meeting_scheduled",
            "social_share",
            "email_bounce",
            "unsubscribe",
            "careers_page_view",
        ] {
            assert!(rules.signal_type(t).is_some(), "{t} is not declared");
            assert!(rules.primary().signals.contains_key(t), "{t} is not scored");
        }
        assert!(points(&rules, "email_click") > points(&rules, "email_open"));
        assert!(points(&rules, "demo_requested") >= 10.0 * points(&rules, "page_view"));
        assert!(points(&rules, "pricing_page_view") >= 5.0 * points(&rules, "page_view"));
        assert!(points(&rules, "unsubscribe") < 0.0);
        assert_eq!(rules.primary().signals["unsubscribe"].decay, Decay::None);
    }
}

#[cfg(test)]
mod qualification_tests {
    use super::*;
    use crate::domain::{EventId, IngestPolicy, LeadId, LeadLedger, ScoredSignal};

    const DAY: i64 = 86_400_000;
    const NOW: Timestamp = Timestamp::from_millis(20_000 * DAY);

    fn rules_with(qualification: &str) -> RuleSet {
        let base = crate::DEFAULT_RULES;
        let cut = base.find("[[qualification]]").unwrap();
        let end = base.find("[manual_transitions]").unwrap();
        let source = format!("{}{qualification}\n{}", &base[..cut], &base[end..]);
        RuleSet::parse(&source).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn lead_with(rules: &RuleSet, signals: &[(&str, i64)]) -> LeadSnapshot {
        let mut lead = LeadSnapshot::new(LeadId::parse("l").unwrap(), NOW.plus_millis(-100 * DAY));
        let mut ledger = LeadLedger::default();
        let policy = IngestPolicy { dedupe_window_ms: 7 * DAY, retention_ms: 90 * DAY, history_limit: 0 };
        for (i, (t, days_ago)) in signals.iter().enumerate() {
            let signal = ScoredSignal {
                event_id: EventId::parse(format!("e{i}")).unwrap(),
                signal_type: t.to_string(),
                occurred_at: NOW.plus_millis(-days_ago * DAY),
                daily_cap: rules.signal_type(t).unwrap().daily_cap,
                weights: rules.weigh(t, &Default::default()),
                properties: Default::default(),
            };
            ledger.record(&mut lead, &signal, NOW, &policy);
        }
        lead
    }

    fn targets(moves: Vec<RuleMove>) -> Vec<(Stage, String)> {
        moves.into_iter().map(|m| (m.to, m.rule_id)).collect()
    }

    #[test]
    fn the_default_rules_climb_lead_to_mql_to_sql() {
        let rules = RuleSet::parse(crate::DEFAULT_RULES).unwrap();
        let mut lead = lead_with(&rules, &[("demo_requested", 1)]);
        lead.attributes.insert("seniority".into(), "director".into());
        assert_eq!(
            targets(rules.qualify(&lead, NOW)),
            [(Stage::Mql, "mql_engaged_and_fit".into()), (Stage::Sql, "sql_hand_raiser".into())]
        );
        // A poor fit is not an MQL however engaged.
        lead.attributes.clear();
        assert!(rules.qualify(&lead, NOW).is_empty());
        // Competitors are disqualified first.
        lead.attributes.insert("email_domain".into(), "rivalsoft.com".into());
        assert_eq!(targets(rules.qualify(&lead, NOW)), [(Stage::Disqualified, "disqualified_competitor".into())]);
    }

    #[test]
    fn forward_only_from_guards_and_first_match() {
        let rules = rules_with(
            r#"
[[qualification]]
id = "first"
to = "SAL"
from = ["MQL"]
when = "signals.form_fill.count >= 1"
[[qualification]]
id = "second"
to = "SQL"
from = ["MQL"]
when = "signals.form_fill.count >= 1"
[[qualification]]
id = "never_back"
to = "MQL"
when = "true"
"#,
        );
        let mut lead = lead_with(&rules, &[("form_fill", 1)]);
        lead.stage = Stage::Mql;
        // "first" wins over "second"; from SAL nothing applies ("never_back" is backward).
        assert_eq!(targets(rules.qualify(&lead, NOW)), [(Stage::Sal, "first".into())]);
        lead.stage = Stage::Lead;
        // From LEAD only "never_back" admits the stage (it has no `from`), then "first".
        assert_eq!(
            targets(rules.qualify(&lead, NOW)),
            [(Stage::Mql, "never_back".into()), (Stage::Sal, "first".into())]
        );
        lead.stage = Stage::Sql;
        assert!(rules.qualify(&lead, NOW).is_empty());
    }

    #[test]
    fn windowed_counts() {
        let rules = rules_with(
            r#"
[[qualification]]
id = "recent_clicks"
to = "MQL"
when = "signals.email_click.count_7d >= 2"
"#,
        );
        assert!(rules.qualify(&lead_with(&rules, &[("email_click", 1), ("email_click", 10)]), NOW).is_empty());
        let moves = rules.qualify(&lead_with(&rules, &[("email_click", 1), ("email_click", 6)]), NOW);
        assert_eq!(targets(moves), [(Stage::Mql, "recent_clicks".into())]);
    }

    #[test]
    fn recycled_leads_wait_for_new_engagement() {
        let rules = RuleSet::parse(crate::DEFAULT_RULES).unwrap();
        let mut lead = lead_with(&rules, &[("form_fill", 1), ("form_fill", 2), ("form_fill", 3)]);
        lead.attributes.insert("seniority".into(), "vp".into());
        lead.stage = Stage::Recycled;
        lead.stage_since = NOW.plus_millis(DAY);
        assert!(rules.qualify(&lead, NOW).is_empty(), "no engagement since recycling");
        lead.last_engaged_at = Some(NOW.plus_millis(2 * DAY));
        assert_eq!(targets(rules.qualify(&lead, NOW)), [(Stage::Mql, "mql_engaged_and_fit".into())]);
    }

    fn errors(source: &str) -> Vec<String> {
        match RuleSet::parse(source) {
            Ok(_) => vec![],
            Err(e) => e.into_iter().map(|e| format!("{}: {}", e.line, e.message)).collect(),
        }
    }

    fn with_rule(when: &str) -> String {
        let base = crate::DEFAULT_RULES;
        let end = base.find("[manual_transitions]").unwrap();
        format!("{}[[qualification]]\nid = \"x\"\nto = \"MQL\"\nwhen = {when:?}\n\n{}", &base[..end], &base[end..])
    }

    #[test]
    fn condition_errors_name_the_rule_and_line() {
        let line_of_when = |src: &str| src[..src.find("id = \"x\"").unwrap()].matches('\n').count() + 3;
        for (when, expected) in [
            ("score.total >", "CEL syntax error"),
            ("signals.tiktok_like.count > 0", "'tiktok_like' is not a declared signal type"),
            ("signals.form_fill.sum > 0", "use .count, .last_at or .count_<N>d"),
            ("signals.form_fill.count_400d > 0", "windows are 1 to 365 days"),
            ("score.totl > 1", "score.totl"),
            ("budget > 1", "unknown name 'budget'"),
            ("lead.attributes.company_size > 200", "'>' cannot be applied to a string and an int"),
            ("score.total", "must be true or false"),
            ("scores.b2c.total > 1", "no such model"),
        ] {
            let src = with_rule(when);
            let errs = errors(&src);
            assert_eq!(errs.len(), 1, "{when}: {errs:?}");
            assert!(errs[0].contains(expected) && errs[0].contains("rule 'x'"), "{when}: {errs:?}");
            assert!(errs[0].starts_with(&format!("{}:", line_of_when(&src))), "{when}: {errs:?}");
        }
        // These are fine: conversions, has(), comprehensions, days().
        for when in [
            "int(lead.attributes.company_size) > 200",
            "has(lead.attributes.title) && lead.attributes.title.contains('VP')",
            "['A', 'B'].exists(g, g == grade)",
            "now - signals.form_fill.last_at < days(14)",
            "scores.b2b.total > 10.0 && stage == 'LEAD'",
        ] {
            assert_eq!(errors(&with_rule(when)), Vec::<String>::new(), "{when}");
        }
    }

    #[test]
    fn trigger_definitions_are_checked() {
        let rules = RuleSet::parse(crate::DEFAULT_RULES).unwrap();
        let mut lead = lead_with(&rules, &[]);
        let ids: Vec<_> = rules.stage_entered_triggers(&lead, Stage::Mql, NOW).iter().map(|t| t.id.clone()).collect();
        assert_eq!(ids, ["sales_alert_new_mql"]);
        let with_when = crate::DEFAULT_RULES
            .replace("program = \"sales-alert\"", "program = \"sales-alert\"\nwhen = \"grade == 'A'\"");
        let rules = RuleSet::parse(&with_when).unwrap();
        assert!(rules.stage_entered_triggers(&lead, Stage::Mql, NOW).is_empty(), "grade D");
        lead.attributes
            .extend([("seniority".to_owned(), "vp".to_owned()), ("company_size".to_owned(), "5000".to_owned())]);
        assert_eq!(rules.stage_entered_triggers(&lead, Stage::Mql, NOW).len(), 1);

        for (replace, expected) in [
            ("on = \"stage_entered(MQL)\"", "on = \"stage_entered(WON)\""),
            ("on = \"stage_entered(MQL)\"", "on = \"signal(tiktok_like)\""),
            ("cooldown = \"7d\"", "cooldown = \"a week\""),
            ("id = \"book_discovery_call\"", "id = \"sales_alert_new_mql\""),
        ] {
            let src = crate::DEFAULT_RULES.replacen(replace, expected, 1);
            let errs = errors(&src);
            assert_eq!(errs.len(), 1, "{expected}: {errs:?}");
        }
        for kind in ["score_above(50)", "score_below(10)", "signal(demo_requested)", "reengaged(30d)", "inactive(60d)"]
        {
            assert_eq!(
                errors(&crate::DEFAULT_RULES.replacen("stage_entered(MQL)", kind, 1)),
                Vec::<String>::new(),
                "{kind}"
            );
        }
    }

    #[test]
    fn approvers_stage_names_and_unreachable_rules() {
        let unsigned =
            crate::DEFAULT_RULES.replace("agreed_by = [\"marketing\", \"sales\"]", "agreed_by = [\"marketing\"]");
        let errs = errors(&unsigned);
        assert!(errs.len() == 1 && errs[0].contains("missing: sales"), "{errs:?}");
        let custom = RuleSet::parse_with_approvers(&unsigned, &["marketing".to_string()]);
        assert!(custom.is_ok());
        let bad_stage = with_rule("true").replace("to = \"MQL\"\nwhen = \"true\"", "to = \"WON\"\nwhen = \"true\"");
        assert!(errors(&bad_stage)[0].contains("unknown stage 'WON'"));
        let backward = with_rule("true").replace("to = \"MQL\"\nwhen", "to = \"LEAD\"\nfrom = [\"SQL\"]\nwhen");
        assert!(errors(&backward)[0].contains("can never fire"));
    }
}
