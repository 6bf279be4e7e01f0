//! `config schema` and `config reference`: the JSON Schema of the config file, and the configuration reference
//! (`docs/src/configuration.md`) generated from the same types, the [`ENVIRONMENT`] table and clap's command
//! tree, so that the page cannot drift from the code (`tests/docs.rs` and CI compare the committed copies).

use std::fmt::Write as _;

use serde_json::{Map, Value};

/// One environment variable msk-sync reads.
#[derive(Debug, Clone, Copy)]
pub struct EnvVar {
    /// Its name.
    pub name: &'static str,
    /// What reads it: `cli`, `lambda`, or both.
    pub read_by: &'static str,
    /// What applies when it is not set.
    pub default: &'static str,
    /// What it does.
    pub description: &'static str,
    /// An example value.
    pub example: &'static str,
}

/// Every environment variable msk-sync reads (a test checks that the code reads no other).
pub const ENVIRONMENT: &[EnvVar] = &[
    EnvVar {
        name: "DATABASE_URL",
        read_by: "cli, lambda",
        default: "the secret of `DATABASE_SECRET_ARN` (Lambda), then `database.url`, then `sqlite://msk-sync.db?mode=rwc`",
        description: "The database to apply to (`--database-url` wins). `postgres://`, `mysql://` (MySQL and MariaDB) or `sqlite://`.",
        example: "postgres://app@db.example:5432/app",
    },
    EnvVar {
        name: "DATABASE_SECRET_ARN",
        read_by: "lambda",
        default: "none",
        description: "A Secrets Manager secret holding the database URL, or RDS's JSON (`engine`, `host`, `port`, `username`, `password`, `dbname`); read at the first batch, read again once when the database refuses the credentials. Used when `DATABASE_URL` is not set.",
        example: "arn:aws:secretsmanager:eu-west-1:123456789012:secret:orders-db-AbCdEf",
    },
    EnvVar {
        name: "DATABASE_ENGINE",
        read_by: "lambda",
        default: "none",
        description: "The database secret's `engine` when the secret has none (an RDS-managed master-user secret holds only `username` and `password`); the secret's own field wins.",
        example: "postgres",
    },
    EnvVar {
        name: "DATABASE_HOST",
        read_by: "lambda",
        default: "none",
        description: "The database secret's `host` when the secret has none (an RDS-managed master-user secret holds only `username` and `password`); the secret's own field wins.",
        example: "orders.cluster-abc.eu-west-1.rds.amazonaws.com",
    },
    EnvVar {
        name: "DATABASE_PORT",
        read_by: "lambda",
        default: "none",
        description: "The database secret's `port` when the secret has none (an RDS-managed master-user secret holds only `username` and `password`); the secret's own field wins.",
        example: "5432",
    },
    EnvVar {
        name: "DATABASE_NAME",
        read_by: "lambda",
        default: "none",
        description: "The database secret's `dbname` when the secret has none (an RDS-managed master-user secret holds only `username` and `password`); the secret's own field wins.",
        example: "orders",
    },
    EnvVar {
        name: "MSK_SYNC_CONFIG",
        read_by: "cli, lambda",
        default: "`./msk-sync.toml`; without either, entity-sync refuses to start (nothing is built in)",
        description: "The config file (`--config` wins).",
        example: "/opt/msk-sync/msk-sync.toml",
    },
    EnvVar {
        name: "MSK_SYNC_BROKERS",
        read_by: "cli (`consume`, `publish`)",
        default: "none (`--brokers` is required without it)",
        description: "Bootstrap servers of the local runner, `host:port[,host:port…]` (`--brokers` wins).",
        example: "127.0.0.1:9092",
    },
    EnvVar {
        name: "MSK_SYNC_METRICS_NAMESPACE",
        read_by: "cli (`--emf`), lambda",
        default: "`msk-sync`",
        description: "The CloudWatch namespace of the Embedded Metric Format line written after each batch.",
        example: "orders-sync",
    },
    EnvVar {
        name: "MSK_SYNC_PARTIAL_BATCH_RESPONSE",
        read_by: "lambda",
        default: "`false`",
        description: "`true` when the event source mapping has `FunctionResponseTypes: [ReportBatchItemFailures]` (the template's `ProvisionedMode=true`): a failed batch is answered with `batchItemFailures` for each of its partitions instead of an invocation error.",
        example: "true",
    },
    EnvVar {
        name: "AWS_LAMBDA_FUNCTION_NAME",
        read_by: "cli (`--emf`), lambda",
        default: "the binary's name (`entity-sync`, `planet-sync`)",
        description: "The `FunctionName` dimension of the metrics. Lambda sets it.",
        example: "orders-entity-sync",
    },
    EnvVar {
        name: "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        read_by: "cli, lambda",
        default: "unset: the budgets' defaults (256 and 512 MiB)",
        description: "The function's memory in MB. Lambda sets it (set it by hand to replay with a \
            function's budgets); unless `[codec]` sets them, `codec.max_inflated_mib` and \
            `codec.max_decoded_mib` derive from it.",
        example: "256",
    },
    EnvVar {
        name: "AWS_LAMBDA_RUNTIME_API",
        read_by: "both",
        default: "unset: the binary runs its command line",
        description: "Set by Lambda: the binary, started without arguments, serves the Lambda runtime API instead of its command line.",
        example: "127.0.0.1:9001",
    },
    EnvVar {
        name: "AWS_LAMBDA_LOG_FORMAT",
        read_by: "lambda",
        default: "`Text`",
        description: "`JSON` (the function's `LoggingConfig.LogFormat`): one JSON object per log line, with `timestamp`, `level`, `message` and the request id at the top, as Lambda's and Powertools' loggers write them.",
        example: "JSON",
    },
    EnvVar {
        name: "AWS_LAMBDA_LOG_LEVEL",
        read_by: "lambda",
        default: "`RUST_LOG`, else `INFO`",
        description: "The log level (the function's `LoggingConfig.ApplicationLogLevel`): `TRACE`, `DEBUG`, `INFO`, `WARN`, `ERROR` or `FATAL` (errors only).",
        example: "WARN",
    },
    EnvVar {
        name: "RUST_LOG",
        read_by: "cli, lambda",
        default: "`warn` (cli), `info` (lambda)",
        description: "The log filter, in `tracing-subscriber`'s `EnvFilter` syntax. Logs go to stderr (cli) and never carry message values or passwords.",
        example: "msk_sync=debug",
    },
    EnvVar {
        name: "NO_COLOR",
        read_by: "cli",
        default: "unset: colour only when stderr / stdout is a terminal",
        description: "Set to anything but empty: no ANSI colour in help, errors or logs, even on a terminal.",
        example: "1",
    },
];

