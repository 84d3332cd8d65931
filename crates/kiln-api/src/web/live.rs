//! `GET /ui/live`: server-sent events that tell an open page which of the person's nodes
//! changed state, so that lists and node pages move without a reload.
//!
//! The page names the nodes it shows (`?nodes=a,b`, at most [`MAX_NODES`]); the stream first
//! sends the state of each that the person may see, so that a change between the page's
//! rendering and the stream's start is not missed, then what changed. It reads this
//! replica's inventory view, which follows the event log, once a second, and ends when the
//! session does. A node the person may not see is never mentioned, as if it did not exist.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse as _, Response};
use kiln_auth::{AuthContext, ProjectScope};
use kiln_types::ProvisionState;

use super::session::Signed;
use crate::ApiState;

/// How often the stream looks for changes.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How many looks between checks that the session is still live, and of who may see what
/// (a membership taken away applies within this many seconds).
const LOOKS_PER_SESSION_CHECK: u32 = 5;
/// The most nodes one stream follows: a page shows at most a hundred.
pub(crate) const MAX_NODES: usize = 200;
/// The longest `nodes` parameter taken.
const MAX_NODES_PARAMETER: usize = 16 << 10;
/// A stream ends after this long; the browser's `EventSource` opens another at once.
const STREAM_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Streams open at once: per session (a few tabs), and on this replica.
const STREAMS_PER_SESSION: usize = 8;
const STREAMS_PER_REPLICA: usize = 4096;

/// The streams open on this replica, by session, so that no one holds more than their share.
#[derive(Debug, Default)]
pub struct LiveStreams {
    open: Mutex<HashMap<String, usize>>,
}

/// One open stream's place; given back when the stream ends.
struct StreamSlot {
    streams: Arc<LiveStreams>,
    session_hash: String,
}

impl LiveStreams {
    fn open(self: &Arc<Self>, session_hash: &str) -> Option<StreamSlot> {
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let total: usize = open.values().sum();
        let mine = open.get(session_hash).copied().unwrap_or(0);
        if total >= STREAMS_PER_REPLICA || mine >= STREAMS_PER_SESSION {
            return None;
        }
        open.insert(session_hash.to_owned(), mine + 1);
        Some(StreamSlot { streams: self.clone(), session_hash: session_hash.to_owned() })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = open.get_mut(&self.session_hash) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.session_hash);
            }
        }
    }
}

struct Follower {
    state: ApiState,
    scope: ProjectScope,
    names: Vec<String>,
    session_hash: String,
    last_event: i64,
    known: HashMap<String, ProvisionState>,
    looks: u32,
    started: Instant,
    _slot: StreamSlot,
}

impl Follower {
    fn snapshot(&self) -> HashMap<String, ProvisionState> {
        let view = self.state.inventory.view();
        self.names
            .iter()
            .filter_map(|name| view.get_visible(name, &self.scope))
            .map(|node| (node.name.clone(), node.provision_state))
            .collect()
    }

    /// The changes since the last look, as events; `None` when the session has ended.
    async fn look(&mut self) -> Option<Vec<Event>> {
        if self.looks > 0 {
            tokio::time::sleep(LOOK_EVERY).await;
        }
        self.looks += 1;
        if self.started.elapsed() > STREAM_LIFETIME {
            return None;
        }
        let mut rescoped = false;
        if self.looks.is_multiple_of(LOOKS_PER_SESSION_CHECK) {
            // Who may see what is read again: a membership or a session that ended ends here
            // too, within a few seconds.
            let Ok(Some(identity)) = self.state.store.identify_web_session(&self.session_hash).await else { return None };
            self.scope = AuthContext { user: identity.user, admin: identity.admin, memberships: identity.memberships }.read_scope();
            rescoped = true;
        }
        let last_event = self.state.inventory.view().last_event();
        if last_event == self.last_event && self.looks > 1 && !rescoped {
            return Some(Vec::new());
        }
        self.last_event = last_event;
        let now = self.snapshot();
        let changed: Vec<Event> = now
            .iter()
            .filter(|(name, state)| self.known.get(*name) != Some(*state))
            .filter_map(|(name, state)| {
                Event::default().event("node").json_data(serde_json::json!({"name": name, "provision_state": state})).ok()
            })
            .collect();
        self.known = now;
        Some(changed)
    }
}

#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct LiveQuery {
    /// The names of the nodes the page shows, separated by commas.
    #[serde(default)]
    nodes: String,
}

pub(crate) async fn stream(
    State(state): State<ApiState>,
    signed: Signed,
    headers: HeaderMap,
    crate::extract::QueryParams(query): crate::extract::QueryParams<LiveQuery>,
) -> Response {
    if query.nodes.len() > MAX_NODES_PARAMETER {
        let message = format!("nodes: more than {MAX_NODES_PARAMETER} bytes of names");
        return super::problem(StatusCode::BAD_REQUEST, "Not accepted", &message);
    }
    let session_hash = super::session::session_hash(&state.web, &headers).unwrap_or_default();
    let Some(slot) = state.web_streams.open(&session_hash) else {
        let message = "Too many live pages are open: close some and reload this one.";
        return super::problem(StatusCode::TOO_MANY_REQUESTS, "Too many live pages", message);
    };
    let mut names: Vec<String> = query.nodes.split(',').filter(|name| !name.is_empty()).take(MAX_NODES).map(str::to_owned).collect();
    names.sort();
    names.dedup();
    let follower = Follower {
        last_event: state.inventory.view().last_event(),
        scope: signed.caller.read_scope(),
        names,
        state,
        session_hash,
        // Empty: the first look sends every followed node's state.
        known: HashMap::new(),
        looks: 0,
        started: Instant::now(),
        _slot: slot,
    };
    let events = futures::stream::unfold(follower, |mut follower| async move {
        let changed = follower.look().await?;
        Some((futures::stream::iter(changed), follower))
    });
    let events = futures::StreamExt::map(futures::StreamExt::flatten(events), Ok::<_, std::convert::Infallible>);
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}
