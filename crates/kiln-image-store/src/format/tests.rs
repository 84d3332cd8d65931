//! Inspection cases, one line of input description to one line of verdict.

use std::fmt::Write as _;
use std::io::Write as _;

use expect_test::expect;

use super::*;

fn qcow2(version: u32, backing: Option<&str>, incompatible: u64, size: u64) -> Vec<u8> {
    let mut head = vec![0u8; 4096];
    head[..4].copy_from_slice(b"QFI\xfb");
    head[4..8].copy_from_slice(&version.to_be_bytes());
    if let Some(name) = backing {
        head[8..16].copy_from_slice(&512u64.to_be_bytes());
        head[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
        head[512..512 + name.len()].copy_from_slice(name.as_bytes());
    }
    head[24..32].copy_from_slice(&size.to_be_bytes());
    head[72..80].copy_from_slice(&incompatible.to_be_bytes());
    head
}

fn squashfs(bytes_used: u64) -> Vec<u8> {
    let mut head = vec![0u8; 96];
    head[..4].copy_from_slice(b"hsqs");
    head[40..48].copy_from_slice(&bytes_used.to_le_bytes());
    head
}

fn iso(blocks: u32) -> Vec<u8> {
    let mut head = vec![0u8; 0x8800];
    head[0x8000] = 1;
    head[0x8001..0x8006].copy_from_slice(b"CD001");
    head[0x8050..0x8054].copy_from_slice(&blocks.to_le_bytes());
    head[0x8080..0x8082].copy_from_slice(&2048u16.to_le_bytes());
    head
}

fn bzimage() -> Vec<u8> {
    let mut head = vec![0u8; 1024];
    head[0x202..0x206].copy_from_slice(b"HdrS");
    head
}

fn mbr_disk() -> Vec<u8> {
    let mut head = vec![0u8; 1024];
    head[510] = 0x55;
    head[511] = 0xaa;
    head
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn xz(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = liblzma::write::XzEncoder::new(Vec::new(), 1);
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(bytes, ruzstd::encoding::CompressionLevel::Fastest)
}

fn verdict(head: &[u8]) -> String {
    match inspect(head, head.len() as u64) {
        Ok(Inspection { format, compression, virtual_size }) => {
            let compression = compression.map_or("-", |compression| compression.as_str());
            let virtual_size = virtual_size.map_or("-".to_owned(), |size| size.to_string());
            format!("{format} compression={compression} virtual_size={virtual_size}")
        }
        Err(error) => format!("refused: {error}"),
    }
}

#[test]
fn formats_are_told_by_their_bytes() {
    let cpio = b"070701000000010000".to_vec();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("qcow2 v3, 10 GiB", qcow2(3, None, 0, 10 << 30)),
        ("qcow2 v2 with a backing file", qcow2(2, Some("/etc/shadow"), 0, 1 << 30)),
        ("qcow2 v3 with an external data file", qcow2(3, None, 1 << 2, 1 << 30)),
        ("qcow2 v2 with the data-file bit (v2 has no feature bits)", qcow2(2, None, 1 << 2, 1 << 30)),
        ("squashfs", squashfs(123_456)),
        ("iso 9660, 1000 blocks", iso(1000)),
        ("bzImage", bzimage()),
        ("cpio newc", cpio.clone()),
        ("gzip cpio", gzip(&cpio)),
        ("xz qcow2", xz(&qcow2(3, None, 0, 4 << 30))),
        ("xz qcow2 with a backing file", xz(&qcow2(3, Some("base.img"), 0, 4 << 30))),
        ("zstd squashfs", zstd(&squashfs(99))),
        ("gzip of random-looking bytes", gzip(b"just some data")),
        ("truncated gzip", gzip(&iso(7))[..40].to_vec()),
        ("raw disk with an MBR", mbr_disk()),
        ("empty", Vec::new()),
        ("three bytes of qcow2 magic", b"QFI".to_vec()),
    ];
    let mut report = String::new();
    for (description, head) in cases {
        writeln!(report, "{description}: {}", verdict(&head)).unwrap();
    }
    expect![[r#"
        qcow2 v3, 10 GiB: qcow2 compression=- virtual_size=10737418240
        qcow2 v2 with a backing file: refused: qcow2 images with a backing file are refused (backing file '/etc/shadow')
        qcow2 v3 with an external data file: refused: qcow2 images with an external data file are refused
        qcow2 v2 with the data-file bit (v2 has no feature bits): qcow2 compression=- virtual_size=1073741824
        squashfs: squashfs compression=- virtual_size=123456
        iso 9660, 1000 blocks: iso compression=- virtual_size=2048000
        bzImage: kernel compression=- virtual_size=1024
        cpio newc: initramfs compression=- virtual_size=18
        gzip cpio: initramfs compression=gzip virtual_size=-
        xz qcow2: qcow2 compression=xz virtual_size=4294967296
        xz qcow2 with a backing file: refused: qcow2 images with a backing file are refused (backing file 'base.img')
        zstd squashfs: squashfs compression=zstd virtual_size=99
        gzip of random-looking bytes: raw compression=gzip virtual_size=-
        truncated gzip: raw compression=gzip virtual_size=-
        raw disk with an MBR: raw compression=- virtual_size=1024
        empty: raw compression=- virtual_size=0
        three bytes of qcow2 magic: raw compression=- virtual_size=3
    "#]]
    .assert_eq(&report);
}

#[test]
fn declarations_and_kinds_are_checked() {
    let qcow2 = inspect(&qcow2(3, None, 0, 1 << 30), 4096).unwrap();
    let raw = inspect(&mbr_disk(), 1024).unwrap();
    let mut report = String::new();
    for (description, inspection, kind, declared) in [
        ("qcow2 declared raw", qcow2, ArtifactKind::Disk, Some(ImageFormat::Raw)),
        ("qcow2 declared qcow2", qcow2, ArtifactKind::Disk, Some(ImageFormat::Qcow2)),
        ("qcow2 as a kernel", qcow2, ArtifactKind::Kernel, None),
        ("raw declared qcow2", raw, ArtifactKind::Disk, Some(ImageFormat::Qcow2)),
        ("raw declared kernel", raw, ArtifactKind::Kernel, Some(ImageFormat::Kernel)),
        ("raw as a disk", raw, ArtifactKind::Disk, None),
    ] {
        let verdict = match inspection.check(kind, declared) {
            Ok(()) => format!("ok, recorded as {}", inspection.recorded_format(declared)),
            Err(error) => format!("refused: {error}"),
        };
        writeln!(report, "{description}: {verdict}").unwrap();
    }
    expect![[r#"
        qcow2 declared raw: refused: declared format raw but the bytes are qcow2
        qcow2 declared qcow2: ok, recorded as qcow2
        qcow2 as a kernel: refused: a kernel artifact cannot be qcow2
        raw declared qcow2: refused: declared format qcow2 but the bytes are raw
        raw declared kernel: ok, recorded as kernel
        raw as a disk: ok, recorded as raw
    "#]]
    .assert_eq(&report);
}
