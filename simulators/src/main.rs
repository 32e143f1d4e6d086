//! `sim`: sensor, camera and upstream simulators for shouwang demos and tests.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::{Parser, Subcommand};
use simulators::mqtt::Endpoint;
use simulators::sensors::{self, Scenario};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "sim",
    version,
    about = "Simulators for shouwang demos and tests: sensors, cameras, the upstream platform and its WAN link"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One MQTT client per device of a gateway configuration, behaving normally or playing a
    /// hazard scenario.
    #[command(after_help = SENSORS_EXAMPLES)]
    Sensors(SensorsArgs),
    /// A TCP proxy standing in for the WAN link: cut and restored on a schedule or by typing
    /// `down` / `up` on its standard input.
    #[command(after_help = LINK_EXAMPLES)]
    Link(LinkArgs),
    /// Subscribe to the platform side and report how many alerts arrived, gaps in `seq`,
    /// duplicates and latency. Exits 1 if any is missing.
    #[command(after_help = VERIFY_EXAMPLES)]
    Verify(VerifyArgs),
    /// Start a real upstream broker (mosquitto, with a generated configuration) for the demo.
    #[command(after_help = UPSTREAM_EXAMPLES)]
    Upstream(UpstreamArgs),
    /// Serve video files as live RTSP cameras (GStreamer's RTSP server, re-encoded to H.264
    /// or H.265 with a keyframe every second), as many as given, until Ctrl-C; optionally
    /// as installers' cameras (H.265 main + H.264 sub-stream) behind digest authentication.
    #[command(after_help = CAMERA_EXAMPLES)]
    Camera(CameraArgs),
}

const CAMERA_EXAMPLES: &str = "\
Examples:
  # two cameras, /cam0 and /cam1, restarting at the end of their clip
  sim camera --footage vendor/footage/vtest.avi --footage vendor/footage/bikes.mp4 --loop

  # the demo compound's cameras on their configured URLs (rtsp://127.0.0.1:8554/lobby, ...)
  sim camera --port 8554 --loop --mount /lobby=vendor/footage/vtest.avi \\
      --mount /shed=vendor/footage/bikes.mp4

  # any free port (printed), then look at it
  sim camera --footage vendor/footage/vtest.avi --port 0 --loop
  ffprobe -rtsp_transport tcp rtsp://127.0.0.1:PORT/cam0

  # the same footage as HTTP MPEG-TS too
  sim camera --footage vendor/footage/vtest.avi --loop --http-port 8081
  ffprobe http://127.0.0.1:8081/cam0.ts

  # an installer's camera: H.265 main stream (/Streaming/Channels/101, full size) and H.264
  # sub-stream (/Streaming/Channels/102, 640 wide), digest login required
  SIM_CAMERA_PASSWORD='s3cret' sim camera --loop --port 8554 --dual vendor/footage/vtest.avi \
      --user admin
  ffprobe -rtsp_transport tcp 'rtsp://admin:s3cret@127.0.0.1:8554/Streaming/Channels/101'";

