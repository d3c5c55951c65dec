//! Differences between a recorded event and its replay, field by field.

use serde::Serialize;
use serde_json::Value;

/// One field that differs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FieldDiff {
    /// The field's path (`action.peer`, `knowledge[0].score`).
    pub field: String,
    /// Its recorded value, as JSON.
    pub recorded: String,
    /// Its replayed value, as JSON.
    pub replayed: String,
}

/// The fields in which `recorded` and `replayed` differ, in field order. Empty when they are
/// equal as values (their encodings may still differ, by writer schema).
pub fn fields<T: Serialize>(recorded: &T, replayed: &T) -> Vec<FieldDiff> {
    let (Ok(a), Ok(b)) = (
        serde_json::to_value(recorded),
        serde_json::to_value(replayed),
    ) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    walk("", &a, &b, &mut out);
    out
}

fn walk(path: &str, a: &Value, b: &Value, out: &mut Vec<FieldDiff>) {
    let at = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let null = Value::Null;
                walk(
                    &at(k),
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                walk(&format!("{path}[{i}]"), p, q, out);
            }
        }
        _ if a != b => out.push(FieldDiff {
            field: path.to_owned(),
            recorded: a.to_string(),
            replayed: b.to_string(),
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_fields_are_named_by_path() {
        let a = serde_json::json!({"reason": "x", "action": {"peer": "n1", "k": [1, 2]}});
        let b = serde_json::json!({"reason": "y", "action": {"peer": "n1", "k": [1, 3]}});
        let d = fields(&a, &b);
        let names: Vec<&str> = d.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(names, ["action.k[1]", "reason"]);
        assert_eq!(d[1].recorded, "\"x\"");
    }
}
