//! Kiln's node lifecycle. [`plan`] decides each provisioning step as a pure function of a
//! node and its record; [`reconciler`] carries the steps out under a per-node lease;
//! [`agent`] says what the node agent is to do, from the same record.

pub mod agent;
pub mod plan;
pub mod reconciler;

pub use plan::{Action, Decision, LifecycleSettings, plan};
pub use reconciler::{BootMedia, NetworkDisks, ReconcilerHandle, ReconcilerSettings, Services, start};