/// The JSON Schema of the config file, as `config schema` prints it.
pub fn schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&crate::config::json_schema()).unwrap_or_default();
    text.push('\n');
    text
}

/// The configuration reference page, Markdown, as `config reference` prints it.
pub fn reference(cli: &clap::Command) -> String {
    let mut out = String::new();
    out.push_str(HEADER);
    config_section(&mut out, &crate::config::json_schema());
    environment_section(&mut out);
    cli_section(&mut out, cli);
    out
}

const HEADER: &str = "# Configuration reference

<!-- Generated by `entity-sync config reference` (shared/src/run/cli/reference.rs) from the config types, their
doc comments, the environment table and the command line. Do not edit: CI fails when this page differs from what
the generator prints. To regenerate:
cargo run -q -p entity-sync --features kafka -- config reference > docs/src/configuration.md -->

Everything msk-sync reads: the keys of the config file, the environment variables and the command-line flags.
Where the same setting comes from several places, the first found wins: a flag, then an environment variable,
then the config file, then the default.

";

/// A schema's `$ref` target in `definitions` (draft 7 writes a `$ref` with siblings as `allOf: [{"$ref"}]`).
fn resolve<'s>(schema: &'s Value, root: &'s Value) -> &'s Value {
    if let Some([one]) = schema
        .get("allOf")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
    {
        return resolve(one, root);
    }
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => r
            .strip_prefix("#/definitions/")
            .or_else(|| r.strip_prefix("#/$defs/"))
            .and_then(|name| {
                root.get("definitions")
                    .or_else(|| root.get("$defs"))
                    .and_then(|d| d.get(name))
            })
            .unwrap_or(schema),
        None => schema,
    }
}

/// The schema without its `null` alternative (an `Option`).
fn non_null<'s>(schema: &'s Value, root: &'s Value) -> &'s Value {
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
        let rest: Vec<&Value> = any
            .iter()
            .filter(|s| s.get("type").and_then(Value::as_str) != Some("null"))
            .collect();
        if let [one] = rest[..] {
            return resolve(one, root);
        }
    }
    resolve(schema, root)
}

/// An object schema's properties, if it is one.
fn properties(schema: &Value) -> Option<&Map<String, Value>> {
    schema.get("properties").and_then(Value::as_object)
}

