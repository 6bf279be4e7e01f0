//! Classification masking, as aether's `get_mask_from_schema`, extended to nested records.
//!
//! Fields of Avro records that carry the annotation (default `aetherMaskingLevel`) are classified at a level.
//! With `levels` ordered from least to most sensitive, a classified field is removed from the message when the
//! index of its level is greater than the index of `emit_level`; when `emit_level` is not in `levels`, every
//! classified field is removed. Unannotated fields are always kept. A level that is not in `levels` is a
//! configuration error, never a silent keep. Levels compare as JSON values (numbers by value).
//!
//! Beyond aether: fields of nested records are masked too, wherever a record sits: a field's type, an array
//! or map of records, or a union branch. A union with several record branches is masked with every branch's
//! rules, so a classified field can never slip through by matching the wrong branch.
//!
//! The schema is compiled once into a tree of removals; applying it walks the message, not the schema.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use apache_avro::Schema;
use apache_avro::schema::{Name, ResolvedSchema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::filter::{all_topics, json_eq};
use crate::message::Message;

pub const DEFAULT_ANNOTATION: &str = "aetherMaskingLevel";

/// One `[[mask]]` section: the default (`topics` absent or `["*"]`) or a per-topic override.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MaskConfig {
    /// Topic names or globs this mask applies to (default `*`).
    #[serde(default = "all_topics")]
    pub topics: Vec<String>,
    /// The schema annotation that holds a field's level.
    #[serde(default = "default_annotation")]
    pub annotation: String,
    /// Least sensitive first.
    #[schemars(example = ["public", "confidential", "secret"])]
    pub levels: Vec<Value>,
    /// The most sensitive level a row may hold; fields above it are emitted as null.
    #[schemars(example = &"confidential")]
    pub emit_level: Value,
    /// An Avro schema (.avsc) that classifies the fields of JSON messages.
    #[serde(default)]
    #[schemars(example = &"schemas/planet.avsc")]
    pub schema: Option<PathBuf>,
}

fn default_annotation() -> String {
    DEFAULT_ANNOTATION.to_string()
}

/// Where records sit inside a value, for the parts of a schema that can hold classified fields.
#[derive(Debug, Clone)]
enum Shape {
    Record(usize),
    Array(Box<Shape>),
    Map(Box<Shape>),
    Union(Vec<Shape>),
}

#[derive(Debug, Default)]
struct RecordMask {
    /// The record's name path, for listings.
    at: String,
    remove: Vec<String>,
    nested: Vec<(String, Shape)>,
}

/// A `[[mask]]` section ready for messages: compiled once from its schema file, or, without one, once per
/// writer schema of the Avro messages it meets.
#[derive(Debug)]
pub struct MaskRule {
    cfg: MaskConfig,
    fixed: Option<Arc<Mask>>,
    /// Masks by the writer schema's canonical form, up to [`MAX_SCHEMA_BYTES`] of forms: a producer whose
    /// container files each carry a schema of their own must not grow it for as long as the process runs.
    by_schema: Mutex<(HashMap<String, Built>, usize)>,
    /// The masks of the writer schemas met last, by the schema's allocation. A registry or configured schema
    /// is one `Arc` for all its messages, so they find their mask here without writing the schema's canonical
    /// form, a JSON text of the whole schema, for every record (benchmark `decode/bytes/avro-writer-mask`). Each
    /// entry holds its `Arc`, so its address
    /// cannot be another schema's while it is here. A container file's schema is its own per record: it
    /// goes by the canonical form, and is not kept here (see [`MaskRule::mask_for`]).
    recent: Mutex<Vec<(Arc<Schema>, Built)>>,
}

/// A schema's mask, or why the schema makes none.
type Built = Result<Arc<Mask>, String>;

/// A cache's lock: a thread that panicked holding it left it whole (every write is one insert or push).
fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The most bytes of canonical forms [`MaskRule`] keeps masks by; past it, it forgets them all and starts
/// again (a registry's schemas are a few KB each: thousands fit).
const MAX_SCHEMA_BYTES: usize = 4 << 20;

