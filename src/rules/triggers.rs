//! Nurture trigger definitions: `on = "stage_entered(MQL)"` and friends.

use std::collections::BTreeSet;

use cel::Program;

use super::parse_duration;
use crate::domain::{Stage, TriggerOn};

/// One compiled trigger definition.
#[derive(Debug)]
pub struct TriggerDefinition {
    pub id: String,
    pub on: TriggerOn,
    /// Optional CEL condition, as written and compiled.
    pub when: Option<(String, Program)>,
    pub cooldown_ms: i64,
    pub program: String,
}

/// Parses an `on` expression such as `stage_entered(MQL)` or `inactive(30d)`.
pub fn parse_on(text: &str, signal_types: &BTreeSet<String>) -> Result<TriggerOn, String> {
    let usage = "use stage_entered(STAGE), score_above(N), score_below(N), signal(TYPE), inactive(DURATION), reengaged(DURATION) or sla_breached";
    if text.trim() == "sla_breached" {
        return Ok(TriggerOn::SlaBreached);
    }
    let (kind, arg) = text
        .trim()
        .strip_suffix(')')
        .and_then(|t| t.split_once('('))
        .ok_or_else(|| format!("on = '{text}': {usage}"))?;
    let arg = arg.trim();
    let number = || arg.parse::<f64>().ok().filter(|n| n.is_finite()).ok_or_else(|| format!("'{arg}' is not a number"));
    let duration = || match parse_duration(arg) {
        Ok(ms) if ms > 0 => Ok(ms),
        Ok(_) => Err("the duration must be longer than 0s".to_owned()),
        Err(e) => Err(e),
    };
    match kind.trim() {
        "stage_entered" => arg.parse::<Stage>().map(TriggerOn::StageEntered).map_err(|e| e.to_string()),
        "score_above" => number().map(TriggerOn::ScoreAbove),
        "score_below" => number().map(TriggerOn::ScoreBelow),
        "signal" if signal_types.contains(arg) => Ok(TriggerOn::Signal(arg.to_owned())),
        "signal" => Err(format!("'{arg}' is not a declared signal type")),
        "inactive" => duration().map(TriggerOn::Inactive),
        "reengaged" => duration().map(TriggerOn::Reengaged),
        other => Err(format!("unknown trigger kind '{other}': {usage}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind() {
        let types: BTreeSet<String> = ["demo_requested".to_owned()].into();
        assert_eq!(parse_on("stage_entered(MQL)", &types), Ok(TriggerOn::StageEntered(Stage::Mql)));
        assert_eq!(parse_on(" score_above( 50 ) ", &types), Ok(TriggerOn::ScoreAbove(50.0)));
        assert_eq!(parse_on("score_below(10.5)", &types), Ok(TriggerOn::ScoreBelow(10.5)));
        assert_eq!(parse_on("signal(demo_requested)", &types), Ok(TriggerOn::Signal("demo_requested".into())));
        assert_eq!(parse_on("inactive(30d)", &types), Ok(TriggerOn::Inactive(30 * 86_400_000)));
        assert_eq!(parse_on("reengaged(14d)", &types), Ok(TriggerOn::Reengaged(14 * 86_400_000)));
        for bad in ["stage_entered(WON)", "signal(tiktok)", "inactive(0s)", "score_above(x)", "fired", "explode(1)"] {
            assert!(parse_on(bad, &types).is_err(), "{bad}");
        }
        assert_eq!(TriggerOn::Inactive(30 * 86_400_000).to_string(), "inactive(30d)");
        assert_eq!(parse_on(" sla_breached ", &types), Ok(TriggerOn::SlaBreached));
        assert_eq!(TriggerOn::SlaBreached.to_string(), "sla_breached");
    }
}
