//! Request and response bodies of the REST API other than nodes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The body of every error response: `{ "error": { "code": "...", "message": "..." } }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

word_enum! {
    /// The machine-readable kind of an API error: stable across releases, so clients can
    /// act on it without reading the message.
    pub enum ErrorCode {
        /// A request field or parameter is wrong; the message names it.
        InvalidInput = "invalid_input",
        /// No token, or one that is not valid.
        Unauthorized = "unauthorized",
        /// The caller may not do this.
        Forbidden = "forbidden",
        /// No such resource (or one the caller may not see), or no such endpoint.
        NotFound = "not_found",
        /// The request clashes with the resource's current state.
        Conflict = "conflict",
        /// The server failed; details are in its log.
        Internal = "internal",
        /// A stored blob no longer matches its digest.
        BlobDamaged = "blob_damaged",
        /// The blob store (local disk or S3) failed.
        BlobStore = "blob_store",
        /// The server has no space left for the bytes.
        StorageFull = "storage_full",
        /// Another request is writing this upload.
        UploadBusy = "upload_busy",
        /// An upload's body was sent from another offset than the upload holds.
        OffsetMismatch = "offset_mismatch",
        /// The uploaded or imported bytes are not the image they claim to be.
        InvalidImage = "invalid_image",
        /// An import's source could not be fetched.
        ImportFailed = "import_failed",
        /// A block map was asked of an image that has none.
        NotMapped = "not_mapped",
        /// A `Range` outside the artifact.
        RangeNotSatisfiable = "range_not_satisfiable",
        /// A template did not render.
        RenderFailed = "render_failed",
        /// The node's BMC did not answer.
        BmcUnreachable = "bmc_unreachable",
        /// The node's BMC refused the credentials.
        BmcAuthentication = "bmc_authentication",
        /// The node's BMC answered something Kiln does not understand.
        BmcProtocol = "bmc_protocol",
        /// The node's BMC refused the operation.
        BmcRefused = "bmc_refused",
        /// The request's body (or one of its fields) is larger than the server takes.
        PayloadTooLarge = "payload_too_large",
        /// The request's body stopped arriving.
        RequestTimeout = "request_timeout",
        /// The body is not of the media type the operation takes (JSON, mostly).
        UnsupportedMediaType = "unsupported_media_type",
        /// The server is too busy for this now (too many sign-ins at once): try again shortly.
        Busy = "busy",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable: one of `ErrorCode`'s words (`not_found`,
    /// `invalid_input`, `conflict`, ...). Text, not a closed enum, so a client meeting a code
    /// from a newer server still reads the message.
    pub code: String,
    pub message: String,
}

/// One page of a listing. Pass `next` back as `after` to get the following page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Project {
    pub name: String,
    pub description: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: jiff::Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectInput {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

/// What a user may do in one project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProjectRole {
    /// Reads the project's resources.
    Reader,
    /// Reads and changes the project's resources.
    Member,
}

impl ProjectRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reader => "reader",
            Self::Member => "member",
        }
    }
}

impl std::str::FromStr for ProjectRole {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "reader" => Ok(Self::Reader),
            "member" => Ok(Self::Member),
            _ => Err(format!("'{text}' is not a project role (member or reader)")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Membership {
    pub project: String,
    pub role: ProjectRole,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub name: String,
    /// Administrators manage the inventory and every project.
    pub admin: bool,
    pub memberships: Vec<Membership>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: jiff::Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserInput {
    pub name: String,
    #[serde(default)]
    pub admin: bool,
}

/// A user's new password: at least 8 characters, at most 1024 bytes. Kept only as an
/// argon2id hash; it signs the user in where a token cannot be sent (HTTP basic
/// authentication to the Ironic-compatible API).
#[derive(Clone, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordInput {
    pub password: String,
}

impl std::fmt::Debug for PasswordInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordInput").field("password", &"******").finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MembershipInput {
    pub user: String,
    pub role: ProjectRole,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenInput {
    /// A label to recognise the token by.
    pub name: String,
    /// Whose token it is; admins may mint tokens for others, everyone else only for themselves.
    #[serde(default)]
    pub user: Option<String>,
    /// Lifetime in seconds; absent means the token does not expire.
    #[serde(default)]
    pub expires_in_seconds: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Token {
    pub id: String,
    pub name: String,
    pub user: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: jiff::Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<jiff::Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<jiff::Timestamp>,
}

/// A freshly minted token: the only time its secret is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub token: Token,
    pub secret: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Group {
    pub name: String,
    pub description: String,
    pub project: Option<String>,
    pub members: Vec<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: jiff::Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupInput {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Owning project; members may create groups only in their own project.
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default)]
    pub members: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupPatch {
    #[serde(default)]
    pub description: Option<String>,
    /// Replaces the member list.
    #[serde(default)]
    pub members: Option<Vec<String>>,
}

/// Nodes to allocate to a project or take back from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllocationInput {
    pub nodes: Vec<String>,
}

/// What a static discovery run did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct DiscoverySummary {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
}

/// One recorded change: who did what to which resource, with the state before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    pub id: i64,
    #[schema(value_type = String, format = DateTime)]
    pub at: jiff::Timestamp,
    pub actor: String,
    /// `node.create`, `node.update`, `project.create`, ...
    pub action: String,
    pub target_kind: String,
    pub target: String,
    pub project: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub before: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    pub after: Option<serde_json::Value>,
}

/// Who the caller is, as the server sees it (`GET /v1/whoami`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub user: String,
    pub admin: bool,
    pub memberships: Vec<Membership>,
}

/// The sync's record for one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PowerReading {
    pub node: String,
    /// The last state read, as the BMC driver names it (`on`, `off`…).
    pub power_state: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub checked_at: jiff::Timestamp,
    /// Consecutive failed reads.
    pub failures: u32,
    /// The kind of the last failure (`unreachable`, `authentication`, `protocol`, `refused`).
    pub fault: Option<String>,
    pub fault_message: Option<String>,
    /// Whether the sync put the node into maintenance (and will take it out).
    pub maintenance_set: bool,
}

/// A node's serial console output (`GET /v1/nodes/{node}/console`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConsoleOutput {
    pub node: String,
    /// The offset (in every byte the console has sent) of the first byte of `data`.
    pub start: u64,
    /// Every byte received so far: ask with `after` set to this for what comes next.
    pub end: u64,
    /// The bytes, base64-encoded (a serial line is not always UTF-8).
    pub data: String,
    /// Bytes after the asked offset were no longer kept: the oldest are dropped.
    pub truncated: bool,
    /// Whether a replica reads the console now (and takes typed input).
    pub connected: bool,
}

/// What to type on a node's serial console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleInput {
    /// Sent as written; `\r` is the Enter key on a serial line.
    pub text: String,
}