#[derive(clap::Args)]
struct CameraArgs {
    /// A video file; the first is served on /cam0, the next on /cam1, ... Repeatable.
    #[arg(long, value_name = "FILE")]
    footage: Vec<PathBuf>,
    /// A video file on a path of your choice, /PATH=FILE. Repeatable.
    #[arg(long, value_name = "/PATH=FILE", value_parser = parse_mount)]
    mount: Vec<simulators::camera::Mount>,
    /// RTSP port (0 = any free port; the URLs printed say which).
    #[arg(long, default_value_t = 8554, value_name = "P")]
    port: u16,
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1", value_name = "ADDR")]
    address: String,
    /// Restart each clip at its end: a live camera every client shares. Without it, every
    /// client gets the clip once from its start.
    #[arg(long = "loop")]
    looping: bool,
    /// Frames per second of the streams.
    #[arg(long, default_value_t = 15, value_name = "N")]
    fps: u32,
    /// Also serve every mount as HTTP MPEG-TS on this port (`/cam0.ts`; 0 = any free port).
    #[arg(long, value_name = "P")]
    http_port: Option<u16>,
    /// Encode the --footage and --mount streams as H.264 (default) or H.265.
    #[arg(long, default_value = "h264", value_name = "CODEC", value_parser = parse_codec)]
    codec: simulators::camera::Codec,
    /// A video file served as an installer's camera with two streams: H.265 main stream at
    /// full size on /Streaming/Channels/101 and H.264 sub-stream (--sub-width wide) on
    /// /Streaming/Channels/102; the next file on .../201 and .../202, ... Repeatable;
    /// needs --loop.
    #[arg(long, value_name = "FILE")]
    dual: Vec<PathBuf>,
    /// Width of the --dual sub-streams.
    #[arg(long, default_value_t = 640, value_name = "W")]
    sub_width: u32,
    /// Require RTSP digest authentication as this user on every mount (with the password
    /// of SIM_CAMERA_PASSWORD or --password-file; the password is never printed).
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// A file whose first line is the --user's password (instead of SIM_CAMERA_PASSWORD).
    #[arg(long, value_name = "FILE", requires = "user")]
    password_file: Option<PathBuf>,
    /// Serve already-encoded footage (H.264/H.265 in .mp4, .mkv or .ts) without decoding
    /// or re-encoding it: the file's own size, codec, frame rate and GOP (--codec and --fps
    /// do not apply). Needs --loop. For benchmarks: the simulator then costs next to nothing.
    #[arg(long, requires = "looping")]
    passthrough: bool,
    /// With --passthrough: mount N starts N × S seconds into its file, so cameras showing
    /// one file are not in lockstep.
    #[arg(
        long,
        default_value_t = 0.0,
        value_name = "S",
        requires = "passthrough"
    )]
    stagger: f64,
}

fn parse_codec(s: &str) -> Result<simulators::camera::Codec, String> {
    use simulators::camera::Codec;
    match s.to_ascii_lowercase().replace(['.', '-'], "").as_str() {
        "h264" => Ok(Codec::H264),
        "h265" | "hevc" => Ok(Codec::H265),
        _ => Err(format!("--codec is h264 or h265, not {s:?}")),
    }
}

/// The login of `sim camera --user`: the password from --password-file, else from
/// SIM_CAMERA_PASSWORD (kept out of the command line, where `ps` would show it).
fn camera_auth(args: &CameraArgs) -> Result<Option<simulators::camera::Auth>> {
    let Some(user) = &args.user else {
        return Ok(None);
    };
    let password = match &args.password_file {
        Some(file) => edge_config::read_password_file(file)
            .map_err(|e| anyhow!("cannot read --password-file {}: {e}", file.display()))?,
        None => std::env::var("SIM_CAMERA_PASSWORD").map_err(|_| {
            anyhow!("--user needs a password: set SIM_CAMERA_PASSWORD or give --password-file")
        })?,
    };
    Ok(Some(simulators::camera::Auth {
        user: user.clone(),
        password,
    }))
}

fn parse_mount(spec: &str) -> Result<simulators::camera::Mount, String> {
    simulators::camera::Mount::parse(spec)
        .ok_or_else(|| format!("--mount wants /PATH=FILE, not {spec:?}"))
}

const LINK_EXAMPLES: &str = "\
Examples:
  # the gateway's uplink points at 127.0.0.1:1885; the platform broker listens on 1884;
  # the link is up 30 s, down 20 s, again and again
  sim link --listen 127.0.0.1:1885 --to 127.0.0.1:1884 --up 30 --down 20

  # cut and restore by hand: type `down`, `up` or `toggle` and Enter
  sim link --listen 127.0.0.1:1885 --to 127.0.0.1:1884";

