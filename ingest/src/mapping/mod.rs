//! Declarative mappings from a shop's own event format to topic contract v1.
//!
//! A mapping is a TOML file (docs/mappings.md): how to read the input (CSV or JSON lines),
//! where each contract field comes from (renames, nested paths, fallbacks), how its text
//! converts (epoch s/ms/us, datetimes, numbers in strings), which value of a `kind` field
//! becomes which events (a view -> an impression and a click, a purchase -> a one-line
//! order), constants, and which rows make inventory snapshots.
//!
//! - [`spec`]: the file's schema, as users write it;
//! - [`Mapping::parse`]: reads and validates a file, reporting every problem at once;
//! - `record`: one input row and the conversions of its fields;
//! - `emit`: a converted row -> the contract messages it becomes;
//! - [`LiveMapping`]: a mapping on a live input topic (`[input.mapping]`), one message ->
//!   one event, checked by the contract decoder.
//!
//! Mappings for the public Taobao UserBehavior and REES46 logs ship with the binary
//! ([`builtin`]).

mod emit;
mod live;
mod record;
pub mod spec;

use std::fmt;

pub use emit::Emitter;
pub(crate) use emit::snapshot;
pub use live::{LiveMapping, load_live_mappings};
pub use record::{Record, Row, RowError, header_index, split_csv};
use spec::{Conversion, FieldSpec, Format, MappingSpec, Paths, SnapshotMode};

/// The mappings that ship with shopstream, by name.
pub const BUILTIN: [(&str, &str); 2] = [
    ("taobao", include_str!("../../mappings/taobao.toml")),
    ("rees46", include_str!("../../mappings/rees46.toml")),
];

/// The text of a built-in mapping.
pub fn builtin(name: &str) -> Option<&'static str> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// Everything wrong with a mapping file, each problem on its own line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct MappingError {
    /// Where the mapping came from (a path or a built-in name).
    pub origin: String,
    /// One line per problem.
    pub problems: Vec<String>,
}

impl fmt::Display for MappingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "mapping {} has {} problem(s); fix them and retry:",
            self.origin,
            self.problems.len()
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

/// One field, compiled: its paths (each split at dots for JSON), conversion and default.
#[derive(Debug, Clone)]
pub struct Field {
    /// The name in `[fields]`, for messages.
    pub name: &'static str,
    paths: Vec<String>,
    conversion: Conversion,
    format: Option<String>,
    default: Option<String>,
}

/// A parsed and validated mapping.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// The file as written.
    pub spec: MappingSpec,
    pub(crate) time: Field,
    pub(crate) user_id: Field,
    pub(crate) kind: Field,
    pub(crate) optional: Vec<(OptionalField, Field)>,
}

/// The optional contract fields a mapping may fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OptionalField {
    EventId,
    ItemId,
    Category,
    Price,
    SessionId,
    Scenario,
    Device,
    Position,
    Query,
    Quantity,
}

