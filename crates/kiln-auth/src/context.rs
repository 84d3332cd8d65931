//! Who is calling and what they may touch. Handlers receive an [`AuthContext`] and ask it;
//! no middleware decides access behind their back.

use std::collections::BTreeMap;

use kiln_types::api::ProjectRole;

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthContext {
    pub user: String,
    pub admin: bool,
    pub memberships: BTreeMap<String, ProjectRole>,
}

/// The caller may not do this. Handlers turn it into 403, or 404 where telling "forbidden"
/// apart from "absent" would reveal that another tenant's resource exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// Which projects' resources a listing may include.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProjectScope {
    /// Everything, including resources that belong to no project (admins).
    All,
    /// Only resources of these projects.
    Projects(Vec<String>),
}

impl AuthContext {
    pub fn require_admin(&self) -> Result<(), Denied> {
        if self.admin { Ok(()) } else { Err(Denied("this requires an administrator".to_owned())) }
    }

    /// Resources without a project are the admins' unallocated pool.
    pub fn can_read(&self, project: Option<&str>) -> bool {
        self.admin || project.is_some_and(|project| self.memberships.contains_key(project))
    }

    pub fn can_write(&self, project: Option<&str>) -> bool {
        self.admin || project.is_some_and(|project| self.memberships.get(project) == Some(&ProjectRole::Member))
    }

    /// The projects whose resources the caller may change.
    pub fn write_scope(&self) -> ProjectScope {
        if self.admin {
            ProjectScope::All
        } else {
            ProjectScope::Projects(
                self.memberships.iter().filter(|(_, role)| **role == ProjectRole::Member).map(|(project, _)| project.clone()).collect(),
            )
        }
    }

    pub fn read_scope(&self) -> ProjectScope {
        if self.admin { ProjectScope::All } else { ProjectScope::Projects(self.memberships.keys().cloned().collect()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member_of(project: &str, role: ProjectRole) -> AuthContext {
        AuthContext { user: "u".into(), admin: false, memberships: [(project.to_owned(), role)].into() }
    }

    #[test]
    fn members_write_readers_read_strangers_neither() {
        let member = member_of("a", ProjectRole::Member);
        let reader = member_of("a", ProjectRole::Reader);
        assert!(member.can_read(Some("a")) && member.can_write(Some("a")));
        assert!(reader.can_read(Some("a")) && !reader.can_write(Some("a")));
        for context in [&member, &reader] {
            assert!(!context.can_read(Some("b")) && !context.can_write(Some("b")));
            assert!(!context.can_read(None) && !context.can_write(None));
            assert!(context.require_admin().is_err());
        }
        let admin = AuthContext { user: "admin".into(), admin: true, memberships: BTreeMap::new() };
        assert!(admin.can_write(None) && admin.can_write(Some("b")));
        assert_eq!(admin.read_scope(), ProjectScope::All);
    }
}
