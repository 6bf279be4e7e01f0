//! A batch's metrics in CloudWatch Embedded Metric Format (EMF): one JSON object per batch, which Lambda mode
//! writes on stdout, where CloudWatch Logs turns it into metrics (what Powertools Metrics writes). `replay
//! --emf` and `consume --emf` print the same object, for local checks.
//!
//! The format, from the specification
//! (<https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html>):
//! a top-level `_aws` object with `Timestamp` (epoch ms) and `CloudWatchMetrics`, a list of directives, each
//! with a `Namespace`, `Dimensions` (a list of dimension sets, each a list of member names) and `Metrics`
//! (`Name`, `Unit`); every dimension and metric a directive names is a top-level member of the object.
//! [`validate`] checks exactly those rules.
//!
//! Metrics (dimension `FunctionName`, and `FunctionName` + `Topic` when the whole batch is of one topic):
//! `Records`, `Messages`, `Upserted`, `Deleted`, `DeadLettered`, `Filtered`, `Superseded`, `Empty`, `Stale`
//! (of an applied batch `Messages` = `Upserted` + `Deleted` + `DeadLettered` + `Filtered` + `Superseded` +
//! `Empty` + `Stale`, as in the report), `BatchDurationMs`, `MaxRecordAgeMs` (now − the oldest record's Kafka
//! timestamp, records without one, `-1`, left out: how far behind the function is), and `Misconfigured` /
//! `TransientFailure` (1 for a batch that failed so, else 0: an alarm on them sees data every batch).
//!
//! Every object carries a `level` (see [`Metrics::level`]): with JSON logs and an application log level
//! above INFO, Lambda drops a line without one as INFO, and every metric with it.

use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::event::MskEvent;
use crate::pipeline::HandlerError;
use crate::report::BatchReport;

/// The CloudWatch namespace of the metrics; the template sets it from its `MetricsNamespace` parameter.
pub const NAMESPACE_ENV: &str = "MSK_SYNC_METRICS_NAMESPACE";
/// The CloudWatch namespace when `MSK_SYNC_METRICS_NAMESPACE` is not set.
pub const DEFAULT_NAMESPACE: &str = "msk-sync";
/// Set by Lambda: the function's name, the metrics' dimension.
pub const FUNCTION_NAME_ENV: &str = "AWS_LAMBDA_FUNCTION_NAME";

/// The units the EMF specification allows (CloudWatch's `StandardUnit`).
pub const UNITS: &[&str] = &[
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];

/// Set by Lambda from the function's `LoggingConfig.ApplicationLogLevel` (JSON log format only).
pub const LOG_LEVEL_ENV: &str = "AWS_LAMBDA_LOG_LEVEL";

/// Lambda's log levels, lowest first.
const LEVELS: [&str; 6] = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"];

/// Where a batch's metrics go and under which names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metrics {
    /// The CloudWatch namespace of the metrics.
    pub namespace: String,
    /// The function's name: the metrics' dimension.
    pub function_name: String,
    /// The `level` of each object: INFO, or the application log level when it is higher. Lambda's log-level
    /// filtering keeps a JSON line whose `level` is at least the function's level and drops one without a
    /// level as INFO; so the metrics pass every level, and CloudWatch reads `level` as a plain property.
    pub level: &'static str,
}

