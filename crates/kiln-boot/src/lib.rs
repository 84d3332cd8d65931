//! Kiln's boot planning: boot parameters with OpenCHAMI BSS semantics, which entry applies
//! to a node, the iPXE script a node gets, and the cloud-init documents it reads after boot.
//! Pure functions of their inputs, no IO, so every decision is tested with data.

pub mod cloud_init;
pub mod params;
pub mod script;

pub use params::{BootParams, BootParamsInput, BootTarget, InvalidBootParams};
pub use script::{
    RamdiskUrls, ScriptContext, agent_script, bootscript, chain_script, live_script, local_disk_script, network_disk_script,
    unknown_machine_script,
};
