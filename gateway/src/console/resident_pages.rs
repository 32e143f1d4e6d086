//! The resident page: `GET /r/{token}` (HTML), `/r/{token}/alerts` (JSON: current notices of
//! the unit) and `/r/{token}/events` (SSE: new notices). A token opens exactly one unit; an
//! unknown or rotated token gets 404 on all three.

use std::sync::Arc;

use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::StreamExt;

use super::{store, State};
use crate::residents::{concerns, links, notice, Filter, HAZARDS};

type St = Arc<State>;

pub(crate) fn routes(state: St) -> Router {
    Router::new()
        .route("/r/{token}", get(page))
        .route("/r/{token}/alerts", get(current))
        .route("/r/{token}/events", get(events))
        .with_state(state)
}

/// How often an open resident stream re-checks that its link is still valid.
const REVOCATION_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "link not valid / 链接无效").into_response()
}

async fn unit_of(state: &St, token: String) -> Option<(String, String)> {
    let db = state.db_path.clone();
    match tokio::task::spawn_blocking(move || links::lookup(&db, &token)).await {
        Ok(Ok(unit)) => unit,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "resident link lookup failed");
            None
        }
        Err(_) => None,
    }
}

async fn page(AxState(state): AxState<St>, Path(token): Path<String>) -> Response {
    match unit_of(&state, token).await {
        Some(_) => Html(super::pages::RESIDENT).into_response(),
        None => not_found(),
    }
}

async fn current(AxState(state): AxState<St>, Path(token): Path<String>) -> Response {
    let Some((b, u)) = unit_of(&state, token).await else {
        return not_found();
    };
    let db = state.db_path.clone();
    let config = state.config();
    let unit_name = label(&config, &b, &u);
    let (query_config, building) = (config.clone(), b.clone());
    let alerts = tokio::task::spawn_blocking(move || {
        let conn = store::open(&db)?;
        unit_alerts(&conn, &query_config, &building)
    })
    .await;
    match alerts {
        Ok(Ok(alerts)) => {
            let notices: Vec<_> = alerts
                .iter()
                .filter(|a| concerns(&config, a, &b, &u))
                .map(notice)
                .collect();
            Json(serde_json::json!({ "unit": unit_name, "alerts": notices })).into_response()
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "try again").into_response(),
    }
}

/// The active hazard alerts that may concern `building` (in it, or in an area that warns
/// it), selected in SQL so that none is missed however many others are active; the caller
/// keeps those that concern the unit.
fn unit_alerts(
    conn: &rusqlite::Connection,
    config: &edge_config::Config,
    building: &str,
) -> Result<Vec<crate::alerts::Alert>, super::ConsoleError> {
    let kinds: Vec<&str> = HAZARDS.iter().map(|k| k.as_str()).collect();
    let areas: Vec<&str> = config
        .locations
        .areas
        .iter()
        .filter(|a| a.warns.iter().any(|w| w == building))
        .map(|a| a.id.as_str())
        .collect();
    store::active_in(conn, &kinds, building, &areas)
}

fn label(config: &edge_config::Config, b: &str, u: &str) -> String {
    let building = config.building(b);
    let unit = building.and_then(|x| x.unit(u));
    format!(
        "{} {}",
        building.map_or(b, |x| x.name.as_str()),
        unit.map_or(u, |x| x.name.as_str())
    )
}

async fn events(AxState(state): AxState<St>, Path(token): Path<String>) -> Response {
    let Some((b, u)) = unit_of(&state, token.clone()).await else {
        return not_found();
    };
    // A rotated link must stop working for streams already open too: re-check it
    // periodically and end the stream once it is revoked.
    let revoked = {
        let state = state.clone();
        Box::pin(async move {
            loop {
                tokio::time::sleep(REVOCATION_CHECK).await;
                if unit_of(&state, token.clone()).await.is_none() {
                    break;
                }
            }
        })
    };
    let config = state.config();
    let mut filter = Filter::default();
    let rx = state.deps.events.resubscribe();
    let keep =
        move |a: &crate::alerts::Alert| concerns(&config, a, &b, &u) && filter.should_publish(a);
    let stream = notice_stream(rx, keep)
        .take_until(state.stop.clone().cancelled_owned())
        .take_until(revoked);
    axum::response::sse::Sse::new(stream)
        .keep_alive(axum::response::sse::KeepAlive::default())
        .into_response()
}

fn notice_stream(
    rx: tokio::sync::broadcast::Receiver<crate::alerts::Alert>,
    keep: impl FnMut(&crate::alerts::Alert) -> bool + Send + 'static,
) -> impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>> + Send
{
    use axum::response::sse::Event;
    use tokio::sync::broadcast::error::RecvError;
    let hello =
        futures_util::stream::once(async { Ok(Event::default().event("hello").data("{}")) });
    let rest = futures_util::stream::unfold((rx, keep), |(mut rx, mut keep)| async move {
        loop {
            match rx.recv().await {
                Ok(a) if keep(&a) => {
                    let data = serde_json::to_string(&notice(&a)).unwrap_or_default();
                    return Some((Ok(Event::default().event("notice").data(data)), (rx, keep)));
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
