//! Routes of the console: pages, login/logout and the JSON API (documented in the README).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Path, Query, Request, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;

use super::auth::{self, LoginRefused, Session};
use super::checker::CheckRefused;
use super::pages::LoginError;
use super::store::{self, AlertQuery};
use super::{pages, ConsoleError, State};
use crate::alerts::bus::ActionError;
use crate::alerts::lifecycle::LifecycleError;
use crate::alerts::Alert;

type St = Arc<State>;

/// The largest login request body read (a name and a password, URL-encoded).
pub const LOGIN_BODY_MAX: usize = 8 * 1024;
/// A request (its body included) must be answered within this; event streams only need
/// their headers sent within it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Every API route behind the session check, as `(method, path)` (tests enumerate it).
pub const API_ROUTES: &[(&str, &str)] = &[
    ("POST", "/logout"),
    ("GET", "/api/me"),
    ("GET", "/api/alerts"),
    ("GET", "/api/alerts/{id}"),
    ("POST", "/api/alerts/{id}/ack"),
    ("POST", "/api/alerts/{id}/resolve"),
    ("GET", "/api/alerts/{id}/snapshot"),
    ("GET", "/api/alerts/{id}/clip"),
    ("GET", "/api/events"),
    ("GET", "/api/devices"),
    ("GET", "/api/cameras"),
    ("GET", "/api/cameras/{id}/live"),
    ("GET", "/api/uplink"),
    ("GET", "/api/health"),
    ("GET", "/api/stats/response-times"),
    ("GET", "/api/residents/links"),
    ("GET", "/compounds"),
    ("GET", "/api/compounds"),
    ("GET", "/api/compounds/alerts"),
    ("POST", "/api/compounds/alerts/{id}/ack"),
    ("GET", "/api/compounds/alerts/{id}/snapshot"),
    ("GET", "/api/compounds/alerts/{id}/clip"),
    // The command room (issue 16): see `overview`.
    ("GET", "/api/site"),
    ("GET", "/api/alarm.wav"),
];

pub(crate) fn routes(state: St) -> Router {
    let guarded = Router::new()
        .route("/logout", post(logout))
        .route("/api/me", get(me))
        .route("/api/alerts", get(list_alerts))
        .route("/api/alerts/{id}", get(get_alert))
        .route("/api/alerts/{id}/ack", post(ack))
        .route("/api/alerts/{id}/resolve", post(resolve))
        .route("/api/alerts/{id}/snapshot", get(snapshot))
        .route("/api/alerts/{id}/clip", get(clip))
        .route("/api/events", get(events))
        .route("/api/devices", get(devices))
        .route("/api/cameras", get(cameras))
        .route("/api/cameras/{id}/live", get(super::live::live_socket))
        .route("/api/uplink", get(uplink))
        .route("/api/health", get(health))
        .route("/api/stats/response-times", get(response_times))
        .route("/api/residents/links", get(resident_links))
        .merge(super::compounds::routes())
        .route("/api/site", get(super::overview::site))
        .route("/api/alarm.wav", get(super::overview::alarm_wav))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_session,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/login", get(login_page).post(login))
        .route("/", get(console_page))
        .route("/live", get(super::live::live_page))
        .merge(super::compounds::station_routes())
        .merge(guarded)
        .layer(middleware::from_fn(super::origin::same_origin_only))
        .layer(middleware::from_fn(request_timeout))
        .with_state(state)
}

/// `408` for a request not answered within [`REQUEST_TIMEOUT`] (e.g. a body trickling in).
async fn request_timeout(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            ApiError(StatusCode::REQUEST_TIMEOUT, "request took too long".into()).into_response()
        }
    }
}

