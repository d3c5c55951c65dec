//! Schema fingerprints as the Avro specification defines them.
//!
//! A single-object message names its writer's schema by the CRC-64-AVRO fingerprint of the
//! schema's Parsing Canonical Form. Both are computed here from the schema's JSON text, by the
//! specification's rules, so that mapek names each schema with the same number as Java's
//! `SchemaNormalization.parsingFingerprint64`, fastavro and every other implementation that
//! follows it:
//!
//! - PRIMITIVES: a primitive is written by its name alone, `"long"`, whatever other attributes
//!   it carries (a logical type among them);
//! - FULLNAMES: names are written in full, with the namespace that applies to them;
//! - STRIP: only `type`, `name`, `fields`, `symbols`, `items`, `values` and `size` are kept;
//! - ORDER: in that order;
//! - STRINGS, INTEGERS, WHITESPACE: strings unescaped where JSON allows, integers bare, no
//!   whitespace outside strings.
//!
//! [`Form::LogicalTypesKept`] is the form that apache-avro up to 0.22 and Python's `avro`
//! package 1.12 compute (AVRO-4004): a primitive carrying a logical type is written as
//! `{"type":"long"}`. mapek wrote that form's fingerprint before it computed its own, so
//! readers still accept it for the schema versions of that time (ADR 0015).

use serde_json::{Map, Value};

/// Which canonical form to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// The specification's Parsing Canonical Form: what every writer writes.
    Specification,
    /// The specification's form except that a primitive with a logical type is written as
    /// `{"type":"<primitive>"}`: what older writers wrote, read for compatibility.
    LogicalTypesKept,
}

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// The canonical form of the schema `json` (the text of an `.avsc` file).
pub fn canonical_form(json: &str, form: Form) -> Result<String, String> {
    let schema: Value =
        serde_json::from_str(json).map_err(|e| format!("not a JSON schema: {e}"))?;
    let mut out = String::with_capacity(json.len() / 2);
    write(&schema, "", form, &mut out)?;
    Ok(out)
}

/// The CRC-64-AVRO fingerprint of a canonical form, as the number Java's
/// `parsingFingerprint64` returns (reinterpreted unsigned). A message carries it
/// little-endian.
pub fn fingerprint(canonical: &str) -> u64 {
    canonical.bytes().fold(EMPTY, |fp, b| {
        (fp >> 8) ^ TABLE[((fp ^ u64::from(b)) & 0xff) as usize]
    })
}

/// The fingerprint of the empty string: the specification's starting value.
const EMPTY: u64 = 0xc15d_213a_a4d7_a795;

/// The specification's 256-entry table, built at compile time.
const TABLE: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut fp = i as u64;
        let mut bit = 0;
        while bit < 8 {
            fp = (fp >> 1) ^ (EMPTY & (0u64.wrapping_sub(fp & 1)));
            bit += 1;
        }
        table[i] = fp;
        i += 1;
    }
    table
};

fn write(schema: &Value, namespace: &str, form: Form, out: &mut String) -> Result<(), String> {
    match schema {
        Value::String(name) => push_str(out, &full_name(name, namespace)),
        Value::Array(branches) => list(out, branches, |out, b| write(b, namespace, form, out))?,
        Value::Object(attrs) => write_object(attrs, namespace, form, out)?,
        other => return Err(format!("{other} is not a schema")),
    }
    Ok(())
}

fn write_object(
    attrs: &Map<String, Value>,
    namespace: &str,
    form: Form,
    out: &mut String,
) -> Result<(), String> {
    let kind = match attrs.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        Some(nested @ (Value::Object(_) | Value::Array(_))) => {
            return write(nested, namespace, form, out);
        }
        _ => return Err(format!("{} has no type", Value::Object(attrs.clone()))),
    };
    match kind {
        "record" | "error" => write_record(attrs, namespace, form, out)?,
        "enum" => {
            let (full, _) = named(attrs, namespace)?;
            open_named(out, &full, "enum");
            out.push_str(",\"symbols\":");
            list(out, array(attrs, "symbols")?, |out, symbol| {
                let symbol = symbol.as_str().ok_or("an enum symbol is not a string")?;
                push_str(out, symbol);
                Ok(())
            })?;
            out.push('}');
        }
        "fixed" => {
            let (full, _) = named(attrs, namespace)?;
            let size = attrs
                .get("size")
                .and_then(size_of)
                .ok_or("fixed needs a size")?;
            open_named(out, &full, "fixed");
            out.push_str(&format!(",\"size\":{size}}}"));
        }
        "array" | "map" => {
            let key = if kind == "array" { "items" } else { "values" };
            let inner = attrs.get(key).ok_or(format!("{kind} needs {key}"))?;
            out.push_str(&format!("{{\"type\":\"{kind}\",\"{key}\":"));
            write(inner, namespace, form, out)?;
            out.push('}');
        }
        primitive if PRIMITIVES.contains(&primitive) => {
            if form == Form::LogicalTypesKept && attrs.contains_key("logicalType") {
                out.push_str(&format!("{{\"type\":\"{primitive}\"}}"));
            } else {
                push_str(out, primitive);
            }
        }
        reference => push_str(out, &full_name(reference, namespace)),
    }
    Ok(())
}

