//! `[[cameras]]` logins and sub-streams: each mistake is reported at its key's line and
//! column, and no message repeats a password.

use edge_config::parse;
use std::path::Path;

const HEAD: &str = r#"[site]
id = "sw-test"
name = "Test"
kind = "compound"

[[locations.areas]]
id = "gate"
name = "Gate"
kind = "other"
"#;

/// (line, col, key path, message) of every error of HEAD + `cameras`; lines count from the
/// first line of `cameras` as line 1.
fn errors(cameras: &str) -> Vec<(usize, usize, String, String)> {
    let offset = HEAD.lines().count();
    match parse(&format!("{HEAD}{cameras}"), "cams.toml", Path::new("/tmp")) {
        Ok(_) => Vec::new(),
        Err(errors) => errors
            .iter()
            .map(|e| (e.line - offset, e.col, e.path.clone(), e.message.clone()))
            .collect(),
    }
}

fn at(errors: &[(usize, usize, String, String)]) -> Vec<(usize, usize, &str)> {
    errors
        .iter()
        .map(|(l, c, p, _)| (*l, *c, p.as_str()))
        .collect()
}

#[test]
fn a_camera_with_a_login_and_a_sub_stream_is_valid() {
    let e = errors(
        r#"[[cameras]]
id = "cam-gate"
url = "rtsp://10.0.0.5:554/Streaming/Channels/101"
sub_url = "rtsp://10.0.0.5:554/Streaming/Channels/102"
username = "admin"
password = "p@ss/w:rd#1"
location = { area = "gate" }

[[cameras]]
id = "cam-door"
url = "rtsp://admin:p%40ss%2Fw@10.0.0.6/cam/realmonitor?channel=1&subtype=0"
sub_url = "rtsp://10.0.0.6/cam/realmonitor?channel=1&subtype=1"
location = { area = "gate" }
"#,
    );
    assert!(e.is_empty(), "{e:?}");
}

#[test]
fn a_sub_stream_on_a_file_source_is_rejected_at_its_key() {
    let e = errors(
        r#"[[cameras]]
id = "cam-file"
url = "footage/gate.mp4"
sub_url = "rtsp://10.0.0.5/102"
location = { area = "gate" }
"#,
    );
    assert_eq!(at(&e), [(4, 11, "cameras[0].sub_url")], "{e:?}");
    assert!(e[0].3.contains("a file has one stream"), "{e:?}");
}

#[test]
fn a_sub_stream_that_is_a_file_or_the_main_stream_again_is_rejected() {
    let e = errors(
        r#"[[cameras]]
id = "cam-a"
url = "rtsp://10.0.0.5/101"
sub_url = "file:///srv/sub.mp4"
location = { area = "gate" }

[[cameras]]
id = "cam-b"
url = "rtsp://10.0.0.5/101"
sub_url = "rtsp://10.0.0.5/101"
location = { area = "gate" }
"#,
    );
    assert_eq!(
        at(&e),
        [
            (4, 11, "cameras[0].sub_url"),
            (10, 11, "cameras[1].sub_url")
        ],
        "{e:?}"
    );
    assert!(e[0].3.contains("must be a stream"), "{e:?}");
    assert!(e[1].3.contains("the same as url"), "{e:?}");
}

#[test]
fn a_username_without_password_and_a_password_without_username_are_rejected() {
    let e = errors(
        r#"[[cameras]]
id = "cam-a"
url = "rtsp://10.0.0.5/101"
username = "admin"
location = { area = "gate" }

[[cameras]]
id = "cam-b"
url = "rtsp://10.0.0.5/101"
password = "s3cret-b"
location = { area = "gate" }
"#,
    );
    assert_eq!(
        at(&e),
        [
            (4, 12, "cameras[0].username"),
            (10, 12, "cameras[1].password")
        ],
        "{e:?}"
    );
    assert!(e[0].3.contains("needs a password"), "{e:?}");
    assert!(e[1].3.contains("needs a username"), "{e:?}");
    assert!(!format!("{e:?}").contains("s3cret-b"));
}

#[test]
fn a_login_given_twice_or_with_a_raw_slash_is_rejected_without_showing_the_password() {
    let e = errors(
        r#"[[cameras]]
id = "cam-a"
url = "rtsp://admin:s3cret-a@10.0.0.5/101"
username = "admin"
password = "s3cret-b"
location = { area = "gate" }

[[cameras]]
id = "cam-b"
url = "rtsp://admin:s3/cret-c@10.0.0.6/101"
location = { area = "gate" }

[[cameras]]
id = "cam-c"
url = "footage/gate.mp4"
username = "admin"
password = "s3cret-d"
location = { area = "gate" }
"#,
    );
    assert_eq!(
        at(&e),
        [
            (4, 12, "cameras[0].username"),
            (10, 7, "cameras[1].url"),
            (16, 12, "cameras[2].username"),
        ],
        "{e:?}"
    );
    assert!(e[0].3.contains("given twice"), "{e:?}");
    assert!(e[1].3.contains("percent-encode"), "{e:?}");
    assert!(e[2].3.contains("a file source has no login"), "{e:?}");
    let shown = format!("{e:?}");
    for secret in ["s3cret-a", "s3cret-b", "cret-c", "s3cret-d"] {
        assert!(!shown.contains(secret), "{shown}");
    }
}
