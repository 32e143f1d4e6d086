//! Console authentication: argon2 password check (bounded, see [`super::checker`]),
//! in-memory sessions, failed logins throttled per (user name, address) (see
//! [`super::throttle`]).
//!
//! Session tokens are 32 random bytes from the OS, sent to the browser as hex in an
//! `HttpOnly; SameSite=Strict` cookie. The server keeps only their SHA-256, so a lookup
//! never compares the secret itself byte by byte; the stored hash is additionally
//! compared in constant time. Each session carries a cancellation token that its event
//! streams end with (logout, expiry).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::{Argon2, PasswordVerifier};
use edge_config::{Console, Role};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use super::checker::{CheckRefused, Checker};
use super::throttle::Throttle;

/// Name of the session cookie.
pub const COOKIE: &str = "sw_session";
/// Longest user name looked at (configured names have at most 64 characters); longer
/// ones are refused before any hashing.
pub const MAX_USERNAME: usize = 64;
/// Longest password hashed; longer ones are refused before any hashing.
pub const MAX_PASSWORD: usize = 1024;
/// Verified against when the user name is unknown, so both cases take the same time.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2hvdXdhbmctZHVtbXk$2QqvC1rJfqJb0X3n6o2FvQ6CMBJ1o8ZbNnLqkJkq0Bs";

/// A logged-in staff member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub username: String,
    pub display_name: String,
    pub role: Role,
    pub expires: Instant,
}

/// Why a login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginRefused {
    /// Wrong user name or password (deliberately not told apart).
    BadCredentials,
    /// Too many failures from this address for this name: try again after this long.
    Throttled(Duration),
    /// User name or password longer than [`MAX_USERNAME`] / [`MAX_PASSWORD`].
    TooLong,
    /// The password check was not run (see [`CheckRefused`]).
    Refused(CheckRefused),
}

/// A session and what ends its streams.
#[derive(Debug)]
struct Live {
    session: Session,
    /// Cancelled at logout or when the session is found expired.
    ended: CancellationToken,
}

/// Sessions and failed-login state of one console.
pub struct Auth {
    /// The staff list in force (replaced by a reload; see [`Auth::set_staff`]).
    staff: Mutex<Vec<edge_config::Staff>>,
    timeout: Duration,
    sessions: Mutex<HashMap<[u8; 32], Live>>,
    throttle: Throttle,
    checker: Checker,
}

/// SHA-256 of a token (what the session table is keyed by).
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub use crate::token::new_token;

/// Checks `password` against an argon2 PHC string (slow by design: call off the runtime;
/// logins go through [`super::checker`], which bounds how many run).
pub fn verify_password(password: &str, phc: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), phc)
        .is_ok()
}

/// A user name as logged: at most 32 characters, control and non-ASCII characters escaped.
pub fn log_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .take(32)
        .flat_map(char::escape_default)
        .collect();
    if name.chars().nth(32).is_some() {
        out.push('…');
    }
    out
}

impl Auth {
    pub fn new(console: Console) -> Self {
        let timeout = Duration::from_secs(u64::from(console.session_timeout_min.max(1)) * 60);
        Auth {
            throttle: Throttle::new(console.lockout_after_failures),
            staff: Mutex::new(console.staff),
            timeout,
            sessions: Mutex::new(HashMap::new()),
            checker: Checker::start(),
        }
    }