/// The type of a schema in words, and its valid values when they are a list.
fn type_of(schema: &Value, root: &Value) -> (String, Vec<(String, String)>) {
    let schema = non_null(schema, root);
    let variants = schema
        .get("oneOf")
        .or_else(|| schema.get("anyOf"))
        .and_then(Value::as_array);
    if let Some(variants) = variants {
        let values: Vec<(String, String)> = variants
            .iter()
            .filter_map(|v| {
                let v = resolve(v, root);
                let c = v
                    .get("const")
                    .or_else(|| v.get("enum").and_then(|e| e.get(0)))?;
                Some((c.to_string(), description(v)))
            })
            .collect();
        if values.len() == variants.len() {
            return ("string".into(), values);
        }
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        return (
            "string".into(),
            e.iter().map(|v| (v.to_string(), String::new())).collect(),
        );
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(t)) => t.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let types: Vec<&str> = types.into_iter().filter(|t| *t != "null").collect();
    let word = match types.as_slice() {
        [] => "any TOML value".to_string(),
        ["array"] => {
            let items = schema.get("items").map(|i| non_null(i, root));
            match items {
                Some(i) if properties(i).is_some() => "array of tables".to_string(),
                Some(i) => format!("array of {}", type_of(i, root).0),
                None => "array".to_string(),
            }
        }
        ["object"] => match schema
            .get("additionalProperties")
            .map(|a| non_null(a, root))
        {
            Some(a) if a.is_object() => format!("table of {} by name", type_of(a, root).0),
            _ => "table".to_string(),
        },
        ["integer"] => {
            let min = schema.get("minimum").and_then(Value::as_f64);
            let max = schema.get("maximum").and_then(Value::as_f64);
            match (min, max) {
                (Some(a), Some(b)) => format!("integer, {a} to {b}"),
                (Some(a), None) => format!("integer, at least {a}"),
                _ => "integer".to_string(),
            }
        }
        [one] => one.to_string(),
        many => many.join(" or "),
    };
    (word, Vec::new())
}

