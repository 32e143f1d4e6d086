//! The `gateway` binary: parses the command line and hands over to the library.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use gateway::cli::{Cli, Command, ConfigCommand, RunArgs, StatusArgs};
use gateway::{daemon, logging};

/// sysexits.h EX_CONFIG: the configuration is invalid.
const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    match cli.command {
        Command::Run(args) => run(args),
        Command::Config(ConfigCommand::Check { file }) => check(&file),
        Command::Status(args) => status(args),
        Command::Reload(args) => gateway::reload::cli::main(
            &args.data_dir,
            Duration::from_secs_f64(args.timeout_s.max(0.1)),
            args.json,
        ),
        Command::Doctor(args) => gateway::doctor::main(&args),
        Command::Residents(cmd) => gateway::residents::cli::run(&cmd),
        Command::Detect(args) => match gateway::video::detect_cli::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gateway detect: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Config(ConfigCommand::Init { site_id, kind }) => {
            print!("{}", edge_config::starter(&site_id, kind.into()));
            ExitCode::SUCCESS
        }
    }
}

fn load_config(file: &Path) -> Result<edge_config::Config, ExitCode> {
    let result = if file == Path::new("-") || file == Path::new("/dev/stdin") {
        let mut text = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut text) {
            eprintln!("<stdin>: cannot read: {e}");
            return Err(ExitCode::from(EX_CONFIG));
        }
        let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
        edge_config::parse(&text, "<stdin>", &cwd)
    } else {
        edge_config::load(file)
    };
    result.map_err(|errors| {
        eprintln!("{errors}");
        eprintln!("{} error(s) in {}", errors.0.len(), file.display());
        ExitCode::from(EX_CONFIG)
    })
}

fn check(file: &Path) -> ExitCode {
    match load_config(file) {
        Ok(config) => {
            println!(
                "{}: ok (site {}, {} devices, {} cameras)",
                file.display(),
                config.site.id,
                config.devices.len(),
                config.cameras.len()
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn status(args: StatusArgs) -> ExitCode {
    let data_dir = match (args.data_dir, args.config) {
        (Some(dir), _) => dir,
        (None, Some(config)) => match load_config(&config) {
            Ok(c) => c.storage.data_dir,
            Err(code) => return code,
        },
        (None, None) => {
            eprintln!("gateway status: give --data-dir DIR or --config FILE");
            return ExitCode::from(64);
        }
    };
    match gateway::status::status_report(&data_dir) {
        Ok(report) if args.json => match serde_json::to_string_pretty(&report) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gateway status: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gateway status: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> ExitCode {
    let config = match load_config(&args.config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let options = daemon::Options {
        data_dir: args
            .data_dir
            .unwrap_or_else(|| config.storage.data_dir.clone()),
        shutdown_deadline: Duration::from_secs_f64(args.shutdown_deadline_s.max(0.1)),
        config_file: Some(args.config.clone()),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(config, options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %anyhow::Error::from(e), "gateway stopped with an error");
            ExitCode::FAILURE
        }
    }
}
