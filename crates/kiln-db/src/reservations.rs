//! Reservations: who holds which machine when, read from the provisioning records (a deploy
//! waiting for its start, or one taken up and not yet undeployed), for the calendar.

use kiln_auth::ProjectScope;
use kiln_types::ProvisionState;
use kiln_types::provision::{DeployTarget, Intent, Reservation};
use sqlx::Row as _;

use crate::{Store, StoreError};

/// The states in which a deploy's target still holds the node.
fn holds(state: ProvisionState) -> bool {
    matches!(state, ProvisionState::Deploying | ProvisionState::WaitAgent | ProvisionState::Active | ProvisionState::DeployFailed)
}

impl Store {
    /// The reservations of the nodes `scope` sees, earliest start first.
    pub async fn list_reservations(&self, scope: &ProjectScope) -> Result<Vec<Reservation>, StoreError> {
        let mut connection = self.read().await?;
        let rows = sqlx::query(
            "SELECT n.name, n.project, n.provision_state, p.intent, p.target, p.state_entered_at \
             FROM node_provisioning p JOIN nodes n ON n.id = p.node_id \
             WHERE p.intent IS NOT NULL OR p.target IS NOT NULL",
        )
        .fetch_all(&mut *connection)
        .await
        .map_err(StoreError::query("listing reservations"))?;
        let read = || StoreError::query("reading a reservation");
        let mut reservations = Vec::new();
        for row in rows {
            let project: Option<String> = row.try_get("project").map_err(read())?;
            if !crate::nodes_visible(scope, project.as_deref()) {
                continue;
            }
            let node: String = row.try_get("name").map_err(read())?;
            let state_text: String = row.try_get("provision_state").map_err(read())?;
            let Ok(provision_state) = state_text.parse::<ProvisionState>() else { continue };
            let intent: Option<String> = row.try_get("intent").map_err(read())?;
            let target: Option<String> = row.try_get("target").map_err(read())?;
            let entered: i64 = row.try_get("state_entered_at").map_err(read())?;
            let (target, pending, start_at) = match intent.as_deref().and_then(|text| serde_json::from_str::<Intent>(text).ok()) {
                Some(Intent::Deploy(target)) => {
                    let start = target.start_at;
                    (target, true, start)
                }
                _ => match target.as_deref().and_then(|text| serde_json::from_str::<DeployTarget>(text).ok()) {
                    Some(target) if holds(provision_state) => {
                        let start = target.start_at.or_else(|| (entered > 0).then(|| crate::timestamp(entered)));
                        (target, false, start)
                    }
                    _ => continue,
                },
            };
            reservations.push(Reservation {
                node,
                project,
                image: target.image.clone(),
                version: target.version,
                start_at,
                end_at: target.end_at,
                pending,
                provision_state,
            });
        }
        reservations.sort_by(|one, other| (one.start_at, &one.node).cmp(&(other.start_at, &other.node)));
        Ok(reservations)
    }
}
