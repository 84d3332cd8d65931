//! Kiln's boot planning: boot parameters with OpenCHAMI BSS semantics, which entry applies
//! to a node, what a booting machine boots next ([`BootPlan`]) as an iPXE script or a GRUB
//! configuration, and the cloud-init documents it reads after boot. Pure functions of their
//! inputs, no IO, so every decision is tested with data.

pub mod cloud_init;
pub mod grub;
pub mod medium;
pub mod network_config;
pub mod params;
pub mod plan;
pub mod script;

pub use grub::{GRUB_CONFIG_DIRECTORY, MEDIUM_INITRD_PATHS, MEDIUM_KERNEL_PATH, grub_config, grub_entry_config, medium_grub_config};
pub use params::{BootParams, BootParamsInput, BootTarget, InvalidBootParams};
pub use plan::{AgentApi, BootPlan, KernelBoot, KernelPurpose, RamdiskUrls, ScriptContext};
pub use script::{chain_script, ipxe_script};
