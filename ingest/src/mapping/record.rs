//! One input row, read through a mapping: CSV splitting, JSON paths, and the conversions
//! of `type = ...`. Every failure is a message naming the field and the text found.

use std::borrow::Cow;
use std::collections::HashMap;

use chrono::NaiveDateTime;

use super::spec::{Conversion, Format};
use super::{Field, Mapping, OptionalField};
use crate::event::{Millis, Scenario};

/// A row converted to contract fields (before it becomes events).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// 1-based line number in the input (ids derive from it).
    pub line: u64,
    /// Event time, epoch ms.
    pub ts: Millis,
    /// The user.
    pub user_id: String,
    /// The value looked up in `[events]`.
    pub kind: String,
    /// The event's own id.
    pub event_id: Option<String>,
    /// The item.
    pub item_id: Option<String>,
    /// The item's category.
    pub category: Option<String>,
    /// The price at the event.
    pub price: Option<f64>,
    /// The session.
    pub session_id: Option<String>,
    /// The scenario.
    pub scenario: Option<Scenario>,
    /// The device.
    pub device: Option<String>,
    /// Rank in a list.
    pub position: Option<u32>,
    /// Search text.
    pub query: Option<String>,
    /// Units of an order line.
    pub quantity: Option<i64>,
}

/// Splits one CSV line. Fields may be double-quoted (a quote inside is written `""`);
/// unquoted fields are trimmed.
pub fn split_csv(line: &str, delimiter: char) -> Result<Vec<Cow<'_, str>>, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    let mut out = Vec::new();
    let mut rest = line;
    loop {
        let start = rest.trim_start();
        if let Some(quoted) = start.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => {
                        if quoted[i + 1..].starts_with('"') {
                            value.push('"');
                            chars.next();
                        } else {
                            break i + 1;
                        }
                    }
                    Some((_, c)) => value.push(c),
                    None => return Err("a quoted field is not closed".to_string()),
                }
            };
            out.push(Cow::Owned(value));
            let after = quoted[end..].trim_start();
            match after.chars().next() {
                None => return Ok(out),
                Some(c) if c == delimiter => rest = &after[c.len_utf8()..],
                Some(c) => return Err(format!("unexpected `{c}` after a quoted field")),
            }
        } else {
            match rest.find(delimiter) {
                Some(at) => {
                    out.push(Cow::Borrowed(rest[..at].trim()));
                    rest = &rest[at + delimiter.len_utf8()..];
                }
                None => {
                    out.push(Cow::Borrowed(rest.trim()));
                    return Ok(out);
                }
            }
        }
    }
}

/// Column name -> position, from `source.columns` or a header line.
pub fn header_index(columns: &[String]) -> HashMap<String, usize> {
    columns
        .iter()
        .enumerate()
        .map(|(i, c)| (c.clone(), i))
        .collect()
}

/// An input row before conversion.
pub enum Record<'a> {
    /// CSV fields and the column index.
    Csv(Vec<Cow<'a, str>>, &'a HashMap<String, usize>),
    /// A JSON object.
    Json(serde_json::Value),
}

impl Record<'_> {
    fn text(&self, path: &str) -> Option<Cow<'_, str>> {
        let text = match self {
            Record::Csv(fields, index) => Cow::Borrowed(fields.get(*index.get(path)?)?.as_ref()),
            Record::Json(value) => {
                let mut at = value;
                for key in path.split('.') {
                    at = at.get(key)?;
                }
                match at {
                    serde_json::Value::Null => return None,
                    serde_json::Value::String(s) => Cow::Borrowed(s.as_str()),
                    other => Cow::Owned(other.to_string()),
                }
            }
        };
        (!text.is_empty()).then_some(text)
    }
}

/// A converted field value.
enum Value {
    Text(String),
    Number(f64),
    Integer(i64),
    Millis(Millis),
}

