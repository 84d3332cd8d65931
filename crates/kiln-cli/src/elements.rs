//! `kiln element info`: which elements a build would use and the order their hooks run in,
//! read locally from `ELEMENTS_PATH`, as diskimage-builder's `element-info` shows them.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Subcommand;

use crate::output::{OutputFormat, print, table};

#[derive(Debug, Subcommand)]
pub(crate) enum ElementCommand {
    /// Resolve elements and their dependencies and list their hooks in run order.
    Info {
        #[arg(required = true)]
        elements: Vec<String>,
        /// Directories searched in order, `:`-separated.
        #[arg(long, env = "ELEMENTS_PATH")]
        elements_path: Option<String>,
    },
}

#[derive(serde::Serialize)]
struct Info {
    elements: Vec<(String, PathBuf)>,
    hooks: Vec<kiln_image_build::HookPlan>,
}

pub(crate) fn element(format: OutputFormat, command: ElementCommand) -> anyhow::Result<()> {
    let ElementCommand::Info { elements, elements_path } = command;
    let Some(elements_path) = elements_path.filter(|path| !path.is_empty()) else {
        bail!("no ELEMENTS_PATH: pass --elements-path DIR[:DIR…] or set ELEMENTS_PATH");
    };
    let path: Vec<PathBuf> = elements_path.split(':').filter(|part| !part.is_empty()).map(PathBuf::from).collect();
    let loaded = kiln_image_build::load_elements(&path, &elements).context("finding the elements")?;
    let resolved = kiln_image_build::resolve(&loaded, &elements).context("resolving dependencies")?;
    let hooks = kiln_image_build::plan_hooks(&loaded, &resolved).context("ordering hooks")?;
    let info = Info { elements: resolved.iter().map(|name| (name.clone(), loaded[name].path.clone())).collect(), hooks };
    print(format, &info, || {
        let mut text =
            table(&["element", "path"], info.elements.iter().map(|(name, path)| vec![name.clone(), path.display().to_string()]).collect());
        text.push('\n');
        text.push_str(&table(
            &["phase", "element", "hook", "where"],
            info.hooks
                .iter()
                .map(|hook| {
                    let place = if hook.in_chroot { "chroot" } else { "host" };
                    vec![hook.phase.directory(), hook.element.clone(), hook.script.clone(), place.to_owned()]
                })
                .collect(),
        ));
        text
    })
}