const VERIFY_EXAMPLES: &str = "\
Examples:
  # wait for 12 alert events of the demo site on the platform broker, at most 2 minutes
  sim verify --upstream 127.0.0.1:1884 --config edge-config/examples/demo.toml --expect 12 --timeout 120

  sim verify --upstream 127.0.0.1:1884 --site sw-demo-001 --prefix shouwang --expect 5";

const UPSTREAM_EXAMPLES: &str = "\
Examples:
  # the demo's platform broker on 127.0.0.1:1884 (plain MQTT), until Ctrl-C
  sim upstream --port 1884

  # also TLS on 8883 with a throwaway CA (its path is printed: set uplink.tls.ca to it)
  sim upstream --port 1884 --tls --tls-port 8883 --dir /tmp/platform";

#[derive(clap::Args)]
struct LinkArgs {
    /// Where the gateway connects, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    listen: String,
    /// The upstream broker, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    to: String,
    /// Seconds the link stays down in each cycle (with --up).
    #[arg(long, value_name = "S", requires = "up")]
    down: Option<f64>,
    /// Seconds the link stays up in each cycle (with --down).
    #[arg(long, value_name = "S", requires = "down")]
    up: Option<f64>,
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// The upstream (platform) broker, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    upstream: String,
    /// How many distinct alert events must arrive.
    #[arg(long, value_name = "N")]
    expect: u64,
    /// The site id (or take it, and the topic prefix, from --config).
    #[arg(long, value_name = "ID", required_unless_present = "config")]
    site: Option<String>,
    /// The gateway configuration (site id and uplink topic prefix).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Topic prefix (default: the config's uplink.topic_prefix, else `shouwang`).
    #[arg(long, value_name = "P")]
    prefix: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60.0, value_name = "S")]
    timeout: f64,
}

#[derive(clap::Args)]
struct UpstreamArgs {
    /// Plain MQTT port on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 1884, value_name = "P")]
    port: u16,
    /// Also serve MQTT over TLS with a throwaway CA.
    #[arg(long)]
    tls: bool,
    /// The TLS port (0 = any free port).
    #[arg(long, default_value_t = 8883, value_name = "P")]
    tls_port: u16,
    /// Directory for the broker's configuration, certificates and log (default: a new one
    /// under the system's temporary directory).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

const SENSORS_EXAMPLES: &str = "\
Examples:
  # every device of the demo compound, behaving normally, until Ctrl-C
  sim sensors --broker 127.0.0.1:1883 --config edge-config/examples/demo.toml

  # a kitchen fire, ten times faster than life, reproducibly
  sim sensors --broker 127.0.0.1:1883 --config edge-config/examples/demo.toml \\
      --scenario kitchen_fire --speed 10 --seed 42

  # the demo: normal behaviour, and every 30 s the next hazard, ten times faster than life
  sim sensors --broker 127.0.0.1:1883 --config edge-config/examples/demo.toml \\
      --scenario demo --every 30 --speed 10

Scenarios: normal, kitchen_fire, gas_leak, water_leak, ebike_thermal_runaway, battery_theft,
sos, device_offline, malformed, flood, soak, demo.";

#[derive(clap::Args)]
struct SensorsArgs {
    /// The gateway's MQTT broker, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    broker: String,
    /// The gateway configuration whose devices are simulated.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// What happens.
    #[arg(long, default_value = "normal", value_name = "NAME")]
    scenario: String,
    /// Messages per second per device (normal reports; `flood`: the flooder's rate,
    /// default 10000; `soak`: default 1).
    #[arg(long, value_name = "R")]
    rate: Option<f64>,
    /// Run time in seconds (default: `normal` until Ctrl-C, `soak` 4 h, `flood` 10 s, others
    /// to the end of the scenario).
    #[arg(long, value_name = "S")]
    duration: Option<f64>,
    /// Seed of every random choice: the same seed plays the same run.
    #[arg(long, default_value_t = 0, value_name = "N")]
    seed: u64,
    /// Hazards develop this many times faster than in life (heartbeats and seconds-scale
    /// events stay real-time).
    #[arg(long, default_value_t = 1.0, value_name = "X")]
    speed: f64,
    /// The device the scenario acts on (default: the first suitable one).
    #[arg(long, value_name = "ID")]
    device: Option<String>,
    /// `demo`: seconds of normal behaviour before each hazard.
    #[arg(long, default_value_t = 30.0, value_name = "S")]
    every: f64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        match cli.command {
            Command::Sensors(args) => sensors_cmd(args).await,
            Command::Link(args) => link_cmd(args).await,
            Command::Verify(args) => verify_cmd(args).await,
            Command::Upstream(args) => upstream_cmd(args).await,
            Command::Camera(args) => camera_cmd(args).await,
        }
    })
}