/// How many schemas [`MaskRule`] keeps by address: a batch's topics' writer schemas, a few versions each.
const RECENT_SCHEMAS: usize = 16;

impl MaskRule {
    pub fn new(cfg: MaskConfig, fixed: Option<Mask>) -> Self {
        Self {
            cfg,
            fixed: fixed.map(Arc::new),
            by_schema: Mutex::new((HashMap::new(), 0)),
            recent: Mutex::new(Vec::with_capacity(RECENT_SCHEMAS)),
        }
    }

    /// The mask for a message described by `schema` (Avro messages), or the configured one. `Err` says why the
    /// message cannot be masked; it must then not be applied. A schema is remembered by its address only while
    /// something besides the caller holds it (a registry, a schema file): the caller's own copy is taken to be
    /// gone after the call.
    pub fn mask_for(&self, schema: Option<&Arc<Schema>>) -> Result<Arc<Mask>, String> {
        if let Some(mask) = &self.fixed {
            return Ok(Arc::clone(mask));
        }
        let Some(schema) = schema else {
            return Err(
                "no schema classifies this message: give the [[mask]] a schema for JSON values"
                    .into(),
            );
        };
        let known = locked(&self.recent)
            .iter()
            .find(|(s, _)| Arc::ptr_eq(s, schema))
            .map(|(_, mask)| mask.clone());
        if let Some(mask) = known {
            return mask;
        }
        let key = schema.canonical_form();
        let mut cache = locked(&self.by_schema);
        let (masks, bytes) = &mut *cache;
        let mask = match masks.get(&key) {
            Some(mask) => mask.clone(),
            None => {
                if *bytes + key.len() > MAX_SCHEMA_BYTES {
                    masks.clear();
                    *bytes = 0;
                }
                let mask = Mask::build(&self.cfg, schema)
                    .map(Arc::new)
                    .map_err(|p| format!("mask: {}", p.join("; ")));
                *bytes += key.len();
                masks.insert(key, mask.clone());
                mask
            }
        };
        drop(cache);
        // A schema no one else holds cannot come back at this address: the pipeline hands over a container
        // file's, parsed for this record and dropped after it, while a registry or schema file keeps its own
        // `Arc`. Kept here, such schemas would only push out the ones that do come back.
        if Arc::strong_count(schema) == 1 {
            return mask;
        }
        let mut recent = locked(&self.recent);
        if recent.len() == RECENT_SCHEMAS {
            drop(recent.remove(0));
        }
        recent.push((Arc::clone(schema), mask.clone()));
        mask
    }
}

/// A compiled mask.
#[derive(Debug)]
pub struct Mask {
    records: Vec<RecordMask>,
    root: Option<Shape>,
    /// Fields of the schema that carry the annotation, at any level: none means the mask can classify nothing.
    classified: usize,
}

struct Builder<'a> {
    cfg: &'a MaskConfig,
    levels: Vec<Message<'static>>,
    emit: Option<usize>,
    names: HashMap<Name, &'a Schema>,
    index: HashMap<Name, usize>,
    records: Vec<RecordMask>,
    problems: Vec<String>,
    classified: usize,
}

impl Mask {
    /// Compiles `schema`'s classification under `cfg`, or lists every field whose level is not in `levels`.
    pub fn build(cfg: &MaskConfig, schema: &Schema) -> Result<Self, Vec<String>> {
        let names = match ResolvedSchema::try_from(schema) {
            Ok(resolved) => resolved
                .get_names()
                .iter()
                .map(|(n, s)| (n.clone(), *s))
                .collect(),
            Err(e) => return Err(vec![format!("schema: {e}")]),
        };
        let levels: Vec<Message<'static>> = cfg.levels.iter().cloned().map(Message::from).collect();
        let emit_level = Message::from(cfg.emit_level.clone());
        let mut b = Builder {
            cfg,
            emit: levels.iter().position(|l| json_eq(l, &emit_level)),
            levels,
            names,
            index: HashMap::new(),
            records: Vec::new(),
            problems: Vec::new(),
            classified: 0,
        };
        let root = b.shape(schema, "");
        if b.problems.is_empty() {
            Ok(Self {
                records: b.records,
                root,
                classified: b.classified,
            })
        } else {
            Err(b.problems)
        }
    }

