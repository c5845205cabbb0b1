//! Anchors and floors for the fileset figures in docs/PERFORMANCE.md (`scripts/bench-fileset.sh`):
//!
//! * `fileset-bench rwcopy SRCDIR DSTDIR` — copy every file with a plain 64 KiB read/write loop
//!   (what a program without kernel-side copying does): the anchor of the CPU targets.
//! * `fileset-bench readfloor SRCDIR` — read every file with `O_DIRECT`, one request per file,
//!   into one buffer, and write nothing: the least CPU that getting the set off the disk takes.
//! * `fileset-bench writefloor SRCDIR DSTDIR` — make in DSTDIR a file of each SRCDIR file's size
//!   by writing one buffer already in memory, and read nothing: the least CPU that putting the
//!   bytes into new files on DSTDIR's file system takes.
//!
//! A load needs both halves, so readfloor + writefloor bounds from below what any load of the
//! set can cost.

#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use fileset::readahead::{HugePageBuffer, HUGE_PAGE};

const USAGE: &str =
    "usage: fileset-bench rwcopy SRCDIR DSTDIR | readfloor SRCDIR | writefloor SRCDIR DSTDIR";
/// The largest single request the floors make; files above it take several.
const FLOOR_REQUEST: usize = 64 << 20;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["rwcopy", src, dst] => rwcopy(Path::new(src), Path::new(dst)),
        ["readfloor", src] => read_floor(Path::new(src)),
        ["writefloor", src, dst] => write_floor(Path::new(src), Path::new(dst)),
        _ => bail!(USAGE),
    }
}

/// The regular files directly in `dir`, with their sizes.
fn files_in(dir: &Path) -> anyhow::Result<Vec<(PathBuf, u64)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_file() {
            files.push((entry.path(), meta.len()));
        }
    }
    Ok(files)
}

fn rwcopy(src_dir: &Path, dst_dir: &Path) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    for (path, _) in files_in(src_dir)? {
        let mut src = File::open(&path)?;
        let mut dst = File::create(dst_dir.join(path.file_name().expect("a listed file")))?;
        loop {
            let n = src.read(&mut buf)?;
            if n == 0 {
                break;
            }
            dst.write_all(&buf[..n])?;
        }
        dst.sync_all()?;
    }
    Ok(())
}

/// A huge-page buffer of `len` bytes, touched once so that neither floor pays for faulting
/// it in.
fn floor_buffer(len: usize) -> anyhow::Result<HugePageBuffer> {
    let mut buffer = HugePageBuffer::new(len).context("making the buffer")?;
    buffer.bytes_mut().fill(1);
    Ok(buffer)
}

/// One request the size of the largest file (up to FLOOR_REQUEST), rounded up to whole huge
/// pages — so also to whole blocks, which the last `O_DIRECT` read of a file asks for.
fn floor_request(files: &[(PathBuf, u64)]) -> usize {
    let largest = files.iter().map(|(_, len)| *len).max().unwrap_or(0) as usize;
    largest.clamp(1, FLOOR_REQUEST).next_multiple_of(HUGE_PAGE)
}

fn read_floor(src_dir: &Path) -> anyhow::Result<()> {
    let files = files_in(src_dir)?;
    let request = floor_request(&files);
    let mut buffer = floor_buffer(request)?;
    for (path, len) in &files {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .with_context(|| format!("opening {} with O_DIRECT", path.display()))?;
        let mut offset = 0u64;
        while offset < *len {
            let want = ((*len - offset) as usize)
                .next_multiple_of(4096)
                .min(request);
            let got = file.read_at(&mut buffer.bytes_mut()[..want], offset)?;
            if got == 0 {
                bail!("{} ended at {offset} of {len} bytes", path.display());
            }
            offset += got as u64;
        }
    }
    Ok(())
}

fn write_floor(src_dir: &Path, dst_dir: &Path) -> anyhow::Result<()> {
    let files = files_in(src_dir)?;
    let buffer = floor_buffer(floor_request(&files))?;
    let bytes = buffer.bytes(usize::MAX);
    for (path, len) in &files {
        let mut dst = File::create(dst_dir.join(path.file_name().expect("a listed file")))?;
        let mut left = *len as usize;
        while left > 0 {
            let n = left.min(bytes.len());
            dst.write_all(&bytes[..n])?;
            left -= n;
        }
    }
    Ok(())
}
