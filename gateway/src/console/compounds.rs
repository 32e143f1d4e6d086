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
