//! `gateway doctor --config FILE`: the installer's commissioning report.
//!
//! One run looks at everything a compound needs before it is handed over, in this order, and
//! says what to fix:
//!
//! 1. **config** — `edge_config::load`; an invalid file lists every error
//!    (`FILE:LINE:COL: key: message`) and stops the run (exit 78).
//! 2. **gateway** — whether a gateway already runs on the data directory (its lock file is
//!    held or its `status.json` is fresh), see [`ports::Presence`].
//! 3. **ports** — every listener the configuration binds (broker, its v5 and TLS listeners,
//!    console, residents): free, or in use by the running gateway, or why not.
//! 4. **onnxruntime** — the library and the model, loaded and warmed up as the video pipeline
//!    does (skipped without an enabled camera).
//! 5. **cameras** — each enabled camera opened as capture opens it, until its first frame
//!    (codec, size, frame rate), all at once within `--camera-timeout-s`.
//! 6. **devices** — the configured devices heard on the sensor broker within `--listen-s`
//!    (only while the gateway runs: the doctor never starts a broker of its own).
//! 7. **upstream** — one connection with the uplink's own options (TLS, login) under the
//!    client id `{uplink client id}-doctor`, then a clean disconnect.
//!
//! Checks 4–7 run concurrently, so a run takes about `max(--listen-s, camera timeout)`.
//! Exit status: 0 when nothing failed (warnings allowed), 1 when a check failed, 78 when the
//! configuration is invalid.

mod devices;
mod ports;
mod report;
mod upstream;
mod video;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use edge_config::Config;

pub use ports::Presence;
pub use report::{Check, Report, State, Summary};

/// sysexits.h EX_CONFIG: the configuration is invalid.
pub const EX_CONFIG: u8 = 78;

/// What can stop the doctor itself, or a camera probe (a finding is never an error: it is a
/// [`Check`], whose finding may quote one).
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot write the report as JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A camera did not open within its time (a silent or unreachable address).
    #[error("no answer within {} s", .0.as_secs())]
    NoAnswer(Duration),
    /// A camera's stream opened but gave no decodable frame within its time.
    #[error("no picture within {} s", .0.as_secs())]
    NoPicture(Duration),
    /// A camera could not be opened or decoded (the capture's own error).
    #[error(transparent)]
    Capture(#[from] crate::video::capture::CaptureError),
}

/// How the doctor runs, from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: PathBuf,
    /// The gateway's data directory (default: the configuration's `storage.data_dir`).
    pub data_dir: Option<PathBuf>,
    /// How long to listen for devices on the sensor broker.
    pub listen: Duration,
    /// How long each camera may take to give its first frame.
    pub camera_timeout: Duration,
    /// How long the upstream may take to accept the connection (TCP, TLS, CONNACK).
    pub upstream_timeout: Duration,
}

/// Runs `gateway doctor` and prints its report (text or JSON) on stdout.
pub fn main(args: &crate::cli::DoctorArgs) -> ExitCode {
    let options = Options {
        config: args.config.clone(),
        data_dir: args.data_dir.clone(),
        listen: Duration::from_secs_f64(args.listen_s.max(0.0)),
        camera_timeout: Duration::from_secs_f64(args.camera_timeout_s.max(1.0)),
        upstream_timeout: Duration::from_secs_f64(args.upstream_timeout_s.max(1.0)),
    };
    match run(&options, args.json) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gateway doctor: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(options: &Options, json: bool) -> Result<ExitCode, DoctorError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(DoctorError::Runtime)?;
    let (report, invalid_config) = runtime.block_on(diagnose(options));
    // A camera probe stuck inside FFmpeg past its deadline is not waited for.
    runtime.shutdown_timeout(Duration::from_millis(200));
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(if invalid_config {
        ExitCode::from(EX_CONFIG)
    } else if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Every check; `true` with the report when the configuration is invalid (nothing else is
/// checked then).
pub async fn diagnose(options: &Options) -> (Report, bool) {
    let config = match load(&options.config) {
        Ok(pair) => pair,
        Err(check) => {
            return (
                Report::new(options.config.clone(), None, vec![*check]),
                true,
            )
        }
    };
    let (config, config_check) = config;
    let data_dir = options
        .data_dir
        .clone()
        .unwrap_or_else(|| config.storage.data_dir.clone());
    let presence = Presence::of(&data_dir);
    let mut checks = vec![config_check, presence.check()];
    checks.extend(ports::checks(&config, &presence));

    let ort_config = config.clone();
    let ort = tokio::task::spawn_blocking(move || video::onnxruntime_check(&ort_config));
    let (cameras, devices, upstream) = tokio::join!(
        video::camera_checks(&config, options.camera_timeout),
        devices::check(&config, &options.config, &presence, options.listen),
        upstream::check(&config, options.upstream_timeout),
    );
    checks.push(ort.await.unwrap_or_else(|e| {
        Check::fail(
            "onnxruntime",
            format!("loading ONNX Runtime crashed: {e}"),
            "check the library with `gateway detect --input FILE` and report this failure",
        )
    }));
    checks.extend(cameras);
    checks.push(devices);
    checks.push(upstream);
    let site = Some(config.site.id.clone());
    (Report::new(options.config.clone(), site, checks), false)
}

/// The configuration and its check, or the check listing every error.
fn load(path: &Path) -> Result<(Config, Check), Box<Check>> {
    match edge_config::load(path) {
        Ok(config) => {
            let enabled = config.cameras.iter().filter(|c| c.enabled).count();
            let finding = format!(
                "valid: site {}, {} devices, {} cameras ({enabled} enabled)",
                config.site.id,
                config.devices.len(),
                config.cameras.len()
            );
            Ok((config, Check::ok("config", finding)))
        }
        Err(errors) => Err(Box::new(
            Check::fail(
                "config",
                format!("{} error(s) in {}", errors.len(), path.display()),
                format!(
                    "correct each line listed (FILE:LINE:COL: key: what to do), then run \
                     `gateway config check {}` until it says ok",
                    path.display()
                ),
            )
            .with_details(errors.iter().map(ToString::to_string).collect()),
        )),
    }
}