impl Field {
    fn value(&self, record: &Record<'_>) -> Result<Option<Value>, String> {
        let found = self.paths.iter().find_map(|p| record.text(p));
        let text = match (found, &self.default) {
            (Some(t), _) => t,
            (None, Some(d)) => Cow::Borrowed(d.as_str()),
            (None, None) => return Ok(None),
        };
        let text = text.as_ref();
        let shown = || format!("{} `{text}`", self.describe());
        let number = || text.trim().parse::<f64>().ok().filter(|x| x.is_finite());
        let value = match self.conversion {
            Conversion::String => Value::Text(text.to_string()),
            Conversion::Digits => {
                if !text.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("{} is not a number", shown()));
                }
                Value::Text(text.to_string())
            }
            Conversion::Number => {
                Value::Number(number().ok_or_else(|| format!("{} is not a number", shown()))?)
            }
            Conversion::Integer => Value::Integer(
                text.trim()
                    .parse::<i64>()
                    .map_err(|_| format!("{} is not a whole number", shown()))?,
            ),
            Conversion::EpochS | Conversion::EpochMs | Conversion::EpochUs => {
                let (unit, per_ms) = match self.conversion {
                    Conversion::EpochS => ("epoch seconds", 1e-3),
                    Conversion::EpochMs => ("epoch milliseconds", 1.0),
                    _ => ("epoch microseconds", 1e3),
                };
                let bad = || format!("{} is not {unit}", shown());
                let ms = match text.trim().parse::<i64>() {
                    Ok(whole) => match self.conversion {
                        Conversion::EpochS => whole.saturating_mul(1000),
                        Conversion::EpochMs => whole,
                        _ => whole.div_euclid(1000),
                    },
                    Err(_) => {
                        let x = number().ok_or_else(bad)?;
                        let ms = (x / per_ms).floor();
                        if ms.abs() > 9.0e15 {
                            return Err(bad());
                        }
                        ms as Millis
                    }
                };
                Value::Millis(ms)
            }
            Conversion::Datetime => {
                let format = self.format.as_deref().unwrap_or_default();
                let at = NaiveDateTime::parse_from_str(text.trim(), format)
                    .map_err(|e| format!("{} does not match `{format}`: {e}", shown()))?;
                Value::Millis(at.and_utc().timestamp_millis())
            }
        };
        Ok(Some(value))
    }

    fn describe(&self) -> String {
        match &self.paths[..] {
            [one] if one == self.name => self.name.to_string(),
            [one] => format!("{} (from {one})", self.name),
            many => format!("{} (from {})", self.name, many.join(" or ")),
        }
    }

    fn required(&self, record: &Record<'_>) -> Result<Value, String> {
        self.value(record)?
            .ok_or_else(|| format!("{} is missing or empty", self.describe()))
    }
}

fn text_of(v: Value) -> String {
    match v {
        Value::Text(s) => s,
        Value::Number(x) => x.to_string(),
        Value::Integer(i) | Value::Millis(i) => i.to_string(),
    }
}

/// Why a row could not be converted, and the input field (its path) at fault if one is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// The path in the input (a CSV column or a dotted JSON path).
    pub field: Option<String>,
    /// What is wrong, naming the mapping's field and the text found.
    pub message: String,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for RowError {
    fn from(message: String) -> Self {
        Self {
            field: None,
            message,
        }
    }
}

impl Field {
    /// Attaches this field's input path to an error message.
    fn error(&self, message: String) -> RowError {
        RowError {
            field: self.paths.first().cloned(),
            message,
        }
    }
}