    /// The session lifetime.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Checks the credentials of a login from `from` and opens a session; returns its
    /// token. The password is hashed only when the name and password are of sane length,
    /// the pair is not throttled, and the checker has room.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        from: IpAddr,
        now: Instant,
    ) -> Result<(String, Session), LoginRefused> {
        if username.len() > MAX_USERNAME || password.len() > MAX_PASSWORD {
            return Err(LoginRefused::TooLong);
        }
        if let Some(left) = self.throttle.wait_left(username, from, now) {
            return Err(LoginRefused::Throttled(left));
        }
        let staff = self.staff_member(username);
        let hash = staff
            .as_ref()
            .map_or(DUMMY_HASH, |s| s.password_hash.as_str());
        let ok = self
            .checker
            .verify(from, password, hash)
            .await
            .map_err(LoginRefused::Refused)?;
        let Some(staff) = staff.filter(|_| ok) else {
            return Err(match self.throttle.fail(username, from, now) {
                Some(delay) => LoginRefused::Throttled(delay),
                None => LoginRefused::BadCredentials,
            });
        };
        self.throttle.forget(username, from);
        let token = new_token().map_err(|_| LoginRefused::BadCredentials)?;
        let session = Session {
            username: staff.username.clone(),
            display_name: staff.display_name.clone(),
            role: staff.role,
            expires: now + self.timeout,
        };
        if let Ok(mut s) = self.sessions.lock() {
            s.retain(|_, live| {
                let keep = live.session.expires > now;
                if !keep {
                    live.ended.cancel();
                }
                keep
            });
            let ended = CancellationToken::new();
            s.insert(
                token_hash(&token),
                Live {
                    session: session.clone(),
                    ended,
                },
            );
        }
        Ok((token, session))
    }

    /// The staff member `username`, if configured.
    fn staff_member(&self, username: &str) -> Option<edge_config::Staff> {
        let staff = self.staff.lock().unwrap_or_else(|e| e.into_inner());
        staff.iter().find(|s| s.username == username).cloned()
    }

    /// Puts a reloaded staff list in force: logins check it from now on, and the sessions
    /// of anyone removed, or whose password or role changed, end (with their streams).
    pub fn set_staff(&self, staff: Vec<edge_config::Staff>) {
        let still = |s: &Session| {
            staff.iter().any(|n| {
                n.username == s.username
                    && n.role == s.role
                    && Some(&n.password_hash) == self.hash_of(&s.username).as_ref()
            })
        };
        let ended: Vec<String> = match self.sessions.lock() {
            Ok(mut sessions) => {
                let mut ended = Vec::new();
                sessions.retain(|_, live| {
                    let keep = still(&live.session);
                    if !keep {
                        live.ended.cancel();
                        ended.push(live.session.username.clone());
                    }
                    keep
                });
                ended
            }
            Err(_) => Vec::new(),
        };
        *self.staff.lock().unwrap_or_else(|e| e.into_inner()) = staff;
        for user in ended {
            tracing::info!(user = %log_name(&user), "console session ended: staff entry changed by a reload");
        }
    }

    /// The password hash of `username` in the staff list in force.
    fn hash_of(&self, username: &str) -> Option<String> {
        self.staff_member(username).map(|s| s.password_hash)
    }

    /// The live session of a token, if any.
    pub fn session(&self, token: &str, now: Instant) -> Option<Session> {
        self.live(token, now).map(|(s, _)| s)
    }

    /// The live session of a token and the token its streams end with.
    pub fn live(&self, token: &str, now: Instant) -> Option<(Session, CancellationToken)> {
        let key = token_hash(token);
        let sessions = self.sessions.lock().ok()?;
        let (stored, live) = sessions.get_key_value(&key)?;
        let same: bool = stored.ct_eq(&key).into();
        (same && live.session.expires > now).then(|| (live.session.clone(), live.ended.clone()))
    }

    /// Ends a session (and its event streams).
    pub fn logout(&self, token: &str) {
        if let Ok(mut s) = self.sessions.lock() {
            if let Some(live) = s.remove(&token_hash(token)) {
                live.ended.cancel();
            }
        }
    }
}

/// The session token from a `Cookie` header value.
pub fn token_from_cookies(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// `Set-Cookie` value for a new session.
pub fn set_cookie(token: &str, max_age: Duration) -> String {
    format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        max_age.as_secs()
    )
}