/// A token cancelled on Ctrl-C or SIGTERM.
fn stop_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
        }
        t.cancel();
    });
    token
}

fn seconds(s: Option<f64>, what: &str) -> Result<Option<Duration>> {
    s.map(|s| {
        Duration::try_from_secs_f64(s)
            .map_err(|_| anyhow!("{what} must be a number of seconds ≥ 0, not {s}"))
    })
    .transpose()
}

async fn sensors_cmd(args: SensorsArgs) -> Result<()> {
    let config = edge_config::load(&args.config).map_err(|errors| anyhow!("{errors}"))?;
    let broker = Endpoint::parse(&args.broker)
        .ok_or_else(|| anyhow!("--broker wants HOST:PORT, not {:?}", args.broker))?;
    let scenario: Scenario = args.scenario.parse()?;
    let mut options = sensors::Options::new(broker, scenario);
    options.rate = args.rate;
    options.duration = seconds(args.duration, "--duration")?;
    options.seed = args.seed;
    options.speed = args.speed;
    options.device = args.device;
    options.every = seconds(Some(args.every), "--every")?.unwrap_or_default();
    let report = sensors::run(&config, &options, stop_on_signal()).await?;
    print!("{report}");
    Ok(())
}

async fn link_cmd(args: LinkArgs) -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    let stop = stop_on_signal();
    let link = simulators::link::start(&args.listen, &args.to, stop.clone()).await?;
    println!(
        "link ready: {} -> {} (type down, up or toggle)",
        link.listen, args.to
    );
    if let (Some(down), Some(up)) = (seconds(args.down, "--down")?, seconds(args.up, "--up")?) {
        link.schedule(up, down, stop.clone());
    }
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            line = lines.next_line(), if stdin_open => match line {
                Ok(Some(line)) if line.trim() == "status" => {}
                Ok(Some(line)) if !line.trim().is_empty() && !link.command(&line) => {
                    eprintln!("unknown command {:?}: type down, up, toggle or status", line.trim());
                    continue;
                }
                Ok(Some(_)) => {}
                _ => { stdin_open = false; continue; }
            },
        }
        println!("link {}", if link.is_up() { "UP" } else { "DOWN" });
    }
    Ok(())
}

async fn verify_cmd(args: VerifyArgs) -> Result<()> {
    let upstream = Endpoint::parse(&args.upstream)
        .ok_or_else(|| anyhow!("--upstream wants HOST:PORT, not {:?}", args.upstream))?;
    let config = match &args.config {
        Some(path) => Some(edge_config::load(path).map_err(|errors| anyhow!("{errors}"))?),
        None => None,
    };
    let site = args
        .site
        .clone()
        .or_else(|| config.as_ref().map(|c| c.site.id.clone()))
        .ok_or_else(|| anyhow!("give --site or --config"))?;
    let mut options = simulators::verify::VerifyOptions::new(upstream, &site, args.expect);
    if let Some(prefix) = args.prefix.clone().or_else(|| {
        config
            .as_ref()
            .and_then(|c| c.uplink.as_ref())
            .map(|u| u.topic_prefix.clone())
    }) {
        options.prefix = prefix;
    }
    options.timeout = seconds(Some(args.timeout), "--timeout")?.unwrap_or_default();
    eprintln!("verifying {} on {}", options.topic(), args.upstream);
    // Say when the subscription is in place: alerts published from then on are counted.
    let ready = CancellationToken::new();
    let topic = options.topic();
    let announce = ready.clone();
    tokio::spawn(async move {
        announce.cancelled().await;
        eprintln!("verify ready: subscribed to {topic}");
    });
    let verdict = simulators::verify::verify(&options, ready, stop_on_signal()).await?;
    println!("{verdict}");
    if !verdict.ok() {
        std::process::exit(1);
    }
    Ok(())
}