fn write_record(
    attrs: &Map<String, Value>,
    namespace: &str,
    form: Form,
    out: &mut String,
) -> Result<(), String> {
    let (full, inner) = named(attrs, namespace)?;
    open_named(out, &full, "record");
    out.push_str(",\"fields\":");
    list(out, array(attrs, "fields")?, |out, field| {
        let name = field.get("name").and_then(Value::as_str);
        let (Some(name), Some(ty)) = (name, field.get("type")) else {
            return Err(format!("field {field} needs a name and a type"));
        };
        out.push_str("{\"name\":");
        push_str(out, name);
        out.push_str(",\"type\":");
        write(ty, &inner, form, out)?;
        out.push('}');
        Ok(())
    })?;
    out.push('}');
    Ok(())
}

/// `[a,b,…]`, each item written by `each`.
fn list(
    out: &mut String,
    items: &[Value],
    mut each: impl FnMut(&mut String, &Value) -> Result<(), String>,
) -> Result<(), String> {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        each(out, item)?;
    }
    out.push(']');
    Ok(())
}

/// The full name of a named type defined by `attrs`, and the namespace its children inherit.
fn named(attrs: &Map<String, Value>, enclosing: &str) -> Result<(String, String), String> {
    let name = attrs
        .get("name")
        .and_then(Value::as_str)
        .ok_or("a named type has no name")?;
    let namespace = match attrs.get("namespace") {
        Some(Value::String(ns)) => ns.as_str(),
        _ => enclosing,
    };
    let full = full_name(name, namespace);
    let inner = full.rsplit_once('.').map_or("", |(ns, _)| ns).to_owned();
    Ok((full, inner))
}

/// `name` in full: as it is when it holds a dot or names a primitive, else in `namespace`.
fn full_name(name: &str, namespace: &str) -> String {
    if name.contains('.') || namespace.is_empty() || PRIMITIVES.contains(&name) {
        name.to_owned()
    } else {
        format!("{namespace}.{name}")
    }
}

fn open_named(out: &mut String, full: &str, kind: &str) {
    out.push_str("{\"name\":");
    push_str(out, full);
    out.push_str(&format!(",\"type\":\"{kind}\""));
}

fn array<'a>(attrs: &'a Map<String, Value>, key: &str) -> Result<&'a Vec<Value>, String> {
    attrs
        .get(key)
        .and_then(Value::as_array)
        .ok_or(format!("{key} is not a list"))
}

/// A fixed size given as a number or, as some writers do, a string of digits.
fn size_of(size: &Value) -> Option<u64> {
    match size {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A JSON string literal: quotes, backslashes and control characters escaped, the rest as
/// UTF-8 (STRINGS).
fn push_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).expect("a string serializes"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logical_type_is_written_as_its_primitive() {
        let schema = r#"{"type":"record","name":"T","namespace":"x","fields":[
            {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"},"doc":"d"}]}"#;
        assert_eq!(
            canonical_form(schema, Form::Specification).unwrap(),
            r#"{"name":"x.T","type":"record","fields":[{"name":"ts","type":"long"}]}"#
        );
        assert_eq!(
            canonical_form(schema, Form::LogicalTypesKept).unwrap(),
            r#"{"name":"x.T","type":"record","fields":[{"name":"ts","type":{"type":"long"}}]}"#
        );
    }

    #[test]
    fn nested_names_take_the_enclosing_namespace() {
        let schema = r#"{"type":"record","name":"A","namespace":"n","fields":[
            {"name":"b","type":{"type":"enum","name":"B","symbols":["x"]}},
            {"name":"c","type":"B"},
            {"name":"d","type":{"type":"fixed","name":"o.D","size":"016"}}]}"#;
        assert_eq!(
            canonical_form(schema, Form::Specification).unwrap(),
            concat!(
                r#"{"name":"n.A","type":"record","fields":["#,
                r#"{"name":"b","type":{"name":"n.B","type":"enum","symbols":["x"]}},"#,
                r#"{"name":"c","type":"n.B"},"#,
                r#"{"name":"d","type":{"name":"o.D","type":"fixed","size":16}}]}"#
            )
        );
    }

    #[test]
    fn what_is_not_a_schema_is_refused() {
        for bad in ["{", "3", r#"{"name":"x"}"#, r#"{"type":"array"}"#] {
            assert!(canonical_form(bad, Form::Specification).is_err(), "{bad}");
        }
    }
}
