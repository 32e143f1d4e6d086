//! Same-origin only for state-changing requests: any web page open in a browser on the LAN
//! could otherwise post a form to the console (log in as someone, acknowledge an alert with
//! the victim's session cookie — `SameSite=Strict` does not cover same-site pages on other
//! ports — or fail logins on purpose). A `POST` whose `Origin` is not the console's own
//! (`http(s)://` + the `Host` it was sent to), or whose `Sec-Fetch-Site` says another site,
//! is refused with `403` before any handler runs. Requests with neither header come from
//! tools, not browsers, and pass.

use axum::extract::Request;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Why a request is cross-origin, if it is.
pub fn cross_origin(method: &Method, headers: &HeaderMap) -> Option<&'static str> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    let text = |name| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site")) {
        if !matches!(site, "same-origin" | "none") {
            return Some("Sec-Fetch-Site is not same-origin");
        }
    }
    let origin = text(header::ORIGIN)?;
    let host = text(header::HOST).unwrap_or_default();
    let own = ["http://", "https://"].iter().any(|scheme| {
        origin
            .strip_prefix(scheme)
            .is_some_and(|h| h.eq_ignore_ascii_case(host))
    });
    (host.is_empty() || !own).then_some("Origin is not this console")
}

/// The middleware: `403` for cross-origin state-changing requests.
pub async fn same_origin_only(req: Request, next: Next) -> Response {
    match cross_origin(req.method(), req.headers()) {
        Some(why) => {
            tracing::info!(path = %req.uri().path(), why, "cross-origin request refused");
            let body = axum::Json(
                serde_json::json!({ "error": format!("cross-origin request refused: {why}") }),
            );
            (StatusCode::FORBIDDEN, body).into_response()
        }
        None => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_the_consoles_own_origin_may_post() {
        let post = Method::POST;
        let host = ("host", "192.168.1.10:8080");
        assert_eq!(
            cross_origin(&post, &headers(&[host])),
            None,
            "tools send neither"
        );
        let own = headers(&[
            host,
            ("origin", "http://192.168.1.10:8080"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert_eq!(cross_origin(&post, &own), None);
        let proxied = headers(&[host, ("origin", "https://192.168.1.10:8080")]);
        assert_eq!(cross_origin(&post, &proxied), None);
        for bad in [
            headers(&[host, ("origin", "http://evil.example")]),
            headers(&[host, ("origin", "http://192.168.1.10:8081")]),
            headers(&[host, ("origin", "null")]),
            headers(&[host, ("sec-fetch-site", "cross-site")]),
            headers(&[host, ("sec-fetch-site", "same-site")]),
            headers(&[("origin", "http://192.168.1.10:8080")]),
        ] {
            assert!(cross_origin(&post, &bad).is_some(), "{bad:?}");
        }
        let evil_get = headers(&[host, ("origin", "http://evil.example")]);
        assert_eq!(
            cross_origin(&Method::GET, &evil_get),
            None,
            "reads are not state changes"
        );
    }
}