impl Mapping {
    /// The record of one input line (`index` names the CSV columns).
    pub fn record<'a>(
        &self,
        text: &'a str,
        index: &'a HashMap<String, usize>,
    ) -> Result<Record<'a>, RowError> {
        match self.spec.source.format {
            Format::Csv => {
                let fields = split_csv(text, self.spec.source.delimiter)?;
                if fields.len() != index.len() {
                    return Err(RowError::from(format!(
                        "expected {} {}-separated fields, found {}",
                        index.len(),
                        describe_delimiter(self.spec.source.delimiter),
                        fields.len()
                    )));
                }
                Ok(Record::Csv(fields, index))
            }
            Format::Jsonl => {
                let value: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| format!("not a JSON object: {e}"))?;
                if !value.is_object() {
                    return Err(RowError::from("not a JSON object".to_string()));
                }
                Ok(Record::Json(value))
            }
        }
    }

    /// Converts a record; the error names the field and the text found.
    pub fn row(&self, line: u64, record: &Record<'_>) -> Result<Row, RowError> {
        let required = |f: &Field| f.required(record).map_err(|m| f.error(m));
        let ts = match required(&self.time)? {
            Value::Millis(ms) => ms,
            _ => return Err(self.time.error("fields.time must convert to a time".into())),
        };
        let user_id = text_of(required(&self.user_id)?);
        let kind = text_of(required(&self.kind)?);
        if !self.spec.events.contains_key(&kind) {
            let known: Vec<&str> = self.spec.events.keys().map(String::as_str).collect();
            return Err(self.kind.error(format!(
                "{} `{kind}` is not one of {}",
                self.kind.describe(),
                known.join(", ")
            )));
        }
        let mut row = Row {
            line,
            ts,
            user_id,
            kind,
            event_id: None,
            item_id: None,
            category: None,
            price: None,
            session_id: None,
            scenario: None,
            device: None,
            position: None,
            query: None,
            quantity: None,
        };
        for (which, field) in &self.optional {
            fill(&mut row, *which, field, record).map_err(|m| field.error(m))?;
        }
        if row.item_id.is_none()
            && let Some(e) = self.spec.events[&row.kind]
                .iter()
                .find(|e| !e.emit.is_search())
        {
            let field = self.optional(OptionalField::ItemId);
            let message = format!(
                "{} is missing or empty (a `{}` row becomes `{}`, which needs an item)",
                field.map_or_else(|| "item_id".to_string(), Field::describe),
                row.kind,
                e.emit.as_str()
            );
            return Err(match field {
                Some(f) => f.error(message),
                None => message.into(),
            });
        }
        Ok(row)
    }
}

/// Sets one optional field of `row` from `record`.
fn fill(
    row: &mut Row,
    which: OptionalField,
    field: &Field,
    record: &Record<'_>,
) -> Result<(), String> {
    let Some(value) = field.value(record)? else {
        return Ok(());
    };
    match which {
        OptionalField::EventId => row.event_id = Some(text_of(value)),
        OptionalField::ItemId => row.item_id = Some(text_of(value)),
        OptionalField::Category => row.category = Some(text_of(value)),
        OptionalField::SessionId => row.session_id = Some(text_of(value)),
        OptionalField::Device => row.device = Some(text_of(value)),
        OptionalField::Query => row.query = Some(text_of(value)),
        OptionalField::Price => {
            row.price = Some(match value {
                Value::Number(x) => x,
                Value::Integer(i) => i as f64,
                other => {
                    let t = text_of(other);
                    t.trim()
                        .parse::<f64>()
                        .map_err(|_| format!("{} `{t}` is not a number", field.describe()))?
                }
            })
        }
        OptionalField::Position | OptionalField::Quantity => {
            let whole = match value {
                Value::Integer(i) => i,
                Value::Number(x) if x.fract() == 0.0 => x as i64,
                other => {
                    let t = text_of(other);
                    t.trim()
                        .parse::<i64>()
                        .map_err(|_| format!("{} `{t}` is not a whole number", field.describe()))?
                }
            };
            if which == OptionalField::Position {
                row.position =
                    Some(u32::try_from(whole).map_err(|_| {
                        format!("{} `{whole}` is not a rank >= 0", field.describe())
                    })?);
            } else {
                row.quantity = Some(whole);
            }
        }
        OptionalField::Scenario => {
            let t = text_of(value);
            let parsed = Scenario::ALL.into_iter().find(|s| s.as_str() == t);
            row.scenario = Some(parsed.ok_or_else(|| {
                format!(
                    "{} `{t}` is not a scenario (home_feed, search, product_detail, \
                             cart, push)",
                    field.describe()
                )
            })?);
        }
    }
    Ok(())
}

