//! The live view: `GET /live` (every camera in a grid; `/live?camera=ID` one camera large)
//! and `GET /api/cameras/{id}/live`, a WebSocket carrying the camera's own H.264/H.265
//! packets as fragmented MP4 for the page's Media Source Extensions player (see
//! [`crate::video::live`]: one remux per stream, whatever the number of viewers).
//!
//! The socket sends a text message `{"type":"start","mime":…,"codec":…,"width":…,"height":…}`
//! followed by the init segment (binary), then one binary message per frame; a new
//! `start` when the camera's stream restarts. `{"type":"unsupported","codec":…}` for a
//! stream whose codec MP4 cannot carry, `{"type":"busy"}` (then close) when the viewer caps
//! are reached. It ends with the session (logout, expiry), at shutdown, and when a viewer
//! does not take a message within [`SEND_TIMEOUT`] (a stalled client never holds a slot).
//! A WebSocket (not a chunked response) because a browser opens at most six HTTP/1.1
//! connections to one host: a grid of more cameras would stall.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::api::{session_end, staff_page, ApiError, SessionToken};
use super::{pages, State};
use crate::video::live::{LiveFeed, LiveItem, Viewer};

/// Viewers of one camera stream at a time (the fan-out costs a copy per viewer on the
/// socket, not a decode; this bounds the bandwidth).
pub const MAX_VIEWERS_PER_STREAM: usize = 16;
/// Viewers of all cameras at a time.
pub const MAX_VIEWERS_TOTAL: usize = 64;
/// A viewer whose socket does not take a message within this is dropped.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

type St = Arc<State>;

/// `GET /live`: the page, or the login page without a session.
pub(crate) async fn live_page(AxState(state): AxState<St>, headers: HeaderMap) -> Response {
    staff_page(&state, &headers, pages::LIVE)
}

#[derive(Deserialize)]
pub(crate) struct LiveQuery {
    /// `main`: the camera's main stream when it has a sub-stream (the analysed stream
    /// otherwise, and by default).
    stream: Option<String>,
}

fn refused(status: StatusCode, why: &str) -> Response {
    ApiError(status, why.to_owned()).into_response()
}

/// `GET /api/cameras/{id}/live`: the WebSocket of one camera stream.
pub(crate) async fn live_socket(
    AxState(state): AxState<St>,
    Path(id): Path<String>,
    Query(query): Query<LiveQuery>,
    Extension(token): Extension<SessionToken>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // A page of another origin must not open a socket with the staff's cookie.
    if let Some(why) = super::origin::cross_origin(&Method::POST, &headers) {
        tracing::info!(camera = %id, why, "cross-origin live view refused");
        return refused(StatusCode::FORBIDDEN, why);
    }
    let Some((session, ended)) = state.auth.live(&token.0, Instant::now()) else {
        return refused(StatusCode::UNAUTHORIZED, "log in first");
    };
    let Some(feed) = feed_of(&state, &id, query.stream.as_deref() == Some("main")) else {
        let configured = state.config().cameras.iter().any(|c| c.id == id);
        return match configured {
            true => refused(StatusCode::SERVICE_UNAVAILABLE, "camera not running"),
            false => refused(StatusCode::NOT_FOUND, "no such camera"),
        };
    };
    // Refusals above come first: a request that is not a WebSocket upgrade learns only then.
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let viewer = (total_viewers(&state) < MAX_VIEWERS_TOTAL)
        .then(|| feed.watch(MAX_VIEWERS_PER_STREAM))
        .flatten();
    let over = session_end(ended, session.expires);
    let stop = state.stop.clone();
    tracing::info!(camera = %id, username = %session.username, admitted = viewer.is_some(), "live view");
    ws.on_upgrade(move |socket| async move {
        match viewer {
            Some(viewer) => serve_viewer(socket, viewer, feed, over, stop, id).await,
            None => busy(socket).await,
        }
    })
}

/// The feed of camera `id`: its main stream's when asked and it has one, else the
/// analysed stream's; `None` when the camera is not running.
fn feed_of(state: &State, id: &str, main: bool) -> Option<Arc<LiveFeed>> {
    let cameras = state.cameras();
    let (_, stats) = cameras.iter().find(|(cid, _)| cid == id)?;
    let has_main = state
        .config()
        .cameras
        .iter()
        .any(|c| c.id == id && c.sub_url.is_some());
    Some(match main && has_main {
        true => stats.live.main.clone(),
        false => stats.live.analysed.clone(),
    })
}

fn total_viewers(state: &State) -> usize {
    state
        .cameras()
        .iter()
        .map(|(_, s)| s.live.analysed.viewers() + s.live.main.viewers())
        .sum()
}

async fn busy(mut socket: WebSocket) {
    let text = json!({ "type": "busy" }).to_string();
    let _ = tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text.into()))).await;
    let _ = tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Close(None))).await;
}

/// Sends the viewer's items until the client leaves, the session ends, the console stops,
/// or the client stops reading.
async fn serve_viewer(
    mut socket: WebSocket,
    mut viewer: Viewer,
    feed: Arc<LiveFeed>,
    over: impl Future<Output = ()>,
    stop: CancellationToken,
    camera: String,
) {
    tokio::pin!(over);
    loop {
        let item = tokio::select! {
            item = viewer.next() => match item {
                Some(item) => item,
                None => break,
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => continue,
            },
            () = &mut over => break,
            () = stop.cancelled() => break,
        };
        for msg in messages(item) {
            match tokio::time::timeout(SEND_TIMEOUT, socket.send(msg)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    feed.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%camera, timeout = ?SEND_TIMEOUT, "live viewer dropped: not reading");
                    return;
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(Message::Close(None))).await;
}

/// The socket messages of one item.
fn messages(item: LiveItem) -> Vec<Message> {
    match item {
        LiveItem::Init(init) => {
            let start = json!({
                "type": "start",
                "mime": init.mime,
                "codec": init.codec,
                "width": init.width,
                "height": init.height,
            });
            vec![
                Message::Text(start.to_string().into()),
                Message::Binary(init.data.clone()),
            ]
        }
        LiveItem::Fragment(data) => vec![Message::Binary(data)],
        LiveItem::Unsupported(codec) => {
            let text = json!({ "type": "unsupported", "codec": codec }).to_string();
            vec![Message::Text(text.into())]
        }
    }
}
