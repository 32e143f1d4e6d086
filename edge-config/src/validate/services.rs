//! `[detector]`, `[uplink]`, `[console]` and `[storage]`.

use super::{topic_problem, Problems};
use crate::model::{Config, Qos, Uplink};
use crate::path::KeyPath;

pub(super) fn check_detector(config: &Config, p: &mut Problems) {
    let d = &config.detector;
    let at = KeyPath::of("detector");
    if d.model.is_empty() || d.model.contains(['/', '\\']) || d.model.ends_with(".onnx") {
        p.push(
            at.key("model"),
            format!(
                "model \"{}\" must be a bare model name without directory or .onnx, e.g. \"yolox_nano\"",
                d.model
            ),
        );
    }
    if let Some(lib) = &d.onnxruntime {
        p.file(at.key("onnxruntime"), lib);
    }
    p.range(at.key("intra_threads"), d.intra_threads, 1, 64);
}

pub(super) fn check_uplink(config: &Config, p: &mut Problems) {
    if let Some(up) = &config.uplink {
        check_upstream(up, KeyPath::of("uplink"), p);
    }
    if let Some(up) = &config.station_link {
        check_upstream(up, KeyPath::of("station_link"), p);
        let same = config
            .uplink
            .as_ref()
            .is_some_and(|u| u.endpoints().iter().any(|e| up.endpoints().contains(e)));
        if same {
            p.push(
                KeyPath::of("station_link.host"),
                "the station link points at the platform's broker; write the street station gateway's address",
            );
        }
    }
}

/// One upstream's keys (`[uplink]` or `[station_link]`) at `at`.
fn check_upstream(up: &Uplink, at: KeyPath, p: &mut Problems) {
    check_uplink_hosts(up, &at, p);
    if up.port == Some(0) {
        p.push(
            at.key("port"),
            "port 0 is not a valid port; use e.g. 8883 (TLS) or 1883",
        );
    }
    if let Some(id) = &up.client_id {
        if id.trim().is_empty() || id.contains(['+', '#', '/']) {
            p.push(
                at.key("client_id"),
                "write a client id without '/', '+' or '#', e.g. \"shouwang-sw-demo-001\"",
            );
        }
    }
    check_uplink_tls(up, &at, p);
    check_uplink_auth(up, &at, p);
    let prefix = &up.topic_prefix;
    if let Some(problem) = topic_problem(prefix) {
        p.push(
            at.key("topic_prefix"),
            format!("{problem} (topic_prefix, e.g. \"shouwang\")"),
        );
    }
    if up.qos == Qos::AtMostOnce {
        p.push(
            at.key("qos"),
            "qos 0 may silently lose alerts; use qos = 1 (at least once, default) or 2 (exactly once)",
        );
    }
    p.range(at.key("keep_alive_s"), up.keep_alive_s, 5, 3600);
    let o = &up.outbox;
    let at = at.key("outbox");
    p.range(at.key("max_inflight"), o.max_inflight, 1, 65_535);
    p.range(at.key("batch"), o.batch, 1, 10_000);
    p.range(
        at.key("retry_backoff_max_s"),
        o.retry_backoff_max_s,
        1,
        3600,
    );
}

/// `host` or `hosts`, not both; every `hosts` entry a host with an optional port, no
/// entry twice.
fn check_uplink_hosts(up: &Uplink, at: &KeyPath, p: &mut Problems) {
    match (up.host.is_empty(), up.hosts.is_empty()) {
        (true, true) => p.push(
            at.key("host"),
            "write the platform broker's host, e.g. host = \"platform.example.org\", or hosts = [\"a:8883\", \"b:8883\"] for a cluster",
        ),
        (false, false) => p.push(
            at.key("hosts"),
            "use either host or hosts, not both: put every broker in hosts",
        ),
        (false, true) => p.not_blank(at.key("host"), &up.host, "\"platform.example.org\""),
        (true, false) => {}
    }
    let mut seen = std::collections::HashSet::new();
    for (i, entry) in up.hosts.iter().enumerate() {
        match crate::model::split_host_port(entry, up.port()) {
            Err(why) => p.push(at.key("hosts").index(i), format!("\"{entry}\": {why}")),
            Ok(endpoint) if !seen.insert(endpoint.clone()) => p.push(
                at.key("hosts").index(i),
                format!("{}:{} is listed twice", endpoint.0, endpoint.1),
            ),
            Ok(_) => {}
        }
    }
}

fn check_uplink_tls(up: &Uplink, at: &KeyPath, p: &mut Problems) {
    let Some(tls) = &up.tls else { return };
    let at = at.key("tls");
    for (key, file) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
        if let Some(file) = file {
            p.file(at.key(key), file);
        }
    }
    match (&tls.cert, &tls.key) {
        (Some(_), None) => p.push(
            at.key("cert"),
            "a client `cert` needs its `key`; add key = \"…\" or remove cert",
        ),
        (None, Some(_)) => p.push(
            at.key("key"),
            "a client `key` needs its `cert`; add cert = \"…\" or remove key",
        ),
        _ => {}
    }
}