/// A schema's description as Markdown: rustdoc's links (`` [`a::b::C`] ``) become code spans of the last name.
fn description(schema: &Value) -> String {
    let text = schema
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("[`") {
        let Some(end) = rest[start..].find("`]").map(|e| start + e) else {
            break;
        };
        out.push_str(&rest[..start]);
        let path = &rest[start + 2..end];
        let name = path.rsplit("::").next().unwrap_or(path);
        let _ = write!(out, "`{name}`");
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    // Paragraphs stay paragraphs, their lines joined; a doc comment's code blocks are for rustdoc.
    out.split("\n\n")
        .filter(|p| !p.trim_start().starts_with("```"))
        .map(|p| p.trim().replace('\n', " "))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// A JSON value as TOML text (scalars, arrays and inline tables).
fn toml_value(value: &Value) -> String {
    match value {
        Value::Null => "…".into(),
        Value::String(s) => toml::Value::String(s.clone()).to_string(),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(toml_value).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(fields) if fields.is_empty() => "{}".into(),
        Value::Object(fields) => format!(
            "{{ {} }}",
            fields
                .iter()
                .map(|(k, v)| format!("{} = {}", toml_key(k), toml_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

/// A key, quoted unless it is a bare TOML key.
fn toml_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        key.to_string()
    } else {
        toml::Value::String(key.to_string()).to_string()
    }
}

/// Where a table of keys sits in the file, and how its examples are written.
struct Table<'a> {
    /// The dotted path of its keys (`codec.registry`).
    path: String,
    /// How the section is written in TOML (`[codec]`, `[[sync]]`, `registry = { … }` in `[codec]`).
    heading: String,
    schema: &'a Value,
}

fn config_section(out: &mut String, root: &Value) {
    out.push_str("## The config file (`msk-sync.toml`)\n\n");
    out.push_str(
        "TOML. Unknown keys are errors, with their line. Paths of schema files are relative to the config file's \
folder. `entity-sync config check FILE` lists every problem in a file.\n\n### JSON Schema\n\nEditors complete \
and validate keys with the JSON Schema [`msk-sync.schema.json`](msk-sync.schema.json) (draft 7, printed by \
`entity-sync config schema`): start the file with `#:schema ./docs/src/msk-sync.schema.json`, the path relative \
to the file (Taplo, Even Better TOML).\n\n",
    );
    let mut tables = vec![Table {
        path: String::new(),
        heading: "top level".into(),
        schema: root,
    }];
    let mut i = 0;
    while i < tables.len() {
        let (path, heading, schema) = (
            tables[i].path.clone(),
            tables[i].heading.clone(),
            tables[i].schema,
        );
        i += 1;
        let Some(props) = properties(schema) else {
            continue;
        };
        if !path.is_empty() {
            let _ = writeln!(out, "### `{heading}`\n");
            let d = description(schema);
            if !d.is_empty() {
                let _ = writeln!(out, "{d}\n");
            }
        }
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut nested = Vec::new();
        for (key, prop) in props {
            let full = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            let inner = non_null(prop, root);
            let items = inner
                .get("items")
                .map(|i| non_null(i, root))
                .filter(|i| properties(i).is_some());
            // A sub-table: listed here, described in a section of its own.
            if let Some(t) = items.or_else(|| properties(inner).map(|_| inner)) {
                let heading = match (path.is_empty(), items.is_some()) {
                    (true, true) => format!("[[{key}]]"),
                    (true, false) => format!("[{key}]"),
                    (false, true) => format!("{full} = [{{ … }}, …]"),
                    (false, false) => format!("{full} = {{ … }}"),
                };
                if !path.is_empty() {
                    key_block(
                        out,
                        &full,
                        key,
                        prop,
                        required.contains(&key.as_str()),
                        root,
                    );
                }
                nested.push(Table {
                    path: full,
                    heading,
                    schema: t,
                });
                continue;
            }
            key_block(
                out,
                &full,
                key,
                prop,
                required.contains(&key.as_str()),
                root,
            );
        }
        tables.splice(i..i, nested);
    }
}

/// One key: its description, type, default, valid values and an example.
fn key_block(out: &mut String, full: &str, key: &str, prop: &Value, required: bool, root: &Value) {
    let _ = writeln!(out, "#### `{full}`\n");
    let d = description(prop);
    let d = if d.is_empty() {
        description(non_null(prop, root))
    } else {
        d
    };
    if !d.is_empty() {
        let _ = writeln!(out, "{d}\n");
    }
    let (ty, values) = type_of(prop, root);
    let _ = writeln!(out, "- type: {ty}");
    let default = prop
        .get("default")
        .or_else(|| non_null(prop, root).get("default"));
    match (required, default) {
        (true, _) => out.push_str("- required\n"),
        (false, Some(Value::Null) | None) => out.push_str("- default: none (optional)\n"),
        (false, Some(v)) => {
            let _ = writeln!(out, "- default: `{}`", toml_value(v));
        }
    }
    if !values.is_empty() {
        out.push_str("- valid values:\n");
        for (v, d) in &values {
            let v = serde_json::from_str::<Value>(v).map_or(v.clone(), |v| toml_value(&v));
            if d.is_empty() {
                let _ = writeln!(out, "  - `{v}`");
            } else {
                let _ = writeln!(out, "  - `{v}`: {d}");
            }
        }
    }
    let examples: Vec<&Value> = prop
        .get("examples")
        .and_then(Value::as_array)
        .map(|e| e.iter().collect())
        .unwrap_or_default();
    let examples = if examples.is_empty() {
        default.filter(|d| !d.is_null()).into_iter().collect()
    } else {
        examples
    };
    for e in examples {
        let _ = writeln!(out, "- example: `{} = {}`", toml_key(key), toml_value(e));
    }
    out.push('\n');
}

fn environment_section(out: &mut String) {
    out.push_str("## Environment variables\n\n");
    out.push_str(
        "Read at start. `cli` is the command line (`replay`, `redrive`, `config`, `consume`, `publish`); \
`lambda` is the function under the Lambda runtime. `codec.registry.password_env` names one more, of your \
choosing.\n\n",
    );
    for v in ENVIRONMENT {
        let _ = writeln!(out, "### `{}`\n\n{}\n", v.name, v.description);
        let _ = writeln!(out, "- read by: {}", v.read_by);
        let _ = writeln!(out, "- default: {}", v.default);
        let _ = writeln!(out, "- example: `{}={}`\n", v.name, v.example);
    }
}

fn cli_section(out: &mut String, cli: &clap::Command) {
    out.push_str("## Command line\n\n");
    out.push_str(
        "Both binaries (`entity-sync`, `planet-sync`) have the same commands; `consume` and `publish` need a \
build with the `kafka` feature (`cargo build -p entity-sync --features kafka`). Exit codes: 0 processed (dead \
letters included), 1 transient failure (run it again), 2 bad invocation or misconfigured.\n\n",
    );
    let mut cli = cli.clone();
    cli.build();
    for sub in cli.get_subcommands() {
        command_block(out, sub, &format!("{} {}", cli.get_name(), sub.get_name()));
    }
}

fn command_block(out: &mut String, cmd: &clap::Command, path: &str) {
    if cmd.get_name() == "help" {
        return;
    }
    if cmd.has_subcommands() {
        for sub in cmd.get_subcommands() {
            command_block(out, sub, &format!("{path} {}", sub.get_name()));
        }
        return;
    }
    let _ = writeln!(out, "### `{path}`\n");
    if let Some(about) = cmd.get_long_about().or(cmd.get_about()) {
        let _ = writeln!(out, "{}\n", about.to_string().replace('\n', " "));
    }
    let mut usage = cmd.clone().bin_name(path.to_string());
    let usage = usage.render_usage().to_string();
    let usage = usage.trim().trim_start_matches("Usage: ");
    let _ = writeln!(out, "```text\n{usage}\n```\n");
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if id == "help" || id == "version" {
            continue;
        }
        let value = arg
            .get_value_names()
            .map(|v| v.join(" "))
            .unwrap_or_else(|| id.to_ascii_uppercase());
        let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values())
            && !matches!(arg.get_action(), clap::ArgAction::SetTrue);
        let name = match (arg.get_long(), arg.get_short()) {
            (Some(l), Some(s)) => format!("-{s}, --{l}"),
            (Some(l), None) => format!("--{l}"),
            (None, Some(s)) => format!("-{s}"),
            (None, None) => value.clone(),
        };
        let name = if takes_value && (arg.get_long().is_some() || arg.get_short().is_some()) {
            format!("{name} {value}")
        } else {
            name
        };
        let _ = writeln!(out, "- `{name}`");
        if let Some(help) = arg.get_long_help().or(arg.get_help()) {
            let _ = writeln!(out, "  {}", help.to_string().replace('\n', " "));
        }
        let mut facts = Vec::new();
        if !takes_value {
            facts.push("a flag".to_string());
        }
        if arg.is_required_set() {
            facts.push("required".to_string());
        }
        if matches!(arg.get_action(), clap::ArgAction::Append)
            || arg.get_num_args().is_some_and(|n| n.max_values() > 1)
        {
            facts.push("repeatable".to_string());
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        if !defaults.is_empty() && takes_value {
            facts.push(format!("default `{}`", defaults.join(" ")));
        }
        let values: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| format!("`{}`", v.get_name()))
            .collect();
        if !values.is_empty() && takes_value {
            facts.push(format!("valid values {}", values.join(", ")));
        }
        if let Some(env) = arg.get_env() {
            facts.push(format!("environment `{}`", env.to_string_lossy()));
        }
        if !facts.is_empty() {
            let _ = writeln!(out, "  ({})", facts.join("; "));
        }
    }
    if cmd
        .get_arguments()
        .any(|a| !matches!(a.get_id().as_str(), "help" | "version"))
    {
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every environment variable the code reads (`env::var("X")`, `env::var_os("X")`, clap's `env = "X"`, and
    /// the `…_ENV` constants those use) is in [`ENVIRONMENT`], so the reference lists it.
    #[test]
    fn every_environment_variable_read_is_documented() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut read = std::collections::BTreeSet::new();
        let mut dirs = vec![src];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                // Tests read and set variables of their own.
                let text = text.split("#[cfg(test)]").next().unwrap_or("");
                for pattern in [
                    "env::var(\"",
                    "env::var_os(\"",
                    "env = \"",
                    "_ENV: &str = \"",
                ] {
                    for (at, _) in text.match_indices(pattern) {
                        let rest = &text[at + pattern.len()..];
                        if let Some(end) = rest.find('"') {
                            read.insert(rest[..end].to_string());
                        }
                    }
                }
            }
        }
        let documented: std::collections::BTreeSet<String> =
            ENVIRONMENT.iter().map(|v| v.name.to_string()).collect();
        let missing: Vec<&String> = read.difference(&documented).collect();
        assert!(
            missing.is_empty(),
            "read but not in reference::ENVIRONMENT: {missing:?}"
        );
        assert!(
            read.contains("DATABASE_URL") && read.contains("MSK_SYNC_BROKERS"),
            "{read:?}"
        );
    }

    #[test]
    fn descriptions_lose_rustdoc_links() {
        let schema = serde_json::json!({"description": "default [`super::avro::DEFAULT_MAX`]; see [`Pipeline`].\nMore.\n\n```toml\nx = 1\n```\n\nLast."});
        assert_eq!(
            description(&schema),
            "default `DEFAULT_MAX`; see `Pipeline`. More.\n\nLast."
        );
    }
}
