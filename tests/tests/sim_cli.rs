//! The `sim sensors` binary against the real gateway, as the demo runs it.

use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::bin;
use e2e::sim::{drain, Bench, Events};

#[tokio::test(flavor = "multi_thread")]
async fn the_sim_binary_plays_a_scenario_from_the_gateway_config_against_its_broker() {
    let bench = Bench::start(
        r#"
[[devices]]
id = "lift-sos"
kind = "sos"
format = "native"
location = { building = "b1", unit = "u1" }
[[devices]]
id = "lift-smoke"
kind = "smoke"
location = { building = "b1", unit = "u1" }
"#,
    );
    let mut watcher = bench.watch().await;
    let out = tokio::task::spawn_blocking({
        let (broker, config) = (bench.broker.to_string(), bench.config_path.clone());
        move || {
            Command::new(bin("sim"))
                .args(["sensors", "--broker", &broker, "--config"])
                .arg(config)
                .args(["--scenario", "sos", "--speed", "20", "--seed", "3"])
                .stdin(Stdio::null())
                .output()
                .expect("run sim")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("scenario devices: lift-sos"), "{stdout}");
    let events = Events(drain(&mut watcher, Duration::from_millis(1500)).await);
    let sos = events.of("sos", "raised");
    assert_eq!(sos.len(), 1, "events:\n{}", events.dump());
    assert_eq!(sos[0]["level"], "red");
    assert_eq!(events.raised_kinds(), ["sos"]);
}
