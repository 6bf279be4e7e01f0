//! `config check`: a config file compiled, and with a database URL its tables compared; `config sql`: the
//! statements and grants a DBA runs before the first deploy.

use super::*;

pub(super) async fn check(
    app: &App,
    file: &std::path::Path,
    database_url: Option<&str>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let config = Config::from_file(file);
    let compiled = config.as_ref().map(|config| app.compile(config));
    let mut problems: Vec<String> = match &compiled {
        Ok(Ok(_)) => Vec::new(),
        Ok(Err(problems)) => problems
            .iter()
            .map(|p| format!("{}: {p}", file.display()))
            .collect(),
        Err(e) => e.0.clone(),
    };
    let rules = match &compiled {
        Ok(Ok(c)) => c.pipeline.change_rules(),
        _ => Vec::new(),
    };
    let database = match (compiled, database_url) {
        (_, None) => {
            "database not checked (pass --database-url URL or set DATABASE_URL)".to_string()
        }
        (Ok(Ok(compiled)), Some(url)) => match check_database(compiled, url).await {
            Ok((found, missing)) => {
                problems.extend(found.iter().map(|p| format!("{}: {p}", redact(url))));
                let mut said = format!("database {}: checked", redact(url));
                if !missing.is_empty() {
                    said.push_str(&format!(
                        "; not there yet, the first batch creates them (which needs the CREATE privilege): {}",
                        missing.join(", ")
                    ));
                }
                said
            }
            Err(e) => return fail(err, EXIT_TRANSIENT, &e),
        },
        (_, Some(url)) => format!(
            "database {} not checked: fix the file's problems first",
            redact(url)
        ),
    };
    if problems.is_empty() {
        for rule in &rules {
            let _ = writeln!(out, "{rule}");
        }
        let _ = writeln!(out, "{database}");
        let _ = writeln!(out, "{}: ok", file.display());
        return EXIT_OK;
    }
    for p in &problems {
        let _ = writeln!(err, "{p}");
    }
    let _ = writeln!(err, "{database}");
    let _ = writeln!(err, "{}: {} problem(s)", file.display(), problems.len());
    EXIT_INVALID
}

/// `config sql`: the file's tables and grants on the database's backend.
pub(super) async fn config_sql(
    app: &App,
    file: &Path,
    database_url: Option<&str>,
    grant_to: &str,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let compiled = match app.load(Some(file)) {
        Ok(c) => c,
        Err(e) => return fail(err, EXIT_INVALID, &e.to_string()),
    };
    let handler = match compiled.handler(database_url).await {
        Ok(h) => h,
        Err(e) => return fail(err, EXIT_INVALID, &e.to_string()),
    };
    match sql::setup_sql(handler.sink(), grant_to).await {
        Ok(text) => print(out, err, &text),
        Err(e) => fail(err, EXIT_INVALID, &e),
    }
}

/// The preflight of `config check --database-url`, which reads the catalogs and creates nothing.
pub(super) async fn check_database(
    compiled: crate::config::Compiled,
    url: &str,
) -> Result<(Vec<crate::sync::Problem>, Vec<String>), String> {
    let handler = compiled
        .handler(Some(url))
        .await
        .map_err(|e| e.to_string())?;
    handler
        .sink()
        .check()
        .await
        .map_err(|e| format!("database {}: {e}", redact(url)))
}
