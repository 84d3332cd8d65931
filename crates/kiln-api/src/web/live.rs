//! `GET /ui/live`: server-sent events that tell an open page which of the person's nodes
//! changed state, so that lists and node pages move without a reload.
//!
//! The page names the nodes it shows (`?nodes=a,b`, at most [`MAX_NODES`]); the stream first
//! sends the state of each that the person may see, so that a change between the page's
//! rendering and the stream's start is not missed, then what changed. It reads this
//! replica's inventory view, which follows the event log, once a second, and ends when the
//! session does. A node the person may not see is never mentioned, as if it did not exist.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use kiln_auth::ProjectScope;
use kiln_types::ProvisionState;

use super::session::Signed;
use crate::ApiState;

/// How often the stream looks for changes.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How many looks between checks that the session is still live.
const LOOKS_PER_SESSION_CHECK: u32 = 15;
/// The most nodes one stream follows: a page shows at most a hundred.
pub(crate) const MAX_NODES: usize = 200;

struct Follower {
    state: ApiState,
    scope: ProjectScope,
    names: Vec<String>,
    session_hash: String,
    last_event: i64,
    known: HashMap<String, ProvisionState>,
    looks: u32,
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
        if self.looks.is_multiple_of(LOOKS_PER_SESSION_CHECK)
            && !matches!(self.state.store.identify_web_session(&self.session_hash).await, Ok(Some(_)))
        {
            return None;
        }
        let last_event = self.state.inventory.view().last_event();
        if last_event == self.last_event && self.looks > 1 {
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
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let session_hash = super::session::session_hash(&headers).unwrap_or_default();
    let mut names: Vec<String> = query.nodes.split(',').filter(|name| !name.is_empty()).map(str::to_owned).collect();
    names.sort();
    names.dedup();
    names.truncate(MAX_NODES);
    let follower = Follower {
        last_event: state.inventory.view().last_event(),
        scope: signed.caller.read_scope(),
        names,
        state,
        session_hash,
        // Empty: the first look sends every followed node's state.
        known: HashMap::new(),
        looks: 0,
    };
    let events = futures::stream::unfold(follower, |mut follower| async move {
        let changed = follower.look().await?;
        Some((futures::stream::iter(changed.into_iter().map(Ok)), follower))
    });
    Sse::new(futures::StreamExt::flatten(events)).keep_alive(KeepAlive::default())
}