fn check_uplink_auth(up: &Uplink, at: &KeyPath, p: &mut Problems) {
    let has_password = up.password.is_some() || up.password_file.is_some();
    if up.password.is_some() && up.password_file.is_some() {
        p.push(
            at.key("password_file"),
            "set either `password` or `password_file`, not both; prefer password_file and remove password",
        );
    } else if let Some(file) = &up.password_file {
        p.file(at.key("password_file"), file);
    }
    if has_password && up.username.is_none() {
        p.push(
            at.key("username"),
            "a password needs a username; add username = \"…\"",
        );
    }
}

pub(super) fn check_console(config: &Config, p: &mut Problems) {
    let c = &config.console;
    let at = KeyPath::of("console");
    p.range(
        at.key("session_timeout_min"),
        c.session_timeout_min,
        5,
        10_080,
    );
    p.range(
        at.key("lockout_after_failures"),
        c.lockout_after_failures,
        1,
        100,
    );
    for (i, s) in c.staff.iter().enumerate() {
        let here = at.key("staff").index(i);
        if let Some(problem) = username_problem(&s.username) {
            p.push(here.key("username"), problem);
        }
        p.not_blank(
            here.key("display_name"),
            &s.display_name,
            "\"值班员 (Duty officer)\"",
        );
        if let Err(problem) = check_phc(&s.password_hash) {
            p.push(
                here.key("password_hash"),
                format!(
                    "{problem}; generate one with e.g. `echo -n 'PASSWORD' | argon2 \"$(openssl rand -base64 16)\" -id -t 2 -k 19456 -e`"
                ),
            );
        }
    }
    if let Some(bind) = config.residents.bind {
        if bind.port() != 0 && bind == c.bind {
            p.push(
                KeyPath::of("residents").key("bind"),
                "residents.bind is the console's own address; give the resident pages another \
                 port or address, e.g. 0.0.0.0:8081, or leave it out to serve them on the console",
            );
        }
    }
    p.unique(
        "staff username",
        c.staff.iter().enumerate().map(|(i, s)| {
            (
                at.key("staff").index(i).key("username"),
                s.username.as_str(),
            )
        }),
    );
}

fn username_problem(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    (!ok).then(|| {
        format!("username \"{name}\" must be 1 to 64 lowercase letters, digits, '.', '-' or '_'")
    })
}

fn is_b64(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/')
}

/// The weakest staff password hash accepted: OWASP's minimum for argon2id (19 MiB, two
/// passes). Anything cheaper lets a stolen configuration be brute-forced quickly.
pub(crate) const MIN_ARGON2_MEMORY_KIB: u32 = 19_456;
/// See [`MIN_ARGON2_MEMORY_KIB`].
pub(crate) const MIN_ARGON2_PASSES: u32 = 2;

/// Check an argon2 PHC string:
/// `$argon2id$v=19$m=19456,t=2,p=1$SALT$HASH` (version optional). Only argon2id, with at
/// least [`MIN_ARGON2_MEMORY_KIB`] of memory and [`MIN_ARGON2_PASSES`] passes, is accepted.
pub(crate) fn check_phc(phc: &str) -> Result<(), String> {
    let shape = "expected an argon2 PHC string like $argon2id$v=19$m=19456,t=2,p=1$SALT$HASH";
    let parts: Vec<&str> = phc.split('$').collect();
    let (Some(&""), Some(alg)) = (parts.first(), parts.get(1)) else {
        return Err(format!("not a PHC string ({shape})"));
    };
    if ["argon2i", "argon2d"].contains(alg) {
        return Err(format!(
            "${alg}$ is too weak for staff passwords: use $argon2id$ ({shape})"
        ));
    }
    if *alg != "argon2id" {
        return Err(format!(
            "password_hash must start with $argon2id$ ({shape})"
        ));
    }
    let mut rest = &parts[2..];
    if let Some(v) = rest.first().and_then(|v| v.strip_prefix("v=")) {
        if v != "16" && v != "19" {
            return Err(format!("unknown argon2 version v={v} (use v=19)"));
        }
        rest = &rest[1..];
    }
    let [params, salt, hash] = rest else {
        return Err(format!("wrong number of '$' sections ({shape})"));
    };
    check_params(params).map_err(|e| format!("{e} ({shape})"))?;
    if salt.len() < 11 || !is_b64(salt) {
        return Err("the salt must be at least 8 bytes of unpadded base64".to_string());
    }
    if hash.len() < 16 || !is_b64(hash) {
        return Err("the hash must be at least 12 bytes of unpadded base64".to_string());
    }
    Ok(())
}

