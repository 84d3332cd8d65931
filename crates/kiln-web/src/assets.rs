//! The console's stylesheet and script, built into the binary and served under names that
//! carry a digest of their bytes: a new build changes the name, so a browser may cache each
//! one forever and never asks again.

use sha2::Digest as _;

/// One asset: where it is served and what it is.
#[derive(Debug, Clone)]
pub struct Asset {
    /// `/ui/assets/console-<digest>.css`.
    pub path: String,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

/// Every asset of the console.
#[derive(Debug, Clone)]
pub struct Assets {
    pub stylesheet: Asset,
    pub script: Asset,
}

/// The prefix every asset is served under.
pub const ASSETS_PREFIX: &str = "/ui/assets";

impl Assets {
    pub fn built_in() -> Assets {
        Assets {
            stylesheet: named("console", "css", "text/css; charset=utf-8", include_bytes!("../assets/console.css")),
            script: named("console", "js", "text/javascript; charset=utf-8", include_bytes!("../assets/console.js")),
        }
    }

    /// The asset served at `path`, if any.
    pub fn find(&self, path: &str) -> Option<&Asset> {
        [&self.stylesheet, &self.script].into_iter().find(|asset| asset.path == path)
    }

    /// The bytes a page pulls in besides itself.
    pub fn total_bytes(&self) -> usize {
        self.stylesheet.bytes.len() + self.script.bytes.len()
    }
}

fn named(stem: &str, extension: &str, content_type: &'static str, bytes: &'static [u8]) -> Asset {
    let digest = hex::encode(&sha2::Sha256::digest(bytes)[..6]);
    Asset { path: format!("{ASSETS_PREFIX}/{stem}-{digest}.{extension}"), content_type, bytes }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_named_by_their_digest_and_found_by_that_name() {
        let assets = Assets::built_in();
        assert!(assets.stylesheet.path.starts_with("/ui/assets/console-") && assets.stylesheet.path.ends_with(".css"));
        assert_eq!(assets.find(&assets.script.path).map(|asset| asset.bytes), Some(assets.script.bytes));
        assert!(assets.find("/ui/assets/console.css").is_none(), "only the digest-named path is served");
        assert!(assets.total_bytes() < 20_000, "the console stays light: {} bytes", assets.total_bytes());
    }
}
