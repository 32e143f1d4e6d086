//! The console's pages: self-contained HTML + JS (no build step), zh-CN / en.

/// `GET /login`.
pub const LOGIN: &str = include_str!("login.html");
/// `GET /` (with a session).
pub const CONSOLE: &str = include_str!("console.html");
/// `GET /live` (with a session): the camera grid, or one camera.
pub const LIVE: &str = include_str!("live.html");
/// `GET /r/{token}`: the resident page.
pub const RESIDENT: &str = include_str!("resident.html");

/// Why the login page is shown again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginError {
    /// Wrong user name or password.
    Wrong,
    /// Too many failures from this device: wait.
    Throttled,
    /// Too many logins being checked right now: try again shortly.
    Busy,
    /// User name or password too long.
    TooLong,
}

/// The login page with an error line.
pub fn login_with_error(error: LoginError) -> String {
    let msg = match error {
        LoginError::Wrong => "用户名或密码错误。 Wrong user name or password.",
        LoginError::Throttled => {
            "此设备登录失败次数过多，请稍后再试。 Too many failed logins from this device: wait a moment and try again."
        }
        LoginError::Busy => "登录繁忙，请稍后再试。 Too many logins at once: try again in a moment.",
        LoginError::TooLong => "用户名或密码过长。 User name or password too long.",
    };
    LOGIN.replace(
        "<!--error-->",
        &format!("<p class=err role=alert>{msg}</p>"),
    )
}