async fn upstream_cmd(args: UpstreamArgs) -> Result<()> {
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("sim-upstream-{}", std::process::id()))
    });
    let options = simulators::upstream::UpstreamOptions {
        dir,
        port: args.port,
        tls_port: args.tls.then_some(args.tls_port),
    };
    let broker = simulators::upstream::start(&options)?;
    println!("upstream ready: mqtt://127.0.0.1:{}", broker.port);
    if let (Some(port), Some(ca)) = (broker.tls_port, &broker.ca) {
        println!(
            "upstream ready: mqtts://127.0.0.1:{port} (CA: {})",
            ca.display()
        );
    }
    println!(
        "config: {}  log: {}",
        broker.config.display(),
        broker.log.display()
    );
    stop_on_signal().cancelled().await;
    broker.stop();
    Ok(())
}

async fn camera_cmd(args: CameraArgs) -> Result<()> {
    use simulators::camera::{self, CameraOptions, Mount};
    let auth = camera_auth(&args)?;
    let mut mounts = Mount::numbered(&args.footage);
    mounts.extend(args.mount);
    for (i, m) in mounts.iter_mut().enumerate() {
        m.codec = args.codec;
        m.offset_ms = (i as f64 * args.stagger.max(0.0) * 1000.0) as u64;
    }
    if !args.dual.is_empty() && !args.looping {
        return Err(anyhow!("--dual cameras are live: add --loop"));
    }
    for (i, file) in args.dual.iter().enumerate() {
        mounts.extend(Mount::dual(i as u32 + 1, file, args.sub_width));
    }
    if mounts.is_empty() {
        return Err(anyhow!(
            "give at least one --footage FILE, --mount /PATH=FILE or --dual FILE"
        ));
    }
    let http_streams: Vec<(String, PathBuf)> = mounts
        .iter()
        .map(|m| (m.path.clone(), m.footage.clone()))
        .collect();
    let options = CameraOptions {
        mounts,
        address: args.address,
        port: args.port,
        looping: args.looping,
        fps: args.fps,
        auth,
        passthrough: args.passthrough,
    };
    let server = camera::serve_with(&options)?;
    if let Some(auth) = &options.auth {
        println!(
            "digest authentication required: user {} (password not shown)",
            auth.user
        );
    }
    for m in &server.mounts {
        let size = m
            .size
            .map(|(w, h)| format!(", {w}x{h}"))
            .unwrap_or_default();
        let coding = if options.passthrough {
            "as encoded".to_owned()
        } else {
            format!("{} {} fps", m.codec.label(), options.fps)
        };
        println!(
            "camera ready: {} ({}{size}, {coding}{})",
            m.url,
            m.footage.display(),
            if options.looping { ", looping" } else { "" }
        );
    }
    let _http = match args.http_port {
        Some(port) => {
            let http = simulators::http_ts::serve(&options.address, port, http_streams).await?;
            for (_, url) in &http.urls {
                println!("camera ready: {url} (HTTP MPEG-TS)");
            }
            Some(http)
        }
        None => None,
    };
    stop_on_signal().cancelled().await;
    server.stop();
    Ok(())
}
