//! What a batch may hold in memory, and what its values cost on their way to the statement.
//!
//! A batch's values are charged against its [`Budget`](super::avro::Budget) before they are copied: what
//! container files and compressed Glue payloads inflate to (`codec.max_inflated_mib`), and the estimated
//! memory of the messages decoded from them and of every row planned (`codec.max_decoded_mib`). A row is
//! charged for each copy it has on its way to the statement ([`ROW_COPIES`]); a `json` column also for its
//! JSON text, which the driver writes. A value that would go past the budget is dead-lettered (permanent, with
//! a reason naming the setting), and the rest of the batch goes on.
//!
//! Under Lambda the budgets follow the function's memory (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, in MB), unless
//! the config sets them ([`derived`]): what the function has, less [`RESERVED_MIB`] for the runtime and the
//! event itself, is shared as a quarter for inflating and a half for decoded messages and rows; the last
//! quarter is the headroom for what is transient (one record's message while it is mapped, the allocator's
//! slack). docs/src/memory.md gives the figures.

use std::mem::size_of;

use sea_orm::sea_query::Value as SqlValue;
use serde_json::Value;

use super::avro::{DEFAULT_MAX_DECODED_MIB, DEFAULT_MAX_INFLATED_MIB};
use crate::message::{Message, heap};

/// The environment variable Lambda sets to the function's memory, in MB (Lambda's MB are MiB).
pub const FUNCTION_MEMORY_ENV: &str = "AWS_LAMBDA_FUNCTION_MEMORY_SIZE";

/// What a function needs besides its batch's values, in MiB: the binary, the runtime's threads and buffers,
/// the database connection, and the event itself (Lambda hands at most 6 MB, held as text and as its
/// records, and one record's value decoded at a time).
pub const RESERVED_MIB: u64 = 64;

/// How many times a planned row is held on its way to the database: the row itself (kept until the batch is
/// applied), the statement's values, and the driver's bind buffers.
pub const ROW_COPIES: usize = 3;

/// The function's memory in MiB, when Lambda says it (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`).
pub fn function_memory_mib() -> Option<u64> {
    std::env::var(FUNCTION_MEMORY_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&mb| mb > 0)
}

/// The budgets a function of `memory_mib` gets when the config sets none: `(max_inflated_mib,
/// max_decoded_mib)`. Of `memory_mib − RESERVED_MIB`, a quarter may be inflated and a half decoded (never more
/// than the defaults without a function, nor less than 1 MiB each).
pub fn derived(memory_mib: u64) -> (u64, u64) {
    let usable = memory_mib.saturating_sub(RESERVED_MIB);
    (
        (usable / 4).clamp(1, DEFAULT_MAX_INFLATED_MIB),
        (usable / 2).clamp(1, DEFAULT_MAX_DECODED_MIB),
    )
}

/// What the function has for its batch's values (`memory_mib − RESERVED_MIB`), to compare configured budgets
/// with.
pub fn usable_mib(memory_mib: u64) -> u64 {
    memory_mib.saturating_sub(RESERVED_MIB)
}

