//! The database side of `replay --plan`: the batch is applied in a transaction that is rolled back, and every
//! upserted row is read before and after the writes, so that each upsert is told apart as an insert, an update
//! (with the names of the columns that change) or unchanged, by the database itself (its types, defaults,
//! triggers and version guard), never by a guess of what it would do.
//!
//! The rows are read as text (`CAST(column AS TEXT)`, `AS CHAR` on MySQL): the before and after of one column
//! are compared in the same form. Values are compared, never shown: only column names leave this module.
//!
//! One statement per upserted row, twice: `--plan` is an operator's tool, not the bulk path.

use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, DbErr};

use super::{Changes, Origin, Sink};

/// What an applied upsert did to its row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowAction {
    Insert,
    /// The names of the columns whose value changed.
    Update(Vec<String>),
    Unchanged,
}

/// When a [`Probe`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Before,
    After,
}

/// A row as text, column by column; `None`: no such row.
type RowText = Option<Vec<Option<String>>>;

/// The upserted rows of a batch, before and after its writes: one list per mapping, in the order of
/// [`Changes::upserts`].
#[derive(Debug, Default)]
pub struct Probe {
    before: Vec<Vec<RowText>>,
    after: Vec<Vec<RowText>>,
}

impl Probe {
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) async fn read(
        &mut self,
        sink: &Sink,
        txn: &DatabaseTransaction,
        changes: &[Changes],
        when: When,
    ) -> Result<(), DbErr> {
        let cast = if sink.backend() == DbBackend::MySql {
            "CHAR"
        } else {
            "TEXT"
        };
        let mut all = Vec::with_capacity(changes.len());
        for (mapping, changes) in sink.mappings.iter().zip(changes) {
            let table = mapping.table();
            let (upserts, _) = changes.split();
            let mut rows = Vec::with_capacity(upserts.len());
            for (row, _) in upserts {
                let mut select = Query::select();
                select.from(Alias::new(&table.name));
                for c in &table.columns {
                    select.expr(Expr::col(Alias::new(c)).cast_as(Alias::new(cast)));
                }
                for (name, &i) in table.key_columns().zip(&table.key) {
                    if let Some(v) = row.get(i) {
                        select.and_where(Expr::col(Alias::new(name)).eq(v.clone()));
                    }
                }
                let found = txn.query_one(&select).await?;
                let text = found
                    .map(|r| {
                        (0..table.columns.len())
                            .map(|i| r.try_get_by_index::<Option<String>>(i))
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .transpose()?;
                rows.push(text);
            }
            all.push(rows);
        }
        match when {
            When::Before => self.before = all,
            When::After => self.after = all,
        }
        Ok(())
    }

    /// What each applied upsert did, by the message it came from (read after [`When::After`]).
    pub fn actions(&self, sink: &Sink, changes: &[Changes]) -> Vec<(Origin, RowAction)> {
        let mut out = Vec::new();
        for (m, (mapping, changes)) in sink.mappings.iter().zip(changes).enumerate() {
            let columns = &mapping.table().columns;
            let (upserts, _) = changes.split();
            for (i, (_, origin)) in upserts.iter().enumerate() {
                let before = self.before.get(m).and_then(|r| r.get(i)).cloned().flatten();
                let after = self.after.get(m).and_then(|r| r.get(i)).cloned().flatten();
                let action = match (before, after) {
                    (None, Some(_)) => RowAction::Insert,
                    (Some(b), Some(a)) => {
                        let changed: Vec<String> = columns
                            .iter()
                            .zip(b.iter().zip(&a))
                            .filter(|(_, (x, y))| x != y)
                            .map(|(c, _)| c.clone())
                            .collect();
                        if changed.is_empty() {
                            RowAction::Unchanged
                        } else {
                            RowAction::Update(changed)
                        }
                    }
                    // Not written (refused, or kept by a version guard): the caller knows why.
                    (_, None) => RowAction::Unchanged,
                };
                out.push((*origin, action));
            }
        }
        out
    }
}
