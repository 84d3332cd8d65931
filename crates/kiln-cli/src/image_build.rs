//! `kiln image build -c image.yaml`: the command line of the build driver
//! (`kiln-build-driver`), and Kiln's REST API as the driver's [`ImageCatalog`].

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use kiln_build_driver::{BuildRequest, CatalogError, ImageCatalog};
use kiln_client::{Client, encode};
use kiln_types::image::{ArtifactKind, Image, ImageInput, ImageVersion};

use crate::output::{OutputFormat, print};

#[derive(Debug, clap::Args)]
pub(crate) struct BuildArgs {
    /// The image definition (OpenCHAMI image-builder YAML).
    #[arg(short = 'c', long = "config")]
    config: PathBuf,
    /// Print the plan (with the layer's cache key) and stop.
    #[arg(long)]
    plan: bool,
    /// Layers, parents, outputs and logs [default: /var/cache/kiln/build].
    #[arg(long, default_value = "/var/cache/kiln/build")]
    cache: PathBuf,
    /// Use the network for nothing: the parent, debootstrap's packages, apt's lists and every
    /// package come from the cache that earlier builds filled (apt only).
    #[arg(long)]
    offline: bool,
    /// Show every command's output, not only a line per step.
    #[arg(short, long)]
    verbose: bool,
    /// Where the definition's `elements` are found, `:`-separated.
    #[arg(long, env = "ELEMENTS_PATH")]
    elements_path: Option<String>,
    /// Stop at element hook phases: before-PHASE, after-PHASE, after-error (comma-separated;
    /// diskimage-builder's `break=`). With a terminal, a shell in the root; exit it to go on.
    #[arg(long = "break", env = "break")]
    break_points: Option<String>,
}

pub(crate) async fn build(client: &Client, format: OutputFormat, args: BuildArgs) -> anyhow::Result<()> {
    let request = BuildRequest {
        definition: args.config,
        cache: args.cache,
        offline: args.offline,
        verbose: args.verbose,
        elements_path: args.elements_path,
        break_points: args.break_points,
        environment: std::env::vars().collect(),
    };
    let catalog = KilnCatalog { client };
    if args.plan {
        let plan = kiln_build_driver::plan(&catalog, &request, &mut std::io::stderr()).await?;
        return print(format, &plan, || plan.to_string());
    }
    let result = kiln_build_driver::build(&catalog, &request, Box::new(std::io::stderr())).await?;
    print(format, &result, || result.describe())
}

/// Kiln's image store over its REST API, as the caller's token sees it.
struct KilnCatalog<'a> {
    client: &'a Client,
}

impl ImageCatalog for KilnCatalog<'_> {
    async fn find_version(&self, image: &str, wanted: &str) -> Result<Option<ImageVersion>, CatalogError> {
        match self.client.get(&format!("/v1/images/{}/versions/{}", encode(image), encode(wanted))).await {
            Ok(version) => Ok(Some(version)),
            Err(error) if error.status() == Some(reqwest::StatusCode::NOT_FOUND) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    async fn download_artifact(&self, image: &str, version: i64, kind: ArtifactKind, destination: &Path) -> Result<(), CatalogError> {
        let mut file = tokio::fs::File::create(destination).await?;
        let path = format!("/v1/images/{}/versions/{version}/{kind}", encode(image));
        self.client.download_to(&path, 0, &mut file, &|_, _| {}).await?;
        Ok(())
    }

    async fn create_image_if_missing(&self, input: &ImageInput) -> Result<bool, CatalogError> {
        match self.client.get::<Image>(&format!("/v1/images/{}", encode(&input.name))).await {
            Ok(_) => Ok(false),
            Err(error) if error.status() == Some(reqwest::StatusCode::NOT_FOUND) => {
                match self.client.post::<_, Image>("/v1/images", input).await {
                    Ok(_) => Ok(true),
                    // Another build created it meanwhile: use it.
                    Err(error) if error.status() == Some(reqwest::StatusCode::CONFLICT) => Ok(false),
                    Err(error) => Err(error.into()),
                }
            }
            Err(error) => Err(error.into()),
        }
    }

    async fn add_version(&self, image: &str, artifacts: &[(ArtifactKind, PathBuf)], note: &str) -> Result<ImageVersion, CatalogError> {
        let version = crate::transfer::upload_artifacts(self.client, image, artifacts, note)
            .await
            .with_context(|| format!("uploading {} artifacts", artifacts.len()))?;
        Ok(version)
    }
}
