//! The driver's decisions over a catalog in memory: parent resolution and its cache, what
//! `--offline` accepts, output reuse and what publishing to Kiln uploads. None needs root
//! or a server; `crates/kiln-cli/tests/image_build.rs` runs the same paths for real.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kiln_image_build::definition::{Output, Parent, parse_definition};
use kiln_types::image::{Artifact, ArtifactKind, ImageFormat, ImageInput, ImageVersion};

use crate::catalog::{CatalogError, ImageCatalog};
use crate::error::DriverError;
use crate::outputs::{BuildResult, OutputDecision, SquashfsFiles, decide_output, reusable_previous};
use crate::parent::resolve_parent;
use crate::publish::{KilnPublication, decide_kiln_publication, kiln_artifacts, s3_objects, s3_settings};

/// Kiln's image store in memory: versions by image, artifact bytes by (image, version, kind).
#[derive(Default)]
struct MemoryCatalog {
    state: Mutex<CatalogState>,
}

#[derive(Default)]
struct CatalogState {
    images: BTreeMap<String, Vec<ImageVersion>>,
    bytes: BTreeMap<(String, i64, ArtifactKind), Vec<u8>>,
    downloads: usize,
    uploads: Vec<(String, Vec<ArtifactKind>, String)>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn version(image: &str, number: i64, artifacts: &[(ArtifactKind, &[u8])]) -> ImageVersion {
    ImageVersion {
        image: image.to_owned(),
        version: number,
        tags: Vec::new(),
        note: String::new(),
        created_by: "test".to_owned(),
        created_at: jiff::Timestamp::UNIX_EPOCH,
        artifacts: artifacts
            .iter()
            .map(|(kind, bytes)| Artifact {
                kind: *kind,
                sha256: sha256_hex(bytes),
                format: ImageFormat::Raw,
                compression: None,
                size: bytes.len() as u64,
                virtual_size: None,
                checksums: BTreeMap::new(),
                source_url: None,
            })
            .collect(),
    }
}

impl MemoryCatalog {
    /// An image whose one version holds `artifacts`; `served` replaces the bytes a download
    /// gets (to make one arrive damaged).
    fn with_version(image: &str, artifacts: &[(ArtifactKind, &[u8])], served: Option<&[u8]>) -> MemoryCatalog {
        let catalog = MemoryCatalog::default();
        {
            let mut state = catalog.state.lock().unwrap();
            state.images.insert(image.to_owned(), vec![version(image, 1, artifacts)]);
            for (kind, bytes) in artifacts {
                state.bytes.insert((image.to_owned(), 1, *kind), served.unwrap_or(bytes).to_vec());
            }
        }
        catalog
    }
}

impl ImageCatalog for MemoryCatalog {
    async fn find_version(&self, image: &str, wanted: &str) -> Result<Option<ImageVersion>, CatalogError> {
        let state = self.state.lock().unwrap();
        let Some(versions) = state.images.get(image) else { return Ok(None) };
        Ok(match wanted {
            "latest" => versions.last().cloned(),
            number => versions.iter().find(|version| version.version.to_string() == number).cloned(),
        })
    }

    async fn download_artifact(&self, image: &str, version: i64, kind: ArtifactKind, destination: &Path) -> Result<(), CatalogError> {
        let mut state = self.state.lock().unwrap();
        state.downloads += 1;
        let bytes = state.bytes.get(&(image.to_owned(), version, kind)).ok_or("no such artifact")?.clone();
        std::fs::write(destination, bytes)?;
        Ok(())
    }

    async fn create_image_if_missing(&self, input: &ImageInput) -> Result<bool, CatalogError> {
        let mut state = self.state.lock().unwrap();
        let created = !state.images.contains_key(&input.name);
        state.images.entry(input.name.clone()).or_default();
        Ok(created)
    }

