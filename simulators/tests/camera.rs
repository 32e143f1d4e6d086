//! `sim camera` against a real RTSP client: ffprobe (FFmpeg, as the gateway reads cameras)
//! must find an H.264 video stream of the footage's size on every mount, the looping mount
//! must outlast its clip, and the server must stop with its handle or process.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use simulators::camera::{self, Mount};
use simulators::process::ChildGuard;

const SIM: &str = env!("CARGO_BIN_EXE_sim");

/// The real footage `./x deps` fetches into vendor/footage/.
fn footage(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../vendor/footage")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run `./x deps` to fetch the footage",
        path.display()
    );
    path
}

/// What ffprobe reports of the first video stream: (codec, width, height, frames read).
fn probe(url: &str, read_s: Option<u32>) -> (String, u32, u32, u64) {
    let mut cmd = Command::new("ffprobe");
    cmd.args([
        "-v",
        "error",
        "-rtsp_transport",
        "tcp",
        "-select_streams",
        "v:0",
    ]);
    if let Some(s) = read_s {
        cmd.args(["-read_intervals", &format!("%+{s}"), "-count_frames"]);
    }
    let out = cmd
        .args([
            "-show_entries",
            "stream=codec_name,width,height,nb_read_frames",
            "-of",
            "json",
            url,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run ffprobe (install ffmpeg: ./x deps)");
    assert!(
        out.status.success(),
        "ffprobe {url} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ffprobe JSON");
    let s = &v["streams"][0];
    let frames = s["nb_read_frames"]
        .as_str()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    (
        s["codec_name"].as_str().unwrap_or_default().to_owned(),
        s["width"].as_u64().unwrap_or(0) as u32,
        s["height"].as_u64().unwrap_or(0) as u32,
        frames,
    )
}

#[test]
fn sim_camera_serves_every_footage_file_as_an_h264_rtsp_stream_on_a_free_port() {
    let mut child = Command::new(SIM)
        .args(["camera", "--port", "0", "--loop", "--footage"])
        .arg(footage("vtest.avi"))
        .arg("--footage")
        .arg(footage("bikes.mp4"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sim camera");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    // Stopped (SIGTERM, then SIGKILL) on drop.
    let proc = ChildGuard(child);
    let mut urls = Vec::new();
    while urls.len() < 2 {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "sim camera exited before printing its URLs"
        );
        if let Some(url) = line.split_whitespace().find(|w| w.starts_with("rtsp://")) {
            urls.push(url.to_owned());
        }
    }
    assert!(
        urls[0].ends_with("/cam0") && urls[1].ends_with("/cam1"),
        "{urls:?}"
    );
    let port: u16 = urls[0]
        .trim_start_matches("rtsp://127.0.0.1:")
        .trim_end_matches("/cam0")
        .parse()
        .unwrap_or_else(|_| panic!("a real port in {}", urls[0]));
    assert_ne!(port, 0);

    // vtest.avi is DivX 3 and bikes.mp4 H.264: both arrive re-encoded to H.264.
    let (codec, w, h, _) = probe(&urls[0], None);
    assert_eq!((codec.as_str(), w, h), ("h264", 768, 576));
    let (codec, w, h, _) = probe(&urls[1], None);
    assert_eq!((codec.as_str(), w, h), ("h264", 640, 272));

    drop(proc);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the RTSP port is closed once sim camera stopped"
    );
}

#[test]
fn a_looping_camera_keeps_streaming_past_the_end_of_its_clip_and_stops_on_drop() {
    // bikes.mp4 lasts 10 s: 12 s at 15 fps is ~180 frames only if it restarted.
    let server = camera::serve(vec![Mount::new("/shed", footage("bikes.mp4"))], 0).unwrap();
    assert_eq!(server.mounts[0].size, Some((640, 272)));
    let url = server.url("/shed").unwrap().to_owned();
    assert_eq!(url, format!("rtsp://127.0.0.1:{}/shed", server.port));
    let (codec, w, _, frames) = probe(&url, Some(12));
    assert_eq!((codec.as_str(), w), ("h264", 640));
    assert!(
        frames >= 160,
        "12 s of a looping 15 fps camera, got {frames} frames"
    );
    let port = server.port;
    drop(server);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "stopped with its handle"
    );
}

#[test]
fn a_play_once_mount_streams_the_clip_to_its_end_and_two_cameras_share_one_port() {
    let mut options = camera::CameraOptions::new(
        vec![
            Mount::new("/lobby", footage("vtest.avi")),
            Mount::new("/gate", footage("bikes.mp4")),
        ],
        0,
    );
    options.looping = false;
    let server = camera::serve_with(&options).unwrap();
    assert_eq!(server.urls().len(), 2);
    // Read to the end of the stream: the 10 s clip at 15 fps.
    let (codec, w, h, frames) = probe(server.url("/gate").unwrap(), Some(30));
    assert_eq!((codec.as_str(), w, h), ("h264", 640, 272));
    assert!(
        (140..=160).contains(&frames),
        "the whole 10 s clip once, got {frames} frames"
    );
    let (codec, w, _, _) = probe(server.url("/lobby").unwrap(), None);
    assert_eq!((codec.as_str(), w), ("h264", 768));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_footage_is_also_served_as_http_mpeg_ts_that_ffprobe_reads_as_h264() {
    let http = simulators::http_ts::serve(
        "127.0.0.1",
        0,
        vec![("/cam0".to_owned(), footage("bikes.mp4"))],
    )
    .await
    .unwrap();
    let url = http.urls[0].1.clone();
    assert!(url.ends_with("/cam0.ts"), "{url}");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-select_streams",
                "v:0",
                "-show_entries",
                "stream=codec_name,width,height",
                "-of",
                "json",
                &url,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run ffprobe (install ffmpeg: ./x deps)")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stream = &v["streams"][0];
    assert_eq!(stream["codec_name"], "h264");
    assert_eq!(
        (stream["width"].as_u64(), stream["height"].as_u64()),
        (Some(640), Some(272))
    );
    // An unknown path is a 404, not a hang.
    let mut s = std::net::TcpStream::connect(http.addr).unwrap();
    use std::io::{Read, Write};
    write!(s, "GET /nope.ts HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
}

/// ffprobe's stderr for `url` when it fails (the RTSP answer FFmpeg reports).
fn probe_error(url: &str) -> String {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-rtsp_transport", "tcp", url])
        .stdin(Stdio::null())
        .output()
        .expect("run ffprobe (install ffmpeg: ./x deps)");
    assert!(!out.status.success(), "{url} opened");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_dual_camera_serves_h265_main_and_h264_sub_streams_behind_digest_authentication() {
    let mut options =
        camera::CameraOptions::new(Mount::dual(1, footage("vtest.avi"), 640).to_vec(), 0);
    options.fps = 10;
    options.auth = Some(camera::Auth {
        user: "admin".into(),
        password: "p@ss:w/rd%1".into(),
    });
    assert!(
        !format!("{options:?}").contains("p@ss"),
        "Debug hides the password"
    );
    let server = camera::serve_with(&options).unwrap();
    let main = server.url("/Streaming/Channels/101").unwrap().to_owned();
    let sub = server.url("/Streaming/Channels/102").unwrap().to_owned();
    assert_eq!(server.mounts[0].size, Some((768, 576)));
    assert_eq!(server.mounts[1].size, Some((640, 480)));

    // No login, a wrong one: 401 (the server's digest challenge refused).
    assert!(probe_error(&main).contains("401"));
    let wrong = main.replace("rtsp://", "rtsp://admin:nope@");
    assert!(probe_error(&wrong).contains("401"));

    // The right one, percent-encoded in the URL as cameras' users write it.
    let login = |url: &str| url.replace("rtsp://", "rtsp://admin:p%40ss%3Aw%2Frd%251@");
    let (codec, w, h, _) = probe(&login(&main), None);
    assert_eq!((codec.as_str(), w, h), ("hevc", 768, 576));
    let (codec, w, h, frames) = probe(&login(&sub), Some(3));
    assert_eq!((codec.as_str(), w, h), ("h264", 640, 480));
    assert!(
        frames >= 20,
        "3 s of a live 10 fps sub-stream, got {frames}"
    );
}
