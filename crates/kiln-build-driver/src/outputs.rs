//! What a build leaves in `outputs/<layer key>/`: the SquashFS triple, the disk image, the
//! layer's tar and `result.json`, which says what the previous build of the same layer
//! made so that a rebuild from a cached layer makes only what is missing.

use kiln_image_build::disk::DiskBoot;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use kiln_image_build::definition::Output;
use kiln_image_build::execute::{BuildError, make_squashfs};
use serde::{Deserialize, Serialize};

/// What a build made, as printed and as kept beside the outputs for the next build of the
/// same layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildResult {
    pub name: String,
    pub layer: String,
    pub reused: bool,
    pub seconds: f64,
    pub squashfs: Option<SquashfsFiles>,
    /// The whole-disk image (raw, or qcow2 when only that was asked for).
    pub disk: Option<PathBuf>,
    /// `sha256:…` and size of the layer's tar, for a registry.
    pub layer_tar: Option<(String, u64)>,
    pub pushed: Vec<(String, String)>,
    pub published: Option<String>,
    /// The objects put in S3 (`publish_s3`), as URLs.
    #[serde(default)]
    pub s3: Vec<String>,
    pub log: PathBuf,
    /// What the disk image's boot configuration was made with (not part of the layer).
    #[serde(default)]
    pub kernel_args: String,
    #[serde(default)]
    pub secure_boot: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SquashfsFiles {
    pub root: PathBuf,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
}

impl BuildResult {
    /// The build's result as the terminal shows it.
    pub fn describe(&self) -> String {
        let how = if self.reused { "reused from the cache" } else { "built" };
        let mut text = format!("{} layer {} {how} in {:.1} s\n", self.name, &self.layer[..12.min(self.layer.len())], self.seconds);
        let mut line = |label: &str, value: String| text.push_str(&format!("{label:<9} {value}\n"));
        if let Some(files) = &self.squashfs {
            line("squashfs", files.root.display().to_string());
            files.kernel.iter().for_each(|kernel| line("kernel", kernel.display().to_string()));
            files.initrd.iter().for_each(|initrd| line("initrd", initrd.display().to_string()));
        }
        self.disk.iter().for_each(|disk| line("disk", disk.display().to_string()));
        self.pushed.iter().for_each(|(reference, digest)| line("pushed", format!("{reference} ({digest})")));
        self.s3.iter().for_each(|url| line("s3", url.clone()));
        self.published.iter().for_each(|published| line("published", published.clone()));
        line("log", self.log.display().to_string());
        text
    }
}

/// The previous build's result, when its outputs may stand for this build's: the layer
/// came from the cache (so the outputs were made from these very bytes), and what names
/// or boots them (the image's name, the kernel arguments, Secure Boot) has not changed.
pub fn reusable_previous(previous: Option<BuildResult>, layer_reused: bool, name: &str, boot: &DiskBoot<'_>) -> Option<BuildResult> {
    previous.filter(|previous| {
        layer_reused && previous.name == name && previous.kernel_args == boot.kernel_args && previous.secure_boot == boot.secure_boot
    })
}

/// Whether one output is made now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputDecision<T> {
    NotWanted,
    /// The previous build's, still on disk.
    Reuse(T),
    Make,
}

/// An output is reused when it is wanted, the previous build made it and it still exists.
pub fn decide_output<T>(wanted: bool, previous: Option<T>, still_there: impl FnOnce(&T) -> bool) -> OutputDecision<T> {
    match (wanted, previous) {
        (false, _) => OutputDecision::NotWanted,
        (true, Some(made)) if still_there(&made) => OutputDecision::Reuse(made),
        (true, _) => OutputDecision::Make,
    }
}

/// Where the outputs are made, what is asked for, and what the previous build left.
pub(crate) struct OutputContext<'a> {
    pub(crate) layer_root: &'a Path,
    pub(crate) name: &'a str,
    pub(crate) boot: DiskBoot<'a>,
    pub(crate) wanted: &'a BTreeSet<Output>,
    pub(crate) previous: Option<&'a BuildResult>,
    pub(crate) directory: &'a Path,
}

