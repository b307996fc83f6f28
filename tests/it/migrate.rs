//! `leadscore migrate`: the format-1 fixture (tests/fixtures/format1: every
//! key the last format-1 release wrote, and what it answered) is loaded into
//! a Redis of our own, migrated by the command a user runs, interrupted and
//! resumed, and then read through this build's API at the instants the old
//! release answered (a hand-moved clock): every answer is the same.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use redis::Commands;
use serde_json::Value;

use crate::helpers::{ManualClock, RedisCluster, RedisServer, TestApp, settings};
use leadscore::api::pb;
use leadscore::domain::profiles::ScoreBucket;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format1").join(name)
}

fn read_json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

/// Writes fixture keys as the old release left them. Expiry times are not
/// set: they are wall-clock instants of the day the fixture was made.
fn load(conn: &mut dyn redis::ConnectionLike, rows: &[&Value]) {
    for row in rows {
        let key = s(&row["key"]);
        let value = &row["value"];
        let _: () = redis::cmd("DEL").arg(key).query(conn).unwrap();
        let mut cmd;
        match s(&row["type"]) {
            "hash" => {
                cmd = redis::cmd("HSET");
                cmd.arg(key);
                for (f, v) in value.as_object().unwrap() {
                    cmd.arg(f).arg(s(v));
                }
            }
            "set" => {
                cmd = redis::cmd("SADD");
                cmd.arg(key);
                for m in value.as_array().unwrap() {
                    cmd.arg(s(m));
                }
            }
            "zset" => {
                cmd = redis::cmd("ZADD");
                cmd.arg(key);
                for pair in value.as_array().unwrap() {
                    cmd.arg(s(&pair[1])).arg(s(&pair[0]));
                }
            }
            "list" => {
                cmd = redis::cmd("RPUSH");
                cmd.arg(key);
                for e in value.as_array().unwrap() {
                    cmd.arg(s(e));
                }
            }
            "string" => {
                cmd = redis::cmd("SET");
                cmd.arg(key).arg(s(value));
            }
            "stream" => {
                for entry in value["entries"].as_array().unwrap() {
                    let mut add = redis::cmd("XADD");
                    add.arg(key).arg(s(&entry[0]));
                    for x in entry[1].as_array().unwrap() {
                        add.arg(s(x));
                    }
                    let _: String = add.query(conn).unwrap();
                }
                for group in value["groups"].as_array().unwrap() {
                    let name = s(&group["name"]);
                    let _: () = redis::cmd("XGROUP")
                        .arg("CREATE")
                        .arg(key)
                        .arg(name)
                        .arg(s(&group["last_delivered_id"]))
                        .arg("MKSTREAM")
                        .query(conn)
                        .unwrap();
                    for p in group["pending"].as_array().unwrap() {
                        let _: Vec<String> = redis::cmd("XCLAIM")
                            .arg(key)
                            .arg(name)
                            .arg(s(&p[1]))
                            .arg(0)
                            .arg(s(&p[0]))
                            .arg("RETRYCOUNT")
                            .arg(p[2].as_u64().unwrap())
                            .arg("FORCE")
                            .arg("JUSTID")
                            .query(conn)
                            .unwrap();
                    }
                }
                continue;
            }
            other => panic!("fixture key type {other}"),
        }
        let _: () = cmd.query(conn).unwrap();
    }
}