impl Metrics {
    /// Metrics under `namespace`, for the function `function_name`, at level INFO.
    pub fn new(namespace: impl Into<String>, function_name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            function_name: function_name.into(),
            level: "INFO",
        }
    }

    /// The level of the objects for the application log level `log_level` (Lambda's names, any case):
    /// INFO, or `log_level` when it is higher. An unknown level gives FATAL, which every filter lets by.
    pub fn for_log_level(mut self, log_level: Option<&str>) -> Self {
        let rank = |l: &str| LEVELS.iter().position(|x| x.eq_ignore_ascii_case(l));
        self.level = match log_level.map(str::trim).filter(|l| !l.is_empty()) {
            None => "INFO",
            Some(l) => match rank(l) {
                Some(r) => LEVELS[r.max(2)],
                None => "FATAL",
            },
        };
        self
    }

    /// The namespace from `MSK_SYNC_METRICS_NAMESPACE` (default `msk-sync`), checked by
    /// [`validate_namespace`]; the function's name from `AWS_LAMBDA_FUNCTION_NAME` (Lambda), else
    /// `function_name`; the level from `AWS_LAMBDA_LOG_LEVEL` ([`Metrics::for_log_level`]).
    pub fn from_env(function_name: &str) -> Result<Self, String> {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        let namespace = var(NAMESPACE_ENV).unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        validate_namespace(&namespace).map_err(|e| format!("{NAMESPACE_ENV}: {e}"))?;
        Ok(Self::new(
            namespace,
            var(FUNCTION_NAME_ENV).unwrap_or_else(|| function_name.to_string()),
        )
        .for_log_level(var(LOG_LEVEL_ENV).as_deref()))
    }

    /// The EMF object of one batch: `outcome` is what the handler returned, `took` how long it took,
    /// `now_ms` the time (epoch ms) the record ages are measured at and the object is stamped with.
    pub fn batch(
        &self,
        event: &MskEvent<'_>,
        outcome: Result<&BatchReport, &HandlerError>,
        took: Duration,
        now_ms: i64,
    ) -> Value {
        let mut topics = event.records.iter().map(|r| r.topic.as_ref());
        let first = topics.next();
        let topic = first.filter(|t| topics.all(|other| other == *t));
        // -1 is Kafka's "no timestamp" (what the runner gives a record without one): not an age.
        let oldest = event
            .records
            .iter()
            .map(|r| r.timestamp)
            .filter(|t| *t >= 0)
            .min();
        let max_age = oldest.map_or(0, |t| now_ms.saturating_sub(t).max(0));
        let (report, failure) = match outcome {
            Ok(report) => (Some(report), None),
            Err(e) => (None, Some(e)),
        };
        let count = |f: fn(&BatchReport) -> usize| report.map_or(0, f);
        let failed = |is: fn(&HandlerError) -> bool| u64::from(failure.is_some_and(is));
        let values: [(&str, &str, Value); 13] = [
            ("Records", "Count", json!(event.record_count())),
            // A container file (Avro OCF) is one record of many messages: the outcomes below add up to this.
            ("Messages", "Count", json!(count(|r| r.messages))),
            ("Upserted", "Count", json!(count(|r| r.upserted))),
            ("Deleted", "Count", json!(count(|r| r.deleted))),
            ("DeadLettered", "Count", json!(count(|r| r.dead_lettered))),
            ("Filtered", "Count", json!(count(|r| r.filtered))),
            ("Superseded", "Count", json!(count(|r| r.superseded))),
            // Messages without a value to apply (an empty container file).
            ("Empty", "Count", json!(count(|r| r.empty))),
            // Changes older than their row or its tombstone (a version column): skipped, never applied.
            ("Stale", "Count", json!(count(|r| r.stale))),
            (
                "BatchDurationMs",
                "Milliseconds",
                json!((took.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0),
            ),
            ("MaxRecordAgeMs", "Milliseconds", json!(max_age)),
            (
                "Misconfigured",
                "Count",
                json!(failed(|e| matches!(e, HandlerError::Misconfigured(_)))),
            ),
            (
                "TransientFailure",
                "Count",
                json!(failed(|e| matches!(e, HandlerError::Transient(_)))),
            ),
        ];
        let mut dimensions = vec![json!(["FunctionName"])];
        let mut object = Map::new();
        object.insert("level".into(), json!(self.level));
        object.insert("FunctionName".into(), json!(self.function_name));
        if let Some(topic) = topic {
            dimensions.push(json!(["FunctionName", "Topic"]));
            object.insert("Topic".into(), json!(topic));
        }
        let directive = json!({
            "Namespace": self.namespace,
            "Dimensions": dimensions,
            "Metrics": values.iter().map(|(name, unit, _)| json!({"Name": name, "Unit": unit})).collect::<Vec<_>>(),
        });
        object.insert(
            "_aws".into(),
            json!({"Timestamp": now_ms, "CloudWatchMetrics": [directive]}),
        );
        for (name, _, value) in values {
            object.insert(name.into(), value);
        }
        Value::Object(object)
    }

    /// [`Metrics::batch`] stamped now, as one line of JSON.
    pub fn line(
        &self,
        event: &MskEvent<'_>,
        outcome: Result<&BatchReport, &HandlerError>,
        took: Duration,
    ) -> String {
        self.batch(event, outcome, took, chrono::Utc::now().timestamp_millis())
            .to_string()
    }
}

