//! Kiln's image builder. [`ramdisk`] assembles the deploy ramdisk. For images:
//! definitions in OpenCHAMI's image-builder format ([`definition`]) and the build plan they
//! make, with the layer's cache key ([`plan`]); and diskimage-builder elements, found on an `ELEMENTS_PATH`,
//! their dependencies resolved and their hooks ordered by phase ([`elements`]), and the
//! `break=` points a build stops at. Reading the element directories is the only IO; the
//! plan is a pure function of what was read.

pub mod chroot;
pub mod definition;
pub mod disk;
pub mod elements;
pub mod execute;
pub mod hooks;
pub mod layers;
pub mod medium;
pub mod oci;
pub mod plan;
pub mod ramdisk;

pub use elements::{BreakPoints, Element, ElementError, HookPlan, Phase, load_elements, plan_hooks, resolve};
