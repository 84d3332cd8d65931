//! OCI images as layers travel between builds: image references as OpenCHAMI writes them
//! (`host:port/path/name:tag`), and the manifest and config of a one-layer image. Pure: the
//! registry's HTTP is the caller's.

use std::fmt;

use serde::{Deserialize, Serialize};

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Layers are pushed as plain tar: the root is compressed once, in the SquashFS; a gzip pass
/// over a whole root would cost more time than the registry's disk saves.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("'{reference}' is not an image reference (host[:port]/path/name[:tag]): {reason}")]
    Malformed { reference: String, reason: &'static str },
}

/// Where an image is: `registry` (host and port), `repository` (path and name) and the tag
/// or digest it is asked for by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReference {
    pub registry: String,
    pub repository: String,
    /// A tag, or `sha256:…` for a reference by digest.
    pub reference: String,
}

impl ImageReference {
    pub fn parse(text: &str) -> Result<ImageReference, ReferenceError> {
        let malformed = |reason| ReferenceError::Malformed { reference: text.to_owned(), reason };
        let (registry, rest) = text.split_once('/').ok_or_else(|| malformed("no registry host before the first '/'"))?;
        // A registry is named by a host with a dot or a port, or localhost; anything else would
        // be Docker Hub's shorthand, which this offline builder has no use for.
        if !(registry.contains('.') || registry.contains(':') || registry == "localhost") {
            return Err(malformed("the part before the first '/' is not a registry host"));
        }
        let (repository, reference) = if let Some((repository, digest)) = rest.split_once('@') {
            (repository, digest.to_owned())
        } else {
            match rest.rsplit_once(':') {
                Some((repository, tag)) if !tag.contains('/') => (repository, tag.to_owned()),
                _ => (rest, "latest".to_owned()),
            }
        };
        if repository.is_empty() || reference.is_empty() {
            return Err(malformed("the repository or tag is empty"));
        }
        let valid_repository = repository
            .split('/')
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c)));
        if !valid_repository {
            return Err(malformed("repository names are lowercase letters, digits, '.', '_' and '-', separated by '/'"));
        }
        Ok(ImageReference { registry: registry.to_owned(), repository: repository.to_owned(), reference })
    }

    /// The registry's base URL: plain HTTP when the options turn TLS verification off (as
    /// `--tls-verify=false` does for buildah and podman), HTTPS otherwise.
    pub fn base_url(&self, options: &[String]) -> String {
        let plain = options.iter().any(|option| option == "--tls-verify=false" || option == "--insecure");
        format!("{}://{}/v2/{}", if plain { "http" } else { "https" }, self.registry, self.repository)
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let separator = if self.reference.starts_with("sha256:") { '@' } else { ':' };
        write!(f, "{}/{}{separator}{}", self.registry, self.repository, self.reference)
    }
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// `sha256:<hex>` of some bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// The config and manifest of an image made of one uncompressed layer, as bytes ready to
/// push: the same layer always gives the same manifest digest (no timestamps).
pub fn one_layer_image(layer_digest: &str, layer_size: u64, architecture: &str) -> (Vec<u8>, Vec<u8>) {
    let config = serde_json::json!({
        "architecture": architecture,
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    });
    let config = serde_json::to_vec(&config).expect("plain data serialises");
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MANIFEST_MEDIA_TYPE.to_owned()),
        config: Descriptor { media_type: CONFIG_MEDIA_TYPE.to_owned(), digest: digest_of(&config), size: config.len() as u64 },
        layers: vec![Descriptor { media_type: LAYER_MEDIA_TYPE.to_owned(), digest: layer_digest.to_owned(), size: layer_size }],
    };
    (config, serde_json::to_vec(&manifest).expect("plain data serialises"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_as_the_openchami_tutorial_writes_them() {
        let parsed = |text: &str| ImageReference::parse(text).map(|r| (r.registry, r.repository, r.reference));
        assert_eq!(
            parsed("demo.openchami.cluster:5000/demo/rocky-base:9"),
            Ok(("demo.openchami.cluster:5000".into(), "demo/rocky-base".into(), "9".into()))
        );
        assert_eq!(parsed("127.0.0.1:5000/debian-base"), Ok(("127.0.0.1:5000".into(), "debian-base".into(), "latest".into())));
        assert_eq!(parsed("localhost/a/b@sha256:00ff").map(|r| r.2), Ok("sha256:00ff".into()), "a reference by digest keeps its digest");
        let error = ImageReference::parse("rocky-base:9").unwrap_err().to_string();
        assert!(error.contains("no registry host"), "{error}");
        let error = ImageReference::parse("docker/library/debian:12").unwrap_err().to_string();
        assert!(error.contains("not a registry host"), "{error}");
        let error = ImageReference::parse("registry.local/Debian:12").unwrap_err().to_string();
        assert!(error.contains("lowercase"), "{error}");
    }

    #[test]
    fn the_url_follows_the_tls_option_and_display_round_trips() {
        let reference = ImageReference::parse("registry.local:5000/demo/base:1").unwrap();
        assert_eq!(reference.base_url(&["--tls-verify=false".into()]), "http://registry.local:5000/v2/demo/base");
        assert_eq!(reference.base_url(&[]), "https://registry.local:5000/v2/demo/base");
        assert_eq!(reference.to_string(), "registry.local:5000/demo/base:1");
    }

    #[test]
    fn one_layer_images_are_reproducible() {
        let layer = digest_of(b"layer");
        let (config, manifest) = one_layer_image(&layer, 5, "amd64");
        assert_eq!(one_layer_image(&layer, 5, "amd64"), (config.clone(), manifest.clone()));
        let parsed: Manifest = serde_json::from_slice(&manifest).unwrap();
        assert_eq!(parsed.config.digest, digest_of(&config));
        assert_eq!(parsed.layers[0].digest, layer);
        expect_test::expect![[r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:8ad5acb20827d5498177084fe0d6c8b238745e06260c03a0d1c22a81051e0f66","size":163},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:dac1d7cfa95021764849fd102524e141488c5e3a90f861dbb5a12d9ac8584f85","size":5}]}"#]]
        .assert_eq(std::str::from_utf8(&manifest).unwrap());
    }
}
