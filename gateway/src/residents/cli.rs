//! `gateway residents …`: the installer's commands for resident links (wired into the
//! binary's clap tree as `Command::Residents(ResidentsCommand)`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{links, qr};

/// `gateway residents`.
#[derive(Debug, Subcommand)]
pub enum ResidentsCommand {
    /// Issue a fresh secret link per unit (revoking the old ones) and write QR codes to print.
    #[command(
        after_help = "Example:\n  gateway residents qr --config /etc/shouwang/gateway.toml --out qr/ --base-url http://192.168.1.10:8080\n  gateway residents qr --config gateway.toml --out qr/ --unit b2/u3   # rotate one unit's link"
    )]
    Qr(QrArgs),
}

/// Arguments of `gateway residents qr`.
#[derive(Debug, Args)]
pub struct QrArgs {
    /// The gateway's TOML configuration file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Data directory holding `shouwang.db`; default `storage.data_dir`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Where the SVG files and `index.html` go.
    #[arg(long)]
    pub out: PathBuf,
    /// How residents reach the gateway; default `http://{residents.bind}`, or
    /// `http://{console.bind}` without one.
    #[arg(long)]
    pub base_url: Option<String>,
    /// Only these units (`BUILDING/UNIT`, repeatable); default every unit.
    #[arg(long = "unit")]
    pub units: Vec<String>,
}

/// Runs a `gateway residents` command.
pub fn run(cmd: &ResidentsCommand) -> ExitCode {
    match cmd {
        ResidentsCommand::Qr(args) => match qr_cmd(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gateway residents qr: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn qr_cmd(args: &QrArgs) -> Result<(), String> {
    let config = edge_config::load(&args.config).map_err(|e| e.to_string())?;
    // The database, QR codes and links this writes are the operator's alone.
    crate::os::private_umask();
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| config.storage.data_dir.clone());
    std::fs::create_dir_all(&data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let db = data_dir.join(crate::db::FILE_NAME);
    let base = args.base_url.clone().unwrap_or_else(|| {
        let pages = config.residents.bind.unwrap_or(config.console.bind);
        format!("http://{pages}")
    });
    let units = if args.units.is_empty() {
        None
    } else {
        Some(
            args.units
                .iter()
                .map(|u| links::parse_unit(&config, u))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?,
        )
    };
    let written = qr::write(&config, &db, &args.out, &base, units).map_err(|e| e.to_string())?;
    let mut tsv = String::from("unit\turl\n");
    for w in &written {
        println!("{}/{}\t{}", w.building, w.unit, w.file.display());
        tsv.push_str(&format!("{}/{}\t{}\n", w.building, w.unit, w.url));
    }
    // The links as text too (to send by other means); secret, so readable by the owner only.
    let tsv_path = args.out.join("links.tsv");
    write_private(&tsv_path, &tsv).map_err(|e| format!("{}: {e}", tsv_path.display()))?;
    println!(
        "{} link(s) issued; previous links of these units no longer work. Print {}",
        written.len(),
        args.out.join("index.html").display()
    );
    Ok(())
}

fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    qr::write_private(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qr_writes_one_svg_per_unit_and_an_index_and_rotates_one_unit_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let config = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../edge-config/examples/demo.toml"
        );
        let args = |units: Vec<String>| QrArgs {
            config: config.into(),
            data_dir: Some(dir.path().join("data")),
            out: dir.path().join("qr"),
            base_url: Some("http://gw.local:8080".into()),
            units,
        };
        qr_cmd(&args(vec![])).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("qr/b2-u1.svg")).unwrap();
        assert!(
            svg.starts_with("<?xml") && svg.contains("<svg"),
            "{}",
            &svg[..80]
        );
        let index = std::fs::read_to_string(dir.path().join("qr/index.html")).unwrap();
        assert_eq!(index.matches("<figure>").count(), 4, "demo has 4 units");
        let db = dir.path().join("data").join(crate::db::FILE_NAME);
        let before = links::list(&db).unwrap();
        assert_eq!(before.len(), 4);
        assert!(qr_cmd(&args(vec!["b9/u1".into()])).is_err());
        qr_cmd(&args(vec!["b1/u2".into()])).unwrap();
        assert_eq!(
            links::list(&db).unwrap().len(),
            4,
            "one current link per unit"
        );
    }
}
