//! Names that are unique within a project, not across projects: images and groups.
//!
//! Two projects may each have an image `debian` and a group `compute`; neither can learn
//! of the other's by colliding with it. A resource is therefore identified by its project
//! and its name together ([`ScopedName`], written `PROJECT/NAME`, or `NAME` for one that
//! belongs to no project), and what a caller writes to name one ([`NameReference`]) is
//! resolved among the projects the caller may see.

use std::fmt;

use crate::validate::{self, InvalidField};

/// The identity of an image or a group: the project that owns it (`None`: the
/// administrators', visible to every project for groups) and its name within that project.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopedName {
    pub project: Option<String>,
    pub name: String,
}

impl ScopedName {
    pub fn new(project: Option<&str>, name: &str) -> ScopedName {
        ScopedName { project: project.map(str::to_owned), name: name.to_owned() }
    }

    /// `PROJECT/NAME`, or `NAME` for a resource without a project: the form stored in keys
    /// and boot targets and shown wherever the resource is named from outside its project.
    pub fn key(&self) -> String {
        self.to_string()
    }

    /// The key as one URL path segment (`PROJECT%2FNAME`): how Kiln's own boot URLs name
    /// an image exactly.
    pub fn path_segment(&self) -> String {
        self.key().replace('/', "%2F")
    }

    /// The identity a stored key names. Keys are written by [`ScopedName::key`] from
    /// validated names, which never hold a `/`.
    pub fn from_key(key: &str) -> ScopedName {
        match key.split_once('/') {
            Some((project, name)) => ScopedName::new(Some(project), name),
            None => ScopedName::new(None, key),
        }
    }

    /// The name part of a stored key: what a node calls one of its groups.
    pub fn name_of_key(key: &str) -> &str {
        key.rsplit_once('/').map_or(key, |(_, name)| name)
    }

    /// Parses an exact identity, where a bare `NAME` means the resource without a project
    /// (administrators' boot targets name groups this way).
    pub fn parse(field: &str, text: &str) -> Result<ScopedName, InvalidField> {
        let reference = NameReference::parse(field, text)?;
        Ok(ScopedName { project: reference.project, name: reference.name })
    }
}

/// `PROJECT/NAME`, or `NAME` without a project: how both a name and a reference are written.
fn write_key(formatter: &mut fmt::Formatter<'_>, project: Option<&str>, name: &str) -> fmt::Result {
    match project {
        Some(project) => write!(formatter, "{project}/{name}"),
        None => formatter.write_str(name),
    }
}

impl fmt::Display for ScopedName {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_key(formatter, self.project.as_deref(), &self.name)
    }
}

/// What a caller wrote to name an image or a group: `PROJECT/NAME`, or a bare `NAME`, which
/// is looked for in the caller's own projects first (see the store's resolution rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameReference {
    /// The project the caller named, if it named one.
    pub project: Option<String>,
    pub name: String,
}

impl NameReference {
    /// A reference from a URL path segment as sent, `PROJECT%2FNAME` or `NAME` (names hold
    /// no other character that would be escaped).
    pub fn parse_path_segment(field: &str, segment: &str) -> Result<NameReference, InvalidField> {
        NameReference::parse(field, &segment.replace("%2F", "/").replace("%2f", "/"))
    }

    pub fn parse(field: &str, text: &str) -> Result<NameReference, InvalidField> {
        match text.split_once('/') {
            Some((project, name)) => Ok(NameReference {
                project: Some(validate::name(field, project)?),
                name: validate::name(field, name)
                    .map_err(|_| InvalidField::new(field, format!("'{text}' is not a valid reference (NAME or PROJECT/NAME)")))?,
            }),
            None => Ok(NameReference { project: None, name: validate::name(field, text)? }),
        }
    }

    /// Whether `identity` is what this reference names when the project is given, or could
    /// be when it is not.
    pub fn may_name(&self, identity: &ScopedName) -> bool {
        identity.name == self.name && (self.project.is_none() || self.project == identity.project)
    }
}

impl fmt::Display for NameReference {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_key(formatter, self.project.as_deref(), &self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_bare_names_have_no_project() {
        let scoped = ScopedName::new(Some("lab-a"), "debian");
        assert_eq!(scoped.key(), "lab-a/debian");
        assert_eq!(ScopedName::from_key(&scoped.key()), scoped);
        assert_eq!(ScopedName::from_key("compute"), ScopedName::new(None, "compute"));
    }

    #[test]
    fn references_validate_both_parts_and_name_the_field() {
        assert_eq!(
            NameReference::parse("image", "lab-a/debian").unwrap(),
            NameReference { project: Some("lab-a".into()), name: "debian".into() }
        );
        assert_eq!(NameReference::parse("image", "debian").unwrap().project, None);
        for bad in ["", "/debian", "lab-a/", "a/b/c", "lab a/debian"] {
            let error = NameReference::parse("image", bad).unwrap_err();
            assert_eq!(error.field, "image", "{bad}");
        }
    }

    #[test]
    fn a_key_is_one_path_segment_and_reads_back() {
        let scoped = ScopedName::new(Some("lab-a"), "debian");
        assert_eq!(scoped.path_segment(), "lab-a%2Fdebian");
        let reference = NameReference::parse_path_segment("image", &scoped.path_segment()).unwrap();
        assert_eq!((reference.project.as_deref(), reference.name.as_str()), (Some("lab-a"), "debian"));
        assert_eq!(NameReference::parse_path_segment("image", "debian").unwrap().project, None);
    }

    #[test]
    fn a_bare_reference_may_name_any_project_and_a_qualified_one_only_its_own() {
        let bare = NameReference::parse("image", "debian").unwrap();
        let qualified = NameReference::parse("image", "lab-a/debian").unwrap();
        let in_a = ScopedName::new(Some("lab-a"), "debian");
        let in_b = ScopedName::new(Some("lab-b"), "debian");
        assert!(bare.may_name(&in_a) && bare.may_name(&in_b));
        assert!(qualified.may_name(&in_a) && !qualified.may_name(&in_b));
    }
}
