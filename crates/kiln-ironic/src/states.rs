//! Kiln's lifecycle under Ironic's names, and Ironic's provision verbs as Kiln's requests.
//!
//! Ironic and Kiln share the lifecycle's shape (enroll → manageable → available → active,
//! cleaning on the way back), so most states map one to one. Where Kiln has a state Ironic
//! has not (`discovered`, `capturing`), the nearest Ironic name is answered.

use kiln_types::ProvisionState;
use kiln_types::provision::{CleanMode, Intent};
use serde_json::Value;

use crate::version::Microversion;

/// The node's `provision_state` as Ironic names it at `version` (`None` is Ironic's
/// NOSTATE, which versions before 1.2 answer for `available`).
pub fn provision_state(state: ProvisionState, version: Microversion) -> Option<&'static str> {
    use ProvisionState::*;
    Some(match state {
        Discovered | Enroll => "enroll",
        Manageable => "manageable",
        Inspecting => "inspecting",
        InspectFailed => "inspect failed",
        Available if !version.at_least(2) => return None,
        Available => "available",
        Deploying => "deploying",
        WaitAgent => "wait call-back",
        Active => "active",
        DeployFailed => "deploy failed",
        Undeploying => "deleting",
        Cleaning => "cleaning",
        CleanFailed => "clean failed",
        // Reading the disk of a running node: Ironic's servicing, from 1.87.
        Capturing if version.at_least(87) => "servicing",
        Capturing => "active",
    })
}

/// Where a node in `state` is headed: Ironic's `target_provision_state`. A request Kiln
/// has recorded but not yet taken up (`pending`) names it, as Ironic sets the target when it
/// accepts a request: clients that wait read a node without a target as settled.
pub fn target_provision_state(state: ProvisionState, pending: Option<&Intent>) -> Option<&'static str> {
    use ProvisionState::*;
    let requested = match pending {
        Some(Intent::Manage | Intent::Inspect) => Some("manageable"),
        Some(Intent::Provide | Intent::Undeploy) => Some("available"),
        Some(Intent::Clean { .. }) if state == Manageable => Some("manageable"),
        Some(Intent::Clean { .. }) => Some("available"),
        Some(Intent::Deploy(_) | Intent::FailDeploy { .. } | Intent::Capture { .. } | Intent::Snapshot { .. }) => Some("active"),
        // An abort sets no target: the operation ends where it fails.
        Some(Intent::Abort) | None => None,
    };
    if requested.is_some() {
        return requested;
    }
    match state {
        Inspecting => Some("manageable"),
        Deploying | WaitAgent | Capturing => Some("active"),
        Undeploying | Cleaning => Some("available"),
        _ => None,
    }
}

/// An Ironic provision verb (`PUT /v1/nodes/{node}/states/provision`'s `target`), as Kiln
/// carries it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProvisionVerb {
    Manage,
    Provide,
    Inspect,
    Clean(CleanMode),
    /// `active` or `deploy`: the image is in the node's `instance_info`.
    Deploy,
    /// `deleted` or `undeploy`.
    Undeploy,
    /// Stop the operation waiting on the agent.
    Abort,
}

/// Why a verb is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerbError {
    #[error(
        "the provision state '{target}' is not valid (known: active, deploy, deleted, undeploy, manage, provide, inspect, clean, abort)"
    )]
    Unknown { target: String },
    #[error("'{target}' needs API version 1.{needs} or later; this request is {version}")]
    TooOld { target: String, needs: u32, version: Microversion },
    #[error("'{target}' is not carried out by Kiln: {why}")]
    Unsupported { target: String, why: &'static str },
    #[error("clean: {message}")]
    CleanSteps { message: String },
}

/// What a `target` (and, for `clean`, its `clean_steps`) asks of Kiln at `version`.
pub fn provision_verb(target: &str, clean_steps: Option<&Value>, version: Microversion) -> Result<ProvisionVerb, VerbError> {
    let needs = |minor: u32, verb: ProvisionVerb| {
        if version.at_least(minor) { Ok(verb) } else { Err(VerbError::TooOld { target: target.to_owned(), needs: minor, version }) }
    };
    let unsupported = |why| Err(VerbError::Unsupported { target: target.to_owned(), why });
    match target {
        "active" => Ok(ProvisionVerb::Deploy),
        "deploy" => needs(73, ProvisionVerb::Deploy),
        "deleted" => Ok(ProvisionVerb::Undeploy),
        "undeploy" => needs(73, ProvisionVerb::Undeploy),
        "manage" => needs(4, ProvisionVerb::Manage),
        "provide" => needs(4, ProvisionVerb::Provide),
        "inspect" => needs(6, ProvisionVerb::Inspect),
        "clean" => needs(15, ProvisionVerb::Clean(clean_mode(clean_steps)?)),
        "rebuild" => unsupported("undeploy and deploy again"),
        "abort" => needs(13, ProvisionVerb::Abort),
        "adopt" | "rescue" | "unrescue" | "service" | "unhold" => unsupported("not yet"),
        _ => Err(VerbError::Unknown { target: target.to_owned() }),
    }
}

