//! apache-avro values (reader-schema resolution) to JSON, as the module doc's table says.

use super::*;

/// Converts a decoded value to JSON as the module doc's table says.
pub fn to_json(
    value: &Avro,
    schema: &Schema,
    names: &HashMap<Name, Schema>,
) -> Result<Value, DecodeError> {
    let schema = match schema {
        Schema::Ref { name } => names
            .get(name)
            .ok_or_else(|| permanent(format!("Avro schema refers to unknown type {name}")))?,
        s => s,
    };
    let b64 = |b: &[u8]| Value::String(base64::engine::general_purpose::STANDARD.encode(b));
    Ok(match (value, schema) {
        (Avro::Null, _) => Value::Null,
        (Avro::Boolean(b), _) => Value::Bool(*b),
        (Avro::Int(i), _) => Value::from(*i),
        (Avro::Long(i), _) => Value::from(*i),
        (Avro::Float(f), _) => {
            serde_json::Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number)
        }
        (Avro::Double(f), _) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        (Avro::String(s), _) => Value::String(s.clone()),
        (Avro::Enum(_, symbol), _) => Value::String(symbol.clone()),
        (Avro::Union(i, inner), Schema::Union(u)) => {
            let branch = usize::try_from(*i).ok().and_then(|i| u.variants().get(i));
            let branch = branch
                .ok_or_else(|| permanent(format!("Avro union branch {i} is not in the schema")))?;
            to_json(inner, branch, names)?
        }
        (Avro::Union(_, inner), s) => to_json(inner, s, names)?,
        (Avro::Array(items), Schema::Array(a)) => Value::Array(
            items
                .iter()
                .map(|v| to_json(v, &a.items, names))
                .collect::<Result<_, _>>()?,
        ),
        (Avro::Map(entries), Schema::Map(m)) => {
            // Avro maps are unordered; sort the keys so a message always looks the same.
            let mut keys: Vec<&String> = entries.keys().collect();
            keys.sort();
            let mut out = Map::new();
            for k in keys {
                out.insert(k.clone(), to_json(&entries[k], &m.types, names)?);
            }
            Value::Object(out)
        }
        (Avro::Record(fields), Schema::Record(r)) => {
            let mut out = Map::new();
            for (name, v) in fields {
                let field = r.fields.iter().find(|f| &f.name == name);
                let field = field.ok_or_else(|| {
                    permanent(format!("Avro record {} has no field {name}", r.name))
                })?;
                out.insert(name.clone(), to_json(v, &field.schema, names)?);
            }
            Value::Object(out)
        }
        (Avro::Bytes(b), _) => b64(b),
        (Avro::Fixed(_, b), _) => b64(b),
        (Avro::Date(days), _) => {
            let date = NaiveDate::from_ymd_opt(1970, 1, 1)
                .and_then(|epoch| {
                    epoch.checked_add_signed(chrono::Duration::days(i64::from(*days)))
                })
                .ok_or_else(|| permanent("Avro date out of range"))?;
            Value::String(date.format("%Y-%m-%d").to_string())
        }
        (Avro::TimeMillis(ms), _) => Value::String(time(i64::from(*ms) * 1_000, 3)?),
        (Avro::TimeMicros(us), _) => Value::String(time(*us, 6)?),
        (Avro::TimestampMillis(v), _) => Value::String(timestamp(*v, 1_000_000, true)?),
        (Avro::TimestampMicros(v), _) => Value::String(timestamp(*v, 1_000, true)?),
        (Avro::TimestampNanos(v), _) => Value::String(timestamp(*v, 1, true)?),
        (Avro::LocalTimestampMillis(v), _) => Value::String(timestamp(*v, 1_000_000, false)?),
        (Avro::LocalTimestampMicros(v), _) => Value::String(timestamp(*v, 1_000, false)?),
        (Avro::LocalTimestampNanos(v), _) => Value::String(timestamp(*v, 1, false)?),
        (Avro::Uuid(u), _) => Value::String(u.to_string()),
        (Avro::Decimal(d), Schema::Decimal(ds)) => {
            let unscaled: num_bigint::BigInt = d.clone().into();
            Value::String(scaled(&unscaled.to_string(), ds.scale))
        }
        (Avro::Decimal(_), _) => return Err(permanent("Avro decimal without a decimal schema")),
        (Avro::BigDecimal(d), _) => Value::String(d.to_string()),
        (Avro::Duration(d), _) => serde_json::json!({
            "months": u32::from(d.months()),
            "days": u32::from(d.days()),
            "millis": u32::from(d.millis()),
        }),
        (Avro::Array(_) | Avro::Map(_) | Avro::Record(_), _) => {
            return Err(permanent("Avro value does not match its schema"));
        }
    })
}

/// `"-12345"` at scale 2 → `"-123.45"`.
pub(super) fn scaled(digits: &str, scale: usize) -> String {
    let (sign, digits) = digits.strip_prefix('-').map_or(("", digits), |d| ("-", d));
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

pub(super) fn time(micros: i64, digits: usize) -> Result<String, DecodeError> {
    let secs = u32::try_from(micros.div_euclid(1_000_000))
        .map_err(|_| permanent("Avro time out of range"))?;
    let nanos = u32::try_from(micros.rem_euclid(1_000_000) * 1_000)
        .map_err(|_| permanent("Avro time out of range"))?;
    let t = NaiveTime::from_num_seconds_from_midnight_opt(secs, nanos)
        .ok_or_else(|| permanent("Avro time out of range"))?;
    Ok(if digits == 3 {
        t.format("%H:%M:%S%.3f")
    } else {
        t.format("%H:%M:%S%.6f")
    }
    .to_string())
}

/// `value` in units of `nanos_per_unit` nanoseconds since the epoch.
pub(super) fn timestamp(value: i64, nanos_per_unit: i64, utc: bool) -> Result<String, DecodeError> {
    let nanos = i128::from(value) * i128::from(nanos_per_unit);
    let secs = i64::try_from(nanos.div_euclid(1_000_000_000))
        .map_err(|_| permanent("Avro timestamp out of range"))?;
    let sub = u32::try_from(nanos.rem_euclid(1_000_000_000))
        .map_err(|_| permanent("Avro timestamp out of range"))?;
    let t: DateTime<Utc> = DateTime::from_timestamp(secs, sub)
        .ok_or_else(|| permanent("Avro timestamp out of range"))?;
    let format = match nanos_per_unit {
        1_000_000 => "%Y-%m-%dT%H:%M:%S%.3f",
        1_000 => "%Y-%m-%dT%H:%M:%S%.6f",
        _ => "%Y-%m-%dT%H:%M:%S%.9f",
    };
    let text = t.format(format).to_string();
    Ok(if utc { format!("{text}Z") } else { text })
}