    /// Removes every field the emit level does not allow, at every depth.
    pub fn apply(&self, message: &mut Message<'_>) {
        if let Some(root) = &self.root {
            self.apply_shape(root, message);
        }
    }

    /// No field of the schema carries the annotation: under this mask every value goes through whole, so a
    /// misspelt annotation or a schema without classification would let every sensitive field into the table.
    pub fn classifies_nothing(&self) -> bool {
        self.classified == 0
    }

    /// Why a mask that classifies nothing is a configuration error, for `at` (the `[[mask]]` and its schema).
    pub fn classifies_nothing_problem(cfg: &MaskConfig) -> String {
        format!(
            "no field of the schema carries the annotation {:?}, so this mask can classify nothing and every \
             field would reach the table: check the annotation's name, or the schema",
            cfg.annotation
        )
    }

    pub fn removes_nothing(&self) -> bool {
        self.records.iter().all(|r| r.remove.is_empty())
    }

    /// Dotted paths of the fields this mask removes (record name, then field names).
    pub fn removed_fields(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .records
            .iter()
            .flat_map(|r| r.remove.iter().map(move |f| format!("{}.{f}", r.at)))
            .collect();
        out.sort();
        out
    }

    fn apply_shape(&self, shape: &Shape, value: &mut Message<'_>) {
        match (shape, value) {
            (Shape::Record(i), Message::Object(map)) => {
                let record = &self.records[*i];
                for field in &record.remove {
                    map.remove(field);
                }
                for (field, inner) in &record.nested {
                    if let Some(v) = map.get_mut(field) {
                        self.apply_shape(inner, v);
                    }
                }
            }
            (Shape::Array(inner), Message::Array(items)) => {
                items.iter_mut().for_each(|v| self.apply_shape(inner, v))
            }
            (Shape::Map(inner), Message::Object(map)) => {
                map.values_mut().for_each(|v| self.apply_shape(inner, v))
            }
            (Shape::Union(branches), v) => branches.iter().for_each(|b| self.apply_shape(b, v)),
            _ => {}
        }
    }
}

