//! The `leadscore` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Overrides, Settings};
use crate::rules::RuleSet;
use crate::startup::Application;

#[derive(Debug, Parser)]
#[command(
    name = "leadscore",
    version,
    about = "Real-time lead scoring gRPC service",
    after_help = "Commands that talk to a running service (--addr) send the bearer token of\nLEADSCORE_TOKEN when it is set. docs/cli.md describes every command."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC service.
    Serve(ServeArgs),
    /// Work with rule-set files.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Demo data.
    Demo {
        #[command(subcommand)]
        command: DemoCommand,
    },
    /// Load generator: closed or open loop, HDR latency percentiles (see
    /// docs/performance.md and bench/run.sh).
    Bench(crate::bench::BenchArgs),
    /// Ask a running service's gRPC health check; exit 0 when SERVING (a
    /// container health probe).
    Health {
        /// The service.
        #[arg(long, env = "LEADSCORE_ADDR", default_value = "http://127.0.0.1:50051")]
        addr: String,
        /// A service name to check instead of the whole server.
        #[arg(long, default_value = "", hide_default_value = true)]
        service: String,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// Ask again every 100 ms until SERVING or the time-out, for a
        /// script that starts the service and goes on (e.g. `serve &` then
        /// `health --wait --timeout-ms 30000`).
        #[arg(long)]
        wait: bool,
    },
    /// Convert the data under the Redis key prefix from the layout of
    /// earlier releases (format 1) to this build's, in place; run with the
    /// service stopped. Idempotent and resumable: run it again after an
    /// interruption. Does nothing on data already converted.
    Migrate {
        /// Config file, for the Redis URL, key prefix and partitions.
        #[arg(long, env = "LEADSCORE_CONFIG")]
        config: Option<PathBuf>,
        /// The Redis the service stores leads in [env: LEADSCORE_REDIS_URL=].
        #[arg(long)]
        redis_url: Option<String>,
    },
    /// Marketing spend.
    Spend {
        #[command(subcommand)]
        command: SpendCommand,
    },
    /// Score profiles and funnel figures of a running service, as tables.
    Report {
        #[command(subcommand)]
        command: ReportCommand,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// One lead's data.
    Lead {
        #[command(subcommand)]
        command: LeadCommand,
    },
    /// Nurture triggers, as marketing automation receives them.
    Triggers {
        #[command(subcommand)]
        command: TriggersCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum TriggersCommand {
    /// Consume a group's triggers as they fire (StreamTriggers, qualify
    /// scope), print one line each and acknowledge it, until Ctrl-C or
    /// --count.
    Watch {
        /// The consumer group (one of the service's `trigger_groups`).
        #[arg(long, default_value = "automation")]
        group: String,
        /// This consumer's name within the group.
        #[arg(long, default_value = "cli")]
        consumer: String,
        /// Stop after this many triggers (0: never).
        #[arg(long, default_value_t = 0)]
        count: u64,
        /// The service.
        #[arg(long, env = "LEADSCORE_ADDR", default_value = "http://127.0.0.1:50051")]
        addr: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print a running service's audit trail as CSV (ListAuditEvents, admin
    /// scope), oldest first: id, at, action, actor, token, subject, details.
    Export {
        /// Only the events after this one (an id of an earlier export).
        #[arg(long, default_value = "", hide_default_value = true)]
        after: String,
        /// The service.
        #[arg(long, env = "LEADSCORE_ADDR", default_value = "http://127.0.0.1:50051")]
        addr: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum LeadCommand {
    /// Print everything a running service stores about a lead as JSON
    /// (the right of access; ExportLead, admin scope).
    Export {
        /// The lead id (or, with --visitor, the visitor id).
        id: String,
        /// ID is an anonymous visitor's id.
        #[arg(long)]
        visitor: bool,
        /// The service.
        #[arg(long, env = "LEADSCORE_ADDR", default_value = "http://127.0.0.1:50051")]
        addr: String,
    },
    /// Erase a lead and everything kept about it, and print the receipt
    /// as JSON (the right to erasure; ForgetLead, admin scope). Erasing
    /// again is harmless.
    Forget {
        /// The lead id (or, with --visitor, the visitor id).
        id: String,
        /// ID is an anonymous visitor's id.
        #[arg(long)]
        visitor: bool,
        /// Who asks for it (recorded in the audit trail).
        #[arg(long)]
        actor: String,
        /// Why (the audit trail records only that one was given).
        #[arg(long, default_value = "", hide_default_value = true)]
        reason: String,
        /// The service.
        #[arg(long, env = "LEADSCORE_ADDR", default_value = "http://127.0.0.1:50051")]
        addr: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Leads created in whole UTC months: score histogram (as a bar chart),
    /// percentiles, stages, MQL rate.
    Cohort {
        /// The service.
        #[arg(long, env = "LEADSCORE_ADDR", default_value = "http://127.0.0.1:50051")]
        addr: String,
        /// First month, YYYY-MM [default: this month].
        #[arg(long)]
        from: Option<String>,
        /// Month after the last one, YYYY-MM [default: the month after --from].
        #[arg(long)]
        to: Option<String>,
        /// Scoring model [default: the primary model].
        #[arg(long, default_value = "", hide_default_value = true)]
        model: String,
        /// Only leads with this attribute value, name=value (a cohort
        /// attribute of the rule set).
        #[arg(long, default_value = "", hide_default_value = true)]
        filter: String,
        /// Histogram buckets.
        #[arg(long, default_value_t = 10)]
        buckets: u32,
    },
    /// Stage entries, conversions, time to stage, reopened leads and won
    /// revenue over whole UTC days, optionally by first-touch source.
    Funnel {
        #[command(flatten)]
        days: DaysArgs,
        /// Split by the leads' first-touch property.
        #[arg(long, value_parser = ["source", "channel", "campaign"])]
        group_by: Option<String>,
    },
    /// MQLs waiting for sales' decision under the follow-up agreement
    /// ([sla]), longest waiting first: wall-clock and counted time, time
    /// to the deadline, owner.
    Handovers {
        /// The service.
        #[arg(long, env = "LEADSCORE_ADDR", default_value = "http://127.0.0.1:50051")]
        addr: String,
        /// Leads shown (at most 500).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Spend, leads, MQLs, SQLs, opportunities, customers, won revenue, cost
    /// per stage and return on spend over whole UTC days, per campaign,
    /// source or channel under an attribution model, with spend and the
    /// MQLs credited drawn as bar charts.
    Campaigns {
        #[command(flatten)]
        days: DaysArgs,
        /// Rows per campaign, source or channel.
        #[arg(long, value_parser = ["source", "channel", "campaign"], default_value = "campaign")]
        group_by: String,
        /// How each lead's credit is shared among its touches.
        #[arg(long, value_parser = ATTRIBUTION_MODELS, default_value = "first_touch")]
        model: String,
    },
}

/// A running service and a period of whole UTC days.
#[derive(Debug, clap::Args)]
pub struct DaysArgs {
    /// The service.
    #[arg(long, env = "LEADSCORE_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// First day, YYYY-MM-DD [default: 30 days before --to].
    #[arg(long)]
    from: Option<String>,
    /// Day after the last one, YYYY-MM-DD [default: tomorrow, so today counts].
    #[arg(long)]
    to: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum SpendCommand {
    /// Send the spend in a CSV file (an ad platform's export) to a running
    /// service with `RecordSpend`, in calls of up to 500 rows. Columns, by
    /// their header (any order, case ignored): `day` (or `date`),
    /// `campaign`, `amount` (or `cost`, `spend`), and optionally `source`,
    /// `channel`, `currency`. Rows of the same day, campaign, source,
    /// channel and currency are summed. Sending a file again replaces the
    /// same days.
    Import {
        /// The CSV file.
        file: PathBuf,
        /// The service.
        #[arg(long, env = "LEADSCORE_ADDR", default_value = "http://127.0.0.1:50051")]
        addr: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DemoCommand {
    /// Load a realistic population of leads and signals into a running
    /// service through its public RPCs.
    Seed {
        /// The service.
        #[arg(long, env = "LEADSCORE_ADDR", default_value = "http://127.0.0.1:50051")]
        addr: String,
        /// How many leads.
        #[arg(long, default_value_t = 300)]
        leads: usize,
        /// Same seed, same leads and signals.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Play sales catching up on its desk: accept (about 70%) or recycle
    /// every MQL waiting for a decision; those past their follow-up deadline
    /// are decided late.
    Decide {
        /// The service.
        #[arg(long, env = "LEADSCORE_ADDR", default_value = "http://127.0.0.1:50051")]
        addr: String,
        /// Same seed, same decisions.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Config file (TOML); keys as in docs/configuration.md.
    #[arg(long, env = "LEADSCORE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [env: LEADSCORE_GRPC_ADDR=] [default: 127.0.0.1:50051].
    #[arg(long)]
    pub grpc_addr: Option<std::net::SocketAddr>,
    /// Prometheus metrics endpoint, host:port or `off` [env:
    /// LEADSCORE_METRICS_ADDR=] [default: 127.0.0.1:9090].
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// Redis URL; without one the embedded in-memory store is used
    /// [env: LEADSCORE_REDIS_URL=].
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Rule-set file [env: LEADSCORE_RULES=] [default: the built-in rules/default.toml].
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Serve without bearer tokens on a non-loopback address (refused
    /// otherwise) [env: LEADSCORE_INSECURE=true].
    #[arg(long)]
    pub insecure: bool,
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Validate a rule file: print a summary, or every error with its line.
    Check {
        /// The rule file (TOML).
        file: PathBuf,
    },
    /// Show what a candidate rule file would do to the leads stored in
    /// Redis: how many would change stage, from where to where. Writes
    /// nothing.
    Simulate {
        /// The candidate rule file (TOML).
        file: PathBuf,
        /// Config file, for the Redis key prefix and partitions.
        #[arg(long, env = "LEADSCORE_CONFIG")]
        config: Option<PathBuf>,
        /// The Redis the service stores leads in [env: LEADSCORE_REDIS_URL=].
        #[arg(long)]
        redis_url: Option<String>,
        /// Example lead ids shown per transition.
        #[arg(long, default_value_t = 3)]
        examples: usize,
    },
    /// Ask a running service to rescore every stored lead under its active
    /// rule set (Rescore, admin scope) and print the job id; with --follow,
    /// show its progress (GetRescoreJob) until it ends.
    Rescore {
        /// Wait for the job to end, with a progress bar on a terminal, then
        /// print what it did; exit 1 when it failed.
        #[arg(long)]
        follow: bool,
        /// The service.
        #[arg(long, env = "LEADSCORE_ADDR", default_value = "http://127.0.0.1:50051")]
        addr: String,
    },
}

pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Rules { command: RulesCommand::Check { file } } => check_rules(&file),
        Command::Rules { command: RulesCommand::Rescore { follow, addr } } => match rescore(&addr, follow).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("leadscore: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Demo { command: DemoCommand::Seed { addr, leads, seed } } => {
            match crate::demo::seed(addr.clone(), leads, seed).await {
                Ok(seeded) => {
                    println!(
                        "seeded {} leads in {} accounts, {} signals, {} sales decisions, {} expansion deals and {} \
                         campaign days of spend ({}.{:02} in all) into {addr}",
                        seeded.leads,
                        seeded.accounts,
                        seeded.signals,
                        seeded.decisions,
                        seeded.expansion_deals,
                        seeded.spend_entries,
                        seeded.spend / 100,
                        seeded.spend % 100
                    );
                    for (stage, n) in &seeded.stages {
                        println!("  {stage:<13} {n:>6}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("leadscore: demo seed failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo { command: DemoCommand::Decide { addr, seed } } => match crate::demo::decide(addr, seed).await {
            Ok(d) => {
                println!(
                    "sales decided on {} waiting MQLs: {} accepted, {} recycled; {} after their deadline",
                    d.accepted + d.recycled,
                    d.accepted,
                    d.recycled,
                    d.late
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("leadscore: demo decide failed: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Rules { command: RulesCommand::Simulate { file, config, redis_url, examples } } => {
            simulate_rules(&file, config.as_deref(), redis_url, examples).await
        }
        Command::Migrate { config, redis_url } => migrate(config.as_deref(), redis_url).await,
        Command::Spend { command: SpendCommand::Import { file, addr } } => match import_spend(&file, &addr).await {
            Ok(n) => {
                println!("recorded {n} spend entries from {} into {addr}", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("leadscore: spend import: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Bench(args) => {
            let json = args.json;
            match crate::bench::run(args).await {
                Ok(report) => {
                    if json {
                        println!("{}", serde_json::to_string(&report).unwrap_or_default());
                    } else {
                        print!("{}", crate::bench::table(&report));
                    }
                    match &report.cleanup_error {
                        None => ExitCode::SUCCESS,
                        Some(e) => {
                            eprintln!(
                                "leadscore: bench: the run's leads were not erased ({e}): erase them with an \
                                 admin-scope LEADSCORE_TOKEN (run the same bench again), or pass --keep to leave them"
                            );
                            ExitCode::FAILURE
                        }
                    }
                }
                Err(e) => {
                    eprintln!("leadscore: bench failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Health { addr, service, timeout_ms, wait } => {
            use tonic_health::pb::health_check_response::ServingStatus;
            let check = || async {
                let mut client =
                    tonic_health::pb::health_client::HealthClient::new(crate::client::connect(&addr).await?);
                let reply = client.check(tonic_health::pb::HealthCheckRequest { service: service.clone() }).await?;
                Ok::<_, Box<dyn std::error::Error>>(reply.into_inner().status())
            };
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(timeout_ms);
            let mut last = None;
            loop {
                match tokio::time::timeout_at(deadline, check()).await {
                    Ok(Ok(ServingStatus::Serving)) => {
                        println!("{}", ServingStatus::Serving.as_str_name());
                        break ExitCode::SUCCESS;
                    }
                    Ok(outcome) if wait && tokio::time::Instant::now() < deadline => {
                        last = Some(outcome);
                        tokio::time::sleep_until(
                            deadline.min(tokio::time::Instant::now() + std::time::Duration::from_millis(100)),
                        )
                        .await;
                    }
                    Ok(Ok(status)) => {
                        println!("{}", status.as_str_name());
                        break ExitCode::FAILURE;
                    }
                    Ok(Err(e)) => {
                        eprintln!("leadscore: health check of {addr} failed: {e}");
                        break ExitCode::FAILURE;
                    }
                    Err(_) => {
                        match last {
                            Some(Ok(status)) => println!("{}", status.as_str_name()),
                            Some(Err(e)) => eprintln!("leadscore: health check of {addr} failed: {e}"),
                            None => {}
                        }
                        eprintln!("leadscore: health check of {addr} timed out after {timeout_ms} ms");
                        break ExitCode::FAILURE;
                    }
                }
            }
        }
        Command::Audit { command: AuditCommand::Export { after, addr } } => match export_audit(&addr, after).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("leadscore: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Lead { command } => {
            let printed = match command {
                LeadCommand::Export { id, visitor, addr } => export_lead(&addr, id, visitor).await,
                LeadCommand::Forget { id, visitor, actor, reason, addr } => {
                    forget_lead(&addr, id, visitor, actor, reason).await
                }
            };
            match printed {
                Ok(json) => {
                    println!("{json}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("leadscore: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Triggers { command: TriggersCommand::Watch { group, consumer, count, addr } } => {
            match watch_triggers(&addr, group, consumer, count).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("leadscore: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Report { command } => match report(command).await {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("leadscore: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Pages through the audit trail, printing CSV as it goes.
async fn export_audit(addr: &str, after: String) -> Result<(), Box<dyn std::error::Error>> {
    use crate::api::pb;
    use std::io::Write as _;
    let mut client = pb::qualification_client::QualificationClient::new(crate::client::connect(addr).await?)
        .max_decoding_message_size(64 << 20);
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", crate::domain::audit::CSV_HEADER)?;
    let mut cursor = after;
    loop {
        let page = client
            .list_audit_events(pb::ListAuditEventsRequest { after_cursor: cursor.clone(), limit: 200 })
            .await
            .map_err(|e| crate::client::refused(&e))?
            .into_inner();
        for e in &page.events {
            let event = crate::domain::audit::AuditEvent {
                at: e
                    .at
                    .as_ref()
                    .and_then(|t| crate::api::convert::timestamp_from_proto(t).ok())
                    .unwrap_or(crate::domain::Timestamp::from_millis(0)),
                action: e.action.clone(),
                actor: e.actor.clone(),
                token: e.token.clone(),
                subject: e.subject.clone(),
                details: e.details.clone().into_iter().collect(),
            };
            writeln!(out, "{}", crate::domain::audit::csv_row(&e.id, &event))?;
        }
        if page.events.is_empty() || page.next_cursor == cursor {
            return Ok(());
        }
        cursor = page.next_cursor;
    }
}

async fn export_lead(addr: &str, id: String, visitor: bool) -> Result<String, Box<dyn std::error::Error>> {
    use crate::api::pb;
    let request = if visitor {
        pb::ExportLeadRequest { visitor_id: id, ..Default::default() }
    } else {
        pb::ExportLeadRequest { lead_id: id, ..Default::default() }
    };
    let mut client = pb::profiles_client::ProfilesClient::new(crate::client::connect(addr).await?);
    let export = client.export_lead(request).await.map_err(|e| crate::client::refused(&e))?.into_inner();
    Ok(serde_json::to_string_pretty(&export)?)
}

/// One line per trigger: definition, lead, program, stage, score, why.
async fn watch_triggers(
    addr: &str,
    group: String,
    consumer: String,
    count: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    use crate::api::pb;
    let mut client = pb::nurture_client::NurtureClient::new(crate::client::connect(addr).await?);
    let request = pb::StreamTriggersRequest { group: group.clone(), consumer, max_in_flight: 0 };
    let mut stream = client.stream_triggers(request).await.map_err(|e| crate::client::refused(&e))?.into_inner();
    let mut seen = 0;
    while let Some(message) = stream.message().await.map_err(|e| crate::client::refused(&e))? {
        let Some(t) = message.trigger else { continue };
        let subject = if t.lead_id.is_empty() { format!("visitor {}", t.visitor_id) } else { t.lead_id.clone() };
        let stage = t.stage().as_str_name().trim_start_matches("STAGE_").to_owned();
        let score = t.score.as_ref().map_or(0.0, |s| s.total);
        let program = if t.program.is_empty() { "-".to_owned() } else { t.program.clone() };
        println!("{}  {subject}  program {program}  {stage}  score {score:.1}  ({})", t.definition_id, t.reason);
        let ack = pb::AckTriggersRequest { group: group.clone(), trigger_ids: vec![t.trigger_id] };
        client.ack_triggers(ack).await.map_err(|e| crate::client::refused(&e))?;
        seen += 1;
        if count > 0 && seen >= count {
            return Ok(());
        }
    }
    Err(format!(
        "the service ended the trigger stream after {seen} triggers (it shut down or restarted): run the command again \
         to go on; unacknowledged triggers are delivered again"
    )
    .into())
}

/// Starts a rescore (or finds the one running) and, with `follow`, polls
/// it until it ends.
async fn rescore(addr: &str, follow: bool) -> Result<ExitCode, Box<dyn std::error::Error>> {
    use crate::api::pb;
    let mut client = pb::qualification_client::QualificationClient::new(crate::client::connect(addr).await?);
    let started = client.rescore(pb::RescoreRequest {}).await.map_err(|e| crate::client::refused(&e))?.into_inner();
    let mut job_id = started.job_id;
    if !follow {
        let how = if started.started { "started" } else { "already running" };
        println!("rescore {job_id} {how}; follow it with: leadscore rules rescore --follow");
        return Ok(ExitCode::SUCCESS);
    }
    let bar = crate::client::progress(0, "rescoring", "leads");
    loop {
        let request = pb::GetRescoreJobRequest { job_id: job_id.clone() };
        let job = client.get_rescore_job(request).await.map_err(|e| crate::client::refused(&e))?.into_inner();
        bar.set_length(job.total);
        bar.set_position(job.processed);
        let summary = format!(
            "{} leads processed of {}, {} rebuilt from their raw history, {} rewritten, {} stage changes",
            job.processed, job.total, job.rebuilt, job.rewritten, job.stage_changes
        );
        match job.state() {
            pb::RescoreState::Done => {
                bar.finish_and_clear();
                println!("rescore {job_id} under rule set {} done: {summary}", job.rule_set_version);
                return Ok(ExitCode::SUCCESS);
            }
            pb::RescoreState::Failed => {
                bar.finish_and_clear();
                eprintln!("leadscore: rescore {job_id} failed: {} ({summary})", job.error);
                return Ok(ExitCode::FAILURE);
            }
            // A newer rule set took over: the job that covers every lead
            // under it is the one to follow.
            pb::RescoreState::Superseded if !job.superseded_by.is_empty() => {
                bar.suspend(|| eprintln!("rescore {job_id} superseded by {} (a newer rule set)", job.superseded_by));
                job_id = job.superseded_by;
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
        }
    }
}

async fn forget_lead(
    addr: &str,
    id: String,
    visitor: bool,
    actor: String,
    reason: String,
) -> Result<String, Box<dyn std::error::Error>> {
    use crate::api::pb;
    let (lead_id, visitor_id) = if visitor { (String::new(), id) } else { (id, String::new()) };
    let request = pb::ForgetLeadRequest { lead_id, visitor_id, actor, reason };
    let mut client = pb::profiles_client::ProfilesClient::new(crate::client::connect(addr).await?);
    let receipt = client.forget_lead(request).await.map_err(|e| crate::client::refused(&e))?.into_inner();
    Ok(serde_json::to_string_pretty(&receipt)?)
}

async fn report(command: ReportCommand) -> Result<String, Box<dyn std::error::Error>> {
    use crate::api::pb;
    use chrono::{Datelike, Months, NaiveDate};
    let midnight = |d: NaiveDate| pbjson_types::Timestamp {
        seconds: d.and_hms_opt(0, 0, 0).map_or(0, |t| t.and_utc().timestamp()),
        nanos: 0,
    };
    let today = chrono::Utc::now().date_naive();
    let grpc_error = |e: tonic::Status| crate::client::refused(&e);
    match command {
        ReportCommand::Cohort { addr, from, to, model, filter, buckets } => {
            let month = |text: &str| {
                NaiveDate::parse_from_str(&format!("{text}-01"), "%Y-%m-%d")
                    .map_err(|_| format!("'{text}' is not a month: write YYYY-MM"))
            };
            let from = match from {
                Some(text) => month(&text)?,
                None => today.with_day(1).unwrap_or(today),
            };
            let to = match to {
                Some(text) => month(&text)?,
                None => from.checked_add_months(Months::new(1)).unwrap_or(from),
            };
            let mut client = pb::profiles_client::ProfilesClient::new(crate::client::connect(&addr).await?);
            let response = client
                .get_cohort_score_profile(pb::GetCohortScoreProfileRequest {
                    created_from: Some(midnight(from)),
                    created_to: Some(midnight(to)),
                    model,
                    attribute_filter: filter.clone(),
                    buckets,
                })
                .await
                .map_err(grpc_error)?
                .into_inner();
            let last = to.checked_sub_months(Months::new(1)).unwrap_or(to);
            let period = if last == from {
                format!("in {}", from.format("%Y-%m"))
            } else {
                format!("{} to {}", from.format("%Y-%m"), last.format("%Y-%m"))
            };
            Ok(crate::report::render_cohort(&period, &filter, &response))
        }
        ReportCommand::Funnel { days: DaysArgs { addr, from, to }, group_by } => {
            let (from, to) = period_days(from, to, today)?;
            let group = group_by_of(group_by.as_deref());
            let mut client = pb::profiles_client::ProfilesClient::new(crate::client::connect(&addr).await?);
            let response = client
                .get_funnel(pb::GetFunnelRequest {
                    from: Some(midnight(from)),
                    to: Some(midnight(to)),
                    group_by: group.into(),
                })
                .await
                .map_err(grpc_error)?
                .into_inner();
            let last = to.pred_opt().unwrap_or(to);
            let period = format!("{from} to {last} (UTC days)");
            Ok(crate::report::render_funnel(&period, group_by.as_deref().unwrap_or(""), &response))
        }
        ReportCommand::Handovers { addr, limit } => {
            let mut client = pb::profiles_client::ProfilesClient::new(crate::client::connect(&addr).await?);
            let response =
                client.list_handovers(pb::ListHandoversRequest { limit }).await.map_err(grpc_error)?.into_inner();
            Ok(crate::report::render_handovers(&response, chrono::Utc::now().timestamp()))
        }
        ReportCommand::Campaigns { days: DaysArgs { addr, from, to }, group_by, model } => {
            let (from, to) = period_days(from, to, today)?;
            let mut client = pb::profiles_client::ProfilesClient::new(crate::client::connect(&addr).await?);
            let response = client
                .get_campaign_report(pb::GetCampaignReportRequest {
                    from: Some(midnight(from)),
                    to: Some(midnight(to)),
                    group_by: group_by_of(Some(&group_by)).into(),
                    model: attribution_model(&model).into(),
                })
                .await
                .map_err(grpc_error)?
                .into_inner();
            let last = to.pred_opt().unwrap_or(to);
            let period = format!("{from} to {last} (UTC days)");
            Ok(crate::report::render_campaigns(&period, &group_by, &model, &response))
        }
    }
}

/// `--from` and `--to` as days: `--to` defaults to tomorrow (today counts),
/// `--from` to 30 days before `--to`.
fn period_days(
    from: Option<String>,
    to: Option<String>,
    today: chrono::NaiveDate,
) -> Result<(chrono::NaiveDate, chrono::NaiveDate), String> {
    let day = |text: &str| {
        chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .map_err(|_| format!("'{text}' is not a day: write YYYY-MM-DD"))
    };
    let to = match to {
        Some(text) => day(&text)?,
        None => today.succ_opt().unwrap_or(today),
    };
    let from = match from {
        Some(text) => day(&text)?,
        None => to - chrono::Days::new(30),
    };
    Ok((from, to))
}

/// The attribution models by their CLI names.
const ATTRIBUTION_MODELS: [&str; 5] = ["first_touch", "last_touch", "linear", "time_decay", "position_based"];

fn attribution_model(name: &str) -> crate::api::pb::AttributionModel {
    use crate::api::pb::AttributionModel;
    use crate::domain::attribution::Model;
    match Model::parse_key(name) {
        Some(Model::LastTouch) => AttributionModel::LastTouch,
        Some(Model::Linear) => AttributionModel::Linear,
        Some(Model::TimeDecay) => AttributionModel::TimeDecay,
        Some(Model::PositionBased) => AttributionModel::PositionBased,
        Some(Model::FirstTouch) | None => AttributionModel::FirstTouch,
    }
}

fn group_by_of(name: Option<&str>) -> crate::api::pb::FunnelGroupBy {
    use crate::api::pb::FunnelGroupBy;
    match name {
        Some("source") => FunnelGroupBy::Source,
        Some("channel") => FunnelGroupBy::Channel,
        Some("campaign") => FunnelGroupBy::Campaign,
        _ => FunnelGroupBy::Unspecified,
    }
}

/// Rows of spend per call.
const SPEND_CALL: usize = 500;

/// Sends a spend CSV file; returns how many entries were recorded.
async fn import_spend(file: &std::path::Path, addr: &str) -> Result<usize, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let entries = crate::report::spend_csv(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    use crate::api::pb;
    let channel = crate::client::connect(addr).await.map_err(|e| e.to_string())?;
    let mut client = pb::profiles_client::ProfilesClient::new(channel);
    let mut recorded = 0;
    for (i, chunk) in entries.chunks(SPEND_CALL).enumerate() {
        let r = client
            .record_spend(pb::RecordSpendRequest { spend: chunk.to_vec() })
            .await
            .map_err(|status| {
                let first = i * SPEND_CALL;
                format!(
                    "entries {}-{} of the file (after summing rows) and later ones not recorded: {}: {}",
                    first + 1,
                    first + chunk.len(),
                    status.code(),
                    status.message()
                )
            })?
            .into_inner();
        recorded += r.recorded as usize;
    }
    Ok(recorded)
}

async fn simulate_rules(
    file: &std::path::Path,
    config: Option<&std::path::Path>,
    redis_url: Option<String>,
    examples: usize,
) -> ExitCode {
    let (settings, _, store) = match redis_store(config, redis_url, "simulate reads the leads stored in Redis") {
        Ok(found) => found,
        Err(code) => return code,
    };
    let candidate = match crate::startup::load_rules(Some(file), &settings.required_approvers) {
        Ok((rules, _)) => rules,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let policy = crate::domain::IngestPolicy {
        dedupe_window_ms: settings.dedupe_window.0,
        retention_ms: settings.signal_retention.0,
        history_limit: settings.history_limit,
    };
    let now = crate::domain::Clock::now(&crate::domain::SystemClock);
    match crate::engine::simulate(&store, &candidate, &policy, now, examples).await {
        Ok(result) => {
            print!("{}", render_simulation(&file.display().to_string(), &candidate.version, &result));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("leadscore: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A progress bar on stderr, hidden when it is not a terminal.
struct Bar(indicatif::ProgressBar);

impl crate::store::redis::migrate::MigrateProgress for Bar {
    fn start(&self, leads: u64) {
        self.0.set_length(leads);
    }

    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
}

/// The settings and the Redis store of a command that works on the stored
/// data (`why` says what for, when no Redis URL is given).
fn redis_store(
    config: Option<&std::path::Path>,
    redis_url: Option<String>,
    why: &str,
) -> Result<(Settings, crate::store::redis::RedisSettings, crate::store::redis::RedisStore), ExitCode> {
    let overrides = Overrides { redis_url, ..Default::default() };
    let settings = Settings::load(config, &overrides).map_err(|e| {
        eprintln!("leadscore: {e}");
        ExitCode::from(2)
    })?;
    let redis = match crate::startup::redis_settings(&settings) {
        Ok(Some(redis)) => redis,
        Ok(None) => {
            eprintln!("leadscore: {why}: give --redis-url or LEADSCORE_REDIS_URL");
            return Err(ExitCode::from(2));
        }
        Err(e) => {
            eprintln!("leadscore: {e}");
            return Err(ExitCode::FAILURE);
        }
    };
    let store = crate::store::redis::RedisStore::connect(&redis).map_err(|e| {
        eprintln!("leadscore: {e}");
        ExitCode::FAILURE
    })?;
    Ok((settings, redis, store))
}

async fn migrate(config: Option<&std::path::Path>, redis_url: Option<String>) -> ExitCode {
    let (_, redis, store) = match redis_store(config, redis_url, "migrate converts the data stored in Redis") {
        Ok(found) => found,
        Err(code) => return code,
    };
    let bar = Bar(crate::client::progress(0, "migrating", "leads"));
    let result = store.migrate(&bar).await;
    bar.0.finish_and_clear();
    let prefix = &redis.key_prefix;
    match result {
        Ok(report) => {
            let format = crate::store::redis::record::FORMAT;
            match report.found {
                None => println!("nothing stored under Redis key prefix '{prefix}': nothing to migrate"),
                Some(f) if f == format && report.leads + report.already == 0 => {
                    println!("the data under Redis key prefix '{prefix}' is already in layout format {format}")
                }
                Some(_) => println!(
                    "migrated the data under Redis key prefix '{prefix}' to layout format {format}: {} leads \
                     converted ({} converted by an earlier run), {} cohort score distributions rebuilt, {} feed \
                     and trigger entries rewritten with their ids, {} pending trigger deliveries kept",
                    report.leads, report.already, report.distributions, report.stream_entries, report.pending
                ),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("leadscore: migrate stopped: {e}; what was converted stays converted: run it again to finish");
            ExitCode::FAILURE
        }
    }
}

/// The simulation as a table.
pub fn render_simulation(name: &str, version: &str, s: &crate::engine::Simulation) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{name} (version {version}) against {} stored leads ({} rescored from their raw history)",
        s.leads_evaluated, s.leads_rebuilt
    );
    for e in &s.rule_errors {
        let examples: Vec<_> = e.examples.iter().map(|e| e.as_str()).collect();
        let _ = writeln!(
            out,
            "rule {} failed to evaluate on {} leads ({}), e.g. {}",
            e.rule_id,
            e.leads,
            e.error,
            examples.join(", ")
        );
    }
    if s.transitions.is_empty() {
        let _ = writeln!(out, "no lead would change stage");
        return out;
    }
    let _ = writeln!(out, "{:<13} {:<13} {:>8}  examples", "from", "to", "leads");
    for t in &s.transitions {
        let examples: Vec<_> = t.examples.iter().map(|e| e.as_str()).collect();
        let _ = writeln!(out, "{:<13} {:<13} {:>8}  {}", t.from.as_str(), t.to.as_str(), t.count, examples.join(", "));
    }
    let moved: u64 = s.transitions.iter().map(|t| t.count).sum();
    let _ = writeln!(out, "{moved} leads would change stage");
    out
}

async fn serve(args: ServeArgs) -> ExitCode {
    let overrides = Overrides {
        grpc_addr: args.grpc_addr,
        metrics_addr: args.metrics_addr,
        redis_url: args.redis_url,
        rules: args.rules,
        insecure: args.insecure.then_some(true),
    };
    let settings = match Settings::load(args.config.as_deref(), &overrides) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("leadscore: {e}");
            return ExitCode::from(2);
        }
    };
    for stray in crate::config::stray_variables(&settings) {
        tracing::warn!("{stray}");
    }
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("leadscore: {e}");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until_stopped(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

fn check_rules(file: &std::path::Path) -> ExitCode {
    let source = match std::fs::read_to_string(file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    match RuleSet::parse(&source) {
        Ok(rules) => {
            println!("{}: OK", file.display());
            print!("{}", rules.summary());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{}:{}:{}: {}", file.display(), e.line, e.column, e.message);
            }
            eprintln!("{}: {} error(s)", file.display(), errors.len());
            ExitCode::FAILURE
        }
    }
}

/// Stack of every runtime thread: rule conditions are evaluated on them and
/// the interpreter recurses once per level of a condition (bounded by
/// `rules::expr::MAX_DEPTH`); Tokio's default is 2 MiB.
const THREAD_STACK: usize = 8 * 1024 * 1024;

/// The `leadscore` command: parses the command line, runs it on a
/// multi-threaded runtime, flushes buffered spans.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // A client command whose output is piped into `head` ends quietly, as
    // other command-line tools do, instead of failing on the closed pipe.
    // The service keeps SIGPIPE ignored: a closed socket is an error there.
    #[cfg(unix)]
    if !matches!(cli.command, Command::Serve(_)) {
        // SAFETY: before any other thread exists; sets the default action.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_stack_size(THREAD_STACK).build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("leadscore: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let telemetry = crate::telemetry::init();
        let code = run(cli).await;
        // Flush buffered spans before exiting.
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        code
    })
}