fn describe_delimiter(d: char) -> String {
    match d {
        ',' => "comma".to_string(),
        '\t' => "tab".to_string(),
        ';' => "semicolon".to_string(),
        other => format!("`{other}`"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn csv_splits_quotes_and_trims_bare_fields() {
        let got = split_csv(r#" a , "b, ""c""" ,,d"#, ',').unwrap();
        assert_eq!(got, vec!["a", "b, \"c\"", "", "d"]);
        assert!(split_csv(r#"a,"b"#, ',').is_err());
        assert!(split_csv(r#""a"x,b"#, ',').is_err());
        assert_eq!(split_csv("x\ty", '\t').unwrap(), vec!["x", "y"]);
    }

    fn mapping(extra_fields: &str) -> Mapping {
        let text = format!(
            r#"
            [source]
            format = "jsonl"
            [fields]
            time = {{ path = ["ts", "meta.time"], type = "epoch_ms" }}
            user_id = "who.id"
            kind = "what"
            item_id = "item"
            {extra_fields}
            [events]
            view = [{{ emit = "impression" }}, {{ emit = "click", after_ms = 1 }}]
            "#
        );
        Mapping::parse(&text, "test").unwrap()
    }

    fn row(m: &Mapping, json: &str) -> Result<Row, String> {
        let index = HashMap::new();
        let record = m.record(json, &index).map_err(|e| e.message)?;
        m.row(7, &record).map_err(|e| e.message)
    }

    #[test]
    fn nested_paths_fallbacks_and_conversions() {
        let m = mapping(
            r#"price = { path = "p", type = "number" }
            position = { path = "pos", type = "integer" }
            quantity = { path = "q", type = "integer", default = "2" }"#,
        );
        let r = row(
            &m,
            r#"{"meta":{"time":1700000000123},"who":{"id":42},"what":"view","item":"i1","p":"12.5","pos":3}"#,
        )
        .unwrap();
        assert_eq!(r.ts, 1_700_000_000_123);
        assert_eq!(r.user_id, "42");
        assert_eq!(r.price, Some(12.5));
        assert_eq!(r.position, Some(3));
        assert_eq!(r.quantity, Some(2));
        let e = row(&m, r#"{"ts":"soon","who":{"id":1},"what":"view"}"#).unwrap_err();
        assert!(
            e.contains("time (from ts or meta.time) `soon` is not epoch milliseconds"),
            "{e}"
        );
        let e = row(&m, r#"{"ts":1,"who":{"id":1},"what":"buy"}"#).unwrap_err();
        assert!(
            e.contains("kind (from what) `buy` is not one of view"),
            "{e}"
        );
        let e = row(&m, r#"{"ts":1,"what":"view"}"#).unwrap_err();
        assert!(e.contains("user_id (from who.id) is missing"), "{e}");
        let e = row(&m, r#"{"ts":1,"who":{"id":1},"what":"view","pos":-1}"#).unwrap_err();
        assert!(e.contains("is not a rank"), "{e}");
        assert!(row(&m, "[1,2]").unwrap_err().contains("not a JSON object"));
    }

    #[test]
    fn epochs_and_datetimes_convert_to_milliseconds() {
        let conv = |kind: &str, format: &str, text: &str| {
            let m = mapping("");
            let mut f = m.time.clone();
            f.conversion = match kind {
                "s" => Conversion::EpochS,
                "us" => Conversion::EpochUs,
                _ => Conversion::Datetime,
            };
            f.format = Some(format.to_string());
            let cols = header_index(&["t".to_string()]);
            f.paths = vec!["t".to_string()];
            match f.value(&Record::Csv(vec![Cow::Borrowed(text)], &cols)) {
                Ok(Some(Value::Millis(ms))) => Ok(ms),
                Ok(_) => Err("no time".to_string()),
                Err(e) => Err(e),
            }
        };
        assert_eq!(conv("s", "", "1511544070"), Ok(1_511_544_070_000));
        assert_eq!(conv("s", "", "1511544070.25"), Ok(1_511_544_070_250));
        assert_eq!(conv("us", "", "1511544070123456"), Ok(1_511_544_070_123));
        assert_eq!(
            conv("dt", "%Y-%m-%d %H:%M:%S UTC", "2019-10-01 02:44:11 UTC"),
            Ok(1_569_897_851_000)
        );
        assert!(conv("dt", "%Y-%m-%d %H:%M:%S UTC", "2019-10-01").is_err());
        assert!(conv("s", "", "1e300").is_err());
    }
}
