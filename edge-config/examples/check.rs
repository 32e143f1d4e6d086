//! Check configuration files and print every error:
//! `cargo run -p edge-config --example check -- FILE...`

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut ok = true;
    for file in std::env::args().skip(1) {
        match edge_config::load(std::path::Path::new(&file)) {
            Ok(config) => println!(
                "{file}: ok (site {}, {} devices, {} cameras)",
                config.site.id,
                config.devices.len(),
                config.cameras.len()
            ),
            Err(errors) => {
                ok = false;
                println!("{errors}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
