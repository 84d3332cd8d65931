//! The names of the Kiln images that hold what Ironic's clients give by URL: a node's
//! `instance_info.image_source`, and its `driver_info.deploy_kernel` and `deploy_ramdisk`.
//! A name depends on the URLs alone, so every deploy of one URL finds the same cache.

use serde_json::{Map, Value};
use sha2::Digest as _;

/// How every name made here starts. The server finds its caches by name, so no user may
/// make an image whose name starts so (the image API refuses it).
pub const RESERVED_PREFIX: &str = "ironic-";

/// Whether `image_source` names an image by URL rather than a Kiln image.
pub fn is_url(text: &str) -> bool {
    text.contains("://")
}

fn digest_name(prefix: &str, text: &str) -> String {
    let digest = sha2::Sha256::digest(text.as_bytes());
    let hex: String = digest.iter().take(8).map(|byte| format!("{byte:02x}")).collect();
    format!("{prefix}-{hex}")
}

/// The image (in the node's project) that caches an `image_source` URL.
pub fn instance_image_name(url: &str) -> String {
    digest_name(RESERVED_PREFIX.trim_end_matches('-'), url)
}

/// A node's deploy kernel and ramdisk URLs (`driver_info.deploy_kernel` and
/// `deploy_ramdisk`), when it gives both as URLs.
pub fn deploy_ramdisk_urls(driver_info: &Map<String, Value>) -> Option<(&str, &str)> {
    let url = |key: &str| driver_info.get(key).and_then(Value::as_str).filter(|text| is_url(text));
    Some((url("deploy_kernel")?, url("deploy_ramdisk")?))
}

/// The public image without a project that caches a deploy kernel and ramdisk pair: what
/// the node's agent boots instead of the site's deploy ramdisk.
pub fn deploy_ramdisk_image_name(kernel_url: &str, ramdisk_url: &str) -> String {
    digest_name(&format!("{RESERVED_PREFIX}ramdisk"), &format!("{kernel_url}\n{ramdisk_url}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_depend_on_the_urls_alone() {
        let names = [
            instance_image_name("http://my.server.net/images/img"),
            instance_image_name("http://my.server.net/images/img2"),
            deploy_ramdisk_image_name("file:///images/deploy.vmlinuz", "http://my.server.net/images/deploy.ramdisk"),
        ];
        expect_test::expect![[r#"
            [
                "ironic-81bc046590a2eb16",
                "ironic-8bde94ad9c1b8864",
                "ironic-ramdisk-0db90e21de5257cc",
            ]
        "#]]
        .assert_debug_eq(&names);
    }

    #[test]
    fn a_deploy_ramdisk_needs_both_urls() {
        let info = |pairs: &[(&str, &str)]| pairs.iter().map(|(key, value)| (key.to_string(), Value::from(*value))).collect();
        assert_eq!(
            deploy_ramdisk_urls(&info(&[("deploy_kernel", "file:///k"), ("deploy_ramdisk", "http://h/r")])),
            Some(("file:///k", "http://h/r"))
        );
        assert_eq!(deploy_ramdisk_urls(&info(&[("deploy_kernel", "file:///k")])), None);
        assert_eq!(deploy_ramdisk_urls(&info(&[("deploy_kernel", "glance-uuid"), ("deploy_ramdisk", "http://h/r")])), None);
    }
}
