//! Log lines as their readers expect them: in Lambda with `AWS_LAMBDA_LOG_FORMAT=JSON`, one JSON object per line
//! with `timestamp`, `level`, `message` and the request id at the top (the shape of Lambda's own JSON logs and of
//! Powertools' loggers, so CloudWatch Logs Insights and the Powertools dashboards read them), msk-sync's fields
//! beside them; the level from `AWS_LAMBDA_LOG_LEVEL`, FATAL included. On the command line, colour only on a
//! terminal and never with `NO_COLOR`.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The span field that carries the invocation's request id (lambda_runtime's span and msk-sync's own).
pub(crate) const REQUEST_ID: &str = "requestId";

/// Whether output to a stream may be coloured: only a terminal, and not when `NO_COLOR` is set (to anything
/// but empty: <https://no-color.org>).
pub(crate) fn colour(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// `AWS_LAMBDA_LOG_LEVEL` (the function's `ApplicationLogLevel`) as a level filter: Lambda's names, any case.
/// FATAL has no tracing level of its own: it keeps errors, the most severe there is.
pub(crate) fn lambda_level(name: &str) -> Option<LevelFilter> {
    match name.trim().to_ascii_uppercase().as_str() {
        "FATAL" | "ERROR" => Some(LevelFilter::ERROR),
        "WARN" | "WARNING" => Some(LevelFilter::WARN),
        "INFO" => Some(LevelFilter::INFO),
        "DEBUG" => Some(LevelFilter::DEBUG),
        "TRACE" => Some(LevelFilter::TRACE),
        "OFF" => Some(LevelFilter::OFF),
        _ => None,
    }
}

/// `text` without the database server's source lines: sqlx writes a PostgreSQL error as its message followed by
/// ` at line N`, the line of the server's C source that raised it, which tells a user nothing.
pub(crate) fn without_source_lines(text: &str) -> String {
    const MARK: &str = " at line ";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(MARK) {
        let after = &rest[at + MARK.len()..];
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        // Where sqlx puts it: at the end of the database's message, which a wrapper may close or follow with a
        // parenthesis. A parser's position ("at line 1 column 2", TOML's "at line 2, column 7") is kept.
        let tail = &after[digits..];
        let ends =
            tail.is_empty() || tail.starts_with([')', ';', '\n', '"']) || tail.starts_with(" (");
        if digits > 0 && ends {
            out.push_str(&rest[..at]);
            rest = &after[digits..];
        } else {
            out.push_str(&rest[..at + MARK.len()]);
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A log writer that drops the database server's source lines ([`without_source_lines`]) from what it writes:
/// tracing's formatters write each line in one call, so a line is cleaned whole.
pub(crate) struct WithoutSourceLines<W>(pub(crate) W);

impl<W: std::io::Write> std::io::Write for WithoutSourceLines<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(text) if text.contains(" at line ") => {
                self.0.write_all(without_source_lines(text).as_bytes())?;
                Ok(buf.len())
            }
            _ => self.0.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// One JSON object per event: `timestamp` (RFC 3339, UTC, milliseconds), `level` (`INFO`, `WARN`, …),
/// `message`, the request id as `requestId` (Lambda's name) and `function_request_id` (Powertools'), when the
/// event happened during an invocation, then the event's own fields and those of its spans.
pub(crate) struct LambdaJson;

impl<S, N> FormatEvent<S, N> for LambdaJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Map::new();
        // Spans' fields, outermost first, so an inner span's (and then the event's) value of a name wins.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(formatted) = extensions.get::<FormattedFields<JsonFields>>() else {
                    continue;
                };
                if let Ok(Value::Object(span_fields)) = serde_json::from_str::<Value>(formatted) {
                    fields.extend(span_fields);
                }
            }
        }
        let mut visitor = Fields(&mut fields);
        event.record(&mut visitor);
        let message = fields
            .remove("message")
            .unwrap_or(Value::String(String::new()));
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                .into(),
        );
        line.insert("level".into(), event.metadata().level().as_str().into());
        line.insert("message".into(), message);
        if let Some(id) = fields.remove(REQUEST_ID) {
            line.insert(REQUEST_ID.into(), id.clone());
            line.insert("function_request_id".into(), id);
        }
        line.insert("target".into(), event.metadata().target().into());
        for (k, v) in fields {
            line.entry(k).or_insert(v);
        }
        let text = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// An event's fields as JSON values.
