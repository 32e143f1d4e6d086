//! Finding places in the source text: byte offsets to line:column, key
//! paths to offsets and error spans back to key paths.
//!
//! The source is parsed into `toml`'s spanned tree ([`toml::de::DeTable`]);
//! [`SpanTree`] flattens it into one [`Node`] per key or array element.

use crate::path::{KeyPath, Segment};
use std::collections::HashMap;
use std::ops::Range;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Maps byte offsets to 1-based lines and columns (columns in characters).
pub(crate) struct LineIndex<'s> {
    source: &'s str,
    starts: Vec<usize>,
}

impl<'s> LineIndex<'s> {
    pub(crate) fn new(source: &'s str) -> Self {
        let starts = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { source, starts }
    }

    /// 1-based (line, column) of a byte offset (clamped to the text).
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.source.len());
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts[line - 1];
        let col = self
            .source
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line, col + 1)
    }

    /// 1-based line of a byte offset.
    pub(crate) fn line(&self, offset: usize) -> usize {
        self.position(offset).0
    }
}

/// One key (or array element) of the document.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) path: KeyPath,
    /// Span of the key; `None` for array elements.
    pub(crate) key_span: Option<Range<usize>>,
    /// Span of the value (for a `[table]` or `[[array]]` element: its header).
    pub(crate) value_span: Range<usize>,
    /// Whether the value is a table opened by a `[header]`.
    pub(crate) header: bool,
}

impl Node {
    /// Where errors about this node point: the value, or the key when the
    /// value has no text of its own.
    pub(crate) fn offset(&self) -> usize {
        match &self.key_span {
            Some(k) if self.value_span.is_empty() => k.start,
            _ => self.value_span.start,
        }
    }

    fn spans(&self) -> impl Iterator<Item = &Range<usize>> {
        self.key_span
            .iter()
            .chain(std::iter::once(&self.value_span))
    }
}

/// Every node of a parsed document, in document-tree order.
pub(crate) struct SpanTree {
    nodes: Vec<Node>,
    by_path: HashMap<KeyPath, usize>,
}

impl SpanTree {
    pub(crate) fn new(root: &Spanned<DeTable<'_>>, source: &str) -> Self {
        let mut nodes = Vec::new();
        walk_table(root.get_ref(), &KeyPath::root(), source, &mut nodes);
        let by_path = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.path.clone(), i))
            .collect();
        Self { nodes, by_path }
    }

    /// The node whose key or value span is exactly `span` (the deepest
    /// one), else the smallest one containing it.
    pub(crate) fn node_at_span(&self, span: &Range<usize>) -> Option<&Node> {
        let depth = |n: &&Node| n.path.segments().len();
        let exact = self
            .nodes
            .iter()
            .filter(|n| n.spans().any(|s| s == span))
            .max_by_key(depth);
        exact.or_else(|| {
            self.nodes
                .iter()
                .filter(|n| {
                    n.spans()
                        .any(|s| s.start <= span.start && span.end <= s.end)
                })
                .min_by_key(|n| (n.value_span.len(), usize::MAX - depth(n)))
        })
    }

    /// The offset of `path`, or of its nearest ancestor that exists in the
    /// source (the document start for none).
    pub(crate) fn offset_of(&self, path: &KeyPath) -> usize {
        let segs = path.segments();
        (0..=segs.len())
            .rev()
            .find_map(|n| {
                let prefix = KeyPath::from_segments(&segs[..n]);
                self.by_path.get(&prefix).map(|&i| self.nodes[i].offset())
            })
            .unwrap_or(0)
    }

    /// The keys written beside `path` in its table.
    pub(crate) fn sibling_keys(&self, path: &KeyPath) -> Vec<String> {
        let Some((parent, _)) = path.split_last() else {
            return Vec::new();
        };
        self.nodes
            .iter()
            .filter_map(|n| match n.path.split_last() {
                Some((p, Segment::Key(k))) if p == parent => Some(k.clone()),
                _ => None,
            })
            .collect()
    }

    /// Whether `path` is written in the source.
    pub(crate) fn contains(&self, path: &KeyPath) -> bool {
        self.by_path.contains_key(path)
    }

    /// Best guess of the key a syntax error at `offset` belongs to: the
    /// last key before it on the same line, else the `[section]` it is in.
    pub(crate) fn path_near(&self, offset: usize, lines: &LineIndex<'_>) -> KeyPath {
        let line = lines.line(offset);
        let same_line = self
            .nodes
            .iter()
            .filter_map(|n| n.key_span.as_ref().map(|k| (n, k.start)))
            .filter(|&(_, start)| start <= offset && lines.line(start) == line)
            .max_by_key(|&(_, start)| start)
            .map(|(n, _)| n);
        let section = || {
            self.nodes
                .iter()
                .filter(|n| n.header && n.value_span.start <= offset)
                .max_by_key(|n| n.value_span.start)
        };
        same_line
            .or_else(section)
            .map(|n| n.path.clone())
            .unwrap_or_default()
    }
}

fn walk_table(table: &DeTable<'_>, at: &KeyPath, source: &str, out: &mut Vec<Node>) {
    for (key, value) in table.iter() {
        let path = at.key(key.get_ref());
        out.push(node(&path, Some(key.span()), value, source));
        walk_value(value.get_ref(), &path, source, out);
    }
}

fn walk_value(value: &DeValue<'_>, at: &KeyPath, source: &str, out: &mut Vec<Node>) {
    match value {
        DeValue::Table(t) => walk_table(t, at, source, out),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let path = at.index(i);
                out.push(node(&path, None, item, source));
                walk_value(item.get_ref(), &path, source, out);
            }
        }
        _ => {}
    }
}

fn node(
    path: &KeyPath,
    key_span: Option<Range<usize>>,
    value: &Spanned<DeValue<'_>>,
    source: &str,
) -> Node {
    let value_span = value.span();
    let header = matches!(value.get_ref(), DeValue::Table(_))
        && source.as_bytes().get(value_span.start) == Some(&b'[');
    Node {
        path: path.clone(),
        key_span,
        value_span,
        header,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(src: &str) -> SpanTree {
        let parsed = DeTable::parse(src).expect("valid toml");
        SpanTree::new(&parsed, src)
    }

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let lines = LineIndex::new("a = 1\nname = \"小区\" x\n");
        assert_eq!(lines.position(0), (1, 1));
        assert_eq!(lines.position(6), (2, 1));
        let x = "a = 1\nname = \"小区\" ".len();
        assert_eq!(lines.position(x), (2, 13));
    }

    #[test]
    fn paths_find_values_and_fall_back_to_parents() {
        let src = "[site]\nid = \"x\"\n\n[[devices]]\nid = \"a\"\n\n[[devices]]\nid = \"b\"\nlocation = { building = \"b9\" }\n";
        let t = tree(src);
        let lines = LineIndex::new(src);
        let at = |p: &str| lines.position(t.offset_of(&KeyPath::parse(p)));
        assert_eq!(at("devices[1].location.building"), (9, 25));
        assert_eq!(at("devices[1].location.floor"), (9, 12));
        assert_eq!(at("devices[1]"), (7, 1));
        assert_eq!(at("devices[0].kind"), (4, 1));
        assert_eq!(at("site.id"), (2, 6));
        assert_eq!(at("rules.gas.low_lel_pct"), (1, 1));
    }

    #[test]
    fn spans_map_back_to_the_deepest_path() {
        let src = "[[devices]]\nid = \"a\"\n";
        let t = tree(src);
        let node = t.node_at_span(&(0..11)).expect("node");
        assert_eq!(node.path.to_string(), "devices[0]");
    }
}