/// `Set-Cookie` value that deletes the session cookie.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2hvdXdhbmctZGVtby1zYQ$pMAMAJaZaTelU1nfxz3/8UfuGG6UrIxQfDFnKLoYXNk";
    const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const THERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    fn console(lockout: u32) -> Console {
        Console {
            lockout_after_failures: lockout,
            staff: vec![edge_config::Staff {
                username: "duty".into(),
                display_name: "Duty".into(),
                password_hash: DEMO.into(),
                role: Role::Admin,
            }],
            ..Console::default()
        }
    }

    #[test]
    fn the_demo_hash_verifies_the_demo_password_only() {
        assert!(verify_password("shouwang-demo", DEMO));
        assert!(!verify_password("shouwang-dem0", DEMO));
        assert!(!verify_password("shouwang-demo", DUMMY_HASH));
    }

    #[tokio::test]
    async fn a_session_expires_and_ends_at_logout_with_its_streams() {
        let auth = Auth::new(console(5));
        let now = Instant::now();
        let (token, s) = auth
            .login("duty", "shouwang-demo", HERE, now)
            .await
            .unwrap();
        assert_eq!(s.username, "duty");
        let (_, ended) = auth.live(&token, now).unwrap();
        assert_eq!(auth.session(&token, now + auth.timeout()), None);
        assert_eq!(auth.session("nope", now), None);
        assert!(!ended.is_cancelled());
        auth.logout(&token);
        assert_eq!(auth.session(&token, now), None);
        assert!(ended.is_cancelled(), "streams of the session end with it");
    }

    #[tokio::test]
    async fn a_reload_that_removes_a_staff_member_ends_their_sessions_and_refuses_their_login() {
        let auth = Auth::new(console(5));
        let now = Instant::now();
        let (token, _) = auth
            .login("duty", "shouwang-demo", HERE, now)
            .await
            .unwrap();
        let (_, ended) = auth.live(&token, now).unwrap();
        // Unchanged staff keep their sessions.
        auth.set_staff(console(5).staff);
        assert!(auth.session(&token, now).is_some());
        // Removed: the session and its streams end, and the login is refused.
        auth.set_staff(Vec::new());
        assert_eq!(auth.session(&token, now), None);
        assert!(ended.is_cancelled());
        assert_eq!(
            auth.login("duty", "shouwang-demo", HERE, now)
                .await
                .unwrap_err(),
            LoginRefused::BadCredentials
        );
        // Back with another role: a new login works; a changed role ends the old session.
        auth.set_staff(console(5).staff);
        let (token, _) = auth
            .login("duty", "shouwang-demo", HERE, now)
            .await
            .unwrap();
        let mut demoted = console(5).staff;
        demoted[0].role = Role::Staff;
        auth.set_staff(demoted);
        assert_eq!(auth.session(&token, now), None);
    }

    #[tokio::test]
    async fn failures_throttle_the_address_that_made_them_not_the_account() {
        let auth = Auth::new(console(3));
        let now = Instant::now();
        for _ in 0..2 {
            assert_eq!(
                auth.login("duty", "wrong", THERE, now).await.unwrap_err(),
                LoginRefused::BadCredentials
            );
        }
        assert!(matches!(
            auth.login("duty", "wrong", THERE, now).await,
            Err(LoginRefused::Throttled(_))
        ));
        assert!(matches!(
            auth.login("duty", "shouwang-demo", THERE, now).await,
            Err(LoginRefused::Throttled(_))
        ));
        assert!(auth.login("duty", "shouwang-demo", HERE, now).await.is_ok());
        let later = now + super::super::throttle::FIRST_DELAY;
        assert!(auth
            .login("duty", "shouwang-demo", THERE, later)
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn overlong_names_and_passwords_are_refused_before_hashing() {
        let auth = Auth::new(console(3));
        let now = Instant::now();
        let long_name = "x".repeat(MAX_USERNAME + 1);
        let long_password = "x".repeat(MAX_PASSWORD + 1);
        assert_eq!(
            auth.login(&long_name, "pw", HERE, now).await.unwrap_err(),
            LoginRefused::TooLong
        );
        assert_eq!(
            auth.login("duty", &long_password, HERE, now)
                .await
                .unwrap_err(),
            LoginRefused::TooLong
        );
        assert!(auth.throttle.is_empty(), "nothing stored for them");
    }

    #[test]
    fn logged_names_are_truncated_and_escaped() {
        assert_eq!(log_name("duty"), "duty");
        assert_eq!(log_name("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
        let long = log_name(&"y".repeat(100_000));
        assert!(long.len() < 40 && long.ends_with('…'), "{long}");
    }

    #[test]
    fn the_cookie_is_http_only_and_same_site_strict() {
        let c = set_cookie("abc", Duration::from_secs(60));
        assert!(
            c.contains("HttpOnly") && c.contains("SameSite=Strict"),
            "{c}"
        );
        assert_eq!(token_from_cookies("a=1; sw_session=abc; b=2"), Some("abc"));
        assert_eq!(token_from_cookies("a=1"), None);
    }
}
