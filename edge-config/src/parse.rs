//! Reading a configuration: TOML syntax, then the typed schema (with
//! recovery so that several schema errors are reported at once), then
//! relative paths, then semantic validation.

use crate::error::{ConfigError, ConfigErrors};
use crate::hints;
use crate::locate::{LineIndex, Node, SpanTree};
use crate::model::Config;
use crate::path::{KeyPath, Segment};
use crate::repair::{self, Edit};
use crate::resolve;
use crate::secrets;
use crate::validate;
use serde::Deserialize;
use std::collections::HashSet;
use std::path::Path;
use toml::de::DeTable;
use toml::Spanned;

/// Most schema errors reported for one file (each needs one more
/// deserialization pass).
const MAX_SCHEMA_ROUNDS: usize = 50;

/// A problem before it is given a line and column.
struct Issue {
    offset: usize,
    path: KeyPath,
    message: String,
}

/// Read, parse and validate the configuration file at `path`. Relative
/// paths inside it are resolved against the file's directory.
///
/// A file that cannot be read gives one error at 1:1 with an empty path.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let source = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            line: 1,
            col: 1,
            path: String::new(),
            message: format!(
                "cannot read the configuration file: {e}; check the path and its permissions"
            ),
        }])
    })?;
    let base = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    parse(&source, &file, &base)
}

/// Parse and validate configuration text. `file_name` is used in error
/// messages; relative paths in the configuration are resolved against
/// `base_dir` (normally the config file's directory).
///
/// Returns every error found: all syntax errors, or else all schema errors
/// (unknown keys, wrong types, …), or else all semantic errors.
pub fn parse(source: &str, file_name: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
    let lines = LineIndex::new(source);
    let finish = |issues: Vec<Issue>| to_errors(issues, file_name, &lines);
    let (tree, syntax) = DeTable::parse_recoverable(source);
    let spans = SpanTree::new(&tree, source);
    if !syntax.is_empty() {
        return Err(finish(syntax_issues(&syntax, &spans, &lines)));
    }
    let mut config = deserialize_all(&tree, &spans, source).map_err(finish)?;
    resolve::relative_paths(&mut config, base_dir, &spans);
    let mut problems = validate::validate(&config);
    if problems.is_empty() {
        problems = secrets::resolve(&mut config);
    }
    if problems.is_empty() {
        return Ok(config);
    }
    let issues = problems
        .into_iter()
        .map(|(path, message)| Issue {
            offset: spans.offset_of(&path),
            path,
            message,
        })
        .collect();
    Err(finish(issues))
}

fn to_errors(issues: Vec<Issue>, file: &str, lines: &LineIndex<'_>) -> ConfigErrors {
    let errors = issues
        .into_iter()
        .map(|i| {
            let (line, col) = lines.position(i.offset);
            ConfigError {
                file: file.to_string(),
                line,
                col,
                path: i.path.to_string(),
                message: i.message,
            }
        })
        .collect();
    ConfigErrors::sorted(errors)
}

fn syntax_issues(
    errors: &[toml::de::Error],
    spans: &SpanTree,
    lines: &LineIndex<'_>,
) -> Vec<Issue> {
    errors
        .iter()
        .map(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            Issue {
                offset,
                path: spans.path_near(offset, lines),
                message: format!("TOML syntax error: {}", e.message()),
            }
        })
        .collect()
}

/// Deserialize the typed config. On an error, record it, repair a working
/// copy of the tree (drop the key, rename a misspelt key, pick an allowed
/// value) and try again, so one run reports many schema errors.
fn deserialize_all(
    tree: &Spanned<DeTable<'_>>,
    spans: &SpanTree,
    source: &str,
) -> Result<Config, Vec<Issue>> {
    let mut work = tree.clone();
    let mut issues = Vec::new();
    let mut removed: HashSet<KeyPath> = HashSet::new();
    let mut renamed: Vec<KeyPath> = Vec::new();
    for _ in 0..MAX_SCHEMA_ROUNDS {
        let err = match Config::deserialize(toml::de::Deserializer::from(work.clone())) {
            Ok(config) if issues.is_empty() => return Ok(config),
            Ok(_) => return Err(issues),
            Err(err) => err,
        };
        let span = err.span().unwrap_or(0..0);
        let node = spans.node_at_span(&span);
        let path = node.map(|n| n.path.clone()).unwrap_or_default();
        let message = err.message();
        let edit = if let Some(field) = hints::missing_field(message) {
            let full = path.key(field);
            if !under_removed(&removed, &full) && !misspelt(&renamed, &path, field) {
                issues.push(missing(span.start, full, field));
            }
            Edit::Remove
        } else if renamed.contains(&path) {
            Edit::Remove // the value of a key we renamed: a consequence of our guess
        } else {
            let text = source.get(span.clone()).unwrap_or("");
            let present = spans.sibling_keys(&path);
            let mut text = hints::schema_message(message, text, &present);
            text.push_str(&misplaced_section_hint(message, &path));
            issues.push(Issue {
                offset: span.start,
                path: path.clone(),
                message: text,
            });
            repair_for(message, node, &present)
        };
        if let Edit::RenameKey(_) = edit {
            renamed.push(path.clone());
        }
        let Some(node) = node else { break };
        if !repair::apply(work.get_mut(), node, &edit) {
            break;
        }
        if let Edit::Remove = edit {
            removed.insert(path);
        }
    }
    if issues.is_empty() {
        issues.push(Issue {
            offset: 0,
            path: KeyPath::root(),
            message: "the configuration could not be read; fix the errors above".to_string(),
        });
    }
    Err(issues)
}

