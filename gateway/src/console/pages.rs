//! The console's pages: self-contained HTML + JS (no build step), zh-CN / en.

/// `GET /login`.
pub const LOGIN: &str = include_str!("login.html");
/// `GET /` (with a session).
pub const CONSOLE: &str = include_str!("console.html");
/// `GET /r/{token}`: the resident page.
pub const RESIDENT: &str = include_str!("resident.html");

/// The login page with an error line (`locked`: too many failures).
pub fn login_with_error(locked: bool) -> String {
    let msg = if locked {
        "登录失败次数过多，账户已锁定，请稍后再试。 Too many failed logins: the account is locked, try again later."
    } else {
        "用户名或密码错误。 Wrong user name or password."
    };
    LOGIN.replace(
        "<!--error-->",
        &format!("<p class=err role=alert>{msg}</p>"),
    )
}
