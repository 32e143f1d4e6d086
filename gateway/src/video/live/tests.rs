use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::*;
use crate::video::evidence::ClipRecorder;

fn footage(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../vendor/footage")
        .join(name)
}

/// The video packets of a file, its parameters and time base.
fn packets_of(path: &Path) -> (codec::Parameters, Rational, Vec<Packet>) {
    crate::video::capture::init_ffmpeg().unwrap();
    let mut input = format::input(&path).unwrap();
    let stream = input.streams().best(ffmpeg::media::Type::Video).unwrap();
    let (index, tb, params) = (stream.index(), stream.time_base(), stream.parameters());
    let packets = input
        .packets()
        .filter(|(s, _)| s.index() == index)
        .map(|(_, p)| p)
        .collect();
    (params, tb, packets)
}

/// ffprobe's codec, size, tag and decoded frame count of a file.
fn ffprobe(path: &Path) -> String {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-show_entries"])
        .args(["stream=codec_name,codec_tag_string,width,height,nb_read_frames"])
        .args(["-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe is installed");
    assert!(
        out.status.success(),
        "ffprobe refused {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Remuxes every packet; the init segment, the fragments (data, key) and a file of them all.
fn remux(path: &Path, dir: &Path) -> (Init, Vec<(Bytes, bool)>, PathBuf) {
    let (params, tb, packets) = packets_of(path);
    let (mut muxer, init) = Muxer::new(&params, tb).unwrap();
    let fragments: Vec<(Bytes, bool)> = packets
        .iter()
        .filter_map(|p| muxer.write(p).unwrap())
        .collect();
    // Every packet but the last (whose fragment leaves with the next packet) is out.
    assert_eq!(fragments.len(), packets.len() - 1);
    let out = dir.join("live.mp4");
    let mut file = init.data.to_vec();
    for (f, _) in &fragments {
        assert_eq!(&f[4..8], b"moof", "each fragment is a moof (+ mdat)");
        file.extend_from_slice(f);
    }
    std::fs::write(&out, file).unwrap();
    (init, fragments, out)
}

#[test]
fn h264_footage_remuxed_for_the_live_view_is_an_init_segment_and_one_fragment_per_frame() {
    let dir = tempfile::tempdir().unwrap();
    let (init, fragments, file) = remux(&footage("bikes.mp4"), dir.path());
    assert_eq!(
        &init.data[4..8],
        b"ftyp",
        "the init segment starts with ftyp"
    );
    assert!(init.data.windows(4).any(|w| w == b"moov"));
    assert!(!init.data.windows(4).any(|w| w == b"moof"));
    assert!(
        init.mime.starts_with("video/mp4; codecs=\"avc1."),
        "{}",
        init.mime
    );
    assert_eq!(
        (init.codec.as_str(), init.width, init.height),
        ("h264", 640, 272)
    );
    assert!(fragments[0].1, "the first fragment starts with a keyframe");
    let n = fragments.len();
    assert_eq!(
        ffprobe(&file),
        format!("h264,avc1,640,272,{n}"),
        "init + fragments play back as the same frames, never re-encoded"
    );
}

#[test]
fn h265_footage_remuxed_for_the_live_view_is_tagged_hvc1_with_its_codec_string() {
    let dir = tempfile::tempdir().unwrap();
    let hevc = dir.path().join("bikes-h265.mp4");
    let status = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(footage("bikes.mp4"))
        .args(["-frames:v", "30", "-an", "-c:v", "libx265", "-x265-params"])
        .args(["log-level=error:keyint=10", "-tag:v", "hvc1"])
        .arg(&hevc)
        .status()
        .expect("ffmpeg is installed");
    assert!(status.success(), "ffmpeg could not encode H.265");
    let (init, fragments, file) = remux(&hevc, dir.path());
    // Main profile (1), compatible with Main (bit 1 and 2 reversed: 6), Main tier.
    assert!(
        init.mime.starts_with("video/mp4; codecs=\"hvc1.1.6.L"),
        "{}",
        init.mime
    );
    assert_eq!(init.codec, "hevc");
    assert_eq!(
        ffprobe(&file),
        format!("hevc,hvc1,640,272,{}", fragments.len())
    );
}

#[test]
fn codec_strings_come_from_the_avcc_and_hvcc_boxes() {
    let mut avc = b"....avcC".to_vec();
    avc.extend_from_slice(&[1, 0x42, 0xC0, 0x1E, 0xFF]);
    assert_eq!(mse_codecs(&avc).as_deref(), Some("avc1.42C01E"));
    // HEVC Main 10 (2), compatible with profile 2 (flag bits reversed: 4), Main tier,
    // level 5.1 (153), progressive source (0xB0).
    let mut hvc = b"....hvcC".to_vec();
    hvc.extend_from_slice(&[1, 0x02, 0x20, 0, 0, 0, 0xB0, 0, 0, 0, 0, 0, 153]);
    assert_eq!(mse_codecs(&hvc).as_deref(), Some("hvc1.2.4.L153.B0"));
    assert_eq!(mse_codecs(b"no codec here"), None);
}

/// A fragment whose data names its sequence and keyness, for the feed tests.
fn frag(i: u64, key: bool) -> Bytes {
    Bytes::from(format!("{i}:{key}"))
}

fn init() -> Init {
    Init {
        session: 0,
        mime: "video/mp4; codecs=\"avc1.42C01E\"".into(),
        codec: "h264".into(),
        width: 640,
        height: 480,
        data: Bytes::from_static(b"init"),
    }
}

async fn next_data(v: &mut Viewer) -> String {
    let item = tokio::time::timeout(Duration::from_secs(5), v.next())
        .await
        .expect("an item within 5 s")
        .expect("the feed is open");
    match item {
        LiveItem::Fragment(d) => String::from_utf8(d.to_vec()).unwrap(),
        LiveItem::Init(i) => format!("init:{}", i.session),
        LiveItem::Unsupported(c) => format!("unsupported:{c}"),
    }
}

#[tokio::test]
async fn a_viewer_joining_mid_stream_starts_at_the_latest_keyframe_and_misses_nothing_after() {
    let feed = Arc::new(LiveFeed::default());
    let session = feed.begin(init(), vec![(frag(0, true), true)]).unwrap();
    for i in 1..=30 {
        feed.publish(session, frag(i, i % 10 == 0), i % 10 == 0);
    }
    let mut v = feed.watch(4).unwrap();
    assert_eq!(feed.viewers(), 1);
    assert_eq!(next_data(&mut v).await, format!("init:{session}"));
    assert_eq!(next_data(&mut v).await, "30:true", "the GOP from frame 30");
    feed.publish(session, frag(31, false), false);
    assert_eq!(next_data(&mut v).await, "31:false");
    drop(v);
    assert_eq!(feed.viewers(), 0, "a viewer counts until dropped");
}

#[tokio::test]
async fn a_viewer_that_never_reads_never_blocks_the_camera_and_skips_to_the_next_keyframe() {
    let feed = Arc::new(LiveFeed::default());
    let session = feed.begin(init(), vec![(frag(0, true), true)]).unwrap();
    let mut slow = feed.watch(4).unwrap();
    let mut fast = feed.watch(4).unwrap();
    assert_eq!(next_data(&mut slow).await, format!("init:{session}"));
    assert_eq!(next_data(&mut slow).await, "0:true");
    assert_eq!(next_data(&mut fast).await, format!("init:{session}"));
    assert_eq!(next_data(&mut fast).await, "0:true");
    // Ten times the feed's capacity while `slow` reads nothing: the camera side never
    // waits, and `fast`, reading along, gets every fragment in order.
    let started = Instant::now();
    let total = FEED_CAPACITY as u64 * 10;
    for i in 1..=total {
        let key = i % 25 == 0;
        feed.publish(session, frag(i, key), key);
        assert_eq!(next_data(&mut fast).await, format!("{i}:{key}"));
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // A fragment after the last keyframe (625): `slow` resumes there, at a keyframe.
    feed.publish(session, frag(total + 1, false), false);
    let resumed = next_data(&mut slow).await;
    assert_eq!(resumed, "625:true", "skipped to the latest keyframe");
    assert_eq!(feed.skips.load(Ordering::Relaxed), 1);
    let mut last = 625;
    while last < total + 1 {
        let d = next_data(&mut slow).await;
        let seq: u64 = d.split(':').next().unwrap().parse().unwrap();
        assert_eq!(seq, last + 1, "in order after the skip");
        last = seq;
    }
}

#[test]
fn viewers_are_capped_per_feed() {
    let feed = Arc::new(LiveFeed::default());
    let viewers: Vec<Viewer> = (0..3).filter_map(|_| feed.watch(3)).collect();
    assert_eq!(viewers.len(), 3);
    assert!(feed.watch(3).is_none(), "the fourth is refused");
    drop(viewers);
    assert!(feed.watch(3).is_some());
}

/// Pushes the packets of `path` through a clip recorder that feeds `feed`, as the capture
/// thread does, one packet per `pace` (a camera delivers frames at its rate); `each` sees
/// the index of every packet pushed.
fn capture(path: &Path, feed: &Arc<LiveFeed>, pace: Duration, each: impl Fn(usize)) -> usize {
    let (params, tb, packets) = packets_of(path);
    let mut recorder = ClipRecorder::new(5.0, 5.0, 64 << 20).with_live(feed.clone());
    recorder.start_session(params, tb);
    for (i, p) in packets.iter().enumerate() {
        let t = p.dts().map(|ts| ts as f64 * f64::from(tb));
        recorder.push(p, t);
        each(i);
        std::thread::sleep(pace);
    }
    recorder.end_session();
    packets.len()
}

#[test]
fn the_capture_side_muxes_only_while_someone_watches_and_a_late_viewer_starts_on_a_keyframe() {
    let feed = Arc::new(LiveFeed::default());
    capture(&footage("bikes.mp4"), &feed, Duration::ZERO, |_| {});
    assert_eq!(feed.starts.load(Ordering::Relaxed), 0, "nobody watched");
    assert_eq!(feed.fragments.load(Ordering::Relaxed), 0);
    // A viewer arrives after 100 packets: the muxer starts from the ring's latest GOP.
    let (tx, rx) = std::sync::mpsc::channel::<Viewer>();
    let camera = {
        let feed = feed.clone();
        std::thread::spawn(move || {
            capture(
                &footage("bikes.mp4"),
                &feed,
                Duration::from_millis(2),
                |i| {
                    if i == 100 {
                        tx.send(feed.watch(4).unwrap()).unwrap();
                    }
                },
            )
        })
    };
    let mut viewer = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut bytes = Vec::new();
    rt.block_on(async {
        let first = tokio::time::timeout(Duration::from_secs(5), viewer.next()).await;
        match first {
            Ok(Some(LiveItem::Init(init))) => bytes.extend_from_slice(&init.data),
            other => panic!("the viewer's first item is the init segment: {other:?}"),
        }
        // Everything until the stream ends (then nothing more comes).
        while let Ok(Some(item)) =
            tokio::time::timeout(Duration::from_millis(500), viewer.next()).await
        {
            if let LiveItem::Fragment(d) = item {
                bytes.extend_from_slice(&d);
            }
        }
    });
    let packets = camera.join().unwrap();
    assert_eq!(feed.starts.load(Ordering::Relaxed), 1);
    assert_eq!(feed.skips.load(Ordering::Relaxed), 0);
    let live = feed.fragments.load(Ordering::Relaxed) as usize;
    assert_eq!(live, packets - 102, "every later packet but the last, live");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("watched.mp4");
    std::fs::write(&file, &bytes).unwrap();
    let probed = ffprobe(&file);
    assert!(probed.starts_with("h264,avc1,640,272,"), "{probed}");
    let frames: usize = probed.rsplit(',').next().unwrap().parse().unwrap();
    assert!(
        frames > live,
        "the ring's GOP, then live: {frames} frames, {live} live"
    );
}

#[tokio::test]
async fn a_viewer_that_lost_the_start_of_a_session_in_a_lag_resyncs_to_it() {
    let feed = Arc::new(LiveFeed::default());
    let mut v = feed.watch(4).unwrap();
    // The muxer starts and runs on while the viewer reads nothing: its `Start` is lost.
    let session = feed.begin(init(), vec![(frag(0, true), true)]).unwrap();
    let total = FEED_CAPACITY as u64 * 2;
    for i in 1..=total {
        let key = i % 25 == 0;
        feed.publish(session, frag(i, key), key);
    }
    assert_eq!(next_data(&mut v).await, format!("init:{session}"));
    assert_eq!(
        next_data(&mut v).await,
        "125:true",
        "from the latest keyframe"
    );
    assert_eq!(next_data(&mut v).await, "126:false");
}
