//! The JSON shapes of images, their versions and artifacts, uploads and store maintenance.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::InvalidField;

word_enum! {
    /// Who may see and use an image besides its project.
    #[derive(Default)]
    pub enum Visibility {
        /// The owning project only.
        #[default]
        Private = "private",
        /// Every authenticated user, and nodes booting it.
        Public = "public",
        /// The owning project and the projects named in `shared_with`.
        Shared = "shared",
    }
}

word_enum! {
    /// What an artifact is for in a version.
    pub enum ArtifactKind {
        /// A root filesystem a diskless node mounts (usually SquashFS).
        Root = "root",
        /// A whole-disk image written to a node's disk (raw, qcow2, ISO).
        Disk = "disk",
        Kernel = "kernel",
        Initrd = "initrd",
        /// The build log of a version made by `kiln image build`.
        Log = "log",
        /// A network-disk snapshot: a qcow2 layer holding only the clusters a node changed,
        /// over the version's disk artifact (which it shares with the version it came from).
        Layer = "layer",
    }
}

word_enum! {
    /// An artifact's format, after any compression is taken off.
    pub enum ImageFormat {
        Raw = "raw",
        Qcow2 = "qcow2",
        Squashfs = "squashfs",
        Iso = "iso",
        /// A Linux kernel (x86 bzImage, arm64 Image, or an EFI-stub kernel).
        Kernel = "kernel",
        /// A cpio archive, as initramfs images are.
        Initramfs = "initramfs",
    }
}

word_enum! {
    /// A compression wrapped around an artifact's format.
    pub enum Compression {
        Gzip = "gzip",
        Zstd = "zstd",
        Xz = "xz",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Image {
    pub name: String,
    /// None: owned by the administrators.
    pub project: Option<String>,
    pub visibility: Visibility,
    pub shared_with: Vec<String>,
    pub description: String,
    pub os: Option<String>,
    pub arch: Option<String>,
    /// The highest version number, if any version exists.
    pub latest_version: Option<i64>,
    /// Tag name to version number.
    pub tags: BTreeMap<String, i64>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: jiff::Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: jiff::Timestamp,
}

impl Image {
    /// The image's identity: names are unique within a project, not across projects.
    pub fn scoped_name(&self) -> crate::scoped_name::ScopedName {
        crate::scoped_name::ScopedName::new(self.project.as_deref(), &self.name)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageInput {
    pub name: String,
    /// Required for non-administrators who belong to more than one project.
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default)]
    pub visibility: Visibility,
    #[serde(default)]
    pub shared_with: Vec<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub arch: Option<String>,
}

/// The settable fields of an image; absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageUpdate {
    pub visibility: Option<Visibility>,
    pub shared_with: Option<Vec<String>>,
    pub description: Option<String>,
    pub os: Option<String>,
    pub arch: Option<String>,
}

/// One file of a version, stored as a content-addressed blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Artifact {
    pub kind: ArtifactKind,
    /// The blob holding the artifact's bytes as stored (compressed, if it is).
    pub sha256: String,
    pub format: ImageFormat,
    pub compression: Option<Compression>,
    /// Bytes as stored.
    pub size: u64,
    /// Bytes the image presents (a disk's size, a filesystem's size), when the format says.
    pub virtual_size: Option<u64>,
    /// Every checksum verified on the way in, by algorithm (`sha256` always).
    pub checksums: BTreeMap<String, String>,
    /// Where it was imported from, if it was.
    pub source_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageVersion {
    pub image: String,
    pub version: i64,
    pub tags: Vec<String>,
    pub note: String,
    pub created_by: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: jiff::Timestamp,
    pub artifacts: Vec<Artifact>,
}

impl ImageVersion {
    pub fn artifact(&self, kind: ArtifactKind) -> Option<&Artifact> {
        self.artifacts.iter().find(|artifact| artifact.kind == kind)
    }
}

/// A new version: artifacts from finished uploads, the rest carried over from `base`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VersionInput {
    /// The number to create; it must not exist yet. Default: one more than the highest.
    #[serde(default)]
    pub version: Option<i64>,
    /// A version (number or tag) whose artifacts the new one starts from.
    #[serde(default)]
    pub base: Option<String>,
    pub artifacts: Vec<ArtifactInput>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ArtifactInput {
    pub kind: ArtifactKind,
    /// The id of a finished upload holding the bytes.
    pub upload: String,
    /// The format the uploader says it is; refused if the bytes say otherwise.
    #[serde(default)]
    pub format: Option<ImageFormat>,
}

/// A resumable upload: append with `PATCH` at `offset` until done, then name it in a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Upload {
    pub id: String,
    pub project: Option<String>,
    /// Bytes received so far; the next `PATCH` must start here.
    pub offset: u64,
    pub checksum: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: jiff::Timestamp,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadInput {
    /// The image the upload is for: it goes into that image's project, and the caller must
    /// be allowed to change the image.
    #[serde(default)]
    pub image: Option<String>,
    /// The project, when no image is named.
    #[serde(default)]
    pub project: Option<String>,
    /// `ALGORITHM:HEX` (md5, sha1, sha256, sha384, sha512) the bytes must match.
    #[serde(default)]
    pub checksum: Option<String>,
}

/// Import one artifact from a URL into a new version of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportInput {
    /// `http://`, `https://`, or `file://` under the server's allowed directories.
    pub url: String,
    /// `ALGORITHM:HEX`; either this or `checksum_url` is required.
    #[serde(default)]
    pub checksum: Option<String>,
    /// A checksum file (`HEX  NAME` lines, as `sha256sum` writes) that names the URL's file.
    #[serde(default)]
    pub checksum_url: Option<String>,
    #[serde(default = "default_import_kind")]
    pub kind: ArtifactKind,
    #[serde(default)]
    pub format: Option<ImageFormat>,
    #[serde(default)]
    pub base: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub note: String,
}

