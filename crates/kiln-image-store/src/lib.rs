//! Where image bytes live and what they are: a content-addressed blob store (a local
//! directory, or an S3-compatible bucket), checksums in the algorithms users bring, and the
//! inspection of image formats from their first bytes.
//!
//! Nothing here knows about images, versions or tenants; the database does. A blob is named
//! by the SHA-256 of its bytes and is only ever written whole: bytes arrive in a spool file
//! and move into the store once their digest is known.

mod blob;
pub mod blockmap;
mod checksum;
pub mod convert;
pub mod egress;
mod error;
pub mod fetch;
pub mod format;
pub mod kernel;
pub mod pump;
mod spool;

pub use blob::{BlobId, BlobRead, BlobStore, S3Settings, StoredBlob, object_size_in_bucket, put_file_in_bucket};
pub use checksum::{Checksum, DigestAlgorithm, Digests, MultiHasher};
pub use error::{BlobError, error_chain};
pub use format::{Inspection, InspectionError, inspect};
pub use spool::{SPOOL_HEAD_BYTES, SpoolFile};