/// Top-level sections of the file.
const SECTIONS: [&str; 12] = [
    "site",
    "locations",
    "broker",
    "devices",
    "rules",
    "cameras",
    "detector",
    "uplink",
    "station_link",
    "compounds",
    "console",
    "storage",
];

/// A hint when an unknown key inside a table is really a top-level
/// section (a key written below another table's header belongs to it).
fn misplaced_section_hint(message: &str, path: &KeyPath) -> String {
    let is_unknown = message.starts_with("unknown field");
    match path.split_last() {
        Some((parent, Segment::Key(key)))
            if is_unknown && !parent.is_root() && SECTIONS.contains(&key.as_str()) =>
        {
            format!(
                "; `{key}` is a top-level section: keys below a [header] belong to that table, so write [{key}] (or [[{key}]]) as its own header or move the line above the first header"
            )
        }
        _ => String::new(),
    }
}

/// How to get past an error: rename a misspelt key to its likely intended
/// name, replace an unknown enum value by an allowed one, else drop it.
fn repair_for(message: &str, node: Option<&Node>, present: &[String]) -> Edit {
    let allowed = |rest: &str| -> Vec<String> {
        hints::backticked(rest)
            .iter()
            .skip(1)
            .map(|s| s.to_string())
            .collect()
    };
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let word = hints::backticked(rest).first().copied().unwrap_or("");
        let options = allowed(rest);
        let options: Vec<&str> = options.iter().map(String::as_str).collect();
        if let Some(best) = hints::intended(word, &options, present) {
            if node.is_some_and(|n| n.key_span.is_some()) {
                return Edit::RenameKey(best.to_string());
            }
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let word = hints::backticked(rest).first().copied().unwrap_or("");
        let options = allowed(rest);
        let pick = hints::closest(word, options.iter().map(String::as_str))
            .or(options.first().map(String::as_str));
        if let Some(value) = pick {
            return Edit::ReplaceWithString(value.to_string());
        }
    }
    Edit::Remove
}

/// Whether `path` or a table above it was removed in an earlier round: a field missing
/// there is a consequence of that repair (a table dropped for lacking one required key
/// reports the rest of it, or itself, missing next), not a new error.
fn under_removed(removed: &HashSet<KeyPath>, path: &KeyPath) -> bool {
    let segments = path.segments();
    (1..=segments.len()).any(|n| removed.contains(&KeyPath::from_segments(&segments[..n])))
}

/// Whether a key renamed in `table` (a likely misspelling) was renamed to
/// the missing `field`'s neighbour: then the missing field is a consequence.
fn misspelt(renamed: &[KeyPath], table: &KeyPath, field: &str) -> bool {
    renamed.iter().any(|k| match k.split_last() {
        Some((parent, Segment::Key(key))) => {
            &parent == table && hints::closest(key, [field]).is_some()
        }
        _ => false,
    })
}

fn missing(offset: usize, path: KeyPath, field: &str) -> Issue {
    let message = if path.segments().len() == 1 {
        format!(
            "missing required table [{field}]; add it (see `gateway config init` for an example)"
        )
    } else {
        format!("missing required key `{field}`; add `{field} = …` to this table")
    };
    Issue {
        offset,
        path,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(src: &str) -> Vec<String> {
        match parse(src, "t.toml", Path::new("/tmp")) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .iter()
                .map(|e| format!("{}:{} {} | {}", e.line, e.col, e.path, e.message))
                .collect(),
        }
    }

    const SITE: &str = "[site]\nid = \"s\"\nname = \"S\"\nkind = \"compound\"\n";

    #[test]
    fn empty_file_asks_for_the_site_table() {
        let e = errors("");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("1:1 site | missing required table [site]"),
            "{e:?}"
        );
    }

    #[test]
    fn a_table_of_the_wrong_type_is_one_error() {
        let e = errors(&format!("devices = 3\n{SITE}"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("1:11 devices | invalid type"), "{e:?}");
    }

    #[test]
    fn a_section_written_inside_another_table_is_explained() {
        let e = errors(&format!("{SITE}devices = []\n"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("5:1 site.devices | unknown key"), "{e:?}");
        assert!(e[0].contains("top-level section"), "{e:?}");
    }

    #[test]
    fn a_bad_required_value_does_not_also_report_it_missing() {
        let src = format!("{SITE}[[devices]]\nid = \"d\"\nkind = \"smoke\"\nlocation = \"b1\"\n[[devices]]\nid = \"e\"\nkind = \"smoke\"\nlocation = {{ area = \"a\" }}\ncolour = 1\n");
        let e = errors(&src);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("8:12 devices[0].location | invalid type"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("13:1 devices[1].colour | unknown key"),
            "{e:?}"
        );
    }

    #[test]
    fn unknown_language_is_replaced_and_reading_goes_on() {
        let src = "[site]\nid = \"s\"\nname = \"S\"\nkind = \"compund\"\nlanguages = [\"zh-CN\", \"fr\"]\n";
        let e = errors(src);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("4:8 site.kind | unknown value `compund`: did you mean `compound`?"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("5:23 site.languages[1] | unknown value `fr`"),
            "{e:?}"
        );
    }

    #[test]
    fn a_site_with_a_misspelt_kind_and_no_name_reports_exactly_those_two() {
        let e = errors("[site]\nid = \"x1\"\nkind = \"compund\"\n");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("1:1 site.name | missing required key `name`"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("3:8 site.kind | unknown value `compund`"),
            "{e:?}"
        );
    }

    #[test]
    fn many_errors_stop_after_the_round_limit() {
        let keys: String = (0..80).map(|i| format!("bogus{i} = 1\n")).collect();
        let e = errors(&format!("{SITE}{keys}"));
        assert_eq!(e.len(), MAX_SCHEMA_ROUNDS);
    }
}
