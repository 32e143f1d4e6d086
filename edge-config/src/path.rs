//! Key paths such as `devices[3].location.building`, used to name the place
//! of an error and to find its line and column in the source.

use std::fmt;

/// One step of a [`KeyPath`]: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// A key of a table, e.g. `devices`.
    Key(String),
    /// An index into an array, e.g. the `3` of `devices[3]`.
    Index(usize),
}

/// A path from the root of the document to one value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct KeyPath(Vec<Segment>);

impl KeyPath {
    /// The empty path (the document itself).
    pub fn root() -> Self {
        Self::default()
    }

    /// A path made of dotted keys, e.g. `KeyPath::of("rules.gas")`.
    pub fn of(dotted: &str) -> Self {
        Self(
            dotted
                .split('.')
                .filter(|k| !k.is_empty())
                .map(|k| Segment::Key(k.to_string()))
                .collect(),
        )
    }

    /// A path from its steps.
    pub fn from_segments(segments: &[Segment]) -> Self {
        Self(segments.to_vec())
    }

    /// Parse the display form, e.g. `devices[3].location.building` (keys
    /// must be bare; quoted keys are not supported).
    pub fn parse(text: &str) -> Self {
        let mut segs = Vec::new();
        for part in text.split('.').filter(|p| !p.is_empty()) {
            let mut pieces = part.split('[');
            if let Some(key) = pieces.next().filter(|k| !k.is_empty()) {
                segs.push(Segment::Key(key.to_string()));
            }
            for idx in pieces {
                let n = idx.trim_end_matches(']');
                match n.parse() {
                    Ok(i) => segs.push(Segment::Index(i)),
                    Err(_) => segs.push(Segment::Key(format!("[{idx}"))),
                }
            }
        }
        Self(segs)
    }

    /// This path followed by a key.
    pub fn key(&self, key: &str) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Key(key.to_string()));
        next
    }

    /// This path followed by an array index.
    pub fn index(&self, index: usize) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Index(index));
        next
    }

    /// The parent path and the last step; `None` for the root.
    pub fn split_last(&self) -> Option<(KeyPath, &Segment)> {
        let (last, rest) = self.0.split_last()?;
        Some((Self(rest.to_vec()), last))
    }

    /// The steps of the path.
    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    /// Whether this is the document root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

fn is_bare_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Segment::Index(n) => write!(f, "[{n}]")?,
                Segment::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    if is_bare_key(k) {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_display_like_toml_keys_with_indexes() {
        let p = KeyPath::of("devices")
            .index(3)
            .key("location")
            .key("building");
        assert_eq!(p.to_string(), "devices[3].location.building");
        assert_eq!(KeyPath::root().key("a.b").to_string(), "\"a.b\"");
        assert_eq!(KeyPath::root().to_string(), "");
        assert_eq!(KeyPath::parse("devices[3].location.building"), p);
        assert_eq!(KeyPath::parse("a.b[0][1]").to_string(), "a.b[0][1]");
    }
}