/// Kiln erases a disk one of two ways; Ironic's clean steps name them.
fn clean_mode(clean_steps: Option<&Value>) -> Result<CleanMode, VerbError> {
    let invalid = |message: &str| VerbError::CleanSteps { message: message.to_owned() };
    let steps = clean_steps.and_then(Value::as_array).ok_or_else(|| invalid("clean_steps is required: a list of steps"))?;
    let mut mode = None;
    for step in steps {
        let name = step.get("step").and_then(Value::as_str).ok_or_else(|| invalid("each clean step needs a 'step'"))?;
        mode = Some(match name {
            "erase_devices" => CleanMode::Full,
            "erase_devices_metadata" => mode.unwrap_or(CleanMode::Fast),
            other => {
                return Err(VerbError::CleanSteps {
                    message: format!(
                        "Kiln does not carry out the step '{other}': it erases disks with erase_devices (every block) or erase_devices_metadata (signatures and partition tables)"
                    ),
                });
            }
        });
    }
    mode.ok_or_else(|| invalid("clean_steps is empty"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::MAX;
    use serde_json::json;

    #[test]
    fn every_kiln_state_has_an_ironic_name() {
        let names: Vec<String> = ProvisionState::ALL
            .iter()
            .map(|state| {
                let name = provision_state(*state, MAX).unwrap_or("null");
                format!("{} -> {name} (target {})", state.as_str(), target_provision_state(*state, None).unwrap_or("null"))
            })
            .collect();
        expect_test::expect![[r#"
            discovered -> enroll (target null)
            enroll -> enroll (target null)
            manageable -> manageable (target null)
            inspecting -> inspecting (target manageable)
            inspect-failed -> inspect failed (target null)
            available -> available (target null)
            deploying -> deploying (target active)
            wait-agent -> wait call-back (target active)
            active -> active (target null)
            deploy-failed -> deploy failed (target null)
            undeploying -> deleting (target available)
            cleaning -> cleaning (target available)
            clean-failed -> clean failed (target null)
            capturing -> servicing (target active)"#]]
        .assert_eq(&names.join("\n"));
        assert_eq!(provision_state(ProvisionState::Available, Microversion(1)), None, "NOSTATE before 1.2");
        assert_eq!(provision_state(ProvisionState::Capturing, Microversion(86)), Some("active"));
        assert_eq!(target_provision_state(ProvisionState::Enroll, Some(&Intent::Manage)), Some("manageable"), "a request not yet taken up");
        assert_eq!(target_provision_state(ProvisionState::Manageable, Some(&Intent::Provide)), Some("available"));
    }

    #[test]
    fn verbs_are_gated_by_version_and_clean_steps_pick_the_mode() {
        assert_eq!(provision_verb("active", None, Microversion(1)), Ok(ProvisionVerb::Deploy));
        assert!(matches!(provision_verb("manage", None, Microversion(3)), Err(VerbError::TooOld { needs: 4, .. })));
        assert_eq!(provision_verb("undeploy", None, MAX), Ok(ProvisionVerb::Undeploy));
        let full = json!([{ "interface": "deploy", "step": "erase_devices" }]);
        let fast = json!([{ "interface": "deploy", "step": "erase_devices_metadata" }]);
        assert_eq!(provision_verb("clean", Some(&full), MAX), Ok(ProvisionVerb::Clean(CleanMode::Full)));
        assert_eq!(provision_verb("clean", Some(&fast), MAX), Ok(ProvisionVerb::Clean(CleanMode::Fast)));
        assert!(matches!(provision_verb("clean", None, MAX), Err(VerbError::CleanSteps { .. })));
        let other = json!([{ "interface": "bios", "step": "apply_configuration" }]);
        let refused = provision_verb("clean", Some(&other), MAX).unwrap_err().to_string();
        assert!(refused.contains("apply_configuration"), "{refused}");
        assert_eq!(provision_verb("abort", None, MAX), Ok(ProvisionVerb::Abort));
        assert!(matches!(provision_verb("abort", None, Microversion(12)), Err(VerbError::TooOld { needs: 13, .. })));
        assert!(matches!(provision_verb("rescue", None, MAX), Err(VerbError::Unsupported { .. })));
        assert!(matches!(provision_verb("fly", None, MAX), Err(VerbError::Unknown { .. })));
    }
}