/// The estimated memory of a message's own copy (what [`Message::into_owned`] allocates: every string,
/// array and object).
pub fn message_cost(message: &Message<'_>) -> usize {
    let mut total = 0usize;
    let mut stack = vec![message];
    while let Some(m) = stack.pop() {
        let cost = match m {
            Message::String(s) => heap(s.len()),
            Message::Array(items) => {
                stack.extend(items);
                heap(items.len().saturating_mul(size_of::<Message<'_>>()))
            }
            Message::Object(o) => {
                let mut names = 0usize;
                for (name, v) in o.iter() {
                    names = names.saturating_add(heap(name.len()));
                    stack.push(v);
                }
                let field = size_of::<(std::borrow::Cow<'_, str>, Message<'_>)>();
                heap(o.len().saturating_mul(field)).saturating_add(names)
            }
            _ => 0,
        };
        total = total.saturating_add(cost);
    }
    total
}

/// What one `serde_json` object field takes besides its name's and value's own heap: the map's entry (hash,
/// name, value) and its index slot (an index and a control byte, at a load of 7/8).
const JSON_FIELD: usize = 8 + size_of::<String>() + size_of::<Value>() + 11;

/// The estimated memory of a message as a `serde_json::Value` (a `json` column's value), and of its JSON text,
/// which the driver writes to bind it: what a mapping makes of the whole message at most, per column.
pub fn json_cost_of(message: &Message<'_>) -> usize {
    let mut total = 0usize;
    let mut stack = vec![message];
    while let Some(m) = stack.pop() {
        // The text: a scalar's digits or quotes (escapes aside), a container's brackets and commas.
        let cost = match m {
            Message::Null | Message::Bool(_) => 5,
            Message::Number(_) => 24,
            Message::String(s) => heap(s.len()).saturating_add(s.len() + 2),
            Message::Array(items) => {
                stack.extend(items);
                heap(items.len().saturating_mul(size_of::<Value>())).saturating_add(items.len() + 2)
            }
            Message::Object(o) => {
                let mut names = 0usize;
                for (name, v) in o.iter() {
                    // The name owned, and in the text with its quotes, colon and comma.
                    names = names
                        .saturating_add(heap(name.len()))
                        .saturating_add(name.len() + 4);
                    stack.push(v);
                }
                heap(o.len().saturating_mul(JSON_FIELD)).saturating_add(names + 2)
            }
        };
        total = total.saturating_add(cost);
    }
    total
}

/// The estimated memory of a `serde_json::Value`'s tree (its heap, not its own slot).
fn json_value_cost(value: &Value) -> usize {
    let mut total = 0usize;
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        let cost = match v {
            Value::String(s) => heap(s.len()),
            Value::Array(items) => {
                stack.extend(items);
                heap(items.len().saturating_mul(size_of::<Value>()))
            }
            Value::Object(map) => {
                let mut names = 0usize;
                for (name, v) in map {
                    names = names.saturating_add(heap(name.len()));
                    stack.push(v);
                }
                heap(map.len().saturating_mul(JSON_FIELD)).saturating_add(names)
            }
            _ => 0,
        };
        total = total.saturating_add(cost);
    }
    total
}

/// The length of a JSON value's text, counted by writing it nowhere.
fn json_text_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// The estimated memory of one copy of a row (or key): its values' slots and heap; a `json` value's tree,
/// and its text, which the driver writes to bind it.
pub fn row_cost(row: &[SqlValue]) -> usize {
    let values = row.iter().fold(0usize, |total, v| {
        let cost = match v {
            SqlValue::String(Some(s)) => heap(s.len()),
            SqlValue::Bytes(Some(b)) => heap(b.len()),
            SqlValue::Json(Some(j)) => heap(size_of::<Value>())
                .saturating_add(json_value_cost(j))
                .saturating_add(heap(json_text_len(j))),
            // Inline, or a small box (decimals, dates and times).
            _ => 0,
        };
        total.saturating_add(cost)
    });
    heap(row.len().saturating_mul(size_of::<SqlValue>())).saturating_add(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn budgets_follow_the_function_memory_and_never_pass_the_defaults() {
        assert_eq!(derived(128), (16, 32));
        assert_eq!(derived(256), (48, 96));
        assert_eq!(derived(1024), (240, 480));
        assert_eq!(derived(10_240), (256, 512));
        // A function smaller than the reserve still decodes something.
        assert_eq!(derived(32), (1, 1));
    }

    #[test]
    fn a_json_column_costs_its_tree_and_its_text() {
        let v = json!({"a": "x".repeat(1000), "b": [1, 2, 3], "c": {"d": null}});
        let row = [
            SqlValue::String(Some("k".into())),
            SqlValue::Json(Some(Box::new(v.clone()))),
        ];
        let cost = row_cost(&row);
        // At least the string twice (tree and text), at most a few times the text.
        let text = v.to_string().len();
        assert!(cost > 2000 && cost < 4 * text, "{cost} for {text}");
        // The message estimate is of the same order as what the row then costs.
        let m = Message::from(v);
        let estimate = json_cost_of(&m);
        assert!(
            estimate >= cost / 2 && estimate <= cost * 2,
            "{estimate} vs {cost}"
        );
    }

    #[test]
    fn many_small_objects_cost_far_more_than_their_text() {
        let v = Value::Array((0..1000).map(|_| json!({"a": 0, "b": 0})).collect());
        let text = v.to_string().len();
        let cost = row_cost(&[SqlValue::Json(Some(Box::new(v)))]);
        assert!(cost > 10 * text, "{cost} for {text} bytes of text");
    }
}
