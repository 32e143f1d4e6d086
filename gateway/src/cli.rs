//! The command line: the daemon and the installer's tools.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::logging::LogFormat;

const EXAMPLES: &str = "\
Examples:
  gateway config init --site-id xingfuli-01 --kind compound > /etc/shouwang/gateway.toml
  gateway config check /etc/shouwang/gateway.toml
  gateway run --config /etc/shouwang/gateway.toml
  gateway run --config edge-config/examples/demo.toml --data-dir /tmp/shouwang-demo --log-format json
  gateway status --data-dir /tmp/shouwang-demo
  gateway doctor --config /etc/shouwang/gateway.toml";

/// shouwang (守望) edge gateway for residential compounds and street police stations.
#[derive(Debug, Parser)]
#[command(name = "gateway", version, about, after_help = EXAMPLES)]
pub struct Cli {
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the gateway daemon.
    #[command(
        after_help = "Example:\n  gateway run --config /etc/shouwang/gateway.toml --data-dir /var/lib/shouwang"
    )]
    Run(RunArgs),
    /// Check or create configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Resident links: QR codes per unit (issuing a unit's link revokes its old one).
    #[command(subcommand)]
    Residents(crate::residents::cli::ResidentsCommand),
    /// Run the detector on an image, clip or stream and print detections per frame.
    Detect(crate::video::detect_cli::DetectArgs),
    /// Show the uplink link state, outbox backlog and delivery counters of a gateway.
    #[command(
        after_help = "Examples:\n  gateway status --data-dir /var/lib/shouwang\n  gateway status --config /etc/shouwang/gateway.toml --json"
    )]
    Status(StatusArgs),
    /// Re-read the running gateway's configuration file without a restart (like SIGHUP)
    /// and print what changed, what was refused and what needs a restart.
    #[command(
        after_help = "Examples:\n  gateway reload --data-dir /var/lib/shouwang\n  gateway reload --data-dir /var/lib/shouwang --json\n\nExit status: 0 applied (or nothing to apply), 78 the file is invalid (nothing changed), 1 no gateway or no answer."
    )]
    Reload(ReloadArgs),
    /// Commissioning report: config, ports, ONNX Runtime and model, cameras, devices heard,
    /// upstream; each problem with its fix. Exit 0 ok, 1 a check failed, 78 invalid config.
    #[command(
        after_help = "Examples:\n  gateway doctor --config /etc/shouwang/gateway.toml\n  gateway doctor --config gateway.toml --listen-s 120 --json"
    )]
    Doctor(DoctorArgs),
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The gateway's TOML configuration file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// The gateway's data directory (default: `storage.data_dir`), to tell whether it runs.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// How long to listen for devices on the sensor broker, in seconds (press the sensors'
    /// test buttons meanwhile).
    #[arg(long, default_value_t = 10.0, value_name = "N")]
    pub listen_s: f64,
    /// How long each camera may take to give its first frame, in seconds.
    #[arg(long, default_value_t = 10.0, value_name = "N")]
    pub camera_timeout_s: f64,
    /// How long the upstream may take to accept the connection, in seconds.
    #[arg(long, default_value_t = 10.0, value_name = "N")]
    pub upstream_timeout_s: f64,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The gateway's data directory.
    #[arg(long, conflicts_with = "config")]
    pub data_dir: Option<PathBuf>,
    /// Or the configuration file, whose `storage.data_dir` is used.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// The running gateway's data directory.
    #[arg(long)]
    pub data_dir: std::path::PathBuf,
    /// How long to wait for the gateway's answer, in seconds.
    #[arg(long, default_value_t = 10.0, value_name = "N")]
    pub timeout_s: f64,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The gateway's TOML configuration file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Data directory (database, evidence); overrides `storage.data_dir`, so several gateways
    /// can run side by side.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// How long the ordered shutdown may take after SIGTERM/SIGINT, in seconds.
    #[arg(long, default_value_t = 4.0)]
    pub shutdown_deadline_s: f64,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file; exit 0 when valid, 78 (EX_CONFIG) with every error on
    /// stderr otherwise.
    #[command(
        after_help = "Examples:\n  gateway config check /etc/shouwang/gateway.toml\n  gateway config init --site-id demo --kind compound | gateway config check /dev/stdin"
    )]
    Check {
        /// The file to check (`/dev/stdin` or `-` reads standard input).
        file: PathBuf,
    },
    /// Print a commented, valid starter configuration to stdout.
    #[command(
        after_help = "Example:\n  gateway config init --site-id xingfuli-01 --kind compound > gateway.toml"
    )]
    Init {
        /// Site id: lowercase letters, digits, `-` and `_` (used in MQTT topics upstream).
        #[arg(long)]
        site_id: String,
        /// What the gateway watches over.
        #[arg(long, value_enum)]
        kind: KindArg,
    },
}

/// `--kind` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KindArg {
    /// A residential compound (智安小区).
    Compound,
    /// A street police station (警务站); `street_station`, as the config file spells it,
    /// is accepted too.
    #[value(alias = "street_station")]
    StreetStation,
}

impl From<KindArg> for edge_config::SiteKind {
    fn from(kind: KindArg) -> Self {
        match kind {
            KindArg::Compound => edge_config::SiteKind::Compound,
            KindArg::StreetStation => edge_config::SiteKind::StreetStation,
        }
    }
}
