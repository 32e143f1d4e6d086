//! `[[cameras]]`: URLs, zones, masks and detection rules.

use super::places::check_location;
use super::Problems;
use crate::hints::{did_you_mean, list};
use crate::model::{
    parsed_userinfo, userinfo, Camera, CameraRule, CameraRuleKind, CameraSource, Config, Point,
    COCO_CLASSES,
};
use crate::path::KeyPath;

const SCHEMES: [&str; 5] = ["rtsp", "rtsps", "http", "https", "file"];

pub(super) fn check_cameras(config: &Config, p: &mut Problems) {
    let at = KeyPath::of("cameras");
    for (i, cam) in config.cameras.iter().enumerate() {
        check_camera(config, cam, at.index(i), p);
    }
    p.unique(
        "camera id",
        config
            .cameras
            .iter()
            .enumerate()
            .map(|(i, c)| (at.index(i).key("id"), c.id.as_str())),
    );
}

fn check_camera(config: &Config, cam: &Camera, at: KeyPath, p: &mut Problems) {
    p.id(at.key("id"), &cam.id);
    if let Some(problem) = url_problem(&cam.url) {
        p.push(at.key("url"), problem);
    }
    check_streams(cam, &at, p);
    check_location(config, &cam.location, &at.key("location"), p);
    p.range(at.key("analyse_fps"), cam.analyse_fps, 0.1, 30.0);
    check_hwaccel(cam, &at, p);
    for (j, z) in cam.zones.iter().enumerate() {
        let here = at.key("zones").index(j);
        p.id(here.key("id"), &z.id);
        check_polygon(&z.polygon, here.key("polygon"), p);
    }
    p.unique(
        "zone id",
        cam.zones
            .iter()
            .enumerate()
            .map(|(j, z)| (at.key("zones").index(j).key("id"), z.id.as_str())),
    );
    for (j, m) in cam.masks.iter().enumerate() {
        check_polygon(&m.polygon, at.key("masks").index(j).key("polygon"), p);
    }
    for (j, r) in cam.rules.iter().enumerate() {
        check_rule(cam, r, at.key("rules").index(j), p);
    }
}

/// `hwaccel_device` names a device node, and only where a VAAPI device is opened.
fn check_hwaccel(cam: &Camera, at: &KeyPath, p: &mut Problems) {
    let Some(device) = &cam.hwaccel_device else {
        return;
    };
    let here = at.key("hwaccel_device");
    if !cam.hwaccel.uses_vaapi() {
        p.push(
            here,
            format!(
                "hwaccel_device is the VAAPI device, used with hwaccel = \"vaapi\" or \"auto\" \
                 (this camera has hwaccel = \"{}\"); remove it or change hwaccel",
                cam.hwaccel.as_str()
            ),
        );
    } else if !device.is_absolute() {
        p.push(
            here,
            "hwaccel_device must be an absolute device path, e.g. \"/dev/dri/renderD128\"",
        );
    }
}

/// `sub_url` and the camera's login: a sub-stream needs a main stream and is a stream
/// itself; a login is given once, whole, and only to streams. No message quotes a URL that
/// may hold a password.
fn check_streams(cam: &Camera, at: &KeyPath, p: &mut Problems) {
    let file = matches!(cam.source(), CameraSource::File(_));
    if let Some(sub) = &cam.sub_url {
        let here = at.key("sub_url");
        if file {
            p.push(
                here.clone(),
                "sub_url needs url to be the camera's main stream (rtsp://…): a file has one \
                 stream; remove sub_url",
            );
        } else if let Some(problem) = url_problem(sub) {
            p.push(here, problem);
        } else if matches!(sub.split_once("://"), None | Some(("file", _))) {
            p.push(
                here,
                "sub_url must be a stream: rtsp://, rtsps://, http:// or https://",
            );
        } else if sub.trim() == cam.url.trim() {
            p.push(
                here,
                "sub_url is the same as url; point it at the camera's sub-stream (e.g. \
                 /Streaming/Channels/102) or remove it",
            );
        }
    }
    for (key, url) in
        std::iter::once(("url", &cam.url)).chain(cam.sub_url.iter().map(|u| ("sub_url", u)))
    {
        if let Some(problem) = raw_userinfo_problem(url) {
            p.push(at.key(key), problem);
        }
    }
    match (&cam.username, &cam.password) {
        (Some(_), None) => p.push(
            at.key("username"),
            "username needs a password; add password = \"…\" (or write both in url)",
        ),
        (None, Some(_)) => p.push(
            at.key("password"),
            "password needs a username; add username = \"…\" (e.g. \"admin\")",
        ),
        _ => {}
    }
    if cam.username.is_some() && !file && parsed_userinfo(&cam.url).is_some() {
        p.push(
            at.key("username"),
            "the login is given twice, in url and as username/password; keep one",
        );
    }
    if file && (cam.username.is_some() || cam.password.is_some()) {
        let key = if cam.username.is_some() {
            "username"
        } else {
            "password"
        };
        p.push(
            at.key(key),
            "a file source has no login; remove username/password",
        );
    }
    if cam.username.as_deref().is_some_and(|u| u.is_empty()) {
        p.push(at.key("username"), "username must not be empty");
    }
}

