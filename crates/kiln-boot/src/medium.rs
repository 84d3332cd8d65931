//! What a boot medium adds for one boot: a `newc` archive (the format Linux unpacks as an
//! initramfs) of files such as the agent's settings, which GRUB on the medium loads after the
//! kernel's own initramfs so that they appear in the booted system's root.
//!
//! Written here, without `cpio`, because the bytes are a pure function of the entries: the
//! same entries give the same archive, which a snapshot test pins.

/// One entry of an archive. Parents come before their children; paths are relative
/// (`etc/kiln/boot.env`), as the kernel expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveEntry<'a> {
    /// `mode` as `0o755` or `0o1777`: the kernel's unpacker sets it on the directory even
    /// where an earlier archive made it.
    Directory {
        path: &'a str,
        mode: u32,
    },
    File {
        path: &'a str,
        mode: u32,
        contents: &'a [u8],
    },
}

/// Why an archive cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveError {
    /// `newc` sizes are 32-bit: a file of 4 GiB or more has no place in one.
    #[error("{path} is {size} bytes; a newc archive holds files under 4 GiB")]
    TooLarge { path: String, size: usize },
}

/// File types in the `mode` field (`<sys/stat.h>`).
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;

/// The `newc` archive of `entries`, with the trailer. Owners are root, times zero, inode
/// numbers counted from 1.
pub fn newc_archive(entries: &[ArchiveEntry<'_>]) -> Result<Vec<u8>, ArchiveError> {
    let mut archive = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let inode = u32::try_from(index + 1).unwrap_or(u32::MAX);
        match entry {
            ArchiveEntry::Directory { path, mode } => append(&mut archive, inode, path, S_IFDIR | (mode & 0o7777), 2, &[])?,
            ArchiveEntry::File { path, mode, contents } => append(&mut archive, inode, path, S_IFREG | (mode & 0o7777), 1, contents)?,
        }
    }
    append(&mut archive, 0, "TRAILER!!!", 0, 1, &[])?;
    Ok(archive)
}

fn append(archive: &mut Vec<u8>, inode: u32, path: &str, mode: u32, links: u32, contents: &[u8]) -> Result<(), ArchiveError> {
    let too_large = |size: usize| ArchiveError::TooLarge { path: path.to_owned(), size };
    let name_size = u32::try_from(path.len() + 1).map_err(|_| too_large(path.len()))?;
    let file_size = u32::try_from(contents.len()).map_err(|_| too_large(contents.len()))?;
    let fields = [inode, mode, 0, 0, links, 0, file_size, 0, 0, 0, 0, name_size, 0];
    archive.extend_from_slice(b"070701");
    for field in fields {
        archive.extend_from_slice(format!("{field:08x}").as_bytes());
    }
    archive.extend_from_slice(path.as_bytes());
    archive.push(0);
    pad_to_four(archive);
    archive.extend_from_slice(contents);
    pad_to_four(archive);
    Ok(())
}

fn pad_to_four(archive: &mut Vec<u8>) {
    while !archive.len().is_multiple_of(4) {
        archive.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_archive_is_headers_names_and_contents_on_four_byte_boundaries() {
        let archive = newc_archive(&[
            ArchiveEntry::Directory { path: "etc", mode: 0o755 },
            ArchiveEntry::File { path: "etc/boot.env", mode: 0o600, contents: b"a=1\n" },
        ])
        .unwrap();
        let text: String = archive.iter().map(|&byte| if byte == 0 { '.' } else { byte as char }).collect();
        expect_test::expect![[r#"
            07070100000001000041ed0000000000000000000000020000000000000000000000000000000000000000000000000000000400000000etc...07070100000002000081800000000000000000000000010000000000000004000000000000000000000000000000000000000d00000000etc/boot.env..a=1
            07070100000000000000000000000000000000000000010000000000000000000000000000000000000000000000000000000b00000000TRAILER!!!...."#]]
        .assert_eq(&text);
        assert_eq!(archive.len() % 4, 0);
    }
}