/// A CloudWatch namespace CloudWatch accepts: 1 to 255 of `0-9A-Za-z . - _ / # :` and space, not blank, no
/// space at either end, not starting with `:` (the API's pattern `[^:].*`) and not with `AWS/` (reserved for
/// AWS's own services). CloudWatch drops the metrics of an object with any other namespace, silently.
pub fn validate_namespace(namespace: &str) -> Result<(), String> {
    let bad = namespace.chars().find(|c| {
        !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | '#' | ':' | ' '))
    });
    let problem = if namespace.is_empty() || namespace.len() > 255 {
        Some("a namespace is 1 to 255 characters".to_string())
    } else if let Some(c) = bad {
        Some(format!(
            "{c:?} is not allowed in a CloudWatch namespace (letters, digits, . - _ / # : and space)"
        ))
    } else if namespace.trim() != namespace || namespace.trim().is_empty() {
        Some("a namespace neither is blank nor starts or ends with a space".into())
    } else if namespace.starts_with(':') {
        Some("a namespace cannot start with ':'".into())
    } else if namespace.starts_with("AWS/") {
        Some("namespaces starting with AWS/ are reserved for AWS's services".into())
    } else {
        None
    };
    match problem {
        Some(p) => Err(format!("namespace {namespace:?}: {p}")),
        None => Ok(()),
    }
}

