//! Object Container Files: the header, sync markers, blocks (inflated within the batch's budget) and their
//! records.

use super::*;

/// An Object Container File: every record becomes a message. Returns the writer schema (it classifies the
/// fields for masking) with the messages. What it inflates and decodes is drawn from `budget`, the batch's.
pub fn decode_ocf(
    bytes: &[u8],
    reader: Option<&AvroSchema>,
    budget: &mut Budget,
) -> Result<(Arc<Schema>, Vec<Message<'static>>), DecodeError> {
    let header_error =
        |what: String| permanent(format!("value is not a valid Avro container file: {what}"));
    let mut c = Cursor::new(bytes);
    let header = |e: Box<Bad>| e.to_error("Avro container file header", bytes.len());
    if c.take(4, "magic").map_err(header)? != OCF_MAGIC {
        return Err(header_error("it does not start with Obj\\x01".into()));
    }
    let (mut schema_json, mut codec) = (None, None);
    while let Some(count) = c.block(false, "metadata map").map_err(header)? {
        for _ in 0..count {
            let key = c.bytes("metadata key").map_err(header)?;
            let value = c.bytes("metadata value").map_err(header)?;
            match key {
                b"avro.schema" => schema_json = Some(value),
                b"avro.codec" => codec = Some(value),
                _ => {}
            }
        }
    }
    let sync = c.take(16, "sync marker").map_err(header)?;
    let schema_json =
        schema_json.ok_or_else(|| header_error("no avro.schema in its header".into()))?;
    let schema = std::str::from_utf8(schema_json)
        .map_err(|_| header_error("its avro.schema is not UTF-8".into()))
        .and_then(|text| {
            Schema::parse_str(text)
                .map_err(|e| header_error(format!("its avro.schema does not parse: {e}")))
        })?;
    let writer = AvroSchema::new(Arc::new(schema)).map_err(header_error)?;
    let deflate = match codec.unwrap_or(b"null") {
        b"null" => false,
        b"deflate" => true,
        other => {
            let name = String::from_utf8_lossy(&other[..other.len().min(32)]).into_owned();
            return Err(header_error(format!(
                "codec {name:?} is not supported (null and deflate are)"
            )));
        }
    };
    let root_empty = writer.empty[writer.root];
    let mut messages = Vec::new();
    let mut empty_items = 0u64;
    let mut block = 0usize;
    while c.left() > 0 {
        block += 1;
        let subject = format!("Avro container file, block {block}");
        let frame = |e: Box<Bad>| e.to_error(&subject, bytes.len());
        let at = c.pos;
        let count = c.long().map_err(frame)?;
        let size = c.long().map_err(frame)?;
        let (Ok(count), Ok(size)) = (u64::try_from(count), usize::try_from(size)) else {
            return Err(frame(c.bad(at, "a negative record count or size")));
        };
        let data = c.take(size, "block").map_err(frame)?;
        if c.take(16, "sync marker").map_err(frame)? != sync {
            return Err(permanent(format!(
                "{subject}: its sync marker differs from the header's (byte {})",
                c.pos - 16
            )));
        }
        let data: std::borrow::Cow<'_, [u8]> = if deflate {
            inflate(data, &subject, budget)?.into()
        } else {
            data.into()
        };
        if root_empty {
            empty_items = empty_items.saturating_add(count);
            if empty_items > MAX_EMPTY_ITEMS {
                return Err(permanent(format!(
                    "{subject}: more than {MAX_EMPTY_ITEMS} records that take no bytes"
                )));
            }
        } else if count > data.len() as u64 {
            return Err(permanent(format!(
                "{subject} declares {count} records but holds {} bytes",
                data.len()
            )));
        }
        let mut d = Cursor::new(&data);
        d.empty_items = empty_items;
        d.decoded = budget.decoded;
        d.max_decoded = budget.max_decoded;
        messages.reserve(usize::try_from(count).unwrap_or(0).min(1024));
        for i in 0..count {
            let start = d.pos;
            d.resolve_cost = 0;
            let value = writer.value(writer.root, &mut d, 0, 1).map_err(|e| {
                let subject = format!("{subject}, record {}", i + 1);
                if d.over_budget {
                    // What was decoded is dropped, but the work was done: later files get what is left.
                    budget.decoded = budget.max_decoded;
                    budget.decoded_error(&subject)
                } else {
                    e.to_error(&subject, data.len())
                }
            })?;
            // The schema and the block are this function's own: the messages own their strings.
            messages.push(match reader {
                None => value.into_owned(),
                Some(reader) => Message::from(resolve(
                    &data[start..d.pos],
                    d.resolve_cost,
                    &writer,
                    reader,
                )?),
            });
        }
        if d.left() > 0 {
            return Err(permanent(format!(
                "{subject} has {} bytes left over after its {count} records",
                d.left()
            )));
        }
        empty_items = d.empty_items;
        budget.decoded = d.decoded;
    }
    Ok((Arc::clone(writer.schema()), messages))
}

/// A deflated block, inflated within the block cap ([`MAX_BLOCK_BYTES`]) and what the batch's budget has left.
pub(super) fn inflate(
    data: &[u8],
    subject: &str,
    budget: &mut Budget,
) -> Result<Vec<u8>, DecodeError> {
    inflate_with(data, subject, budget, false)
}

/// zlib-wrapped deflate data (AWS Glue's compressed payloads), inflated as [`inflate`] does: within the block
/// cap and what the batch's budget has left.
pub(crate) fn inflate_zlib(
    data: &[u8],
    subject: &str,
    budget: &mut Budget,
) -> Result<Vec<u8>, DecodeError> {
    inflate_with(data, subject, budget, true)
}

pub(super) fn inflate_with(
    data: &[u8],
    subject: &str,
    budget: &mut Budget,
    zlib: bool,
) -> Result<Vec<u8>, DecodeError> {
    use miniz_oxide::inflate::{
        TINFLStatus, decompress_to_vec_with_limit, decompress_to_vec_zlib_with_limit,
    };
    let left = budget.max_inflated.saturating_sub(budget.inflated);
    let limit = left.min(MAX_BLOCK_BYTES);
    let inflated = if zlib {
        decompress_to_vec_zlib_with_limit(data, limit)
    } else {
        decompress_to_vec_with_limit(data, limit)
    };
    match inflated {
        Ok(inflated) => {
            budget.inflated += inflated.len();
            Ok(inflated)
        }
        Err(e) if e.status == TINFLStatus::HasMoreOutput => {
            if limit < MAX_BLOCK_BYTES {
                // The work is done and the limit reached: the batch inflates nothing more.
                budget.inflated = budget.max_inflated;
                Err(budget.inflated_error(subject))
            } else {
                budget.inflated += limit;
                Err(permanent(format!(
                    "{subject}: its deflate data inflates past {} MiB (the limit per block)",
                    MAX_BLOCK_BYTES >> 20
                )))
            }
        }
        Err(_) => Err(permanent(format!("{subject}: its deflate data is corrupt"))),
    }
}