struct Fields<'m>(&'m mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines an invocation logs, as Lambda would store them with `AWS_LAMBDA_LOG_FORMAT=JSON`.
    fn logged(level: LevelFilter, log: impl FnOnce()) -> Vec<Value> {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .fmt_fields(JsonFields::new())
            .event_format(LambdaJson)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn json_lines_have_the_lambda_and_powertools_keys_at_the_top() {
        let lines = logged(LevelFilter::INFO, || {
            let span = tracing::error_span!(
                "invocation",
                requestId = "8476a536-e9f4-11e8-9739-2dfe598c3fcd"
            );
            let _in = span.enter();
            tracing::warn!(
                topic = "servicea.planet",
                partition = 0,
                offset = 303,
                reason = "Unknown changeType ARCHIVED",
                "record dead-lettered"
            );
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = lines[0].as_object().unwrap();
        let keys: Vec<&str> = line.keys().map(String::as_str).collect();
        assert_eq!(
            &keys[..5],
            [
                "timestamp",
                "level",
                "message",
                "requestId",
                "function_request_id"
            ],
            "{line:?}"
        );
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "record dead-lettered");
        assert_eq!(line["requestId"], "8476a536-e9f4-11e8-9739-2dfe598c3fcd");
        assert_eq!(line["function_request_id"], line["requestId"]);
        assert_eq!(line["topic"], "servicea.planet");
        assert_eq!(line["offset"], 303);
        let ts = line["timestamp"].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(ts).is_ok() && ts.ends_with('Z'),
            "{ts}"
        );
        // Outside an invocation (cold start) there is no request id, and the rest is the same.
        let lines = logged(LevelFilter::INFO, || {
            tracing::error!(error = "bad config", "cannot start")
        });
        assert_eq!(lines[0]["level"], "ERROR");
        assert!(lines[0].get("requestId").is_none(), "{:?}", lines[0]);
    }

    #[test]
    fn server_source_lines_are_dropped() {
        assert_eq!(
            without_source_lines(
                "transient failure: Execution Error: error returned from database: deadlock detected at line 1250 (retry it)"
            ),
            "transient failure: Execution Error: error returned from database: deadlock detected (retry it)"
        );
        assert_eq!(
            without_source_lines("database \"x\" does not exist at line 1050"),
            "database \"x\" does not exist"
        );
        for kept in [
            "at line 12a",
            "look at lines 3",
            "at line ",
            "no line here",
            "the payload is not JSON (expected ident at line 1 column 2)",
            "msk-sync.toml: TOML parse error at line 2, column 1",
        ] {
            assert_eq!(without_source_lines(kept), kept);
        }
    }

    #[test]
    fn log_lines_lose_the_servers_source_lines() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || WithoutSourceLines(writer.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                error = "database \"x\" does not exist at line 948",
                "preflight failed"
            );
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("does not exist"), "{text}");
        assert!(!text.contains(" at line "), "{text}");
    }

    #[test]
    fn lambda_levels_fatal_included() {
        assert_eq!(lambda_level("FATAL"), Some(LevelFilter::ERROR));
        assert_eq!(lambda_level("fatal"), Some(LevelFilter::ERROR));
        assert_eq!(lambda_level("WARN"), Some(LevelFilter::WARN));
        assert_eq!(lambda_level("Debug"), Some(LevelFilter::DEBUG));
        assert_eq!(lambda_level("loud"), None);
        let lines = logged(lambda_level("FATAL").unwrap(), || {
            tracing::warn!("not at FATAL");
            tracing::error!("at FATAL");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["message"], "at FATAL");
    }
}
