//! Trees as coreutils report them: the order `cp -v` and `rm -v` list a tree's objects in,
//! how `rm -i` names an object, and whether a directory is empty (in a volume, its empty
//! `.rsrc` of no records does not count).

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use deskd_volume::rsrc;

/// The names in directory `abs`, in byte order; with `in_volume` deskd's own names left out.
/// A directory that cannot be read has none.
fn names_in(abs: &Path, in_volume: bool) -> Vec<OsString> {
    let mut names: Vec<_> = fs::read_dir(abs)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    names.retain(|n| !(in_volume && deskd_volume::is_protected(n.as_bytes())));
    names.sort();
    names
}

fn is_dir(abs: &Path) -> bool {
    fs::symlink_metadata(abs).is_ok_and(|m| m.is_dir())
}

/// The objects of the tree copied to `abs`, relative to it (`rel` so far), each directory
/// before what it holds, in name order, as cp -v lists them. The top is `rel` itself.
pub fn copied_order(abs: &Path, rel: &Path, in_volume: bool) -> Vec<PathBuf> {
    let mut out = vec![rel.to_path_buf()];
    if is_dir(abs) {
        for name in names_in(abs, in_volume) {
            out.extend(copied_order(&abs.join(&name), &rel.join(&name), in_volume));
        }
    }
    out
}

/// The objects of the tree at `abs` (shown from `shown`), each directory after what is in it,
/// in name order, as rm -v lists them; `true` for a directory.
pub fn removal_order(abs: &Path, shown: &Path, in_volume: bool) -> Vec<(PathBuf, bool)> {
    let mut out = Vec::new();
    let dir = is_dir(abs);
    if dir {
        for name in names_in(abs, in_volume) {
            out.extend(removal_order(
                &abs.join(&name),
                &shown.join(&name),
                in_volume,
            ));
        }
    }
    out.push((shown.to_path_buf(), dir));
    out
}

/// How rm(1) -i names an object in its question.
pub fn what_it_is(meta: &fs::Metadata) -> &'static str {
    let ft = meta.file_type();
    if ft.is_dir() {
        "directory"
    } else if ft.is_symlink() {
        "symbolic link"
    } else if ft.is_file() && meta.len() == 0 {
        "regular empty file"
    } else if ft.is_file() {
        "regular file"
    } else {
        "special file"
    }
}

/// Whether directory `dir` holds nothing (with `in_volume`: nothing but an empty `.rsrc`).
pub fn dir_is_empty(dir: &Path, in_volume: bool) -> io::Result<bool> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        if in_volume && e.file_name() == rsrc::RSRC_DIR {
            let rsrc_dir = e.path();
            if is_dir(&rsrc_dir) && fs::read_dir(&rsrc_dir)?.next().is_none() {
                continue;
            }
        }
        return Ok(false);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trees_are_listed_in_the_orders_cp_and_rm_report() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("d");
        fs::create_dir_all(top.join("sub")).unwrap();
        fs::create_dir_all(top.join(".rsrc")).unwrap();
        fs::write(top.join("x"), b"").unwrap();
        fs::write(top.join("sub/y"), b"").unwrap();
        let copied = copied_order(&top, Path::new("d"), true);
        let copied: Vec<_> = copied.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(copied, ["d", "d/sub", "d/sub/y", "d/x"]);
        let removed = removal_order(&top, Path::new("d"), true);
        let removed: Vec<_> = removed
            .iter()
            .map(|(p, dir)| (p.to_str().unwrap(), *dir))
            .collect();
        assert_eq!(
            removed,
            [
                ("d/sub/y", false),
                ("d/sub", true),
                ("d/x", false),
                ("d", true)
            ]
        );
        assert!(!dir_is_empty(&top, true).unwrap());
        assert!(!dir_is_empty(&top.join("sub"), true).unwrap());
        fs::remove_file(top.join("sub/y")).unwrap();
        fs::create_dir(top.join("sub/.rsrc")).unwrap();
        assert!(dir_is_empty(&top.join("sub"), true).unwrap());
        assert!(!dir_is_empty(&top.join("sub"), false).unwrap());
    }
}
