//! The host mounts a chroot needs (`/proc`, `/sys`, `/dev`), held by a guard that unmounts
//! them when dropped: after a failure, a panic or an early return alike, so that no host
//! mount outlives a build.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

/// What failed while mounting or unmounting.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("binding {} onto {}", source_path.display(), target.display())]
    Bind {
        source_path: PathBuf,
        target: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("creating the mount point {}", path.display())]
    MountPoint {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
}

/// `/proc`, `/sys` and `/dev` bound into a root; unbound in reverse order when dropped.
#[derive(Debug)]
pub struct ChrootMounts {
    mounted: Vec<PathBuf>,
}

/// What is bound, in order: `/dev` recursively, since `/dev/pts` and `/dev/shm` live there.
const BINDS: [(&str, bool); 3] = [("/proc", false), ("/sys", false), ("/dev", true)];

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("paths have no NUL byte")
}

impl ChrootMounts {
    /// Binds the host's `/proc`, `/sys` and `/dev` under `root`. If one fails, those already
    /// made are undone before the error is returned.
    pub fn bind(root: &Path) -> Result<ChrootMounts, MountError> {
        let mut mounts = ChrootMounts { mounted: Vec::new() };
        for (source, recursive) in BINDS {
            let target = root.join(source.trim_start_matches('/'));
            std::fs::create_dir_all(&target).map_err(|error| MountError::MountPoint { path: target.clone(), error })?;
            let flags = libc::MS_BIND | if recursive { libc::MS_REC } else { 0 };
            let (source_c, target_c) = (c_path(Path::new(source)), c_path(&target));
            // SAFETY: both strings are NUL-terminated and outlive the call; no data argument.
            let result = unsafe { libc::mount(source_c.as_ptr(), target_c.as_ptr(), std::ptr::null(), flags, std::ptr::null()) };
            if result != 0 {
                return Err(MountError::Bind { source_path: source.into(), target, error: std::io::Error::last_os_error() });
            }
            // Mounts made under a bind (by hooks, say) do not travel back to the host.
            // SAFETY: as above.
            unsafe {
                libc::mount(std::ptr::null(), target_c.as_ptr(), std::ptr::null(), libc::MS_SLAVE | libc::MS_REC, std::ptr::null());
            }
            mounts.mounted.push(target);
        }
        Ok(mounts)
    }

    /// Binds a host directory (a download cache) onto `target` under the root, until the
    /// guard is dropped.
    pub fn bind_directory(&mut self, source: &Path, target: &Path) -> Result<(), MountError> {
        std::fs::create_dir_all(target).map_err(|error| MountError::MountPoint { path: target.to_owned(), error })?;
        let (source_c, target_c) = (c_path(source), c_path(target));
        // SAFETY: both strings are NUL-terminated and outlive the call; no data argument.
        let result = unsafe { libc::mount(source_c.as_ptr(), target_c.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) };
        if result != 0 {
            return Err(MountError::Bind {
                source_path: source.to_owned(),
                target: target.to_owned(),
                error: std::io::Error::last_os_error(),
            });
        }
        self.mounted.push(target.to_owned());
        Ok(())
    }

    /// The mount points, for tests and logs.
    pub fn targets(&self) -> &[PathBuf] {
        &self.mounted
    }
}

impl Drop for ChrootMounts {
    fn drop(&mut self) {
        for target in self.mounted.drain(..).rev() {
            let target_c = c_path(&target);
            // A process left in the chroot keeps a mount busy: detach it then, so it goes
            // from the host's view at once and for good when the last user leaves.
            // SAFETY: a NUL-terminated path that outlives the calls.
            let unmounted =
                unsafe { libc::umount2(target_c.as_ptr(), 0) } == 0 || unsafe { libc::umount2(target_c.as_ptr(), libc::MNT_DETACH) } == 0;
            if !unmounted {
                eprintln!("kiln: could not unmount {}: {}", target.display(), std::io::Error::last_os_error());
            }
        }
    }
}

/// Moves the calling thread (and the processes it starts from now on) into a mount namespace
/// of its own, whose mounts do not propagate to the host's. The chroot mounts made after this
/// are then gone when the build's processes are, however they end: a failure drops
/// [`ChrootMounts`], and an interrupt or a kill takes the namespace with it. Host mounts
/// made later still propagate in.
pub fn private_mount_namespace() -> std::io::Result<()> {
    // SAFETY: unshare takes flags only; for a mount namespace it also unshares the calling
    // thread's filesystem attributes, which is what is wanted: the other threads keep the host's.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let root = c_path(Path::new("/"));
    // SAFETY: a NUL-terminated path that outlives the call; no data argument.
    if unsafe { libc::mount(std::ptr::null(), root.as_ptr(), std::ptr::null(), libc::MS_SLAVE | libc::MS_REC, std::ptr::null()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The mount points at or under `root` in this mount namespace (from /proc/self/mountinfo).
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(point.replace("\\040", " ")))
        .filter(|point| point.starts_with(root))
        .collect()
}
