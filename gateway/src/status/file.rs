//! `status.json`: every stage's snapshot, written atomically (or in place on a full disk).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::StatusError;
use crate::alerts::task::AlertStoreSnapshot;
use crate::broker::FrontSnapshot;
use crate::ingest::StatsSnapshot;
use crate::reserve::ReserveSnapshot;
use crate::supervise::HealthSnapshot;
use crate::uplink::LinkSnapshot;
use crate::video::StatsSnapshot as CameraSnapshot;

/// What the daemon writes to `status.json` every second.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusFile {
    pub pid: u32,
    pub updated_at_ms: i64,
    pub link: LinkSnapshot,
    /// The street station link (`[station_link]`), when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub station_link: Option<LinkSnapshot>,
    /// Sensor ingest counters (top [`super::STATUS_TOP_DEVICES`] devices by rejections); absent in
    /// files from older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest: Option<StatsSnapshot>,
    /// The alert task's database health (events waiting because the database refused them);
    /// absent in files from older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_store: Option<AlertStoreSnapshot>,
    /// The disk reserve (absent: none kept, or a file from an older version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve: Option<ReserveSnapshot>,
    /// Every supervised stage and the self-test (absent in files from older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSnapshot>,
    /// Each analysed camera's counters: frames decoded versus analysed show a camera that
    /// streams but is not watched.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cameras: BTreeMap<String, CameraSnapshot>,
    /// The embedded broker's front: connections and packets refused, acknowledgements held
    /// for their commit (absent with an external broker or in files from older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<FrontSnapshot>,
}

impl StatusFile {
    /// Writes atomically (temp file in the same directory, then rename), so a reader never
    /// sees half a file. When that fails — a full disk has no room for the new file — the
    /// existing file is overwritten in place instead, padded with spaces to its old length so
    /// that no new block is needed: `gateway status` can then still show why alerts wait.
    pub fn write(&self, path: &Path) -> Result<(), StatusError> {
        let io = |source| StatusError::File {
            path: path.to_owned(),
            source,
        };
        let json = serde_json::to_vec_pretty(self).map_err(|source| StatusError::Json {
            path: path.to_owned(),
            source,
        })?;
        let tmp = path.with_extension("json.tmp");
        let atomic = write_private(&tmp, &json).and_then(|()| std::fs::rename(&tmp, path));
        match atomic {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                overwrite_in_place(path, json).map_err(|_| io(e))
            }
        }
    }

    /// Reads the file; a parse error is retried a few times, because an in-place write (see
    /// [`StatusFile::write`]) may be read half-way.
    pub fn read(path: &Path) -> Result<StatusFile, StatusError> {
        let mut attempts = 0;
        loop {
            let bytes = std::fs::read(path).map_err(|source| StatusError::File {
                path: path.to_owned(),
                source,
            })?;
            match serde_json::from_slice(&bytes) {
                Ok(file) => return Ok(file),
                Err(_) if attempts < 3 => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(30));
                }
                Err(source) => {
                    return Err(StatusError::Json {
                        path: path.to_owned(),
                        source,
                    })
                }
            }
        }
    }
}

/// Writes `bytes` to `path` readable by its owner only (the status names devices and
/// faults; an older install may have left a world-readable file behind).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)
}

/// Overwrites an existing file from its start without truncating it first; shorter content is
/// padded with spaces (JSON allows trailing whitespace) so the file keeps its blocks.
fn overwrite_in_place(path: &Path, mut json: Vec<u8>) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    let old_len = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
    if json.len() < old_len {
        json.resize(old_len, b' ');
    }
    file.write_all(&json)
}
