//! What the gateway announced before, kept in `homeassistant.json` beside the database.
//!
//! The embedded broker keeps no retained messages over a restart, so after one the broker
//! cannot say which discovery configs the last run announced; Home Assistant still has
//! their entities in its registry. The file remembers them: a config announced before and
//! no longer configured is cleared (empty retained message) at start and again whenever
//! Home Assistant comes online (its birth message), since it may have been disconnected
//! when the first clear went out.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::HaError;

/// Removed topics remembered at most (oldest forgotten first).
pub const MAX_REMOVED: usize = 4096;

/// The file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    /// Config topics announced by the last run.
    pub announced: BTreeSet<String>,
    /// Config topics cleared because their entity left the configuration.
    pub removed: Vec<String>,
}

impl Memory {
    /// The file beside the database.
    pub fn path(db_path: &Path) -> PathBuf {
        db_path
            .parent()
            .unwrap_or(Path::new("."))
            .join("homeassistant.json")
    }

    /// Reads the file; a missing file is an empty memory, an unreadable one an error (the
    /// caller logs it and goes on with what the broker still retains).
    pub fn load(path: &Path) -> Result<Memory, HaError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| HaError::Memory {
                path: path.to_owned(),
                source: source.into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Memory::default()),
            Err(source) => Err(HaError::Memory {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Writes the file atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), HaError> {
        let io = |source| HaError::Memory {
            path: path.to_owned(),
            source,
        };
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(self).map_err(|e| io(e.into()))?;
        std::fs::write(&tmp, body).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// The next memory: `current` announced; removed = what was announced or found
    /// retained before and is not current, plus the earlier removed ones not current again.
    pub fn next(&self, current: &BTreeSet<String>, retained: &BTreeSet<String>) -> Memory {
        let mut removed: Vec<String> = self
            .removed
            .iter()
            .filter(|t| !current.contains(*t))
            .cloned()
            .collect();
        for t in self.announced.iter().chain(retained) {
            if !current.contains(t) && !removed.contains(t) {
                removed.push(t.clone());
            }
        }
        let excess = removed.len().saturating_sub(MAX_REMOVED);
        removed.drain(..excess);
        Memory {
            announced: current.clone(),
            removed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_entity_announced_before_or_found_retained_and_no_longer_configured_is_removed() {
        let before = Memory {
            announced: set(&["a", "b"]),
            removed: vec!["x".into(), "c".into()],
        };
        let next = before.next(&set(&["a", "c"]), &set(&["r"]));
        assert_eq!(next.announced, set(&["a", "c"]));
        assert_eq!(next.removed, ["x", "b", "r"], "c is configured again");
    }

    #[test]
    fn the_memory_survives_a_restart_in_its_file_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = Memory::path(&dir.path().join("gateway.db"));
        assert_eq!(Memory::load(&path).unwrap(), Memory::default());
        let m = Memory {
            announced: set(&["t/1"]),
            removed: vec!["t/2".into()],
        };
        m.save(&path).unwrap();
        assert_eq!(Memory::load(&path).unwrap(), m);
        std::fs::write(&path, b"{not json").unwrap();
        assert!(Memory::load(&path).is_err());
    }
}