fn migrate(redis_url: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_leadscore"))
        .arg("migrate")
        .arg("--config")
        .arg(fixture("leadscore.toml"))
        .arg("--redis-url")
        .arg(redis_url)
        .env_remove("LEADSCORE_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "migrate failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[tokio::test]
async fn migrate_converts_format_1_data_and_every_answer_stays_the_same() {
    let redis = RedisServer::start();
    let mut conn = redis.connection();
    let all_keys = || {
        let mut c = redis.connection();
        c.keys("*").unwrap()
    };
    migrate_and_compare(&redis.url(), &mut conn, &all_keys).await;
}

#[tokio::test]
async fn migrate_converts_format_1_data_on_redis_cluster() {
    let Some(cluster) = RedisCluster::start() else { return };
    let nodes: Vec<String> = cluster.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect();
    let mut conn = redis::cluster::ClusterClient::new(nodes).unwrap().get_connection().unwrap();
    let all_keys = || cluster.keys_per_node().concat();
    migrate_and_compare(&cluster.url(), &mut conn, &all_keys).await;
}

/// Loads the fixture, migrates it (interrupted once), checks what is
/// stored and compares every answer.
async fn migrate_and_compare(url: &str, conn: &mut dyn redis::ConnectionLike, all_keys: &dyn Fn() -> Vec<String>) {
    let keys = read_json("keys.json");
    let rows: Vec<&Value> = keys.as_array().unwrap().iter().collect();
    load(conn, &rows);

    // Without the configuration of the release that wrote it (4
    // partitions, not the default 64), migrate refuses and converts nothing.
    let wrong = Command::new(env!("CARGO_BIN_EXE_leadscore"))
        .args(["migrate", "--redis-url", url])
        .env_remove("LEADSCORE_CONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("redis_partitions") && stderr.contains("nothing was converted"), "{stderr}");
    let format: Option<String> = redis::cmd("GET").arg("ls:format").query(conn).unwrap();
    assert_eq!(format, None);
    for row in rows.iter().filter(|r| s(&r["type"]) == "hash" && s(&r["key"]).contains(":lead:")) {
        let kind: String = redis::cmd("TYPE").arg(s(&row["key"])).query(conn).unwrap();
        assert_eq!(kind, "hash", "{} was converted", row["key"]);
    }

    // This build refuses the old data and names the command.
    let mut config = settings(Some(url.to_owned()));
    config.redis_timeout = leadscore::config::Millis(2_000);
    config.redis_key_prefix = "ls".into();
    config.redis_partitions = 4;
    config.rules = Some(fixture("rules.toml"));
    config.trigger_groups = vec!["automation".into(), "crm".into()];
    config.trigger_visibility_timeout = leadscore::config::Millis(1_000);
    config.trigger_max_deliveries = 2;
    config.rules_reload_interval = leadscore::config::Millis(3_600_000);
    let refused = match leadscore::startup::Application::build(config.clone()).await {
        Ok(_) => panic!("the service started on format-1 data"),
        Err(e) => e.to_string(),
    };
    assert!(refused.contains("leadscore migrate"), "{refused}");

    let first = migrate(url);
    // What docs/storage.md shows it saying over this fixture.
    let readme = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/storage.md")).unwrap();
    assert!(readme.contains(first.trim()), "docs/storage.md does not show: {first}");
    assert!(first.contains("45 leads converted (0 converted by an earlier run)"), "{first}");
    assert!(first.contains("pending trigger deliveries kept"), "{first}");
    let again = migrate(url);
    assert!(again.contains("already in layout format 2"), "{again}");

    // Interrupted in the last partition: half its leads converted, its
    // distributions and streams not yet. Running again finishes it.
    let p3: Vec<&Value> = rows.iter().copied().filter(|r| s(&r["key"]).starts_with("ls:{p3}:")).collect();
    let leads: Vec<&str> = p3
        .iter()
        .filter(|r| s(&r["type"]) == "hash" && s(&r["key"]).starts_with("ls:{p3}:lead:"))
        .map(|r| s(&r["key"]))
        .collect();
    assert!(leads.len() >= 4, "{leads:?}");
    let unconverted: Vec<&str> = leads.iter().step_by(2).copied().collect();
    let restore: Vec<&Value> = p3
        .iter()
        .copied()
        .filter(|r| {
            let key = s(&r["key"]);
            key.starts_with("ls:{p3}:cohort:") && s(&r["type"]) == "zset"
                || key == "ls:{p3}:feed:stages"
                || key == "ls:{p3}:triggers"
                || unconverted.iter().any(|lead| key == *lead || key.starts_with(&format!("{lead}:")))
        })
        .collect();
    load(conn, &restore);
    let _: () = redis::cmd("DEL").arg("ls:format").query(conn).unwrap();
    let resumed = migrate(url);
    let expected =
        format!("{} leads converted ({} converted by an earlier run)", unconverted.len(), 45 - unconverted.len());
    assert!(resumed.contains(&expected), "{resumed}");

    // Nothing of format 1 is left.
    let all = all_keys();
    for key in &all {
        let kind: String = redis::cmd("TYPE").arg(key).query(conn).unwrap();
        assert!(
            !(key.contains(":lead:")
                && ["seen", "days", "hist", "stages", "scores"].iter().any(|s| key.ends_with(&format!(":{s}")))),
            "{key} is left"
        );
        if key.contains(":lead:") {
            assert_eq!(kind, "string", "{key}");
        }
        if key.contains(":cohort:") {
            assert_eq!(kind, "hash", "{key}");
        }
    }
    let format: String = redis::cmd("GET").arg("ls:format").query(conn).unwrap();
    assert_eq!(format, "2");
    // Each cohort score distribution holds the old totals, by whole point.
    let mut distributions = 0;
    for row in rows.iter().filter(|r| s(&r["type"]) == "zset" && s(&r["key"]).contains(":cohort:")) {
        let mut want = BTreeMap::<i64, i64>::new();
        for pair in row["value"].as_array().unwrap() {
            *want.entry(ScoreBucket::of(s(&pair[1]).parse().unwrap()).index()).or_default() += 1;
        }
        let got: BTreeMap<i64, i64> = redis::cmd("HGETALL").arg(s(&row["key"])).query(conn).unwrap();
        assert_eq!(got, want, "{}", row["key"]);
        distributions += 1;
    }
    assert!(distributions > 100, "{distributions}");

    let answers = read_json("answers.json");
    let mut reads: Vec<&Value> = Vec::new();
    for section in ["leads", "visitors"] {
        for list in answers[section].as_object().unwrap().values() {
            reads.extend(list.as_array().unwrap());
        }
    }
    for section in ["funnel", "cohort", "feed", "accounts", "misc"] {
        reads.extend(answers[section].as_array().unwrap());
    }
    reads.sort_by_key(|r| r["at_ms"].as_i64().unwrap());
    let clock = ManualClock::at(reads[0]["at_ms"].as_i64().unwrap());
    let app = TestApp::spawn_with_clock(config, clock.clone()).await;
    let channel = app.channel().await;
    let mut scoring = pb::lead_scoring_client::LeadScoringClient::new(channel.clone());
    let mut qualification = pb::qualification_client::QualificationClient::new(channel.clone());
    let mut profiles = pb::profiles_client::ProfilesClient::new(channel.clone());
    let mut nurture = pb::nurture_client::NurtureClient::new(channel.clone());
    let mut compared = BTreeMap::<String, usize>::new();
    for read in reads {
        clock.advance(read["at_ms"].as_i64().unwrap() - clock.millis());
        let rpc = s(&read["rpc"]);
        let q = &read["request"];
        let want = &read["response"];
        let text = |name: &str| q[name].as_str().unwrap_or_default().to_owned();
        let (got, expected) = match rpc {
            "LeadScoring/ScoreLead" => {
                let r = scoring
                    .score_lead(pb::ScoreLeadRequest {
                        lead_id: text("leadId"),
                        visitor_id: text("visitorId"),
                        model: String::new(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                (score_lines(r.score.as_ref().unwrap()), score_lines_json(&want["score"]))
            }
            "LeadScoring/ScoreLeads" => {
                let ids = q["leadIds"].as_array().unwrap().iter().map(|v| s(v).to_owned()).collect();
                let r = scoring
                    .score_leads(pb::ScoreLeadsRequest { lead_ids: ids, model: String::new() })
                    .await
                    .unwrap()
                    .into_inner();
                let got = r.scores.iter().flat_map(score_lines).collect();
                (got, each(want, "scores").flat_map(score_lines_json).collect())
            }
            "Qualification/GetQualification" => {
                let r = qualification
                    .get_qualification(pb::GetQualificationRequest { lead_id: text("leadId"), history_limit: 100 })
                    .await
                    .unwrap()
                    .into_inner()
                    .qualification
                    .unwrap();
                let w = &want["qualification"];
                let mut got =
                    vec![format!("{} {} {} {}{}", r.lead_id, stage(r.stage), ms(r.since.as_ref()), r.rule_id, r.actor)];
                got.extend(r.history.iter().map(change_line));
                let mut expected = vec![format!(
                    "{} {} {} {}{}",
                    js(w, "leadId"),
                    js(w, "stage"),
                    jms(&w["since"]),
                    js(w, "ruleId"),
                    js(w, "actor")
                )];
                expected.extend(each(w, "history").map(change_line_json));
                (got, expected)
            }
            "Profiles/GetScoreProfile" => {
                let r = profiles
                    .get_score_profile(pb::GetScoreProfileRequest {
                        lead_id: text("leadId"),
                        model: String::new(),
                        signal_limit: 0,
                        history_limit: 1000,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let mut got = score_lines(r.score.as_ref().unwrap());
                got.extend(r.score_history.iter().map(|h| {
                    format!("{} {:.2} {:.2} {:.2} {}", ms(h.at.as_ref()), h.total, h.behavior, h.fit, h.cause)
                }));
                got.extend(r.stage_history.iter().map(change_line));
                let mut expected = score_lines_json(&want["score"]);
                expected.extend(each(want, "scoreHistory").map(|h| {
                    format!(
                        "{} {:.2} {:.2} {:.2} {}",
                        jms(&h["at"]),
                        jf(h, "total"),
                        jf(h, "behavior"),
                        jf(h, "fit"),
                        js(h, "cause")
                    )
                }));
                expected.extend(each(want, "stageHistory").map(change_line_json));
                (got, expected)
            }
            "Profiles/GetFunnel" => {
                let group_by = match q["groupBy"].as_str() {
                    Some(name) => pb::FunnelGroupBy::from_str_name(name).unwrap() as i32,
                    None => 0,
                };
                let r = profiles
                    .get_funnel(pb::GetFunnelRequest {
                        from: Some(ts_of(&q["from"])),
                        to: Some(ts_of(&q["to"])),
                        group_by,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let mut got = funnel_lines(r.total.as_ref().unwrap());
                for g in &r.groups {
                    got.push(format!("group {}", g.value));
                    got.extend(funnel_lines(g.funnel.as_ref().unwrap()));
                }
                let mut expected = funnel_lines_json(&want["total"]);
                for g in each(want, "groups") {
                    expected.push(format!("group {}", js(g, "value")));
                    expected.extend(funnel_lines_json(&g["funnel"]));
                }
                (got, expected)
            }
            "Profiles/GetCohortScoreProfile" => {
                let r = profiles
                    .get_cohort_score_profile(pb::GetCohortScoreProfileRequest {
                        created_from: Some(ts_of(&q["createdFrom"])),
                        created_to: Some(ts_of(&q["createdTo"])),
                        model: text("model"),
                        attribute_filter: text("attributeFilter"),
                        buckets: q["buckets"].as_u64().unwrap_or(0) as u32,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                // Format 2 keeps the distributions to the whole point
                // (their buckets are checked against the old totals
                // above): percentiles and extremes are the old ones to the
                // point (so are the histogram's bars, which follow them);
                // the histogram counts the same leads.
                let point = |v: f64| ScoreBucket::of(v).score();
                let mut got = vec![format!(
                    "{} {} {} {} {} {} {} {:.4}",
                    r.lead_count,
                    point(r.p50),
                    point(r.p75),
                    point(r.p90),
                    point(r.p99),
                    point(r.min),
                    point(r.max),
                    r.mql_rate
                )];
                got.push(r.histogram.iter().map(|b| b.count).sum::<u64>().to_string());
                got.extend(r.count_by_stage.iter().map(|c| format!("{} {}", stage(c.stage), c.count)));
                let mut expected = vec![format!(
                    "{} {} {} {} {} {} {} {:.4}",
                    ju(want, "leadCount"),
                    point(jf(want, "p50")),
                    point(jf(want, "p75")),
                    point(jf(want, "p90")),
                    point(jf(want, "p99")),
                    point(jf(want, "min")),
                    point(jf(want, "max")),
                    jf(want, "mqlRate")
                )];
                expected.push(each(want, "histogram").map(|b| ju(b, "count")).sum::<u64>().to_string());
                expected.extend(each(want, "countByStage").map(|c| format!("{} {}", js(c, "stage"), ju(c, "count"))));
                (got, expected)
            }
            "Qualification/ListQualificationChanges" => {
                let r = qualification
                    .list_qualification_changes(pb::ListQualificationChangesRequest {
                        after_cursor: text("afterCursor"),
                        limit: 1000,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let mut got = vec![r.next_cursor.clone()];
                got.extend(
                    r.changes
                        .iter()
                        .map(|c| format!("{} {} {}", c.change_id, c.lead_id, change_line(c.change.as_ref().unwrap()))),
                );
                let mut expected = vec![js(want, "nextCursor")];
                expected.extend(
                    each(want, "changes").map(|c| {
                        format!("{} {} {}", js(c, "changeId"), js(c, "leadId"), change_line_json(&c["change"]))
                    }),
                );
                (got, expected)
            }
            "Profiles/GetAccountScore" => {
                let r = profiles
                    .get_account_score(pb::GetAccountScoreRequest { account_id: text("accountId") })
                    .await
                    .unwrap()
                    .into_inner();
                let mut got = vec![format!(
                    "{} {:.2} {:.2} {:.2} {} {} {} {}",
                    r.account_id, r.score, r.behavior, r.fit, r.engaged_leads, r.lead_count, r.qualified, r.aggregate
                )];
                got.extend(r.leads.iter().map(|l| {
                    format!("{} {:.2} {} {} {}", l.lead_id, l.behavior, stage(l.stage), l.counted, l.engaged)
                }));
                let mut expected = vec![format!(
                    "{} {:.2} {:.2} {:.2} {} {} {} {}",
                    js(want, "accountId"),
                    jf(want, "score"),
                    jf(want, "behavior"),
                    jf(want, "fit"),
                    ju(want, "engagedLeads"),
                    ju(want, "leadCount"),
                    want["qualified"].as_bool().unwrap_or(false),
                    js(want, "aggregate")
                )];
                expected.extend(each(want, "leads").map(|l| {
                    format!(
                        "{} {:.2} {} {} {}",
                        js(l, "leadId"),
                        jf(l, "behavior"),
                        js(l, "stage"),
                        l["counted"].as_bool().unwrap_or(false),
                        l["engaged"].as_bool().unwrap_or(false)
                    )
                }));
                (got, expected)
            }
            "Nurture/ListDeadLetters" => {
                let r = nurture
                    .list_dead_letters(pb::ListDeadLettersRequest { group: text("group"), limit: 0 })
                    .await
                    .unwrap()
                    .into_inner();
                let got = r
                    .triggers
                    .iter()
                    .map(|t| {
                        let sc = t.score.as_ref().unwrap();
                        format!(
                            "{} {} {} {} {:.2} {} {}",
                            t.trigger_id,
                            t.definition_id,
                            t.lead_id,
                            ms(t.fired_at.as_ref()),
                            sc.total,
                            stage(t.stage),
                            t.delivery_count
                        )
                    })
                    .collect();
                let expected = each(want, "triggers")
                    .map(|t| {
                        format!(
                            "{} {} {} {} {:.2} {} {}",
                            js(t, "triggerId"),
                            js(t, "definitionId"),
                            js(t, "leadId"),
                            jms(&t["firedAt"]),
                            jf(&t["score"], "total"),
                            js(t, "stage"),
                            ju(t, "deliveryCount")
                        )
                    })
                    .collect();
                (got, expected)
            }
            // Rule-set reads do not depend on the stored data.
            _ => continue,
        };
        assert_eq!(got, expected, "{rpc} {q} at {}", read["at_ms"]);
        *compared.entry(rpc.to_owned()).or_default() += 1;
    }
    assert_eq!(compared.get("LeadScoring/ScoreLead"), Some(&45), "{compared:?}");
    assert_eq!(compared.get("Profiles/GetCohortScoreProfile"), Some(&65), "{compared:?}");
    assert_eq!(compared.get("Nurture/ListDeadLetters"), Some(&2), "{compared:?}");

    // The delivery left pending for "automation" is redelivered (its
    // count carried over), and the dead letter stays dead.
    clock.advance(5_000);
    let mut stream = nurture
        .stream_triggers(pb::StreamTriggersRequest {
            group: "automation".into(),
            consumer: "worker-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Ok(Ok(Some(m))) = tokio::time::timeout(std::time::Duration::from_secs(2), stream.message()).await {
        let t = m.trigger.unwrap();
        seen.push((t.trigger_id.clone(), t.delivery_count));
        if t.trigger_id == "1/1796297162031-0" {
            break;
        }
    }
    assert!(seen.contains(&("1/1796297162031-0".to_owned(), 2)), "{seen:?}");
    app.stop().await;
}

fn each<'a>(v: &'a Value, name: &str) -> impl Iterator<Item = &'a Value> {
    v[name].as_array().map(|a| a.iter()).into_iter().flatten()
}

fn js(v: &Value, name: &str) -> String {
    v[name].as_str().unwrap_or_default().to_owned()
}

fn jf(v: &Value, name: &str) -> f64 {
    v[name].as_f64().unwrap_or(0.0)
}

/// proto3 JSON writes 64-bit integers as strings.
fn ju(v: &Value, name: &str) -> u64 {
    match &v[name] {
        Value::String(s) => s.parse().unwrap(),
        Value::Number(n) => n.as_u64().unwrap(),
        _ => 0,
    }
}

fn jms(v: &Value) -> i64 {
    v.as_str().map_or(0, |t| chrono::DateTime::parse_from_rfc3339(t).unwrap().timestamp_millis())
}

fn ts_of(v: &Value) -> pbjson_types::Timestamp {
    let millis = jms(v);
    pbjson_types::Timestamp { seconds: millis.div_euclid(1000), nanos: (millis.rem_euclid(1000) * 1_000_000) as i32 }
}

fn ms(t: Option<&pbjson_types::Timestamp>) -> i64 {
    t.map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

fn stage(code: i32) -> String {
    pb::Stage::try_from(code).unwrap().as_str_name().to_owned()
}

fn grade(code: i32) -> String {
    pb::Grade::try_from(code).unwrap().as_str_name().to_owned()
}

fn score_lines(s: &pb::LeadScore) -> Vec<String> {
    let mut lines = vec![format!(
        "{} {} {} {:.2} {:.2} {:.2} {} {} {}",
        s.lead_id,
        s.visitor_id,
        s.model,
        s.total,
        s.behavior,
        s.fit,
        grade(s.grade),
        stage(s.stage),
        s.rule_set_version
    )];
    for c in &s.contributions {
        lines.push(match &c.source {
            Some(pb::contribution::Source::Signal(t)) => {
                format!("{:.2} signal {} {} {}", c.points, t.r#type, t.counted, ms(t.last_at.as_ref()))
            }
            Some(pb::contribution::Source::FitRule(r)) => format!("{:.2} fit {} {}", c.points, r.rule_id, r.attribute),
            None => format!("{:.2}", c.points),
        });
    }
    lines
}

fn score_lines_json(s: &Value) -> Vec<String> {
    let mut lines = vec![format!(
        "{} {} {} {:.2} {:.2} {:.2} {} {} {}",
        js(s, "leadId"),
        js(s, "visitorId"),
        js(s, "model"),
        jf(s, "total"),
        jf(s, "behavior"),
        jf(s, "fit"),
        js(s, "grade"),
        js(s, "stage"),
        js(s, "ruleSetVersion")
    )];
    for c in each(s, "contributions") {
        let points = jf(c, "points");
        lines.push(if let Some(t) = c.get("signal") {
            format!("{points:.2} signal {} {} {}", js(t, "type"), ju(t, "counted"), jms(&t["lastAt"]))
        } else if let Some(r) = c.get("fitRule") {
            format!("{points:.2} fit {} {}", js(r, "ruleId"), js(r, "attribute"))
        } else {
            format!("{points:.2}")
        });
    }
    lines
}

fn change_line(c: &pb::StageChange) -> String {
    let sc = c.score.unwrap_or_default();
    format!(
        "{}>{} {}{} {} {} {:.2} {:.2} {:.2} {} {} {:?}",
        stage(c.from),
        stage(c.to),
        c.rule_id,
        c.actor,
        c.reason,
        c.rule_set_version,
        sc.total,
        sc.behavior,
        sc.fit,
        grade(sc.grade),
        ms(c.at.as_ref()),
        c.deal_amount
    )
}

fn change_line_json(c: &Value) -> String {
    let sc = &c["score"];
    format!(
        "{}>{} {}{} {} {} {:.2} {:.2} {:.2} {} {} {:?}",
        js(c, "from"),
        js(c, "to"),
        js(c, "ruleId"),
        js(c, "actor"),
        js(c, "reason"),
        js(c, "ruleSetVersion"),
        jf(sc, "total"),
        jf(sc, "behavior"),
        jf(sc, "fit"),
        js(sc, "grade"),
        jms(&c["at"]),
        c["dealAmount"].as_f64()
    )
}

fn duration_ms(d: Option<&pbjson_types::Duration>) -> i64 {
    d.map_or(0, |d| d.seconds * 1000 + i64::from(d.nanos) / 1_000_000)
}

fn funnel_lines(f: &pb::Funnel) -> Vec<String> {
    let mut lines = vec![format!("{} {:.2} {}", f.reopened_leads, f.won_revenue, f.won_deals)];
    lines.extend(f.stages.iter().map(|e| {
        format!("{} {} {} {}", stage(e.stage), e.entered, e.reached, duration_ms(e.median_time_to_stage.as_ref()))
    }));
    lines.extend(f.conversions.iter().map(|c| format!("{}>{} {:.4}", stage(c.from), stage(c.to), c.rate)));
    lines
}

fn funnel_lines_json(f: &Value) -> Vec<String> {
    let mut lines = vec![format!("{} {:.2} {}", ju(f, "reopenedLeads"), jf(f, "wonRevenue"), ju(f, "wonDeals"))];
    lines.extend(each(f, "stages").map(|e| {
        let median = e["medianTimeToStage"]
            .as_str()
            .map_or(0, |d| (d.trim_end_matches('s').parse::<f64>().unwrap() * 1000.0).round() as i64);
        format!("{} {} {} {}", js(e, "stage"), ju(e, "entered"), ju(e, "reached"), median)
    }));
    lines.extend(each(f, "conversions").map(|c| format!("{}>{} {:.4}", js(c, "from"), js(c, "to"), jf(c, "rate"))));
    lines
}

#[test]
fn migrate_says_what_it_found_and_refuses_what_it_cannot_read() {
    let redis = RedisServer::start();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_leadscore"))
            .args(["migrate", "--redis-url", &redis.url()])
            .env_remove("LEADSCORE_CONFIG")
            .output()
            .unwrap()
    };
    let empty = run();
    assert!(empty.status.success());
    assert!(String::from_utf8_lossy(&empty.stdout).contains("nothing to migrate"), "{empty:?}");

    // A format-1 lead hash without its creation time: named, not quoted,
    // and nothing of it written.
    let mut conn = redis.connection();
    let _: () = redis::cmd("ZADD").arg("ls:{p21}:leads").arg(1).arg("lead-1").query(&mut conn).unwrap();
    let _: () = redis::cmd("HSET").arg("ls:{p21}:lead:lead-1").arg("st").arg("LEAD").query(&mut conn).unwrap();
    let corrupt = run();
    let stderr = String::from_utf8_lossy(&corrupt.stderr);
    assert_eq!(corrupt.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("lead-1") && stderr.contains("no creation time") && stderr.contains("run it again"),
        "{stderr}"
    );
    let kind: String = redis::cmd("TYPE").arg("ls:{p21}:lead:lead-1").query(&mut conn).unwrap();
    assert_eq!(kind, "hash");
    let format: Option<String> = redis::cmd("GET").arg("ls:format").query(&mut conn).unwrap();
    assert_eq!(format, None);

    let _: () = redis::cmd("SET").arg("ls:format").arg("9").query(&mut conn).unwrap();
    let unknown = run();
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("layout format 9"), "{unknown:?}");

    let no_redis = Command::new(env!("CARGO_BIN_EXE_leadscore"))
        .arg("migrate")
        .env_remove("LEADSCORE_CONFIG")
        .env_remove("LEADSCORE_REDIS_URL")
        .output()
        .unwrap();
    assert_eq!(no_redis.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_redis.stderr).contains("--redis-url"), "{no_redis:?}");
}