impl OutputContext<'_> {
    /// The SquashFS triple.
    pub(crate) fn squashfs(&self, log: &mut dyn Write) -> Result<Option<SquashfsFiles>, BuildError> {
        let previous = self.previous.and_then(|previous| previous.squashfs.clone());
        match decide_output(self.wanted.contains(&Output::Squashfs), previous, |files| files.root.exists()) {
            OutputDecision::NotWanted => Ok(None),
            OutputDecision::Reuse(files) => Ok(Some(files)),
            OutputDecision::Make => {
                let _ = writeln!(log, "kiln: making the SquashFS root");
                let triple = make_squashfs(self.layer_root, self.name, self.directory, log)?;
                Ok(Some(SquashfsFiles { root: triple.root, kernel: triple.kernel, initrd: triple.initrd }))
            }
        }
    }

    /// The disk image: raw, qcow2, or raw when both are asked for (qcow2 beside it).
    pub(crate) fn disk(&self, log: &mut dyn Write) -> Result<Option<PathBuf>, BuildError> {
        let (raw_wanted, qcow2_wanted) = (self.wanted.contains(&Output::DiskRaw), self.wanted.contains(&Output::DiskQcow2));
        let previous = self.previous.and_then(|previous| previous.disk.clone());
        match decide_output(raw_wanted || qcow2_wanted, previous, |disk| disk.exists()) {
            OutputDecision::NotWanted => Ok(None),
            OutputDecision::Reuse(disk) => Ok(Some(disk)),
            OutputDecision::Make => {
                let _ = writeln!(log, "kiln: making the disk image");
                let raw = kiln_image_build::disk::make_disk(self.layer_root, self.name, self.directory, &self.boot, log)?;
                if !qcow2_wanted {
                    return Ok(Some(raw));
                }
                let qcow2 = kiln_image_build::disk::convert_to_qcow2(&raw, log)?;
                if raw_wanted {
                    return Ok(Some(raw));
                }
                std::fs::remove_file(&raw).map_err(|error| BuildError::Io { operation: "removing", path: raw.clone(), error })?;
                Ok(Some(qcow2))
            }
        }
    }

    /// The layer as an OCI tar for the registry.
    pub(crate) fn layer_tar(&self, log: &mut dyn Write) -> Result<Option<(String, u64)>, BuildError> {
        let tar = self.directory.join("layer.tar");
        let previous = self.previous.and_then(|previous| previous.layer_tar.clone());
        match decide_output(self.wanted.contains(&Output::Oci), previous, |_| tar.exists()) {
            OutputDecision::NotWanted => Ok(None),
            OutputDecision::Reuse(made) => Ok(Some(made)),
            OutputDecision::Make => {
                let _ = writeln!(log, "kiln: packing the layer for the registry");
                Ok(Some(kiln_image_build::layers::pack_layer(self.layer_root, &tar)?))
            }
        }
    }
}

/// The build's log: everything into the file, and to the terminal either everything
/// (verbose) or the `kiln:` progress lines.
pub struct BuildLog {
    file: std::fs::File,
    terminal: Box<dyn Write + Send>,
    verbose: bool,
    line: Vec<u8>,
}

impl BuildLog {
    pub fn new(file: std::fs::File, terminal: Box<dyn Write + Send>, verbose: bool) -> BuildLog {
        BuildLog { file, terminal, verbose, line: Vec::new() }
    }

    /// Gives the terminal back, for what is said after the log is closed.
    pub fn into_terminal(self) -> Box<dyn Write + Send> {
        self.terminal
    }
}

impl Write for BuildLog {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        self.file.write_all(buffer)?;
        if self.verbose {
            self.terminal.write_all(buffer)?;
            return Ok(buffer.len());
        }
        for &byte in buffer {
            self.line.push(byte);
            if byte == b'\n' {
                if self.line.starts_with(b"kiln:") {
                    self.terminal.write_all(&self.line)?;
                }
                self.line.clear();
            }
        }
        Ok(buffer.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.terminal.flush()?;
        self.file.flush()
    }
}
