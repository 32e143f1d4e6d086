//! The street station's jurisdiction (issue 19): its compounds' alerts next to its own.
//!
//! `GET /compounds` is the page; `GET /api/compounds` lists each `[[compounds]]` entry with
//! its link state (offline while its `compound_offline` alert is active) and its active
//! alerts by level; `GET /api/compounds/alerts?compound=ID` their latest events (active first);
//! `POST /api/compounds/alerts/{id}/ack` sends the officer's acknowledgement back to the
//! compound, whose next event (acknowledged, by "name @ station") comes back here.

use std::sync::Arc;

use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use rusqlite::OptionalExtension;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Session;
use super::{store, ConsoleError, State};
use crate::alerts::remote;

type St = Arc<State>;

/// The page.
const PAGE: &str = include_str!("compounds.html");

/// Most events listed at once.
const LIST_MAX: usize = 500;

pub(super) fn routes() -> Router<St> {
    Router::new()
        .route("/compounds", get(page))
        .route("/api/compounds", get(compounds))
        .route("/api/compounds/alerts", get(alerts))
        .route("/api/compounds/alerts/{id}/ack", post(ack))
        .merge(evidence_routes())
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// Runs a read on the database off the runtime.
async fn read<T: Send + 'static>(
    state: &St,
    f: impl FnOnce(&rusqlite::Connection) -> Result<T, ConsoleError> + Send + 'static,
) -> Result<T, Response> {
    let path = state.db_path.clone();
    let out = tokio::task::spawn_blocking(move || f(&store::open(&path)?)).await;
    match out {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())),
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

async fn compounds(AxState(state): AxState<St>) -> Response {
    let config = state.config();
    let ids: Vec<String> = config.compounds.iter().map(|c| c.id.clone()).collect();
    let found = read(&state, move |conn| {
        let counts = remote::active_counts(conn)?;
        let beats = remote::heartbeats(conn)?;
        let mut offline = Vec::new();
        for id in &ids {
            let key = remote::offline_source(id).key();
            let silent: Option<String> = conn
                .query_row(
                    "SELECT raised_at FROM alerts WHERE source = ?1 AND kind = 'compound_offline' AND active = 1",
                    [key],
                    |r| r.get(0),
                )
                .optional()?;
            offline.push(silent);
        }
        Ok((counts, offline, beats))
    })
    .await;
    let (counts, offline, beats) = match found {
        Ok(v) => v,
        Err(r) => return r,
    };
    let rows: Vec<Value> = config
        .compounds
        .iter()
        .zip(offline)
        .map(|(c, silent_since)| {
            let beat = beats.get(&c.id);
            json!({
                "last_heartbeat": beat.map(|b| b.0.clone()),
                "unacknowledged": beat.and_then(|b| b.1.get("unacknowledged").cloned()),
                "id": c.id,
                "name": c.name,
                "link": if silent_since.is_some() { "offline" } else { "online" },
                "silent_since": silent_since,
                "active": counts.get(&c.id).cloned().unwrap_or_default(),
            })
        })
        .collect();
    Json(json!({ "station": config.site.name, "compounds": rows })).into_response()
}

#[derive(Debug, Deserialize)]
struct AlertsQuery {
    compound: Option<String>,
    limit: Option<usize>,
}

async fn alerts(AxState(state): AxState<St>, Query(q): Query<AlertsQuery>) -> Response {
    let names: std::collections::HashMap<String, String> = state
        .config()
        .compounds
        .iter()
        .map(|c| (c.id.clone(), c.name.clone()))
        .collect();
    let limit = q.limit.unwrap_or(200).clamp(1, LIST_MAX);
    let compound = q.compound.filter(|c| !c.is_empty());
    match read(&state, move |conn| {
        Ok(remote::list(conn, compound.as_deref(), limit)?)
    })
    .await
    {
        Ok(mut events) => {
            for e in &mut events {
                let site = e["site"].as_str().unwrap_or("").to_owned();
                e["compound_name"] = names.get(&site).cloned().unwrap_or(site).into();
            }
            Json(json!({ "alerts": events })).into_response()
        }
        Err(r) => r,
    }
}

async fn ack(
    AxState(state): AxState<St>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let by = format!("{} @ {}", s.display_name, state.config().site.name);
    match state
        .deps
        .alert_inputs
        .remote_acknowledge(id, by.clone())
        .await
    {
        Ok(compound) => (
            StatusCode::ACCEPTED,
            Json(json!({ "compound": compound, "by": by })),
        )
            .into_response(),
        Err(why) if why.starts_with("no compound alert") => error(StatusCode::NOT_FOUND, &why),
        Err(why) if why.contains("resolved") => error(StatusCode::CONFLICT, &why),
        Err(why) => error(StatusCode::SERVICE_UNAVAILABLE, &why),
    }
}

// ---- evidence on demand (issue 19) -------------------------------------------------------

