//! Reading the TOML tables into the `raw` structs so that every problem of the file is found,
//! each at its own key path, in plain words.
//!
//! serde stops at the first value of the wrong type. So when a value does not fit, its problem
//! is recorded, the value is taken out of the table (a list element that should be text is
//! replaced by an empty text, one that should be a table by an empty table) and the table is
//! read again: the next wrong value is found too, and the entry keeps its place, so
//! `upstream[1]`'s problems are never blamed on `upstream[0]`. Follow-up problems of a value
//! taken out (`is required`, `needs host or dir`) are not reported (see `Problems::push`).

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

use super::values::Problems;

/// More wrong values than this in one table: the rest are not looked for.
const MAX_REPAIRS: usize = 64;

/// Deserializes one `[section]`, recording every problem (with its key path).
pub(super) fn section<T: DeserializeOwned>(
    table: &toml::Table,
    name: &str,
    p: &mut Problems,
) -> Option<T> {
    let value = table.get(name)?;
    deserialize_at(value.clone(), name, p)
}

/// Deserializes an array of tables such as `[[upstream]]`; an entry that is not a table at
/// all stays in the list as an empty entry, so every later entry keeps its index.
pub(super) fn array<T: DeserializeOwned + Default>(
    table: &toml::Table,
    name: &str,
    p: &mut Problems,
) -> Vec<T> {
    match table.get(name) {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| deserialize_at(v.clone(), &format!("{name}[{i}]"), p).unwrap_or_default())
            .collect(),
        Some(_) => {
            p.push_broken(
                name,
                format!("must be an array of tables: write [[{name}]]"),
            );
            Vec::new()
        }
    }
}

/// Deserializes `value` (found at `path`); every value that does not fit is reported and
/// taken out, and the rest read again. `None` only when `value` itself is not a table.
pub(super) fn deserialize_at<T: DeserializeOwned>(
    mut value: toml::Value,
    path: &str,
    p: &mut Problems,
) -> Option<T> {
    for _ in 0..MAX_REPAIRS {
        let e = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(v) => return Some(v),
            Err(e) => e,
        };
        let segments: Vec<Segment> = e.path().iter().cloned().collect();
        let inner = e.path().to_string();
        let full = if segments.is_empty() {
            path.to_string()
        } else {
            format!("{path}.{inner}")
        };
        let message = e.inner().message().to_string();
        p.push_broken(&full, plain_message(&message));
        if !take_out(&mut value, &segments, &message) {
            return None;
        }
    }
    None
}

/// Takes the value at `segments` out of `value` (see the module doc). False when there was
/// nothing to take out (the problem is `value` itself).
fn take_out(value: &mut toml::Value, segments: &[Segment], message: &str) -> bool {
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut cur = &mut *value;
    for seg in parents {
        let next = match seg {
            Segment::Map { key } => cur.as_table_mut().and_then(|t| t.get_mut(key)),
            Segment::Seq { index } => cur.as_array_mut().and_then(|a| a.get_mut(*index)),
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => return false,
        }
    }
    match last {
        Segment::Map { key } => cur.as_table_mut().and_then(|t| t.remove(key)).is_some(),
        Segment::Seq { index } => {
            let placeholder = if message.ends_with("expected a string") {
                Some(toml::Value::String(String::new()))
            } else if message.contains("expected struct") || message.ends_with("expected a map") {
                Some(toml::Value::Table(toml::Table::new()))
            } else {
                None
            };
            match (
                placeholder,
                cur.as_array_mut().and_then(|a| a.get_mut(*index)),
            ) {
                (Some(placeholder), Some(slot)) => {
                    *slot = placeholder;
                    true
                }
                // The whole list goes.
                _ => take_out(value, parents, message),
            }
        }
        _ => false,
    }
}

/// serde's message (`invalid type: string "x", expected u64`) in the operator's words.
pub(super) fn plain_message(message: &str) -> String {
    let message = message.trim();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (field, rest) = rest.split_once('`').unwrap_or((rest, ""));
        let expected: Vec<&str> = rest
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, s)| s)
            .collect();
        return if expected.is_empty() {
            format!("unknown key {field:?}")
        } else {
            format!(
                "unknown key {field:?}; the keys here are {}",
                expected.join(", ")
            )
        };
    }
    if let Some(rest) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        && let Some((found, expected)) = rest.rsplit_once(", expected ")
    {
        return format!(
            "must be {}, not {}",
            expected_words(expected),
            found_words(found)
        );
    }
    if message.contains("untagged enum RawDuration") {
        return "must be a duration: a number of seconds, or text such as \"90s\", \"5m\" or \"3d\""
            .into();
    }
    if message.contains("untagged enum RawSize") {
        return "must be a size: a number of bytes, or text such as \"25MiB\"".into();
    }
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|r| r.strip_suffix('`'))
    {
        return format!("{field} is required");
    }
    message.to_string()
}

fn expected_words(expected: &str) -> String {
    match expected {
        "u8" => "a whole number from 0 to 255".into(),
        "u16" => "a whole number from 0 to 65535".into(),
        "u32" | "u64" | "usize" => "a whole number (0 or more)".into(),
        "i64" | "i32" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "a string" => "text in quotes".into(),
        "a boolean" => "true or false".into(),
        "a sequence" => "a list such as [\"a\", \"b\"]".into(),
        "a map" => "a table".into(),
        other if other.starts_with("struct ") => "a table".into(),
        other => other.to_string(),
    }
}

fn found_words(found: &str) -> String {
    let quoted = |prefix: &str| {
        found
            .strip_prefix(prefix)
            .map(|v| v.trim_matches('`').to_string())
    };
    if let Some(text) = found.strip_prefix("string ") {
        return format!("the text {text}");
    }
    for prefix in ["integer ", "floating point ", "boolean "] {
        if let Some(v) = quoted(prefix) {
            return v;
        }
    }
    match found {
        "sequence" => "a list".into(),
        "map" => "a table".into(),
        other => other.to_string(),
    }
}

/// A TOML syntax error as `line L, column C: what` (toml's own text draws the line in
/// several lines of output).
pub(super) fn syntax_error(text: &str, e: &toml::de::Error) -> String {
    let what = e.message().trim();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {what}")
        }
        None => what.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::plain_message;

    #[test]
    fn serde_messages_read_as_plain_words() {
        for (serde, plain) in [
            (
                "invalid type: string \"x\", expected u64",
                "must be a whole number (0 or more), not the text \"x\"",
            ),
            (
                "invalid value: integer `99999`, expected u16",
                "must be a whole number from 0 to 65535, not 99999",
            ),
            (
                "invalid type: integer `5`, expected a string",
                "must be text in quotes, not 5",
            ),
            (
                "unknown field `bogus`, expected one of `listen`, `hostname`",
                "unknown key \"bogus\"; the keys here are listen, hostname",
            ),
            (
                "invalid type: integer `5`, expected struct RawServerTls",
                "must be a table, not 5",
            ),
        ] {
            assert_eq!(plain_message(serde), plain);
        }
        assert!(
            plain_message("data did not match any variant of untagged enum RawDuration")
                .starts_with("must be a duration")
        );
    }
}