fn default_import_kind() -> ArtifactKind {
    ArtifactKind::Disk
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImportResult {
    /// True when the source had not changed since the version it already made, so nothing was
    /// downloaded and `version` is that earlier version.
    pub unchanged: bool,
    pub version: ImageVersion,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloneInput {
    /// The new image's name.
    pub name: String,
    /// The version (number or tag) to clone; default the latest.
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default)]
    pub visibility: Visibility,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagInput {
    /// A version number or another tag.
    pub version: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GcReport {
    pub blobs_removed: u64,
    pub bytes_freed: u64,
    pub uploads_removed: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VerifyReport {
    pub blobs_checked: u64,
    pub bytes_checked: u64,
    /// Blobs whose bytes no longer hash to their name.
    pub corrupt: Vec<String>,
    /// Blobs the database knows and the store does not have.
    pub missing: Vec<String>,
}

/// A version reference: a number, or a tag (`latest` is the highest number unless it is a
/// tag of its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionRef {
    Number(i64),
    Tag(String),
}

impl VersionRef {
    pub fn parse(field: &str, text: &str) -> Result<Self, InvalidField> {
        if let Ok(number) = text.parse::<i64>() {
            return if number >= 1 {
                Ok(Self::Number(number))
            } else {
                Err(InvalidField::new(field, format!("version {number} does not exist (versions start at 1)")))
            };
        }
        crate::validate::name(field, text).map(Self::Tag)
    }
}

impl std::fmt::Display for VersionRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Number(number) => write!(f, "{number}"),
            Self::Tag(tag) => f.write_str(tag),
        }
    }
}

/// Orders kernel versions as their numbers do, so that `6.10` comes after `6.9` (a plain
/// string sort puts it first).
pub fn kernel_version_key(version: &str) -> Vec<(u64, String)> {
    version
        .split(|c: char| !c.is_ascii_alphanumeric())
        .map(|part| match part.parse::<u64>() {
            Ok(number) => (number, String::new()),
            Err(_) => (0, part.to_owned()),
        })
        .collect()
}

/// The names, under `/boot`, of kernel `version`'s initramfs: Debian's, then Fedora's and
/// RHEL's, then SUSE's.
pub fn initramfs_names(version: &str) -> [String; 3] {
    [format!("initrd.img-{version}"), format!("initramfs-{version}.img"), format!("initrd-{version}")]
}
