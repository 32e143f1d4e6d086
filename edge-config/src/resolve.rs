//! Making the file paths of a configuration absolute.
//!
//! Every relative path written in the file (TLS files, password files,
//! `detector.models_dir`, `detector.onnxruntime`, `storage.data_dir`, a
//! camera's plain-path or `file://` URL) is joined to the base directory
//! (the config file's directory). The default `detector.models_dir`
//! (`"models"`) is left relative: it is resolved against the current
//! directory when used.

use crate::locate::SpanTree;
use crate::model::Config;
use crate::path::KeyPath;
use std::path::{Path, PathBuf};

fn join(base: &Path, p: &mut PathBuf) {
    if p.is_relative() {
        *p = base.join(&*p);
    }
}

fn join_opt(base: &Path, p: &mut Option<PathBuf>) {
    if let Some(p) = p {
        join(base, p);
    }
}

/// Resolve the relative paths of `config` against `base`.
pub(crate) fn relative_paths(config: &mut Config, base: &Path, spans: &SpanTree) {
    if let Some(tls) = &mut config.broker.tls {
        join(base, &mut tls.cert);
        join(base, &mut tls.key);
    }
    for reader in &mut config.broker.readers {
        join_opt(base, &mut reader.password_file);
    }
    if let Some(ext) = &mut config.broker.external {
        join_opt(base, &mut ext.password_file);
        if let Some(tls) = &mut ext.tls {
            join(base, &mut tls.ca);
        }
    }
    for c in &mut config.compounds {
        join_opt(base, &mut c.password_file);
    }
    for up in config
        .uplink
        .iter_mut()
        .chain(config.station_link.iter_mut())
    {
        join_opt(base, &mut up.password_file);
        if let Some(tls) = &mut up.tls {
            join_opt(base, &mut tls.ca);
            join_opt(base, &mut tls.cert);
            join_opt(base, &mut tls.key);
        }
    }
    if spans.contains(&KeyPath::of("detector.models_dir")) {
        join(base, &mut config.detector.models_dir);
    }
    join_opt(base, &mut config.detector.onnxruntime);
    join(base, &mut config.storage.data_dir);
    for cam in &mut config.cameras {
        cam.url = camera_url(base, &cam.url);
    }
}

fn camera_url(base: &Path, url: &str) -> String {
    if let Some(path) = url.strip_prefix("file://") {
        if !path.is_empty() && Path::new(path).is_relative() {
            return format!("file://{}", base.join(path).display());
        }
        return url.to_string();
    }
    if url.contains("://") || url.is_empty() || Path::new(url).is_absolute() {
        return url.to_string();
    }
    base.join(url).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camera_files_resolve_against_the_config_directory() {
        let base = Path::new("/etc/shouwang");
        assert_eq!(
            camera_url(base, "footage/a.mp4"),
            "/etc/shouwang/footage/a.mp4"
        );
        assert_eq!(
            camera_url(base, "file://footage/a.mp4"),
            "file:///etc/shouwang/footage/a.mp4"
        );
        assert_eq!(camera_url(base, "file:///srv/a.mp4"), "file:///srv/a.mp4");
        assert_eq!(
            camera_url(base, "rtsp://127.0.0.1:8554/lobby"),
            "rtsp://127.0.0.1:8554/lobby"
        );
    }
}
