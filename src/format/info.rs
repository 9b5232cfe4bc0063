//! Format-specific facts for `info`, and the two ways qemu-img shows them:
//! indented `key: value` lines and a JSON object. Both tools (and any other
//! front end) render through here, so they cannot drift apart.

use serde_json::{Map, Value};

/// One value of the format-specific information.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InfoValue {
    Bool(bool),
    Int(u64),
    Str(String),
    List(Vec<InfoValue>),
    /// Named fields, in display order. Names are written with spaces
    /// ("lazy refcounts"); JSON turns them into dashes.
    Map(Vec<(String, InfoValue)>),
}

impl From<bool> for InfoValue {
    fn from(b: bool) -> Self {
        InfoValue::Bool(b)
    }
}

impl From<u64> for InfoValue {
    fn from(v: u64) -> Self {
        InfoValue::Int(v)
    }
}

impl From<&str> for InfoValue {
    fn from(s: &str) -> Self {
        InfoValue::Str(s.to_owned())
    }
}

impl From<String> for InfoValue {
    fn from(s: String) -> Self {
        InfoValue::Str(s)
    }
}

impl InfoValue {
    /// The JSON form (`--output=json`'s "format-specific" data).
    pub fn json(&self) -> Value {
        match self {
            InfoValue::Bool(b) => Value::Bool(*b),
            InfoValue::Int(v) => Value::from(*v),
            InfoValue::Str(s) => Value::String(s.clone()),
            InfoValue::List(l) => Value::Array(l.iter().map(InfoValue::json).collect()),
            InfoValue::Map(m) => fields_json(m),
        }
    }

    fn scalar(&self) -> Option<String> {
        match self {
            InfoValue::Bool(b) => Some(b.to_string()),
            InfoValue::Int(v) => Some(v.to_string()),
            InfoValue::Str(s) => Some(s.clone()),
            _ => None,
        }
    }
}

/// Fields as a JSON object.
pub fn fields_json(fields: &[(String, InfoValue)]) -> Value {
    let mut m = Map::new();
    for (k, v) in fields {
        m.insert(k.replace(' ', "-"), v.json());
    }
    Value::Object(m)
}

/// Fields as qemu-img prints them under "Format specific information:":
/// `key: value` at `indent` spaces; a list or map value on the lines below,
/// four spaces deeper, list items as `[i]:`.
pub fn fields_human(fields: &[(String, InfoValue)], indent: usize) -> String {
    let mut out = String::new();
    for (k, v) in fields {
        entry(&mut out, k, v, indent);
    }
    out
}

fn entry(out: &mut String, key: &str, v: &InfoValue, indent: usize) {
    let pad = " ".repeat(indent);
    match (v.scalar(), v) {
        (Some(s), _) => out.push_str(&format!("{pad}{key}: {s}\n")),
        (None, InfoValue::List(items)) => {
            out.push_str(&format!("{pad}{key}:\n"));
            for (i, item) in items.iter().enumerate() {
                entry(out, &format!("[{i}]"), item, indent + 4);
            }
        }
        (None, InfoValue::Map(m)) => {
            out.push_str(&format!("{pad}{key}:\n"));
            out.push_str(&fields_human(m, indent + 4));
        }
        (None, _) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_lists_render_as_qemu_img() {
        let f = vec![
            ("compat".to_string(), InfoValue::from("1.1")),
            (
                "bitmaps".to_string(),
                InfoValue::List(vec![InfoValue::Map(vec![
                    ("flags".into(), InfoValue::List(vec!["auto".into()])),
                    ("name".into(), "b0".into()),
                    ("granularity".into(), 65536u64.into()),
                ])]),
            ),
            ("refcount bits".to_string(), 16u64.into()),
        ];
        assert_eq!(
            fields_human(&f, 4),
            "    compat: 1.1\n    bitmaps:\n        [0]:\n            flags:\n                \
             [0]: auto\n            name: b0\n            granularity: 65536\n    \
             refcount bits: 16\n"
        );
        assert_eq!(
            fields_json(&f).to_string(),
            r#"{"compat":"1.1","bitmaps":[{"flags":["auto"],"name":"b0","granularity":65536}],"refcount-bits":16}"#
        );
    }
}
