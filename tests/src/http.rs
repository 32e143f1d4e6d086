//! Plain HTTP/1.1 over a fresh TCP connection (`Connection: close`): enough to talk to the
//! console and the resident pages without an HTTP client crate.

use std::io::{Read, Write};

/// A response: its status code and its raw text (status line, headers, body).
pub struct Response {
    pub status: u16,
    pub raw: String,
}

impl Response {
    /// The body (after the blank line).
    pub fn body(&self) -> &str {
        self.raw.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let head = self
            .raw
            .split_once("\r\n\r\n")
            .map_or(&*self.raw, |(h, _)| h);
        head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends `method path` with optional `headers` (`Name: value` lines) and `body`.
pub fn request(addr: &str, method: &str, path: &str, headers: &[&str], body: &str) -> Response {
    let s = std::net::TcpStream::connect(addr).expect("connect to the HTTP server");
    exchange(s, addr, method, path, headers, body).expect("HTTP exchange")
}

/// Like [`request`], from the loopback address `source` (e.g. `127.0.0.2`: another
/// machine on the LAN as far as the server can tell), giving up after `wait`.
pub fn request_from(
    source: std::net::IpAddr,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
    wait: std::time::Duration,
) -> std::io::Result<Response> {
    let s = connect_from(source, addr, wait)?;
    s.set_read_timeout(Some(wait))?;
    s.set_write_timeout(Some(wait))?;
    exchange(s, addr, method, path, headers, body)
}

/// A TCP connection to `addr` whose local end is bound to `source` (port chosen by the OS);
/// gives up after `wait` (a server that no longer accepts leaves connects hanging).
pub fn connect_from(
    source: std::net::IpAddr,
    addr: &str,
    wait: std::time::Duration,
) -> std::io::Result<std::net::TcpStream> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let target: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let (std::net::IpAddr::V4(src), std::net::SocketAddr::V4(dst)) = (source, target) else {
        return Err(std::io::Error::other("IPv4 loopback only"));
    };
    // SAFETY: plain socket(2)/bind(2)/connect(2) on a descriptor this function owns; the
    // sockaddr structures live on the stack for the duration of the calls.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let owned = OwnedFd::from_raw_fd(fd);
        let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let local = sockaddr(src, 0);
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Linux bounds a blocking connect(2) by the send timeout.
        let timeout = libc::timeval {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_usec: libc::suseconds_t::from(wait.subsec_micros() as i32),
        };
        let set = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        if set != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let remote = sockaddr(*dst.ip(), dst.port());
        if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(std::net::TcpStream::from(owned))
    }
}

fn exchange(
    mut s: std::net::TcpStream,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> std::io::Result<Response> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes)?;
    let raw = String::from_utf8_lossy(&bytes).into_owned();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok(Response { status, raw })
}

/// `GET path`: `(status, body)`.
pub fn get(addr: &str, path: &str) -> (u16, String) {
    let r = request(addr, "GET", path, &[], "");
    (r.status, r.body().to_owned())
}