impl Mapping {
    /// Parses and validates a mapping; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, MappingError> {
        let error = |problems| MappingError {
            origin: origin.to_string(),
            problems,
        };
        let spec: MappingSpec = toml::from_str(text).map_err(|e| {
            error(vec![
                e.to_string().trim().replace('\n', "\n    ").to_string(),
            ])
        })?;
        let mut problems = Vec::new();
        let f = &spec.fields;
        let mut field = |name: &'static str, s: &FieldSpec| compile(name, s, &mut problems);
        let time = field("time", &f.time);
        let user_id = field("user_id", &f.user_id);
        let kind = field("kind", &f.kind);
        let mut optional = Vec::new();
        for (which, name, spec) in [
            (OptionalField::EventId, "event_id", &f.event_id),
            (OptionalField::ItemId, "item_id", &f.item_id),
            (OptionalField::Category, "category", &f.category),
            (OptionalField::Price, "price", &f.price),
            (OptionalField::SessionId, "session_id", &f.session_id),
            (OptionalField::Scenario, "scenario", &f.scenario),
            (OptionalField::Device, "device", &f.device),
            (OptionalField::Position, "position", &f.position),
            (OptionalField::Query, "query", &f.query),
            (OptionalField::Quantity, "quantity", &f.quantity),
        ] {
            if let Some(s) = spec {
                optional.push((which, field(name, s)));
            }
        }
        if !matches!(
            time.conversion,
            Conversion::EpochS | Conversion::EpochMs | Conversion::EpochUs | Conversion::Datetime
        ) {
            problems.push(
                "fields.time: type must be epoch_s, epoch_ms, epoch_us or datetime".to_string(),
            );
        }
        let source = &spec.source;
        match source.format {
            Format::Csv if !source.header && source.columns.is_empty() => problems.push(
                "source: a CSV needs `header = true` or a `columns` list naming its fields"
                    .to_string(),
            ),
            Format::Csv if source.header && !source.columns.is_empty() => problems.push(
                "source: `header = true` and `columns` exclude each other (the header names \
                 the columns)"
                    .to_string(),
            ),
            Format::Jsonl if source.header || !source.columns.is_empty() => problems.push(
                "source: `header` and `columns` are for CSV; JSON lines name their fields"
                    .to_string(),
            ),
            _ => {}
        }
        if source.format == Format::Csv && !source.columns.is_empty() {
            let all = [&time, &user_id, &kind]
                .into_iter()
                .chain(optional.iter().map(|(_, f)| f));
            for field in all {
                for path in &field.paths {
                    if !source.columns.contains(path) {
                        problems.push(format!(
                            "fields.{}: column `{path}` is not in source.columns {:?}",
                            field.name, source.columns
                        ));
                    }
                }
            }
        }
        if source.sort_run_rows == 0 {
            problems.push("source.sort_run_rows must be at least 1".to_string());
        }
        if spec.events.is_empty() {
            problems.push("[events] is empty: map at least one value of fields.kind".to_string());
        }
        let has = |which| optional.iter().any(|(w, _)| *w == which);
        for (value, emits) in &spec.events {
            if emits.is_empty() {
                problems.push(format!("events.{value:?} lists no event"));
            }
            if let Some(e) = emits.iter().find(|e| !e.emit.is_search())
                && !has(OptionalField::ItemId)
            {
                problems.push(format!(
                    "events.{value:?}: `{}` needs an item, but fields.item_id is not mapped",
                    e.emit.as_str()
                ));
            }
            for (n, e) in emits.iter().enumerate() {
                if emits[..n].iter().any(|earlier| earlier.emit == e.emit) {
                    problems.push(format!(
                        "events.{value:?}: `{}` is listed twice (its id would repeat)",
                        e.emit.as_str()
                    ));
                }
                if e.after_ms < 0 {
                    problems.push(format!("events.{value:?}: after_ms must not be negative"));
                }
            }
        }
        if spec.inventory.snapshots != SnapshotMode::None && !has(OptionalField::ItemId) {
            problems.push(
                "inventory.snapshots needs fields.item_id (snapshots are per item)".to_string(),
            );
        }
        if spec.defaults.currency.trim().is_empty() {
            problems.push("defaults.currency must not be empty".to_string());
        }
        if spec.defaults.quantity < 1 {
            problems.push("defaults.quantity must be at least 1".to_string());
        }
        if !problems.is_empty() {
            return Err(error(problems));
        }
        Ok(Self {
            spec,
            time,
            user_id,
            kind,
            optional,
        })
    }

    /// Every column or path the mapping reads, for checking a CSV header.
    pub fn paths(&self) -> Vec<(&'static str, &str)> {
        [&self.time, &self.user_id, &self.kind]
            .into_iter()
            .chain(self.optional.iter().map(|(_, f)| f))
            .flat_map(|f| f.paths.iter().map(move |p| (f.name, p.as_str())))
            .collect()
    }

    pub(crate) fn optional(&self, which: OptionalField) -> Option<&Field> {
        self.optional
            .iter()
            .find(|(w, _)| *w == which)
            .map(|(_, f)| f)
    }
}

fn compile(name: &'static str, spec: &FieldSpec, problems: &mut Vec<String>) -> Field {
    let (paths, conversion, format, default) = match spec {
        FieldSpec::Path(p) => (vec![p.clone()], Conversion::String, None, None),
        FieldSpec::Paths(ps) => (ps.clone(), Conversion::String, None, None),
        FieldSpec::Full(full) => (
            match &full.path {
                Paths::One(p) => vec![p.clone()],
                Paths::Many(ps) => ps.clone(),
            },
            full.kind,
            full.format.clone(),
            full.default.clone(),
        ),
    };
    if paths.is_empty() || paths.iter().any(|p| p.is_empty()) {
        problems.push(format!("fields.{name}: a path must not be empty"));
    }
    match (conversion, &format) {
        (Conversion::Datetime, None) => problems.push(format!(
            "fields.{name}: type = \"datetime\" needs a `format`, e.g. \"%Y-%m-%d %H:%M:%S UTC\""
        )),
        (Conversion::Datetime, Some(_)) | (_, None) => {}
        (_, Some(_)) => problems.push(format!(
            "fields.{name}: `format` applies only to type = \"datetime\""
        )),
    }
    Field {
        name,
        paths,
        conversion,
        format,
        default,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn builtin_mappings_are_valid() {
        for (name, text) in BUILTIN {
            if let Err(e) = Mapping::parse(text, name) {
                panic!("{e}");
            }
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
            [source]
            format = "csv"
            sort_run_rows = 0
            [fields]
            time = { path = "t", type = "string" }
            user_id = "u"
            kind = { path = "k", format = "%Y" }
            [events]
            view = [{ emit = "click" }]
            [inventory]
            snapshots = "on_change"
        "#;
        let e = Mapping::parse(text, "bad.toml").unwrap_err();
        let all = e.to_string();
        for needle in [
            "fields.time: type must be",
            "a CSV needs `header = true` or a `columns` list",
            "sort_run_rows must be at least 1",
            "`click` needs an item",
            "inventory.snapshots needs fields.item_id",
            "fields.kind: `format` applies only",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert_eq!(e.problems.len(), 6, "{all}");
    }

    #[test]
    fn unknown_keys_and_kinds_are_refused_with_their_place() {
        let text = r#"
            [source]
            format = "csv"
            header = true
            colour = "blue"
        "#;
        let e = Mapping::parse(text, "m.toml").unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
        let text = r#"
            [source]
            format = "csv"
            header = true
            [fields]
            time = { path = "t", type = "epoch_s" }
            user_id = "u"
            kind = "k"
            item_id = "i"
            [events]
            view = [{ emit = "glance" }]
        "#;
        let e = Mapping::parse(text, "m.toml").unwrap_err().to_string();
        assert!(e.contains("glance"), "{e}");
    }
}
