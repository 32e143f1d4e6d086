//! Editing a working copy of the parsed tree after a schema error, so that
//! deserialization can go on and report the next error.
//!
//! Nodes keep their original spans, so later errors still point into the
//! original text and map to the original key paths.

use crate::locate::Node;
use std::borrow::Cow;
use toml::de::{DeArray, DeTable, DeValue};
use toml::Spanned;

/// What to do with the node an error points at.
pub(crate) enum Edit {
    /// Drop the key (or array element).
    Remove,
    /// Rename the key (a likely misspelling) keeping its value.
    RenameKey(String),
    /// Replace the value with a string (an allowed enum value).
    ReplaceWithString(String),
}

/// Apply `edit` to `node` somewhere in `table`; false when not found.
pub(crate) fn apply(table: &mut DeTable<'_>, node: &Node, edit: &Edit) -> bool {
    let hit = table
        .iter()
        .find(|(k, _)| node.key_span.as_ref() == Some(&k.span()))
        .map(|(k, _)| k.get_ref().to_string());
    if let Some(key) = hit {
        return edit_entry(table, &key, node, edit);
    }
    table.iter_mut().any(|(_, v)| apply_in_value(v, node, edit))
}

fn edit_entry(table: &mut DeTable<'_>, key: &str, node: &Node, edit: &Edit) -> bool {
    match edit {
        Edit::Remove => table.remove(key).is_some(),
        Edit::RenameKey(new) if table.contains_key(new.as_str()) => table.remove(key).is_some(),
        Edit::RenameKey(new) => {
            let Some((old, value)) = table.remove_entry(key) else {
                return false;
            };
            let renamed = Spanned::new(old.span(), Cow::Owned(new.clone()));
            table.insert(renamed, value);
            true
        }
        Edit::ReplaceWithString(s) => match table.get_mut(key) {
            Some(value) => {
                *value = Spanned::new(
                    node.value_span.clone(),
                    DeValue::String(Cow::Owned(s.clone())),
                );
                true
            }
            None => false,
        },
    }
}

fn apply_in_value(value: &mut Spanned<DeValue<'_>>, node: &Node, edit: &Edit) -> bool {
    match value.get_mut() {
        DeValue::Table(t) => apply(t, node, edit),
        DeValue::Array(items) => apply_in_array(items, node, edit),
        _ => false,
    }
}

fn apply_in_array(items: &mut DeArray<'_>, node: &Node, edit: &Edit) -> bool {
    let position = node
        .key_span
        .is_none()
        .then(|| items.iter().position(|e| e.span() == node.value_span))
        .flatten();
    let Some(i) = position else {
        return items.iter_mut().any(|e| apply_in_value(e, node, edit));
    };
    match edit {
        Edit::ReplaceWithString(s) => {
            let slice: &mut [Spanned<DeValue<'_>>] = items;
            slice[i] = Spanned::new(
                node.value_span.clone(),
                DeValue::String(Cow::Owned(s.clone())),
            );
        }
        Edit::Remove | Edit::RenameKey(_) => {
            let mut kept = DeArray::new();
            for (j, e) in items.iter().enumerate() {
                if j != i {
                    kept.push(e.clone());
                }
            }
            *items = kept;
        }
    }
    true
}
