//! Running diskimage-builder hooks: each element's `environment.d` snippets sourced first,
//! outside-the-chroot phases on the host with `TARGET_ROOT` set, in-chroot phases inside the
//! root with `/proc`, `/sys` and `/dev` bound (and always unbound), and `break=` points.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::chroot::{ChrootMounts, MountError};
use crate::elements::{BreakPoints, Element, HookPlan, Phase};

/// Where the hooks and environment snippets are copied in the root for in-chroot phases.
const IN_TARGET: &str = "tmp/kiln-in-target";

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("hook {phase}/{script} of element {element} failed ({status})")]
    Failed { phase: &'static str, element: String, script: String, status: String },
    #[error("starting hook {phase}/{script} of element {element}")]
    Start {
        phase: &'static str,
        element: String,
        script: String,
        #[source]
        error: std::io::Error,
    },
    #[error("copying the hooks of element {element} into the root")]
    CopyIn {
        element: String,
        #[source]
        error: std::io::Error,
    },
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("stopped at break point {point}")]
    Break { point: String },
}

/// What to do at a `break=` point: given its name and the root, go on (`true`) or stop.
pub type OnBreak<'a> = dyn FnMut(&str, &Path) -> bool + 'a;

/// Runs `plan` (from [`crate::elements::plan_hooks`]) against `root`. `environment` is what
/// every hook gets besides the element snippets (see [`crate::elements::hook_environment`]);
/// `log` receives a line per hook. The chroot mounts are up only for in-chroot phases and
/// are gone when this returns, whatever happened.
pub fn run_hooks(
    plan: &[HookPlan],
    elements: &BTreeMap<String, Element>,
    root: &Path,
    environment: &BTreeMap<String, String>,
    breaks: &BreakPoints,
    on_break: &mut OnBreak<'_>,
    log: &mut dyn Write,
) -> Result<(), HookError> {
    // Every element's environment.d snippets, in element then file name order.
    let snippets: Vec<(String, PathBuf)> = elements
        .values()
        .flat_map(|element| {
            element.environment.iter().map(move |name| (element.name.clone(), element.path.join("environment.d").join(name)))
        })
        .collect();
    let mut mounts: Option<ChrootMounts> = None;
    for phase in Phase::ALL {
        let hooks: Vec<&HookPlan> = plan.iter().filter(|hook| hook.phase == phase).collect();
        if breaks.before.contains(&phase) && !on_break(&format!("before-{}", phase.name()), root) {
            return Err(HookError::Break { point: format!("before-{}", phase.name()) });
        }
        if phase.in_chroot() && !hooks.is_empty() && mounts.is_none() {
            copy_in(root, elements, &snippets)?;
            mounts = Some(ChrootMounts::bind(root)?);
        }
        if !phase.in_chroot() && mounts.is_some() {
            // Outside phases (block-device, cleanup) see the root without host mounts.
            mounts = None;
        }
        for hook in hooks {
            let _ = writeln!(log, "kiln: {}/{} ({})", phase.name(), hook.script, hook.element);
            let result = run_one(hook, elements, root, environment, &snippets);
            if let Err(error) = result {
                if breaks.after_error {
                    on_break("after-error", root);
                }
                return Err(error);
            }
        }
        if breaks.after.contains(&phase) && !on_break(&format!("after-{}", phase.name()), root) {
            return Err(HookError::Break { point: format!("after-{}", phase.name()) });
        }
    }
    drop(mounts);
    let _ = std::fs::remove_dir_all(root.join(IN_TARGET));
    Ok(())
}

/// Copies the in-chroot hooks and every environment snippet to `IN_TARGET` in the root.
fn copy_in(root: &Path, elements: &BTreeMap<String, Element>, snippets: &[(String, PathBuf)]) -> Result<(), HookError> {
    for element in elements.values() {
        let copy_error = |error| HookError::CopyIn { element: element.name.clone(), error };
        for (phase, scripts) in element.hooks.iter().filter(|(phase, _)| phase.in_chroot()) {
            let directory = root.join(IN_TARGET).join(phase.directory());
            std::fs::create_dir_all(&directory).map_err(copy_error)?;
            for script in scripts {
                let target = directory.join(script);
                std::fs::copy(element.path.join(phase.directory()).join(script), &target).map_err(copy_error)?;
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).map_err(copy_error)?;
            }
        }
    }
    let directory = root.join(IN_TARGET).join("environment.d");
    std::fs::create_dir_all(&directory).map_err(|error| HookError::CopyIn { element: "(environment)".into(), error })?;
    for (element, path) in snippets {
        let name = format!("{element}-{}", path.file_name().and_then(|n| n.to_str()).unwrap_or_default());
        std::fs::copy(path, directory.join(name)).map_err(|error| HookError::CopyIn { element: element.clone(), error })?;
    }
    Ok(())
}

/// `sh -c` text that sources the snippets (exporting what they set) and runs the hook.
fn wrapper(snippets: &[String]) -> String {
    let mut text = String::from("set -a\n");
    for snippet in snippets {
        text.push_str(&format!(". '{}'\n", snippet.replace('\'', "'\\''")));
    }
    text.push_str("set +a\nexec \"$0\"\n");
    text
}

fn run_one(
    hook: &HookPlan,
    elements: &BTreeMap<String, Element>,
    root: &Path,
    environment: &BTreeMap<String, String>,
    snippets: &[(String, PathBuf)],
) -> Result<(), HookError> {
    let element = &elements[&hook.element];
    let mut command = if hook.in_chroot {
        let inside: Vec<String> = snippets
            .iter()
            .map(|(element, path)| {
                format!("/{IN_TARGET}/environment.d/{element}-{}", path.file_name().and_then(|n| n.to_str()).unwrap_or_default())
            })
            .collect();
        let mut command = Command::new("chroot");
        command.env_clear().arg(root).args(["/bin/sh", "-c", &wrapper(&inside)]).arg(format!(
            "/{IN_TARGET}/{}/{}",
            hook.phase.directory(),
            hook.script
        ));
        command.env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        command
    } else {
        let outside: Vec<String> = snippets.iter().map(|(_, path)| path.display().to_string()).collect();
        let mut command = Command::new("/bin/sh");
        command.env_clear().args(["-c", &wrapper(&outside)]).arg(element.path.join(hook.phase.directory()).join(&hook.script));
        command.env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()));
        command.env("TARGET_ROOT", root);
        command
    };
    // Hooks get a clean environment: only what the build passes (diskimage-builder's rule).
    command.envs(environment).env("DIB_HOOK_PHASE", hook.phase.name()).stdin(Stdio::null());
    let status = command.status().map_err(|error| HookError::Start {
        phase: hook.phase.name(),
        element: hook.element.clone(),
        script: hook.script.clone(),
        error,
    })?;
    if !status.success() {
        return Err(HookError::Failed {
            phase: hook.phase.name(),
            element: hook.element.clone(),
            script: hook.script.clone(),
            status: status.to_string(),
        });
    }
    Ok(())
}
