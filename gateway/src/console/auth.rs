//! Console authentication: argon2 password check, in-memory sessions, per-user lock-out.
//!
//! Session tokens are 32 random bytes from the OS, sent to the browser as hex in an
//! `HttpOnly; SameSite=Strict` cookie. The server keeps only their SHA-256, so a lookup
//! never compares the secret itself byte by byte; the stored hash is additionally
//! compared in constant time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::{Argon2, PasswordVerifier};
use edge_config::{Console, Role};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Name of the session cookie.
pub const COOKIE: &str = "sw_session";
/// How long an account stays locked after too many failures.
pub const LOCKOUT: Duration = Duration::from_secs(15 * 60);
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
    /// Too many failures: try again after this long.
    Locked(Duration),
}

#[derive(Debug, Default)]
struct Failures {
    count: u32,
    locked_until: Option<Instant>,
}

/// Sessions and lock-out state of one console.
#[derive(Debug)]
pub struct Auth {
    console: Console,
    timeout: Duration,
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    failures: Mutex<HashMap<String, Failures>>,
}

/// SHA-256 of a token (what the session table is keyed by).
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// 32 random bytes from the OS, hex-encoded.
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Checks `password` against an argon2 PHC string (slow by design: call off the runtime).
pub fn verify_password(password: &str, phc: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), phc)
        .is_ok()
}

impl Auth {
    pub fn new(console: Console) -> Self {
        let timeout = Duration::from_secs(u64::from(console.session_timeout_min.max(1)) * 60);
        Auth {
            console,
            timeout,
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The session lifetime.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Is `username` locked out now? Returns the time left.
    pub fn locked(&self, username: &str, now: Instant) -> Option<Duration> {
        let failures = self.failures.lock().ok()?;
        let until = failures.get(username)?.locked_until?;
        (until > now).then(|| until - now)
    }

    /// Checks the credentials (blocking: argon2) and opens a session; returns its token.
    pub fn login(
        &self,
        username: &str,
        password: &str,
        now: Instant,
    ) -> Result<(String, Session), LoginRefused> {
        if let Some(left) = self.locked(username, now) {
            return Err(LoginRefused::Locked(left));
        }
        let staff = self.console.staff(username);
        let hash = staff.map_or(DUMMY_HASH, |s| s.password_hash.as_str());
        let ok = verify_password(password, hash) && staff.is_some();
        let Some(staff) = staff.filter(|_| ok) else {
            return Err(self.fail(username, now));
        };
        if let Ok(mut f) = self.failures.lock() {
            f.remove(username);
        }
        let token = new_token().map_err(|_| LoginRefused::BadCredentials)?;
        let session = Session {
            username: staff.username.clone(),
            display_name: staff.display_name.clone(),
            role: staff.role,
            expires: now + self.timeout,
        };
        if let Ok(mut s) = self.sessions.lock() {
            s.retain(|_, v| v.expires > now);
            s.insert(token_hash(&token), session.clone());
        }
        Ok((token, session))
    }

    fn fail(&self, username: &str, now: Instant) -> LoginRefused {
        let Ok(mut all) = self.failures.lock() else {
            return LoginRefused::BadCredentials;
        };
        // Bound the table: unknown names could otherwise grow it without limit.
        if all.len() > 10_000 {
            all.retain(|_, f| f.locked_until.is_some_and(|t| t > now));
        }
        let f = all.entry(username.to_owned()).or_default();
        if f.locked_until.is_some_and(|t| t <= now) {
            *f = Failures::default();
        }
        f.count += 1;
        if f.count >= self.console.lockout_after_failures.max(1) {
            f.locked_until = Some(now + LOCKOUT);
            tracing::warn!(username, failures = f.count, "console account locked");
            return LoginRefused::Locked(LOCKOUT);
        }
        LoginRefused::BadCredentials
    }

    /// The live session of a token, if any.
    pub fn session(&self, token: &str, now: Instant) -> Option<Session> {
        let key = token_hash(token);
        let sessions = self.sessions.lock().ok()?;
        let (stored, session) = sessions.get_key_value(&key)?;
        let same: bool = stored.ct_eq(&key).into();
        (same && session.expires > now).then(|| session.clone())
    }

    /// Ends a session.
    pub fn logout(&self, token: &str) {
        if let Ok(mut s) = self.sessions.lock() {
            s.remove(&token_hash(token));
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

    #[test]
    fn a_session_expires_and_ends_at_logout() {
        let auth = Auth::new(console(5));
        let now = Instant::now();
        let (token, s) = auth.login("duty", "shouwang-demo", now).unwrap();
        assert_eq!(s.username, "duty");
        assert_eq!(
            auth.session(&token, now).map(|s| s.username),
            Some("duty".into())
        );
        assert_eq!(auth.session(&token, now + auth.timeout()), None);
        assert_eq!(auth.session("nope", now), None);
        auth.logout(&token);
        assert_eq!(auth.session(&token, now), None);
    }

    #[test]
    fn an_account_locks_after_the_configured_failures_even_for_the_right_password() {
        let auth = Auth::new(console(3));
        let now = Instant::now();
        for _ in 0..2 {
            assert_eq!(
                auth.login("duty", "wrong", now).unwrap_err(),
                LoginRefused::BadCredentials
            );
        }
        assert!(matches!(
            auth.login("duty", "wrong", now),
            Err(LoginRefused::Locked(_))
        ));
        assert!(matches!(
            auth.login("duty", "shouwang-demo", now),
            Err(LoginRefused::Locked(_))
        ));
        assert!(auth.login("duty", "shouwang-demo", now + LOCKOUT).is_ok());
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
