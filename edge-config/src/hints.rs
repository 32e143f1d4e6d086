//! Turning terse messages into ones that say how to fix the problem:
//! "did you mean" suggestions and rewording of `toml`/serde errors.

/// The candidate closest to `word`, if it is close enough to be a likely
/// misspelling: one that extends `word` (e.g. `low_lel` → `low_lel_pct`),
/// else the one at the smallest edit distance (ties: most similar start).
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let all: Vec<&str> = candidates.into_iter().filter(|c| *c != word).collect();
    let extends = all
        .iter()
        .filter(|c| word.chars().count() >= 3 && c.starts_with(word))
        .min_by_key(|c| c.len());
    if let Some(c) = extends {
        return Some(c);
    }
    let limit = (word.chars().count() / 3).max(2);
    all.into_iter()
        .map(|c| (strsim::levenshtein(word, c), c))
        .filter(|&(d, _)| d <= limit)
        .min_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| {
                let (ja, jb) = (
                    strsim::jaro_winkler(word, a.1),
                    strsim::jaro_winkler(word, b.1),
                );
                jb.total_cmp(&ja)
            })
        })
        .map(|(_, c)| c)
}

/// ` (did you mean "x"?)` or nothing.
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> String {
    closest(word, candidates)
        .map(|c| format!(" (did you mean \"{c}\"?)"))
        .unwrap_or_default()
}

/// `a, b, c` or `(none defined)`.
pub(crate) fn list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let all: Vec<&str> = items.into_iter().collect();
    if all.is_empty() {
        "(none defined)".to_string()
    } else {
        all.join(", ")
    }
}

/// The words between backticks in `text`.
pub(crate) fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// The field of a serde "missing field `x`" message.
pub(crate) fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
}

/// Reword a deserialization error; `value` is the source text it points
/// at and `present` the keys already written in its table (never
/// suggested as the intended spelling).
pub(crate) fn schema_message(message: &str, value: &str, present: &[String]) -> String {
    if let Some(rest) = message.strip_prefix("unknown field ") {
        return unknown("key", rest, "remove it or fix its spelling", present);
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        return unknown("value", rest, "use one of the allowed values", &[]);
    }
    if message == "wanted string or table" {
        return "expected one of the allowed names in double quotes, e.g. \"red\"".to_string();
    }
    if message.contains("invalid socket address syntax") {
        return format!(
            "invalid address {value}: write IP:PORT with a numeric IP, e.g. \"0.0.0.0:1883\" or \"127.0.0.1:8080\""
        );
    }
    if message.starts_with("invalid length") && message.contains("array of length 2") {
        return format!("{message}: a point is written [x, y], e.g. [0.25, 0.5]");
    }
    format!("{message}{}", type_hint(message))
}

/// The likely intended spelling of the unknown `word` among the allowed
/// names listed in a serde message, skipping names in `present`.
pub(crate) fn intended<'a>(word: &str, allowed: &[&'a str], present: &[String]) -> Option<&'a str> {
    let free = allowed
        .iter()
        .copied()
        .filter(|a| !present.iter().any(|p| p == a));
    closest(word, free)
}

fn unknown(what: &str, rest: &str, fix: &str, present: &[String]) -> String {
    let words = backticked(rest);
    let Some((name, allowed)) = words.split_first() else {
        return format!("unknown {what} {rest}");
    };
    if allowed.is_empty() {
        return format!("unknown {what} `{name}`: this table takes no keys; remove it");
    }
    match intended(name, allowed, present) {
        Some(c) => format!(
            "unknown {what} `{name}`: did you mean `{c}`? (allowed: {})",
            allowed.join(", ")
        ),
        None => format!(
            "unknown {what} `{name}`: {fix} (allowed: {})",
            allowed.join(", ")
        ),
    }
}

fn type_hint(message: &str) -> &'static str {
    let Some(rest) = message.strip_prefix("invalid type: ") else {
        return "";
    };
    let expected = rest.split(", expected ").nth(1).unwrap_or("");
    let numeric = [
        "u8", "u16", "u32", "u64", "i32", "i64", "f64", "integer", "float",
    ]
    .iter()
    .any(|t| expected.contains(t));
    if rest.starts_with("string") && (numeric || expected.contains("bool")) {
        "; write the value without quotes"
    } else if expected.contains("string") && !rest.starts_with("string") {
        "; put the value in double quotes"
    } else if expected.contains("sequence") {
        "; write a list in square brackets, e.g. [\"a\", \"b\"]"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspelt_keys_get_a_suggestion() {
        let m = schema_message(
            "unknown field `naem`, expected one of `id`, `name`, `kind`",
            "naem",
            &[],
        );
        assert_eq!(
            m,
            "unknown key `naem`: did you mean `name`? (allowed: id, name, kind)"
        );
    }

    #[test]
    fn unrelated_keys_are_told_to_be_removed() {
        let m = schema_message(
            "unknown field `colour`, expected `id` or `name`",
            "colour",
            &[],
        );
        assert!(m.starts_with("unknown key `colour`: remove it"), "{m}");
    }

    #[test]
    fn quoted_numbers_are_told_to_lose_their_quotes() {
        let m = schema_message("invalid type: string \"18\", expected u32", "\"18\"", &[]);
        assert!(m.ends_with("write the value without quotes"), "{m}");
    }

    #[test]
    fn keys_already_written_are_not_suggested() {
        let m = schema_message(
            "unknown field `kid`, expected one of `id`, `kind`",
            "kid",
            &["id".to_string()],
        );
        assert!(m.contains("did you mean `kind`?"), "{m}");
    }

    #[test]
    fn a_truncated_key_suggests_its_completion() {
        assert_eq!(
            closest("low_lel", ["low_level", "low_lel_pct"]),
            Some("low_lel_pct")
        );
        assert_eq!(closest("timezon", ["timezone", "name"]), Some("timezone"));
        assert_eq!(closest("colour", ["id", "name"]), None);
    }

    #[test]
    fn missing_field_names_the_field() {
        assert_eq!(missing_field("missing field `kind`"), Some("kind"));
        assert_eq!(missing_field("other"), None);
    }
}
