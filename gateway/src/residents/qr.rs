//! `gateway residents qr`: one QR code per unit (SVG, printable at any size) with its link,
//! and an `index.html` to print them all. Writing them issues fresh links (the tokens are
//! not stored in clear), so the previous stickers stop working. Every file written is
//! readable by its owner only (0600): the codes carry the secret links.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use edge_config::Config;
use qrcode::render::svg;
use qrcode::QrCode;

use super::{links, ResidentsError};

/// One written QR code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub building: String,
    pub unit: String,
    pub url: String,
    pub file: PathBuf,
}

/// Issues new links for `units` (all units of the configuration when `None`) in the database
/// at `db` and writes `{building}-{unit}.svg` and `index.html` into `out`.
pub fn write(
    config: &Config,
    db: &Path,
    out: &Path,
    base_url: &str,
    units: Option<Vec<(String, String)>>,
) -> Result<Vec<Written>, ResidentsError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ResidentsError::Io { path, source }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    let units = units.unwrap_or_else(|| links::all_units(config));
    let issued = links::issue(db, &units)?;
    let base = base_url.trim_end_matches('/');
    let mut written = Vec::with_capacity(issued.len());
    for i in issued {
        let url = format!("{base}/r/{}", i.token);
        let code = QrCode::new(url.as_bytes())?;
        let image = code
            .render::<svg::Color<'_>>()
            .min_dimensions(240, 240)
            .quiet_zone(true)
            .build();
        let file = out.join(format!("{}-{}.svg", i.building, i.unit));
        write_private(&file, image.as_bytes()).map_err(io(&file))?;
        written.push(Written {
            building: i.building,
            unit: i.unit,
            url,
            file,
        });
    }
    let mut html = String::from(
        "<!doctype html><meta charset=utf-8><title>住户警报二维码 Resident alert QR codes</title>\
         <style>body{font-family:sans-serif}figure{display:inline-block;margin:1em;text-align:center;\
         page-break-inside:avoid}figcaption{font-size:14px}</style>\n",
    );
    for w in &written {
        let name = label(config, &w.building, &w.unit);
        let file = w
            .file
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let _ = writeln!(
            html,
            "<figure><img src=\"{file}\" width=240 height=240><figcaption>{}<br>扫码查看本单元警报 · Scan for this unit's alerts</figcaption></figure>",
            escape(&name)
        );
    }
    let index = out.join("index.html");
    write_private(&index, html.as_bytes()).map_err(io(&index))?;
    Ok(written)
}

/// Writes `bytes` readable by the owner only: each QR code is a unit's secret link.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its old mode through open(2): set it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)
}

fn label(config: &Config, building: &str, unit: &str) -> String {
    let b = config.building(building);
    let u = b.and_then(|b| b.unit(unit));
    format!(
        "{} {}",
        b.map_or(building, |b| b.name.as_str()),
        u.map_or(unit, |u| u.name.as_str())
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
