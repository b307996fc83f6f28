//! Hot reload of the rule file: on SIGHUP, and when the file's content
//! changes (checked every `rules_reload_interval`; polling also sees a
//! Kubernetes ConfigMap swap its symlinks). A valid new file replaces the
//! active rule set atomically; an invalid one is logged with every error and
//! refused, and the old set keeps serving.

use crate::store::RuleSetVersions;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::engine::Core;
use crate::rules::RuleSet;

/// What a reload attempt did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Activated { version: String },
    Refused { errors: usize },
    Unreadable,
}

fn fingerprint(source: &str) -> u64 {
    let mut h = DefaultHasher::new();
    source.hash(&mut h);
    h.finish()
}

/// Why a rule set may not be activated: its version already names other
/// rules (on any replica, ever).
pub fn version_taken(rules: &RuleSet, known: &str) -> String {
    format!(
        "version '{}' already names different rules (sha256 {}…; this file {}…): give the changed file a new version",
        rules.version,
        known.get(..12).unwrap_or(known),
        rules.digest.get(..12).unwrap_or(&rules.digest)
    )
}

/// Records the rule set's version with its content, or says why it cannot
/// be activated. `Err(None)`: the store could not be asked.
pub async fn claim_version(state_store: &dyn RuleSetVersions, rules: &RuleSet) -> Result<(), Option<String>> {
    match state_store.claim_rule_set_version(&rules.version, &rules.digest).await {
        Ok(None) => Ok(()),
        Ok(Some(known)) if known == rules.digest => Ok(()),
        Ok(Some(known)) => Err(Some(version_taken(rules, &known))),
        Err(e) => {
            tracing::warn!(error = %e, version = %rules.version, "cannot record the rule-set version");
            Err(None)
        }
    }
}

/// Reads the file and activates it if it changed and is valid (then
/// rescores every lead under it, when so configured). A version already
/// used for other content is refused; so is any file while the store
/// cannot confirm its version (tried again next time).
pub async fn reload_once(state: &Arc<Core>, path: &PathBuf, last: &mut u64) -> Reload {
    let source = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot read the rule file; keeping the active rule set");
            return Reload::Unreadable;
        }
    };
    let print = fingerprint(&source);
    if print == *last {
        return Reload::Unchanged;
    }
    *last = print;
    match RuleSet::parse_with_approvers(&source, &state.required_approvers) {
        Ok(rules) if rules.digest == state.rules().digest => Reload::Unchanged,
        Ok(rules) => {
            if let Err(why) = claim_version(state.store.as_ref(), &rules).await {
                match why {
                    Some(why) => tracing::error!(path = %path.display(), "new rule file refused: {why}"),
                    // Not confirmed: try again at the next check.
                    None => *last = 0,
                }
                return Reload::Refused { errors: 1 };
            }
            let version = rules.version.clone();
            let active = state.rules();
            let previous = active.version.clone();
            let details = [
                ("digest", rules.digest.clone()),
                ("agreed_by", rules.agreed_by.join(" ")),
                ("previous_version", previous.clone()),
                ("previous_digest", active.digest.clone()),
                ("file", path.display().to_string()),
                ("diff", crate::domain::audit::line_diff(&active.source, &rules.source, 40).join("\n")),
            ];
            let event =
                crate::engine::audit::event(state, "rule_set.activated", "rule file reload", "", &version, &details);
            drop(active);
            let digest = rules.digest.clone();
            state.replace_rules(rules, path.display().to_string());
            tracing::info!(path = %path.display(), %version, %previous, "rule set reloaded");
            // Of the replicas reloading the same file, the first records it.
            if crate::engine::audit::first_to_activate(state, &digest).await {
                crate::engine::audit::record(state, event).await;
            }
            if state.rescore_on_reload {
                crate::engine::start_rescore(state.clone());
            }
            Reload::Activated { version }
        }
        Err(errors) => {
            for e in &errors {
                tracing::error!(path = %path.display(), line = e.line, column = e.column, "{}", e.message);
            }
            tracing::error!(
                path = %path.display(),
                errors = errors.len(),
                active = %state.rules().version,
                "new rule file refused; the active rule set keeps serving"
            );
            Reload::Refused { errors: errors.len() }
        }
    }
}

/// Watches `path` until `stopping` turns true.
pub async fn watch_rule_file(state: Arc<Core>, path: PathBuf, interval: Duration, mut stopping: watch::Receiver<bool>) {
    // From the rules in force, not the file now: a change made between
    // start-up and this watcher is seen.
    let mut last = fingerprint(&state.rules().set.source);
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let sighup = async {
            match hangup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let sighup = std::future::pending::<()>();
        tokio::select! {
            () = sighup => {
                tracing::info!("SIGHUP: re-reading the rule file");
                // A signal re-checks even unchanged content (and says so).
                last = 0;
            }
            _ = tokio::time::sleep(interval) => {}
            _ = stopping.changed() => return,
        }
        reload_once(&state, &path, &mut last).await;
    }
}
