//! How a name a caller writes (`NAME` or `PROJECT/NAME`) picks one image or group among
//! those the caller sees: one rule for both, so they cannot drift apart.

use kiln_auth::ProjectScope;
use kiln_types::scoped_name::{NameReference, ScopedName};

use crate::StoreError;

/// The one of `visible` (what `scope` sees, already filtered) that `reference` names: the
/// caller's own projects' first, then the one without a project, then any other it sees
/// (public, shared, or any project for administrators). Two at one step are ambiguous, and
/// the answer names them so the caller can say which; another project's resource the caller
/// cannot see never takes part.
pub(crate) fn pick_named<T>(
    kind: &str,
    reference: &NameReference,
    visible: Vec<T>,
    scope: &ProjectScope,
    identity: impl Fn(&T) -> ScopedName,
) -> Result<Option<T>, StoreError> {
    let mut candidates: Vec<T> = visible.into_iter().filter(|candidate| reference.may_name(&identity(candidate))).collect();
    let own = |candidate: &T| {
        let project = identity(candidate).project;
        matches!(scope, ProjectScope::Projects(_)) && project.is_some() && crate::nodes_visible(scope, project.as_deref())
    };
    let steps: [&dyn Fn(&T) -> bool; 3] = [&own, &|candidate| identity(candidate).project.is_none(), &|_| true];
    for step in steps {
        let (mut found, rest): (Vec<T>, Vec<T>) = candidates.into_iter().partition(|candidate| step(candidate));
        candidates = rest;
        match found.len() {
            0 => continue,
            1 => return Ok(found.pop()),
            _ => {
                let keys: Vec<String> = found.iter().map(|candidate| identity(candidate).key()).collect();
                return Err(StoreError::conflict(format!(
                    "{kind} '{reference}' is ambiguous: name one of {} as PROJECT/NAME",
                    keys.join(", ")
                )));
            }
        }
    }
    Ok(None)
}