/// An API error: status and a JSON `{ "error": … }`.
pub(crate) struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<ConsoleError> for ApiError {
    fn from(e: ConsoleError) -> Self {
        tracing::warn!(error = %e, "console request failed");
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

/// A refused staff action: unknown `404`, already resolved `409`, the database refused the
/// write `503` (nothing was recorded; try again).
impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> Self {
        let status = match &e {
            LifecycleError::NotFound(_) => StatusCode::NOT_FOUND,
            LifecycleError::Resolved(_) => StatusCode::CONFLICT,
            LifecycleError::Store(_) => {
                tracing::warn!(error = %e, "staff action not recorded");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        ApiError(status, e.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn session_of(state: &State, headers: &HeaderMap) -> Option<(String, Session)> {
    let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
    let token = auth::token_from_cookies(cookies)?;
    let s = state.auth.session(token, Instant::now())?;
    Some((token.to_owned(), s))
}

async fn require_session(AxState(state): AxState<St>, mut req: Request, next: Next) -> Response {
    match session_of(&state, req.headers()) {
        Some((token, session)) => {
            req.extensions_mut().insert(session);
            req.extensions_mut().insert(SessionToken(token));
            next.run(req).await
        }
        None => ApiError(StatusCode::UNAUTHORIZED, "log in first".into()).into_response(),
    }
}

#[derive(Clone)]
pub(crate) struct SessionToken(pub(crate) String);

/// Runs a read-only database query off the runtime.
async fn with_db<T: Send + 'static>(
    state: &St,
    f: impl FnOnce(&rusqlite::Connection) -> Result<T, ConsoleError> + Send + 'static,
) -> ApiResult<T> {
    let path = state.db_path.clone();
    let out = tokio::task::spawn_blocking(move || {
        let conn = store::open(&path)?;
        f(&conn)
    })
    .await
    .map_err(ConsoleError::from)??;
    Ok(out)
}

async fn console_page(AxState(state): AxState<St>, headers: HeaderMap) -> Response {
    staff_page(&state, &headers, pages::CONSOLE)
}

/// A staff page, or a redirect to the login page without a session.
pub(crate) fn staff_page(state: &State, headers: &HeaderMap, page: &'static str) -> Response {
    match session_of(state, headers) {
        Some(_) => Html(page).into_response(),
        None => Redirect::to("/login").into_response(),
    }
}

async fn login_page() -> Html<&'static str> {
    Html(pages::LOGIN)
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

/// `POST /login`: a form (browser: redirect to `/`) or JSON (tools: the session as JSON).
async fn login(AxState(state): AxState<St>, req: Request) -> Response {
    let from = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |c| c.0.ip());
    let (parts, body) = req.into_parts();
    let is_json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let Ok(body) = axum::body::to_bytes(body, LOGIN_BODY_MAX).await else {
        return ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            "login request too large".into(),
        )
        .into_response();
    };
    let creds: Option<Credentials> = if is_json {
        serde_json::from_slice(&body).ok()
    } else {
        serde_urlencoded_form(&body)
    };
    let Some(creds) = creds else {
        return ApiError(
            StatusCode::BAD_REQUEST,
            "username and password required".into(),
        )
        .into_response();
    };
    let result = state
        .auth
        .login(&creds.username, &creds.password, from, Instant::now())
        .await;
    match result {
        Ok((token, session)) => logged_in(&state, &token, &session, from, is_json),
        Err(refused) => {
            let name = auth::log_name(&creds.username);
            login_refused(refused, &name, from, is_json)
        }
    }
}

fn logged_in(
    state: &State,
    token: &str,
    session: &Session,
    from: std::net::IpAddr,
    is_json: bool,
) -> Response {
    let timeout = state.auth.timeout();
    tracing::info!(username = %session.username, %from, "console login");
    let cookie = auth::set_cookie(token, timeout);
    let mut resp = if is_json {
        Json(json!({
            "username": session.username,
            "display_name": session.display_name,
            "role": session.role,
            "expires_in_s": timeout.as_secs(),
        }))
        .into_response()
    } else {
        Redirect::to("/").into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// The answer to a refused login: `401` wrong, `429` throttled (or this address already
/// has a check running), `503` every check busy, `400` too long; logged with the user
/// name truncated and escaped.
fn login_refused(
    refused: LoginRefused,
    name: &str,
    from: std::net::IpAddr,
    is_json: bool,
) -> Response {
    let (status, page, text, retry) = match refused {
        LoginRefused::BadCredentials => {
            tracing::info!(username = %name, %from, "console login refused");
            let text = "wrong user name or password".to_owned();
            (StatusCode::UNAUTHORIZED, LoginError::Wrong, text, None)
        }
        LoginRefused::Throttled(left) => {
            tracing::info!(username = %name, %from, wait_s = left.as_secs(), "console login throttled");
            let text = format!(
                "too many failed logins from this address: wait {} s",
                left.as_secs()
            );
            (
                StatusCode::TOO_MANY_REQUESTS,
                LoginError::Throttled,
                text,
                Some(left.as_secs().max(1)),
            )
        }
        LoginRefused::TooLong => {
            let text = "user name or password too long".to_owned();
            (StatusCode::BAD_REQUEST, LoginError::TooLong, text, None)
        }
        LoginRefused::Refused(CheckRefused::AddressBusy) => {
            let text = CheckRefused::AddressBusy.to_string();
            (
                StatusCode::TOO_MANY_REQUESTS,
                LoginError::Busy,
                text,
                Some(1),
            )
        }
        LoginRefused::Refused(CheckRefused::Busy) => {
            let text = CheckRefused::Busy.to_string();
            (
                StatusCode::SERVICE_UNAVAILABLE,
                LoginError::Busy,
                text,
                Some(1),
            )
        }
    };
    let mut resp = if is_json {
        ApiError(status, text).into_response()
    } else {
        (status, Html(pages::login_with_error(page))).into_response()
    };
    if let Some(v) = retry.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

fn serde_urlencoded_form(body: &[u8]) -> Option<Credentials> {
    let mut username = None;
    let mut password = None;
    for (k, v) in form_pairs(body) {
        match k.as_str() {
            "username" => username = Some(v),
            "password" => password = Some(v),
            _ => {}
        }
    }
    Some(Credentials {
        username: username?,
        password: password?,
    })
}

/// `application/x-www-form-urlencoded` pairs.
fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    let hex = |b: u8| (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let decode = |s: &str| -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let escaped = (bytes[i] == b'%')
                .then(|| Some((hex(*bytes.get(i + 1)?)?, hex(*bytes.get(i + 2)?)?)))
                .flatten();
            match (bytes[i], escaped) {
                (_, Some((hi, lo))) => {
                    out.push(hi * 16 + lo);
                    i += 3;
                }
                (b'+', None) => {
                    out.push(b' ');
                    i += 1;
                }
                (b, None) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

async fn logout(
    AxState(state): AxState<St>,
    Extension(token): Extension<SessionToken>,
) -> Response {
    state.auth.logout(&token.0);
    let mut resp = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&auth::clear_cookie()) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

async fn me(Extension(s): Extension<Session>) -> Json<serde_json::Value> {
    Json(json!({ "username": s.username, "display_name": s.display_name, "role": s.role }))
}

async fn list_alerts(
    AxState(state): AxState<St>,
    Query(q): Query<AlertQuery>,
) -> ApiResult<Json<Vec<Alert>>> {
    Ok(Json(with_db(&state, move |c| store::alerts(c, &q)).await?))
}

async fn find(state: &St, id: String) -> ApiResult<Alert> {
    with_db(state, move |c| store::alert(c, &id))
        .await?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "no such alert".into()))
}

async fn get_alert(AxState(state): AxState<St>, Path(id): Path<String>) -> ApiResult<Json<Alert>> {
    Ok(Json(find(&state, id).await?))
}

/// Hands a staff action to the alert task, which alone knows whether the alert is active.
async fn act(state: &St, id: String, who: &Session, resolve: bool) -> ApiResult<Json<Alert>> {
    let (bus, by) = (&state.deps.alert_inputs, who.username.clone());
    let result = if resolve {
        bus.resolve(id, by).await
    } else {
        bus.acknowledge(id, by).await
    };
    match result {
        Ok(alert) => {
            tracing::info!(id = %alert.id, by = %who.username, resolve, "staff action recorded");
            Ok(Json(alert))
        }
        Err(ActionError::Refused(e)) => Err(e.into()),
        Err(ActionError::Unavailable(why)) => {
            Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, why.into()))
        }
    }
}

async fn ack(
    AxState(state): AxState<St>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
) -> ApiResult<Json<Alert>> {
    act(&state, id, &s, false).await
}

async fn resolve(
    AxState(state): AxState<St>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
) -> ApiResult<Json<Alert>> {
    act(&state, id, &s, true).await
}

/// Serves an evidence file named in the alert's readings, only from `<data_dir>/evidence`.
pub(super) async fn evidence(
    state: St,
    id: String,
    key: &'static str,
    camera: Option<String>,
    mime: fn(&str) -> &'static str,
) -> Response {
    let alert = match find(&state, id).await {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let named = match &camera {
        Some(c) => alert.readings["linked_cameras"]
            .as_array()
            .and_then(|l| l.iter().find(|e| e["camera"] == c.as_str()))
            .and_then(|e| e.get(key)),
        None => alert.readings.get(key),
    };
    let Some(path) = named.and_then(|v| v.as_str()) else {
        return ApiError(StatusCode::NOT_FOUND, format!("this alert has no {key}")).into_response();
    };
    let root = state.deps.data_dir.join("evidence");
    let file = match (
        tokio::fs::canonicalize(&root).await,
        tokio::fs::canonicalize(path).await,
    ) {
        (Ok(r), Ok(f)) if f.starts_with(&r) => f,
        _ => {
            return ApiError(StatusCode::NOT_FOUND, format!("{key} not available")).into_response()
        }
    };
    // Evidence files never change once written: the list's thumbnails are fetched once.
    let headers = [
        (header::CONTENT_TYPE, mime(path)),
        (header::CACHE_CONTROL, "private, max-age=3600"),
    ];
    match tokio::fs::read(&file).await {
        Ok(bytes) => (headers, bytes).into_response(),
        Err(_) => ApiError(StatusCode::NOT_FOUND, format!("{key} not available")).into_response(),
    }
}

/// `?camera=ID`: the evidence of one of the cameras linked to a sensor alert (its
/// `linked_cameras`) instead of the first.
#[derive(Debug, Default, Deserialize)]
struct EvidenceQuery {
    camera: Option<String>,
}

async fn snapshot(
    AxState(state): AxState<St>,
    Path(id): Path<String>,
    Query(q): Query<EvidenceQuery>,
) -> Response {
    evidence(state, id, "snapshot", q.camera, |_| "image/jpeg").await
}

async fn clip(
    AxState(state): AxState<St>,
    Path(id): Path<String>,
    Query(q): Query<EvidenceQuery>,
) -> Response {
    evidence(state, id, "clip", q.camera, clip_mime).await
}

/// Clips are MP4 where the camera's codec allows (see `video::evidence`), else Matroska.
pub(super) fn clip_mime(path: &str) -> &'static str {
    if path.ends_with(".mp4") {
        "video/mp4"
    } else {
        "video/x-matroska"
    }
}

/// `GET /api/events`: every committed alert event as an SSE `alert` event; `resync` when
/// this client fell behind (reload the list). The stream ends with its session (logout or
/// expiry) and at shutdown.
async fn events(
    AxState(state): AxState<St>,
    Extension(token): Extension<SessionToken>,
) -> Response {
    let Some((session, ended)) = state.auth.live(&token.0, Instant::now()) else {
        return ApiError(StatusCode::UNAUTHORIZED, "log in first".into()).into_response();
    };
    let session_over = session_end(ended, session.expires);
    let rx = state.deps.events.resubscribe();
    let stop = state.stop.clone();
    let stream = alert_stream(rx, |_| true)
        .take_until(stop.cancelled_owned())
        .take_until(session_over);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// Completes when a session ends: at logout (`ended` cancelled) or at `expires`.
pub(crate) fn session_end(
    ended: tokio_util::sync::CancellationToken,
    expires: Instant,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let expires = tokio::time::Instant::from_std(expires);
    async move {
        tokio::select! {
            _ = ended.cancelled_owned() => {}
            _ = tokio::time::sleep_until(expires) => {}
        }
    }
}

/// SSE events of a broadcast of alerts, filtered by `keep`.
pub(crate) fn alert_stream(
    rx: tokio::sync::broadcast::Receiver<Alert>,
    keep: impl Fn(&Alert) -> bool + Send + 'static,
) -> impl futures_util::Stream<Item = Result<Event, Infallible>> + Send {
    use tokio::sync::broadcast::error::RecvError;
    let hello =
        futures_util::stream::once(async { Ok(Event::default().event("hello").data("{}")) });
    let rest = futures_util::stream::unfold((rx, keep), |(mut rx, keep)| async move {
        loop {
            match rx.recv().await {
                Ok(alert) if keep(&alert) => {
                    let data = serde_json::to_string(&alert).unwrap_or_default();
                    return Some((Ok(Event::default().event("alert").data(data)), (rx, keep)));
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(_)) => {
                    return Some((Ok(Event::default().event("resync").data("{}")), (rx, keep)))
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    hello.chain(rest)
}

async fn devices(AxState(state): AxState<St>) -> ApiResult<Json<serde_json::Value>> {
    let active = with_db(&state, store::active_by_device).await?;
    let ingest = state.deps.ingest.snapshot();
    let rows = super::devices::rows(&state.deps.board, &ingest, &state.config(), &active);
    Ok(Json(json!({ "devices": rows })))
}

async fn cameras(AxState(state): AxState<St>) -> Json<serde_json::Value> {
    let fps = state.fps.lock().map(|f| f.clone()).unwrap_or_default();
    let evidence = state.deps.data_dir.join("evidence");
    let running = state.cameras();
    let rows: Vec<_> = state
        .config()
        .cameras
        .iter()
        .map(|c| {
            let stats = running
                .iter()
                .find(|(id, _)| *id == c.id)
                .map(|(_, s)| s.snapshot());
            let status = match (c.enabled, &stats) {
                (false, _) => "disabled",
                (true, None) => "unavailable",
                (true, Some(_)) => "running",
            };
            json!({
                "id": c.id,
                "status": status,
                "analysis_fps": fps.get(&c.id).copied(),
                "stats": stats,
                "last_snapshot": latest_file(&evidence.join(&c.id), "jpg"),
            })
        })
        .collect();
    Json(json!({ "cameras": rows }))
}

fn latest_file(dir: &std::path::Path, ext: &str) -> Option<String> {
    let entries = std::fs::read_dir(dir).ok()?;
    entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == ext))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.file_name())))
        .max()
        .map(|(_, name)| name.to_string_lossy().into_owned())
}

async fn uplink(AxState(state): AxState<St>) -> ApiResult<Json<serde_json::Value>> {
    let dir = state.deps.data_dir.clone();
    let report = tokio::task::spawn_blocking(move || crate::status::status_report(&dir))
        .await
        .map_err(ConsoleError::from)?
        .map_err(ConsoleError::from)?;
    Ok(Json(json!({
        "link": state.deps.uplink.snapshot(),
        "backlog_total": report.outbox.backlog_total,
        "oldest_undelivered_age_s": report.oldest_undelivered_age_s,
        "outbox": report.outbox,
    })))
}

/// What the console's banner needs: alert events the database has not accepted yet, the
/// disk reserve, and every faulted stage (alarm path first) with the self-test.
async fn health(AxState(state): AxState<St>) -> Json<serde_json::Value> {
    let health = state.deps.health.as_ref().map(|h| h.snapshot());
    let faults: Vec<serde_json::Value> = health.as_ref().map_or(Vec::new(), |h| {
        h.faults()
            .into_iter()
            .map(|(name, s)| {
                json!({
                    "stage": name,
                    "alarm_path": s.severity == crate::supervise::Severity::AlarmPath,
                    "since": s.faulted_since,
                    "error": s.last_error,
                })
            })
            .collect()
    });
    Json(json!({
        "alert_store": state.deps.alert_store.snapshot(),
        "reserve": state.deps.reserve.as_ref().map(|r| r.snapshot()),
        "faults": faults,
        "self_test": health.and_then(|h| h.self_test),
    }))
}

async fn response_times(AxState(state): AxState<St>) -> ApiResult<Json<serde_json::Value>> {
    let now = chrono::Utc::now();
    let week = store::ago(now, chrono::Duration::days(7));
    let day = store::ago(now, chrono::Duration::hours(24));
    let alerts = with_db(&state, move |c| store::raised_since(c, week)).await?;
    let last_day: Vec<Alert> = alerts
        .iter()
        .filter(|a| a.raised_at >= day)
        .cloned()
        .collect();
    let targets = &state.deps.config.console.response;
    Ok(Json(json!({
        "last_24h": store::response_times(&last_day),
        "last_7d": store::response_times(&alerts),
        "targets": super::overview::targets_json(targets),
        "against_targets": {
            "last_24h": super::overview::against_targets(&last_day, targets, now),
            "last_7d": super::overview::against_targets(&alerts, targets, now),
        },
    })))
}

async fn resident_links(AxState(state): AxState<St>) -> ApiResult<Json<serde_json::Value>> {
    let path = state.db_path.clone();
    let links = tokio::task::spawn_blocking(move || crate::residents::links::list(&path))
        .await
        .map_err(ConsoleError::from)?
        .map_err(ConsoleError::from)?;
    Ok(Json(json!({ "units": links })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_event_stream_ends_when_its_session_expires_or_logs_out() {
        let timeout = Duration::from_secs(480 * 60);
        let expires = Instant::now() + timeout;
        let token = tokio_util::sync::CancellationToken::new();
        let expiry = tokio::spawn(session_end(token.clone(), expires));
        tokio::time::advance(timeout - Duration::from_secs(1)).await;
        tokio::task::yield_now().await;
        assert!(!expiry.is_finished(), "still within the session");
        tokio::time::advance(Duration::from_secs(2)).await;
        tokio::time::timeout(Duration::from_secs(1), expiry)
            .await
            .expect("ended at expiry")
            .unwrap();
        let logout = tokio::spawn(session_end(token.clone(), expires + timeout));
        token.cancel();
        tokio::time::timeout(Duration::from_secs(1), logout)
            .await
            .expect("ended at logout")
            .unwrap();
    }

    #[test]
    fn form_bodies_are_decoded() {
        let c = serde_urlencoded_form(b"username=duty&password=shouwang%2Ddemo+x").unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("duty", "shouwang-demo x")
        );
        assert!(serde_urlencoded_form(b"username=duty").is_none());
    }
}