fn check_params(params: &str) -> Result<(), String> {
    let mut seen: Vec<(&str, u32)> = Vec::new();
    for kv in params.split(',') {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("bad parameter \"{kv}\""))?;
        if ["m", "t", "p"].contains(&k) {
            let n: u32 = v
                .parse()
                .map_err(|_| format!("parameter {k}={v} is not a number"))?;
            if n == 0 {
                return Err(format!("parameter {k} must be at least 1"));
            }
            seen.push((k, n));
        } else if !["keyid", "data"].contains(&k) {
            return Err(format!("unknown parameter \"{k}\""));
        }
    }
    let value = |name: &str| seen.iter().find(|(k, _)| *k == name).map(|(_, n)| *n);
    if let Some(k) = ["m", "t", "p"].iter().find(|k| value(k).is_none()) {
        return Err(format!("parameter {k}= is missing"));
    }
    let (m, t) = (value("m").unwrap_or(0), value("t").unwrap_or(0));
    if m < MIN_ARGON2_MEMORY_KIB || t < MIN_ARGON2_PASSES {
        return Err(format!(
            "m={m},t={t} is too weak for staff passwords: use at least \
             m={MIN_ARGON2_MEMORY_KIB} (19 MiB) and t={MIN_ARGON2_PASSES}"
        ));
    }
    Ok(())
}

pub(super) fn check_storage(config: &Config, p: &mut Problems) {
    let s = &config.storage;
    let at = KeyPath::of("storage");
    if s.data_dir.as_os_str().is_empty() {
        p.push(
            at.key("data_dir"),
            "data_dir must not be empty; e.g. \"/var/lib/shouwang\"",
        );
    }
    if s.quota_mb < 16 {
        p.push(
            at.key("quota_mb"),
            format!(
                "quota_mb {} is too small; use at least 16 (default 1024)",
                s.quota_mb
            ),
        );
    }
    if s.reserve_mb > 1024 {
        p.push(
            at.key("reserve_mb"),
            format!(
                "reserve_mb {} is more than 1024; a few MiB record thousands of alarms \
                 (default 16, 0 for none)",
                s.reserve_mb
            ),
        );
    }
}

pub(super) fn check_supervision(config: &Config, p: &mut Problems) {
    let s = &config.supervision;
    let at = KeyPath::of("supervision");
    if !(1..=60).contains(&s.self_test_period_s) {
        p.push(
            at.key("self_test_period_s"),
            format!(
                "self_test_period_s {} is out of range; use 1 to 60 (default 10)",
                s.self_test_period_s
            ),
        );
    }
    if s.self_test_timeout_s <= s.self_test_period_s || s.self_test_timeout_s > 90 {
        p.push(
            at.key("self_test_timeout_s"),
            format!(
                "self_test_timeout_s {} must be more than self_test_period_s ({}) and at most 90, \
                 so that a broken alarm path shows as a fault within EN 54-2's 100 s (default 60)",
                s.self_test_timeout_s, s.self_test_period_s
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::check_phc;

    #[test]
    fn real_argon2id_hashes_are_accepted() {
        let h = "$argon2id$v=19$m=19456,t=2,p=1$c2hvdXdhbmctZGVtby1zYQ$pMAMAJaZaTelU1nfxz3/8UfuGG6UrIxQfDFnKLoYXNk";
        assert_eq!(check_phc(h), Ok(()));
    }

    #[test]
    fn bcrypt_and_truncated_hashes_are_rejected() {
        assert!(check_phc("$2b$12$abcdefghijklmnopqrstuv").is_err());
        assert!(check_phc("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ").is_err());
        assert!(check_phc(
            "$argon2id$v=19$m=19456,t=2$c2hvdXdhbmctZGVtby1zYQ$pMAMAJaZaTelU1nfxz3/8Q"
        )
        .is_err());
        assert!(check_phc("plaintext").is_err());
    }

    #[test]
    fn cheap_or_side_channel_prone_hashes_are_refused() {
        let salt_hash = "c2hvdXdhbmctZGVtby1zYQ$pMAMAJaZaTelU1nfxz3/8UfuGG6UrIxQfDFnKLoYXNk";
        for params in ["m=1,t=1,p=1", "m=19455,t=2,p=1", "m=19456,t=1,p=1"] {
            let h = format!("$argon2id$v=19${params}${salt_hash}");
            let e = check_phc(&h).unwrap_err();
            assert!(e.contains("too weak"), "{params}: {e}");
        }
        for alg in ["argon2i", "argon2d"] {
            let h = format!("${alg}$v=19$m=65536,t=3,p=1${salt_hash}");
            assert!(
                check_phc(&h).unwrap_err().contains("use $argon2id$"),
                "{alg}"
            );
        }
        let strong = format!("$argon2id$v=19$m=65536,t=3,p=4${salt_hash}");
        assert_eq!(check_phc(&strong), Ok(()));
    }
}