    async fn add_version(&self, image: &str, artifacts: &[(ArtifactKind, PathBuf)], note: &str) -> Result<ImageVersion, CatalogError> {
        let mut contents = Vec::new();
        for (kind, path) in artifacts {
            contents.push((*kind, std::fs::read(path)?));
        }
        let mut state = self.state.lock().unwrap();
        state.uploads.push((image.to_owned(), artifacts.iter().map(|(kind, _)| *kind).collect(), note.to_owned()));
        let versions = state.images.entry(image.to_owned()).or_default();
        let number = versions.len() as i64 + 1;
        let borrowed: Vec<(ArtifactKind, &[u8])> = contents.iter().map(|(kind, bytes)| (*kind, bytes.as_slice())).collect();
        let made = version(image, number, &borrowed);
        versions.push(made.clone());
        Ok(made)
    }
}

fn kiln_parent(image: &str) -> Parent {
    Parent::Kiln { image: image.to_owned(), version: None }
}

async fn resolve(
    catalog: &MemoryCatalog,
    parent: &Parent,
    cache: &Path,
    offline: bool,
) -> Result<crate::parent::ResolvedParent, DriverError> {
    let mut terminal = Vec::new();
    resolve_parent(catalog, parent, cache, offline, &mut terminal).await
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn a_cached_parent_is_not_downloaded_again_and_offline_finds_it() {
    let cache = tempfile::tempdir().unwrap();
    let root_bytes: &[u8] = b"a squashfs, as far as the driver can tell";
    let catalog = MemoryCatalog::with_version("base", &[(ArtifactKind::Root, root_bytes)], None);
    let digest = sha256_hex(root_bytes);
    // Unpacked by an earlier build: nothing to download.
    std::fs::create_dir_all(cache.path().join("parents").join(&digest).join("root")).unwrap();
    let runtime = runtime();
    let online = runtime.block_on(resolve(&catalog, &kiln_parent("base"), cache.path(), false)).unwrap();
    assert_eq!(online.digest, format!("sha256:{digest}"));
    assert_eq!(online.root.unwrap().root, cache.path().join("parents").join(&digest).join("root"));
    assert_eq!(catalog.state.lock().unwrap().downloads, 0);
    // Offline, the recorded digest stands for the name, with no catalog call at all.
    let offline = runtime.block_on(resolve(&MemoryCatalog::default(), &kiln_parent("base"), cache.path(), true)).unwrap();
    assert_eq!(offline.digest, format!("sha256:{digest}"));
}

#[test]
fn offline_refuses_a_parent_never_resolved_or_no_longer_unpacked() {
    let cache = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let error = runtime.block_on(resolve(&MemoryCatalog::default(), &kiln_parent("base"), cache.path(), true)).unwrap_err();
    assert!(matches!(&error, DriverError::OfflineParentUnknown { parent } if parent == "kiln:base:latest"), "{error:?}");

    let catalog = MemoryCatalog::with_version("base", &[(ArtifactKind::Root, b"root")], None);
    let unpacked = cache.path().join("parents").join(sha256_hex(b"root")).join("root");
    std::fs::create_dir_all(&unpacked).unwrap();
    runtime.block_on(resolve(&catalog, &kiln_parent("base"), cache.path(), false)).unwrap();
    std::fs::remove_dir_all(&unpacked).unwrap();
    let error = runtime.block_on(resolve(&catalog, &kiln_parent("base"), cache.path(), true)).unwrap_err();
    assert!(matches!(error, DriverError::OfflineParentNotUnpacked { .. }), "{error:?}");
}

#[test]
fn a_missing_parent_or_one_without_a_root_is_named() {
    let cache = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let error = runtime.block_on(resolve(&MemoryCatalog::default(), &kiln_parent("nowhere"), cache.path(), false)).unwrap_err();
    assert_eq!(error.to_string(), "the parent kiln:nowhere:latest is not in Kiln (no such image or version)");
    let catalog = MemoryCatalog::with_version("disk-only", &[(ArtifactKind::Disk, b"disk")], None);
    let error = runtime.block_on(resolve(&catalog, &kiln_parent("disk-only"), cache.path(), false)).unwrap_err();
    assert_eq!(error.to_string(), "the parent kiln:disk-only:latest has no root artifact");
    // Nothing recorded for either: offline still does not know them.
    assert!(!cache.path().join("refs").exists());
}

#[test]
fn a_parent_that_arrives_damaged_is_discarded_and_not_recorded() {
    let cache = tempfile::tempdir().unwrap();
    let catalog = MemoryCatalog::with_version("base", &[(ArtifactKind::Root, b"the real root")], Some(b"something else"));
    let error = runtime().block_on(resolve(&catalog, &kiln_parent("base"), cache.path(), false)).unwrap_err();
    assert!(
        matches!(&error, DriverError::ParentDigestMismatch { got, expected, .. } if *got == sha256_hex(b"something else") && *expected == sha256_hex(b"the real root")),
        "{error:?}"
    );
    let directory = cache.path().join("parents").join(sha256_hex(b"the real root"));
    assert!(!directory.join("root.squashfs.partial").exists(), "the damaged download is removed");
    assert!(!directory.join("root").exists());
    assert!(!cache.path().join("refs").exists());
}

#[test]
fn scratch_resolves_to_no_root_without_the_catalog() {
    let cache = tempfile::tempdir().unwrap();
    let resolved = runtime().block_on(resolve(&MemoryCatalog::default(), &Parent::Scratch, cache.path(), true)).unwrap();
    assert_eq!(resolved.digest, "scratch");
    assert!(resolved.root.is_none());
}

fn result(name: &str, kernel_args: &str) -> BuildResult {
    BuildResult {
        name: name.to_owned(),
        layer: "0123456789abcdef".to_owned(),
        reused: false,
        seconds: 1.0,
        squashfs: Some(SquashfsFiles { root: "root.squashfs".into(), kernel: Some("vmlinuz".into()), initrd: Some("initrd.img".into()) }),
        disk: Some("disk.raw".into()),
        layer_tar: None,
        pushed: Vec::new(),
        published: None,
        s3: Vec::new(),
        log: "build.log".into(),
        kernel_args: kernel_args.to_owned(),
        secure_boot: false,
    }
}

#[test]
fn previous_outputs_stand_only_for_a_cached_layer_with_the_same_name_and_kernel_arguments() {
    let previous = || Some(result("debian", "console=ttyS0"));
    let boot = |kernel_args, secure_boot| kiln_image_build::disk::DiskBoot { kernel_args, secure_boot };
    assert!(reusable_previous(previous(), true, "debian", &boot("console=ttyS0", false)).is_some());
    assert!(reusable_previous(previous(), false, "debian", &boot("console=ttyS0", false)).is_none(), "a rebuilt layer makes new bytes");
    assert!(reusable_previous(previous(), true, "renamed", &boot("console=ttyS0", false)).is_none(), "the name is inside the outputs");
    assert!(reusable_previous(previous(), true, "debian", &boot("quiet", false)).is_none(), "the disk boots with the kernel arguments");
    assert!(reusable_previous(previous(), true, "debian", &boot("console=ttyS0", true)).is_none(), "and with its boot loader");
    assert!(reusable_previous(None, true, "debian", &boot("console=ttyS0", false)).is_none());
}

#[test]
fn an_output_is_reused_only_when_wanted_made_before_and_still_there() {
    assert_eq!(decide_output(false, Some(1), |_| true), OutputDecision::NotWanted);
    assert_eq!(decide_output(true, Some(1), |_| true), OutputDecision::Reuse(1));
    assert_eq!(decide_output(true, Some(1), |_| false), OutputDecision::Make, "removed since");
    assert_eq!(decide_output::<i32>(true, None, |_| true), OutputDecision::Make);
}

#[test]
fn publishing_to_kiln_is_skipped_only_when_the_latest_version_holds_the_same_first_artifact() {
    let latest = version("debian", 4, &[(ArtifactKind::Root, b"root v4"), (ArtifactKind::Log, b"log")]);
    let same = sha256_hex(b"root v4");
    assert_eq!(decide_kiln_publication(Some(&latest), ArtifactKind::Root, &same), KilnPublication::Unchanged { version: 4 });
    assert_eq!(decide_kiln_publication(Some(&latest), ArtifactKind::Root, &sha256_hex(b"root v5")), KilnPublication::NewVersion);
    assert_eq!(decide_kiln_publication(Some(&latest), ArtifactKind::Disk, &same), KilnPublication::NewVersion, "another kind");
    assert_eq!(decide_kiln_publication(None, ArtifactKind::Root, &same), KilnPublication::NewVersion);
}

#[test]
fn a_version_gets_the_triple_then_the_disk_then_the_log() {
    let kinds: Vec<ArtifactKind> = kiln_artifacts(&result("debian", "")).into_iter().map(|(kind, _)| kind).collect();
    assert_eq!(kinds, [ArtifactKind::Root, ArtifactKind::Kernel, ArtifactKind::Initrd, ArtifactKind::Disk, ArtifactKind::Log]);
}

const KILN_PUBLISHED: &str = "
options:
  layer_type: base
  name: tools
  pkg_manager: dnf
  parent: kiln:base
  publish_kiln: tools
  outputs: [squashfs]
";

/// Publishes a build result whose files are real, into `catalog`; returns what it printed.
fn publish_into(catalog: &MemoryCatalog, root: &[u8]) -> (BuildResult, String) {
    let directory = tempfile::tempdir().unwrap();
    let root_path = directory.path().join("root.squashfs");
    std::fs::write(&root_path, root).unwrap();
    std::fs::write(directory.path().join("build.log"), b"kiln: built").unwrap();
    let mut made = result("tools", "");
    made.squashfs = Some(SquashfsFiles { root: root_path, kernel: None, initrd: None });
    made.disk = None;
    made.log = directory.path().join("build.log");
    let definition = parse_definition(KILN_PUBLISHED).unwrap();
    let mut terminal = Vec::new();
    runtime().block_on(crate::publish::publish(catalog, &definition, None, directory.path(), &mut made, &mut terminal)).unwrap();
    (made, String::from_utf8(terminal).unwrap())
}

#[test]
fn publishing_creates_the_image_then_adds_a_version_only_for_new_content() {
    let catalog = MemoryCatalog::default();
    let (first, _) = publish_into(&catalog, b"root one");
    assert_eq!(first.published.as_deref(), Some("tools:1"));
    {
        let state = catalog.state.lock().unwrap();
        assert_eq!(state.uploads.len(), 1);
        assert_eq!(state.uploads[0].1, [ArtifactKind::Root, ArtifactKind::Log]);
        assert_eq!(state.uploads[0].2, "kiln image build: layer 0123456789abcdef");
    }
    let (again, said) = publish_into(&catalog, b"root one");
    assert_eq!(again.published.as_deref(), Some("tools:1 (unchanged)"));
    assert_eq!(said, "kiln: tools:1 already holds this root; nothing published\n");
    assert_eq!(catalog.state.lock().unwrap().uploads.len(), 1, "nothing uploaded for the same bytes");
    let (changed, _) = publish_into(&catalog, b"root two");
    assert_eq!(changed.published.as_deref(), Some("tools:2"));
}

#[test]
fn s3_publishing_needs_its_credentials_and_names_objects_as_openchami_does() {
    let yaml = "
options:
  layer_type: base
  name: compute-base
  publish_tags: [rocky9]
  pkg_manager: dnf
  parent: scratch
  publish_s3: 'http://s3.example:9000/'
  s3_prefix: 'compute/base/'
  s3_bucket: boot-images
repos:
  - alias: baseos
    url: 'https://dl.rockylinux.org/pub/rocky/9/BaseOS/x86_64/os/'
";
    let definition = parse_definition(yaml).unwrap();
    let error = s3_settings(&definition, &BTreeMap::new()).unwrap_err();
    assert!(matches!(error, DriverError::NoS3Credentials));
    let environment: BTreeMap<String, String> =
        [("S3_ACCESS", "key"), ("S3_SECRET", "secret")].into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    let settings = s3_settings(&definition, &environment).unwrap().unwrap();
    assert_eq!((settings.endpoint.as_str(), settings.region.as_str()), ("http://s3.example:9000", "us-east-1"));
    let files = SquashfsFiles {
        root: "out/root.squashfs".into(),
        kernel: Some("out/vmlinuz-6.1".into()),
        initrd: Some("out/initramfs-6.1.img".into()),
    };
    let keys: Vec<String> = s3_objects(&definition, &files).into_iter().map(|(key, _)| key).collect();
    assert_eq!(
        keys,
        ["compute/base/compute-base-rocky9", "efi-images/compute/base/vmlinuz-6.1", "efi-images/compute/base/initramfs-6.1.img"]
    );
}

#[test]
fn offline_builds_of_dnf_packages_and_unfetched_bootstraps_are_refused_up_front() {
    let cache = tempfile::tempdir().unwrap();
    let dnf = parse_definition("options:\n  layer_type: base\n  name: r\n  pkg_manager: dnf\n  parent: scratch\n  outputs: [squashfs]\nrepos:\n  - alias: baseos\n    url: http://mirror/os/\npackages: [kernel]\n").unwrap();
    let error = crate::check_offline(&dnf, cache.path()).unwrap_err();
    assert_eq!(error.to_string(), "--offline: only apt builds keep their downloads; this layer installs packages with dnf");
    let apt = parse_definition(
        "options:\n  layer_type: base\n  name: d\n  pkg_manager: apt\n  parent: scratch\n  outputs: [squashfs]\nrepos:\n  - alias: debian\n    url: http://deb.debian.org/debian\n    suite: bookworm\n    components: [main]\n",
    )
    .unwrap();
    let error = crate::check_offline(&apt, cache.path()).unwrap_err();
    assert!(matches!(error, DriverError::OfflineNoBootstrap { ref suite, .. } if suite == "bookworm"), "{error:?}");
}

#[test]
fn the_plan_needs_neither_root_nor_a_built_parent() {
    let directory = tempfile::tempdir().unwrap();
    let definition = directory.path().join("image.yaml");
    std::fs::write(&definition, "options:\n  layer_type: base\n  name: r\n  pkg_manager: dnf\n  parent: scratch\n  outputs: [squashfs]\n  publish_local: true\nrepos:\n  - alias: baseos\n    url: http://mirror/os/\n").unwrap();
    let request = crate::BuildRequest {
        definition,
        cache: directory.path().join("cache"),
        offline: false,
        verbose: false,
        elements_path: None,
        break_points: None,
        environment: BTreeMap::new(),
    };
    let mut terminal = Vec::new();
    let plan = runtime().block_on(crate::plan(&MemoryCatalog::default(), &request, &mut terminal)).unwrap();
    assert_eq!(plan.layer_key.len(), 64);
    let wanted: BTreeSet<Output> = [Output::Squashfs].into();
    assert_eq!(parse_definition(&std::fs::read_to_string(&request.definition).unwrap()).unwrap().outputs, wanted);
}
