//! `fileset-bench rwcopy SRCDIR DSTDIR`: the anchor for docs/PERFORMANCE.md — copy every file
//! with a plain 64 KiB read/write loop (what a program without kernel-side copying does).

use std::io::{Read, Write};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 || args[1] != "rwcopy" {
        anyhow::bail!("usage: fileset-bench rwcopy SRCDIR DSTDIR");
    }
    let mut buf = vec![0u8; 64 * 1024];
    for entry in std::fs::read_dir(&args[2])? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let mut src = std::fs::File::open(entry.path())?;
        let mut dst =
            std::fs::File::create(std::path::Path::new(&args[3]).join(entry.file_name()))?;
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