impl Builder<'_> {
    fn shape(&mut self, schema: &Schema, at: &str) -> Option<Shape> {
        match schema {
            Schema::Record(record) => Some(Shape::Record(self.record(record, at))),
            Schema::Ref { name } => {
                let target = *self.names.get(name)?;
                self.shape(target, at)
            }
            Schema::Array(a) => self.shape(&a.items, at).map(|s| Shape::Array(Box::new(s))),
            Schema::Map(m) => self.shape(&m.types, at).map(|s| Shape::Map(Box::new(s))),
            Schema::Union(u) => {
                let mut shapes: Vec<Shape> = u
                    .variants()
                    .iter()
                    .filter_map(|v| self.shape(v, at))
                    .collect();
                match shapes.len() {
                    0 => None,
                    1 => shapes.pop(),
                    _ => Some(Shape::Union(shapes)),
                }
            }
            _ => None,
        }
    }

    fn record(&mut self, record: &apache_avro::schema::RecordSchema, at: &str) -> usize {
        if let Some(&i) = self.index.get(&record.name) {
            return i; // seen before, or recursive: compiled once
        }
        let i = self.records.len();
        let here = if at.is_empty() {
            record.name.name().to_string()
        } else {
            at.to_string()
        };
        self.records.push(RecordMask {
            at: here.clone(),
            ..RecordMask::default()
        });
        self.index.insert(record.name.clone(), i);
        let mut remove = Vec::new();
        let mut nested = Vec::new();
        for field in &record.fields {
            let path = format!("{here}.{}", field.name);
            if let Some(level) = field.custom_attributes.get(&self.cfg.annotation) {
                self.classified += 1;
                let at_level = Message::from(level.clone());
                match self.levels.iter().position(|l| json_eq(l, &at_level)) {
                    None => self.problems.push(format!(
                        "field {path}: {} {level} is not one of levels {}",
                        self.cfg.annotation,
                        Value::Array(self.cfg.levels.clone())
                    )),
                    Some(pos) if self.emit.is_none_or(|emit| pos > emit) => {
                        remove.push(field.name.clone());
                        continue;
                    }
                    Some(_) => {}
                }
            }
            if let Some(shape) = self.shape(&field.schema, &path) {
                nested.push((field.name.clone(), shape));
            }
        }
        self.records[i].remove = remove;
        self.records[i].nested = nested;
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A record with one field per level of a taxonomy, plus an unannotated field.
    fn schema(levels: &[Value]) -> Schema {
        let mut fields = vec![json!({"name": "id", "type": "string"})];
        for (i, l) in levels.iter().enumerate() {
            fields
                .push(json!({"name": format!("f{i}"), "type": "string", "aetherMaskingLevel": l}));
        }
        Schema::parse(&json!({"type": "record", "name": "Person", "fields": fields})).unwrap()
    }

    fn message(n: usize) -> Message<'static> {
        let mut m = serde_json::Map::new();
        m.insert("id".into(), json!("x"));
        for i in 0..n {
            m.insert(format!("f{i}"), json!(format!("v{i}")));
        }
        Message::from(Value::Object(m))
    }

    fn config(levels: &[Value], emit: Value) -> MaskConfig {
        MaskConfig {
            topics: all_topics(),
            annotation: DEFAULT_ANNOTATION.into(),
            levels: levels.to_vec(),
            emit_level: emit,
            schema: None,
        }
    }

    fn kept(levels: &[Value], emit: Value) -> Vec<String> {
        let mask = Mask::build(&config(levels, emit), &schema(levels)).unwrap();
        let mut m = message(levels.len());
        mask.apply(&mut m);
        m.as_object().unwrap().keys().map(str::to_string).collect()
    }

    /// aether's matrix: every emit level × two taxonomies; a field stays iff its level ≤ the emit level.
    #[test]
    fn every_emit_level_of_two_taxonomies() {
        let numbers: Vec<Value> = (0..=5).map(|n| json!(n)).collect();
        let words: Vec<Value> = ["public", "confidential", "secret", "top secret", "ufos"]
            .iter()
            .map(|w| json!(w))
            .collect();
        for levels in [numbers, words] {
            for (e, emit) in levels.iter().enumerate() {
                let expected: Vec<String> = std::iter::once("id".to_string())
                    .chain((0..=e).map(|i| format!("f{i}")))
                    .collect();
                assert_eq!(kept(&levels, emit.clone()), expected, "emit level {emit}");
            }
            // Off the scale: no classified field is emitted.
            assert_eq!(kept(&levels, json!("cosmic")), vec!["id"]);
        }
    }

    /// A schema met again as the same `Arc` gets its mask by address; an equal schema in another `Arc` (a
    /// container file's, parsed per record) by its canonical form, the same mask, without being kept by
    /// address; a schema without a mask, its error either way; and the schemas kept by address are bounded.
    #[test]
    fn masks_are_found_by_schema_address_then_by_canonical_form() {
        let levels = [json!("public"), json!("secret")];
        let rule = MaskRule::new(config(&levels, json!("public")), None);
        let by_address =
            |s: &Arc<Schema>| locked(&rule.recent).iter().any(|(r, _)| Arc::ptr_eq(r, s));
        // As a registry keeps a schema: one `Arc` for all its messages, held between them.
        let person = Arc::new(schema(&levels));
        let registry = vec![Arc::clone(&person)];
        let first = rule.mask_for(Some(&person)).unwrap();
        assert!(by_address(&person));
        let again = rule.mask_for(Some(&person)).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        // As a container file's: its own `Arc`, which only this message holds.
        let equal = Arc::new(schema(&levels));
        assert!(Arc::ptr_eq(&first, &rule.mask_for(Some(&equal)).unwrap()));
        assert!(!by_address(&equal) && by_address(&person));
        let mut m = message(2);
        again.apply(&mut m);
        assert_eq!(
            m.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["id", "f0"]
        );
        let unknown = Arc::new(
            Schema::parse(&json!({"type": "record", "name": "P", "fields": [
                {"name": "ssn", "type": "string", "aetherMaskingLevel": "restricted"}]}))
            .unwrap(),
        );
        let err = rule.mask_for(Some(&unknown)).unwrap_err();
        assert!(err.contains("\"restricted\""), "{err}");
        assert_eq!(rule.mask_for(Some(&unknown)).unwrap_err(), err);
        assert!(
            rule.mask_for(None)
                .unwrap_err()
                .contains("no schema classifies")
        );
        let many: Vec<Arc<Schema>> = (0..RECENT_SCHEMAS + 4)
            .map(|_| Arc::new(schema(&levels)))
            .collect();
        let _registry: Vec<Arc<Schema>> = registry.into_iter().chain(many.clone()).collect();
        for s in &many {
            assert!(Arc::ptr_eq(&first, &rule.mask_for(Some(s)).unwrap()));
        }
        let recent = locked(&rule.recent);
        assert_eq!(recent.len(), RECENT_SCHEMAS);
        assert!(Arc::ptr_eq(
            &recent[RECENT_SCHEMAS - 1].0,
            &many[many.len() - 1]
        ));
        assert_eq!(locked(&rule.by_schema).0.len(), 2);
    }

    /// Schemas that are all different (a producer's container files, each with its own) keep the masks by
    /// canonical form under their bound: the cache starts again instead of growing, and still answers.
    #[test]
    fn masks_by_canonical_form_stay_under_their_bound() {
        let levels = [json!("public"), json!("secret")];
        let rule = MaskRule::new(config(&levels, json!("public")), None);
        // A field name is part of the canonical form (a doc is not): 64 KiB of it make each form that large.
        let pad = format!("pad{}", "x".repeat(64 * 1024));
        let distinct = |i: usize| {
            let fields = vec![
                json!({"name": pad, "type": "string"}),
                json!({"name": format!("f{i}"), "type": "string", "aetherMaskingLevel": "secret"}),
            ];
            Arc::new(
                Schema::parse(&json!({"type": "record", "name": "P", "fields": fields})).unwrap(),
            )
        };
        let form = distinct(0).canonical_form().len();
        assert!(form > 64 * 1024, "{form}");
        let fit = MAX_SCHEMA_BYTES / form;
        for i in 0..fit * 3 {
            let mask = rule.mask_for(Some(&distinct(i))).unwrap();
            let mut m = Message::from(json!({"id": "x", format!("f{i}"): "secret"}));
            mask.apply(&mut m);
            assert_eq!(m.as_object().unwrap().len(), 1, "{i}");
            let (masks, bytes) = &*locked(&rule.by_schema);
            assert!(
                *bytes <= MAX_SCHEMA_BYTES && masks.len() <= fit,
                "{i}: {bytes}"
            );
        }
    }

    #[test]
    fn levels_compare_as_json_values() {
        let levels = vec![json!(0), json!(1), json!(2)];
        assert_eq!(kept(&levels, json!(1.0)), vec!["id", "f0", "f1"]);
        assert_eq!(
            kept(&levels, json!("1")),
            vec!["id"],
            "\"1\" is not 1: off the scale"
        );
    }

    #[test]
    fn unknown_level_is_an_error_naming_field_and_level() {
        let schema = Schema::parse(&json!({"type": "record", "name": "P", "fields": [
            {"name": "ssn", "type": "string", "aetherMaskingLevel": "restricted"}]}))
        .unwrap();
        let err = Mask::build(
            &config(&[json!("public"), json!("secret")], json!("public")),
            &schema,
        )
        .unwrap_err();
        assert_eq!(err.len(), 1);
        assert!(
            err[0].contains("field P.ssn") && err[0].contains("\"restricted\""),
            "{err:?}"
        );
    }

    #[test]
    fn nested_records_are_masked_field_by_field() {
        let address = json!({"type": "record", "name": "Address", "fields": [
            {"name": "city", "type": "string"},
            {"name": "street", "type": "string", "aetherMaskingLevel": "secret"}]});
        let schema = Schema::parse(&json!({"type": "record", "name": "Customer", "fields": [
            {"name": "name", "type": "string"},
            {"name": "home", "type": address},
            {"name": "work", "type": ["null", "Address"]},
            {"name": "previous", "type": {"type": "array", "items": "Address"}},
            {"name": "byLabel", "type": {"type": "map", "values": "Address"}},
            {"name": "ssn", "type": "string", "aetherMaskingLevel": "secret"}]}))
        .unwrap();
        let mask = Mask::build(
            &config(&[json!("public"), json!("secret")], json!("public")),
            &schema,
        )
        .unwrap();
        let a = || json!({"city": "Oslo", "street": "Karl Johans gate 1"});
        let mut m = Message::from(
            json!({"name": "N", "home": a(), "work": a(), "previous": [a(), a()], "byLabel": {"x": a()},
            "ssn": "123"}),
        );
        mask.apply(&mut m);
        let c = json!({"city": "Oslo"});
        assert_eq!(
            m,
            json!({"name": "N", "home": c, "work": c, "previous": [c, c], "byLabel": {"x": c}})
        );
        let mut with_null = Message::from(
            json!({"name": "N", "home": a(), "work": null, "previous": [], "byLabel": {}}),
        );
        mask.apply(&mut with_null);
        assert_eq!(with_null["work"], Value::Null);
        assert_eq!(
            mask.removed_fields(),
            vec!["Customer.home.street", "Customer.ssn"]
        );
        assert!(!mask.removes_nothing());
        let open = Mask::build(
            &config(&[json!("public"), json!("secret")], json!("secret")),
            &schema,
        )
        .unwrap();
        assert!(open.removes_nothing());
    }

    #[test]
    fn recursive_schemas_compile_and_apply() {
        let schema = Schema::parse(&json!({"type": "record", "name": "Node", "fields": [
            {"name": "label", "type": "string", "aetherMaskingLevel": 1},
            {"name": "next", "type": ["null", "Node"]}]}))
        .unwrap();
        let mask = Mask::build(&config(&[json!(0), json!(1)], json!(0)), &schema).unwrap();
        let mut m = Message::from(
            json!({"label": "a", "next": {"label": "b", "next": {"label": "c", "next": null}}}),
        );
        mask.apply(&mut m);
        assert_eq!(m, json!({"next": {"next": {"next": null}}}));
    }

    #[test]
    fn a_custom_annotation() {
        let schema = Schema::parse(&json!({"type": "record", "name": "P", "fields": [
            {"name": "a", "type": "string", "classification": "high"},
            {"name": "b", "type": "string", "aetherMaskingLevel": "high"}]}))
        .unwrap();
        let mut cfg = config(&[json!("low"), json!("high")], json!("low"));
        cfg.annotation = "classification".into();
        let mut m = Message::from(json!({"a": 1, "b": 2}));
        Mask::build(&cfg, &schema).unwrap().apply(&mut m);
        assert_eq!(m, json!({"b": 2}));
    }
}