/// A login in a URL that FFmpeg would split elsewhere than meant: a raw `/`, `?` or `#` in
/// the password ends the host part early (the password would be sent wrong, and shown).
fn raw_userinfo_problem(url: &str) -> Option<String> {
    let (info, _) = userinfo(url)?;
    let parsed = parsed_userinfo(url);
    (info.contains(':') && parsed != Some(info)).then(|| {
        "the login in this URL holds a raw '/', '?' or '#': percent-encode them in the \
         password (%2F, %3F, %23) or give it as username/password (an '@' in the path: %40)"
            .to_owned()
    })
}

fn url_problem(url: &str) -> Option<String> {
    let fix = "use rtsp://, rtsps://, http://, https://, file:// or a file path";
    match url.split_once("://") {
        _ if url.trim().is_empty() => Some(format!("url must not be empty; {fix}")),
        Some((scheme, rest)) => {
            if !SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) {
                Some(format!("unsupported URL scheme \"{scheme}\"; {fix}"))
            } else if rest.is_empty() {
                Some(format!("URL \"{url}\" has nothing after the scheme; write e.g. rtsp://127.0.0.1:8554/lobby"))
            } else {
                None
            }
        }
        None => None,
    }
}

fn check_polygon(points: &[Point], at: KeyPath, p: &mut Problems) {
    if points.len() < 3 {
        p.push(
            at,
            format!(
                "a polygon needs at least 3 points [x, y], got {}; e.g. [[0.1, 0.1], [0.9, 0.1], [0.5, 0.9]]",
                points.len()
            ),
        );
        return;
    }
    let mut inside = true;
    for (k, pt) in points.iter().enumerate() {
        if !pt.iter().all(|c| (0.0..=1.0).contains(c)) {
            inside = false;
            p.push(
                at.index(k),
                format!(
                    "point [{}, {}] is outside the frame: coordinates are fractions of the frame size, from 0.0 to 1.0",
                    pt[0], pt[1]
                ),
            );
        }
    }
    if inside && area(points) < 1e-6 {
        p.push(
            at,
            "the polygon has no area (its points are on one line); spread the points out",
        );
    }
}

/// Absolute area by the shoelace formula.
fn area(points: &[Point]) -> f64 {
    let n = points.len();
    let twice: f64 = (0..n)
        .map(|i| {
            let (a, b) = (points[i], points[(i + 1) % n]);
            a[0] * b[1] - b[0] * a[1]
        })
        .sum();
    twice.abs() / 2.0
}

fn check_rule(cam: &Camera, r: &CameraRule, at: KeyPath, p: &mut Problems) {
    if cam.zone(&r.zone).is_none() {
        let ids = cam.zones.iter().map(|z| z.id.as_str());
        p.push(
            at.key("zone"),
            format!(
                "camera \"{}\" has no zone \"{}\"{}; its zones: {} (add a [[cameras.zones]] or fix the name)",
                cam.id,
                r.zone,
                did_you_mean(&r.zone, ids.clone()),
                list(ids)
            ),
        );
    }
    check_rule_keys(r, &at, p);
    if let Some(objects) = &r.objects {
        if objects.is_empty() {
            p.push(
                at.key("objects"),
                "list at least one COCO class, e.g. [\"person\"]",
            );
        }
        for (k, o) in objects.iter().enumerate() {
            if !COCO_CLASSES.contains(&o.as_str()) {
                p.push(
                    at.key("objects").index(k),
                    format!(
                        "\"{o}\" is not a COCO class name{}; e.g. person, bicycle, motorcycle, car",
                        did_you_mean(o, COCO_CLASSES)
                    ),
                );
            }
        }
    }
    p.positive(at.key("min_score"), r.min_score, 1.0);
    p.below(at.key("min_area"), r.min_area, 0.0, 1.0);
    if let Some(n) = r.min_persons {
        p.range(at.key("min_persons"), n, 2, 1000);
    }
    if let Some(s) = r.min_duration_s {
        p.range(at.key("min_duration_s"), s, 1, 86_400);
    }
    if let Some(s) = r.dwell_s {
        p.range(at.key("dwell_s"), s, 1, 86_400);
    }
}

fn check_rule_keys(r: &CameraRule, at: &KeyPath, p: &mut Problems) {
    use CameraRuleKind::*;
    let specific = [
        ("min_persons", r.min_persons.is_some(), Crowd),
        ("min_duration_s", r.min_duration_s.is_some(), Crowd),
        ("dwell_s", r.dwell_s.is_some(), Loitering),
        ("window", r.window.is_some(), Intrusion),
    ];
    for (key, set, kind) in specific {
        if set && r.kind != kind {
            p.push(
                at.key(key),
                format!(
                    "`{key}` only applies to kind = \"{}\"; remove it",
                    kind.as_str()
                ),
            );
        }
    }
    if r.kind == Intrusion && r.window.is_none() {
        p.push(
            at.key("kind"),
            "an intrusion rule needs window = { from = \"HH:MM\", to = \"HH:MM\" }, e.g. { from = \"22:00\", to = \"06:00\" }",
        );
    }
}