/// Largest snapshot or clip relayed from a compound.
const EVIDENCE_MAX_BYTES: usize = 64 * 1024 * 1024;
/// A compound must answer (headers and body) within this.
const EVIDENCE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// The compound side: its station fetches an alert's evidence here, logging in with the
/// compound's own `[station_link]` credentials (HTTP Basic). Outside the staff session check.
pub(super) fn station_routes() -> Router<St> {
    Router::new()
        .route("/station/alerts/{id}/snapshot", get(station_snapshot))
        .route("/station/alerts/{id}/clip", get(station_clip))
}

/// Whether `headers` carry this gateway's `[station_link]` login (compared in constant time).
fn station_login(state: &State, headers: &axum::http::HeaderMap) -> bool {
    use base64::Engine as _;
    use subtle::ConstantTimeEq as _;
    let config = state.config();
    let Some(link) = config.station_link.as_ref() else {
        return false;
    };
    let (Some(user), Some(password)) = (&link.username, &link.password) else {
        return false;
    };
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| {
            base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .ok()
        });
    let want = format!("{user}:{password}");
    presented.is_some_and(|p| bool::from(p.as_slice().ct_eq(want.as_bytes())))
}

async fn station_snapshot(
    AxState(state): AxState<St>,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !station_login(&state, &headers) {
        return unauthorized();
    }
    super::api::evidence(state, id, "snapshot", None, |_| "image/jpeg").await
}

async fn station_clip(
    AxState(state): AxState<St>,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !station_login(&state, &headers) {
        return unauthorized();
    }
    super::api::evidence(state, id, "clip", None, super::api::clip_mime).await
}

fn unauthorized() -> Response {
    tracing::warn!("evidence request without the station link's login refused");
    (
        StatusCode::UNAUTHORIZED,
        [(
            axum::http::header::WWW_AUTHENTICATE,
            "Basic realm=\"shouwang station\"",
        )],
        Json(json!({ "error": "the station link's login is required" })),
    )
        .into_response()
}

/// The station side: `GET /api/compounds/alerts/{id}/{snapshot|clip}` relays the evidence
/// from the compound that raised the alert; nothing is copied to the station.
pub(super) fn evidence_routes() -> Router<St> {
    Router::new()
        .route("/api/compounds/alerts/{id}/snapshot", get(remote_snapshot))
        .route("/api/compounds/alerts/{id}/clip", get(remote_clip))
}

async fn remote_snapshot(AxState(state): AxState<St>, Path(id): Path<String>) -> Response {
    relay(state, id, "snapshot").await
}

async fn remote_clip(AxState(state): AxState<St>, Path(id): Path<String>) -> Response {
    relay(state, id, "clip").await
}

async fn relay(state: St, id: String, what: &'static str) -> Response {
    let lookup = id.clone();
    let found = read(&state, move |conn| Ok(remote::compound_of(conn, &lookup)?)).await;
    let compound = match found {
        Ok(Some((c, _))) => c,
        Ok(None) => return error(StatusCode::NOT_FOUND, "no such compound alert"),
        Err(r) => return r,
    };
    let config = state.config();
    let Some(c) = config.compounds.iter().find(|c| c.id == compound) else {
        return error(
            StatusCode::NOT_FOUND,
            "that compound is no longer configured",
        );
    };
    let Some(base) = c.evidence_url.as_deref() else {
        return error(
            StatusCode::NOT_FOUND,
            "no evidence_url for this compound in [[compounds]]",
        );
    };
    let login = (c.username.as_str(), c.password.as_deref().unwrap_or(""));
    let path = format!("/station/alerts/{id}/{what}");
    match tokio::time::timeout(EVIDENCE_TIMEOUT, fetch(base, &path, login)).await {
        Ok(Ok((status, mime, body))) => {
            let mut r = (status, body).into_response();
            if let Some(m) = mime {
                r.headers_mut().insert(axum::http::header::CONTENT_TYPE, m);
            }
            r
        }
        Ok(Err(e)) => error(StatusCode::BAD_GATEWAY, &format!("{compound}: {e}")),
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            &format!("{compound} did not answer in time"),
        ),
    }
}

/// `GET base+path` over HTTP/1.1 with Basic `login`; status, content type and a body of at
/// most [`EVIDENCE_MAX_BYTES`].
async fn fetch(
    base: &str,
    path: &str,
    login: (&str, &str),
) -> Result<(StatusCode, Option<axum::http::HeaderValue>, bytes::Bytes), String> {
    use base64::Engine as _;
    use http_body_util::BodyExt as _;
    let host = base
        .strip_prefix("http://")
        .map(|h| h.trim_end_matches('/'))
        .ok_or("evidence_url is not http://HOST:PORT")?;
    let stream = tokio::net::TcpStream::connect(host)
        .await
        .map_err(|e| format!("cannot connect to {host}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", login.0, login.1));
    let request = axum::http::Request::get(path)
        .header(axum::http::header::HOST, host)
        .header(axum::http::header::AUTHORIZATION, format!("Basic {auth}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let mime = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .cloned();
    let body = http_body_util::Limited::new(response.into_body(), EVIDENCE_MAX_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the evidence: {e}"))?
        .to_bytes();
    Ok((status, mime, body))
}