/// Checks an object against the EMF specification's rules (the `_aws` metadata, its directives, their
/// dimension and metric names present as top-level members, the units). Each problem is one line.
pub fn validate(object: &Value) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let Some(root) = object.as_object() else {
        return Err(vec!["not a JSON object".into()]);
    };
    let Some(aws) = root.get("_aws").and_then(Value::as_object) else {
        return Err(vec!["no _aws object".into()]);
    };
    if !aws.get("Timestamp").is_some_and(Value::is_u64) {
        problems.push("_aws.Timestamp is not a non-negative integer (epoch ms)".into());
    }
    let Some(directives) = aws.get("CloudWatchMetrics").and_then(Value::as_array) else {
        problems.push("_aws.CloudWatchMetrics is not an array".into());
        return Err(problems);
    };
    let name_ok = |v: &Value| v.as_str().is_some_and(|s| !s.is_empty() && s.len() <= 255);
    for (i, d) in directives.iter().enumerate() {
        let at = format!("CloudWatchMetrics[{i}]");
        let namespace = d.get("Namespace");
        match namespace.and_then(Value::as_str) {
            Some(n) => {
                if let Err(e) = validate_namespace(n) {
                    problems.push(format!("{at}.Namespace: {e}"));
                }
            }
            None => problems.push(format!("{at}.Namespace is not a string")),
        }
        match d.get("Dimensions").and_then(Value::as_array) {
            None => problems.push(format!("{at}.Dimensions is not an array")),
            Some(sets) => {
                for set in sets {
                    let Some(set) = set.as_array() else {
                        problems.push(format!("{at}: a dimension set is not an array"));
                        continue;
                    };
                    if set.len() > 30 {
                        problems.push(format!("{at}: a dimension set has more than 30 dimensions"));
                    }
                    for name in set {
                        match name.as_str() {
                            Some(n) if root.get(n).is_some_and(Value::is_string) => {}
                            _ => problems.push(format!(
                                "{at}: dimension {name} is not a top-level string member"
                            )),
                        }
                    }
                }
            }
        }
        match d.get("Metrics").and_then(Value::as_array) {
            None => problems.push(format!("{at}.Metrics is not an array")),
            Some(metrics) if metrics.len() > 100 => {
                problems.push(format!("{at}.Metrics has more than 100 metrics"))
            }
            Some(metrics) => {
                for m in metrics {
                    let Some(name) = m.get("Name").filter(|n| name_ok(n)).and_then(Value::as_str)
                    else {
                        problems.push(format!("{at}: a metric has no valid Name"));
                        continue;
                    };
                    if let Some(unit) = m.get("Unit")
                        && !unit.as_str().is_some_and(|u| UNITS.contains(&u))
                    {
                        problems.push(format!(
                            "{at}: metric {name} has unit {unit}, not an EMF unit"
                        ));
                    }
                    let numeric = match root.get(name) {
                        Some(Value::Number(_)) => true,
                        Some(Value::Array(values)) => {
                            !values.is_empty()
                                && values.len() <= 100
                                && values.iter().all(Value::is_number)
                        }
                        _ => false,
                    };
                    if !numeric {
                        problems.push(format!(
                            "{at}: metric {name} is not a top-level number (or list of numbers)"
                        ));
                    }
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Record;

    fn event(records: &[(&'static str, i64)]) -> MskEvent<'static> {
        MskEvent {
            event_source: "aws:kafka".into(),
            records: records
                .iter()
                .enumerate()
                .map(|(i, (topic, timestamp))| Record {
                    topic: (*topic).into(),
                    offset: i as i64,
                    timestamp: *timestamp,
                    ..Record::default()
                })
                .collect(),
            ..MskEvent::default()
        }
    }

    const NOW: i64 = 1_700_000_010_000;

    #[test]
    fn an_applied_batch_gives_a_valid_emf_object_with_its_counts() {
        let report = BatchReport {
            status: 400,
            received: 3,
            messages: 3,
            upserted: 1,
            deleted: 1,
            dead_lettered: 1,
            ..BatchReport::default()
        };
        let metrics = Metrics::new("acme/sync", "entity-sync-prod");
        let event = event(&[("t", NOW - 4_000), ("t", NOW - 9_000), ("t", NOW - 1_000)]);
        let object = metrics.batch(&event, Ok(&report), Duration::from_micros(12_345), NOW);
        assert_eq!(validate(&object), Ok(()), "{object}");
        assert_eq!(object["_aws"]["Timestamp"], NOW);
        let directive = &object["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "acme/sync");
        assert_eq!(
            directive["Dimensions"],
            json!([["FunctionName"], ["FunctionName", "Topic"]])
        );
        let names: Vec<&str> = directive["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "Records",
                "Messages",
                "Upserted",
                "Deleted",
                "DeadLettered",
                "Filtered",
                "Superseded",
                "Empty",
                "Stale",
                "BatchDurationMs",
                "MaxRecordAgeMs",
                "Misconfigured",
                "TransientFailure"
            ]
        );
        assert_eq!(object["FunctionName"], "entity-sync-prod");
        assert_eq!(object["Topic"], "t");
        assert_eq!(object["Records"], 3);
        assert_eq!(object["Upserted"], 1);
        assert_eq!(object["Deleted"], 1);
        assert_eq!(object["DeadLettered"], 1);
        assert_eq!(object["BatchDurationMs"], 12.345);
        assert_eq!(object["MaxRecordAgeMs"], 9_000);
        assert_eq!(object["Misconfigured"], 0);
        assert_eq!(object["TransientFailure"], 0);
    }

    #[test]
    fn a_failed_batch_counts_its_failure_class() {
        let metrics = Metrics::new("msk-sync", "f");
        let event = event(&[("a", NOW - 5), ("b", NOW - 7)]);
        let transient = HandlerError::Transient("database away".into());
        let object = metrics.batch(&event, Err(&transient), Duration::ZERO, NOW);
        assert_eq!(validate(&object), Ok(()), "{object}");
        assert_eq!(object["TransientFailure"], 1);
        assert_eq!(object["Misconfigured"], 0);
        assert_eq!(object["Records"], 2);
        assert_eq!(object["Upserted"], 0);
        assert_eq!(object["MaxRecordAgeMs"], 7);
        // Two topics: no Topic dimension (its counts are the batch's, not one topic's).
        assert_eq!(
            object["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["FunctionName"]])
        );
        assert!(object.get("Topic").is_none());
        let misconfigured = HandlerError::Misconfigured("no unique key".into());
        let object = metrics.batch(&event, Err(&misconfigured), Duration::ZERO, NOW);
        assert_eq!(object["Misconfigured"], 1);
        assert_eq!(object["TransientFailure"], 0);
        // A record stamped in the future is not a negative age.
        let object = metrics.batch(&event, Err(&misconfigured), Duration::ZERO, NOW - 1_000);
        assert_eq!(object["MaxRecordAgeMs"], 0);
    }

    #[test]
    fn the_validator_catches_what_the_specification_forbids() {
        let good = Metrics::new("n", "f").batch(
            &event(&[("t", NOW)]),
            Ok(&BatchReport::default()),
            Duration::ZERO,
            NOW,
        );
        let broken = |edit: &dyn Fn(&mut Value)| {
            let mut v = good.clone();
            edit(&mut v);
            validate(&v).expect_err(&v.to_string())
        };
        broken(&|v| {
            v.as_object_mut().unwrap().remove("_aws");
        });
        broken(&|v| v["_aws"]["Timestamp"] = json!("now"));
        broken(&|v| v["_aws"]["CloudWatchMetrics"][0]["Namespace"] = json!(""));
        broken(&|v| v["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Unit"] = json!("Rows"));
        broken(&|v| {
            v.as_object_mut().unwrap().remove("Records");
        });
        broken(&|v| v["Records"] = json!("3"));
        broken(&|v| {
            v.as_object_mut().unwrap().remove("FunctionName");
        });
        broken(&|v| v["_aws"]["CloudWatchMetrics"][0]["Dimensions"] = json!(["FunctionName"]));
        broken(&|v| v["_aws"]["CloudWatchMetrics"][0]["Namespace"] = json!("AWS/Lambda"));
        broken(&|v| v["_aws"]["CloudWatchMetrics"][0]["Namespace"] = json!("a*b"));
    }

    #[test]
    fn the_outcome_metrics_add_up_to_the_messages_of_the_report() {
        // An Avro container file of 5 messages, 3 with values applied and 2 without a value.
        let report = BatchReport {
            status: 200,
            received: 1,
            messages: 5,
            upserted: 3,
            empty: 2,
            ..BatchReport::default()
        };
        let object =
            Metrics::new("n", "f").batch(&event(&[("t", NOW)]), Ok(&report), Duration::ZERO, NOW);
        assert_eq!(validate(&object), Ok(()), "{object}");
        assert_eq!(object["Messages"], 5);
        assert_eq!(object["Empty"], 2);
        let outcomes: u64 = [
            "Upserted",
            "Deleted",
            "DeadLettered",
            "Filtered",
            "Superseded",
            "Empty",
            "Stale",
        ]
        .iter()
        .map(|m| object[*m].as_u64().unwrap())
        .sum();
        assert_eq!(outcomes, 5, "{object}");
    }

    #[test]
    fn a_record_without_a_timestamp_has_no_age() {
        let metrics = Metrics::new("n", "f");
        let object = metrics.batch(
            &event(&[("t", -1), ("t", NOW - 250)]),
            Ok(&BatchReport::default()),
            Duration::ZERO,
            NOW,
        );
        assert_eq!(object["MaxRecordAgeMs"], 250);
        let object = metrics.batch(
            &event(&[("t", -1)]),
            Ok(&BatchReport::default()),
            Duration::ZERO,
            NOW,
        );
        assert_eq!(object["MaxRecordAgeMs"], 0);
    }

    #[test]
    fn every_object_has_a_level_that_passes_the_application_log_level() {
        let event = event(&[("t", NOW)]);
        let level = |log_level: Option<&str>| {
            Metrics::new("n", "f").for_log_level(log_level).batch(
                &event,
                Ok(&BatchReport::default()),
                Duration::ZERO,
                NOW,
            )["level"]
                .clone()
        };
        assert_eq!(level(None), "INFO");
        assert_eq!(level(Some("DEBUG")), "INFO");
        assert_eq!(level(Some("TRACE")), "INFO");
        assert_eq!(level(Some("WARN")), "WARN");
        assert_eq!(level(Some("error")), "ERROR");
        assert_eq!(level(Some("FATAL")), "FATAL");
        assert_eq!(level(Some("loud")), "FATAL");
    }

    #[test]
    fn namespaces_cloudwatch_refuses_are_refused() {
        for good in ["msk-sync", "acme/sync", "Team: Orders #1", "a.b_c", "x:y"] {
            assert_eq!(validate_namespace(good), Ok(()), "{good}");
        }
        let long = "n".repeat(256);
        for bad in [
            "",
            " ",
            "AWS/Lambda",
            "a*b",
            "cost$",
            ":x",
            " lead",
            "trail ",
            "é",
            &long,
        ] {
            assert!(validate_namespace(bad).is_err(), "{bad:?}");
        }
    }
}
