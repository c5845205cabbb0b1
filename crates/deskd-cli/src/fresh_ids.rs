//! What a move or copy into another volume does to the ID carriers it takes along: the
//! resource files (`DIR/.rsrc/NAME`, whose header holds the object's ID) and the
//! `user.deskd.id` mirror. An object arriving in a volume gets a new ID there, and `deskd
//! rebuild` takes an object's ID from its carriers, so no carrier may ever land in the
//! destination still holding an ID of the volume it came from — not even for the moment
//! before `dt` registers it: a `dt` killed then would leave the foreign ID for a rebuild to
//! adopt. So the IDs are cleared before the data arrives (a rename), or as it is written (a
//! copy).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use deskd_volume::netatalk;
use deskd_volume::rsrc::{self, ResourceHeader};

/// Where the ID lies in a resource-file header (the HELIOS layout, docs/desktop-format.md).
const ID_FIELD: std::ops::Range<usize> = 20..24;

/// True for a path of the form `.../.rsrc/NAME`: a resource file, when it is a regular file.
pub fn is_resource_file(path: &Path) -> bool {
    path.parent()
        .and_then(|dir| dir.file_name())
        .is_some_and(|dir| dir == rsrc::RSRC_DIR)
}

/// The first bytes of a resource file with its ID set to 0, everything else kept byte for
/// byte. Bytes that are no resource-file header come back unchanged (no ID to take from them).
fn cleared(mut head: Vec<u8>) -> Vec<u8> {
    if ResourceHeader::decode(&head).is_ok() && head.len() >= ID_FIELD.end {
        head[ID_FIELD].fill(0);
    }
    head
}

/// Copy an open resource file into `dest`, its ID cleared before any byte is written: a copy
/// interrupted at any point never holds the original's ID.
pub fn copy_cleared(source: &mut File, dest: &mut File) -> io::Result<()> {
    let mut head = Vec::with_capacity(rsrc::HEADER_LEN);
    Read::by_ref(source)
        .take(rsrc::HEADER_LEN as u64)
        .read_to_end(&mut head)?;
    dest.write_all(&cleared(head))?;
    io::copy(source, dest)?;
    Ok(())
}

/// Copy the resource file `from` to `to` (replacing it) with its ID cleared: the type,
/// creator, Finder information, comment and fork travel, the ID does not. Neither end is
/// followed through a symbolic link. `Ok(false)`, copying nothing, when `from` is missing or
/// no regular file.
pub fn copy_record_cleared(from: &Path, to: &Path) -> anyhow::Result<bool> {
    let mut source = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(from)
    {
        Ok(f) if f.metadata()?.is_file() => f,
        Ok(_) => return Ok(false),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ELOOP)) => return Ok(false),
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", from.display())),
    };
    // A link in place of the destination's .rsrc is refused, one in place of the file is not
    // written through (O_NOFOLLOW).
    rsrc::make_rsrc_dir(to)?;
    let mut dest = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o666)
        .custom_flags(libc::O_NOFOLLOW)
        .open(to)
        .map_err(|e| anyhow::anyhow!("{}: {e}", to.display()))?;
    copy_cleared(&mut source, &mut dest).map_err(|e| anyhow::anyhow!("{}: {e}", to.display()))?;
    Ok(true)
}

/// Clear, in place, every ID the tree at `top` carries along when it is renamed: the ID
/// mirror of each object (the top one too), the CNID Netatalk caches in its metadata xattr
/// (which a rebuild reads when nothing else gives an ID), and the ID in each resource file
/// inside the tree (the top object's own record lies outside, in its parent's `.rsrc`, and is
/// not touched). Symbolic
/// links are never followed. The first failure ends it: the caller must then not rename.
pub fn clear_tree(top: &Path) -> io::Result<()> {
    // Walked by descriptors, never through a name swapped for a link meanwhile
    // (docs/security.md, "dt's path races"): each change is made by a name in a directory
    // held open (`/proc/self/fd/N/NAME`).
    let (dir, name) = crate::at::open_parent(top)?;
    clear_at(std::os::fd::AsFd::as_fd(&dir), &name)
}

/// [`clear_tree`] of `name` in the directory open at `dir`.
fn clear_at(dir: std::os::fd::BorrowedFd<'_>, name: &std::ffi::OsStr) -> io::Result<()> {
    use crate::at;
    use std::os::fd::AsFd;
    let st = at::lstat_at(dir, name)?;
    if at::is_symlink(&st) {
        return Ok(());
    }
    let path = at::fd_path(dir).join(name);
    remove_mirror(&path)?;
    clear_netatalk_cnid(&path)?;
    if !at::is_dir(&st) {
        return Ok(());
    }
    let sub = at::open_dir_checked(dir, name, &st)?;
    for entry in at::names(sub.as_fd())? {
        if entry == rsrc::RSRC_DIR {
            let Ok(records) = at::open_dir_at(sub.as_fd(), &entry) else {
                continue;
            };
            for record in at::names(records.as_fd())? {
                let rst = at::lstat_at(records.as_fd(), &record)?;
                if rst.st_mode & libc::S_IFMT == libc::S_IFREG {
                    clear_record(&at::fd_path(records.as_fd()).join(&record))?;
                }
            }
        } else {
            at::race_pause("clear-entry");
            clear_at(sub.as_fd(), &entry)?;
        }
    }
    Ok(())
}

/// Set the ID in the resource file at `path` to 0 (if it is one and holds an ID).
fn clear_record(path: &Path) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let mut head = Vec::with_capacity(rsrc::HEADER_LEN);
    (&mut file)
        .take(rsrc::HEADER_LEN as u64)
        .read_to_end(&mut head)?;
    let new = cleared(head.clone());
    if new != head {
        file.seek(SeekFrom::Start(ID_FIELD.start as u64))?;
        file.write_all(&new[ID_FIELD])?;
    }
    Ok(())
}

/// Remove the `user.deskd.id` mirror of `path` (none, or no xattrs at all, is fine).
fn remove_mirror(path: &Path) -> io::Result<()> {
    match xattr::remove(path, deskd_volume::ID_XATTR) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA | libc::ENOTSUP)) => Ok(()),
        other => other,
    }
}

/// Set the CNID Netatalk caches for `path` (in `user.org.netatalk.Metadata`) to 0, keeping the
/// rest of its metadata (Finder information) as it is.
fn clear_netatalk_cnid(path: &Path) -> io::Result<()> {
    let blob = match xattr::get(path, netatalk::NETATALK_XATTR) {
        Ok(Some(blob)) => blob,
        Ok(None) => return Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA | libc::ENOTSUP)) => return Ok(()),
        Err(e) => return Err(e),
    };
    match without_cnid(&blob) {
        Some(cleared) => xattr::set(path, netatalk::NETATALK_XATTR, &cleared),
        None => Ok(()),
    }
}

/// A Netatalk metadata blob with every cached CNID entry set to 0; `None` when it holds no
/// CNID (or is no AppleDouble header `deskd_volume::netatalk` would read one from).
fn without_cnid(blob: &[u8]) -> Option<Vec<u8>> {
    netatalk::parse(blob).ok()?.cnid?;
    let be32 = |at: usize| u32::from_be_bytes(blob[at..at + 4].try_into().unwrap());
    let count = u16::from_be_bytes([blob[24], blob[25]]) as usize;
    let mut out = blob.to_vec();
    for i in 0..count {
        let at = 26 + i * 12;
        let (id, off, len) = (be32(at), be32(at + 4) as usize, be32(at + 8) as usize);
        let is_cnid = matches!(id, netatalk::ENTRY_CNID | netatalk::ENTRY_CNID_ON_DISK);
        if is_cnid && len == 4 && off.checked_add(4).is_some_and(|end| end <= out.len()) {
            out[off..off + 4].fill(0);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn a_copied_record_keeps_everything_but_its_id() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("a")).unwrap();
        fs::create_dir(d.path().join("b")).unwrap();
        let from = d.path().join("a/.rsrc/f");
        let mut h = ResourceHeader::new(4711, *b"TEXT", *b"ttxt", 9);
        h.comment = b"note".to_vec();
        rsrc::write_header(&from, &h).unwrap();
        let mut bytes = fs::read(&from).unwrap();
        bytes.extend_from_slice(b"the fork");
        fs::write(&from, &bytes).unwrap();
        let to = d.path().join("b/.rsrc/f");
        assert!(copy_record_cleared(&from, &to).unwrap());
        let copied = fs::read(&to).unwrap();
        assert_eq!(copied.len(), bytes.len());
        assert_eq!(&copied[ID_FIELD], &[0, 0, 0, 0]);
        assert_eq!(&copied[..20], &bytes[..20]);
        assert_eq!(&copied[24..], &bytes[24..]);
        assert!(!copy_record_cleared(&d.path().join("none"), &to).unwrap());
    }

    #[test]
    fn netatalk_metadata_loses_its_cnid_only() {
        let blob = netatalk::netatalk3_blob(4711, b"TEXT", b"ttxt");
        assert_eq!(netatalk::parse(&blob).unwrap().cnid, Some(4711));
        let cleared = without_cnid(&blob).unwrap();
        let info = netatalk::parse(&cleared).unwrap();
        assert_eq!((info.cnid, &info.type_code), (None, b"TEXT"));
        assert_eq!(without_cnid(&cleared), None);
        assert_eq!(without_cnid(b"not appledouble at all, no"), None);
    }

    #[test]
    fn a_cleared_tree_carries_no_id() {
        let d = tempfile::tempdir().unwrap();
        let top = d.path().join("top");
        fs::create_dir_all(top.join("sub")).unwrap();
        fs::write(top.join("sub/f"), b"x").unwrap();
        let record = top.join("sub/.rsrc/f");
        rsrc::write_header(&record, &ResourceHeader::new(99, *b"TEXT", *b"ttxt", 0)).unwrap();
        fs::create_dir_all(top.join(".rsrc")).unwrap();
        fs::write(top.join(".rsrc/not-a-record"), b"short").unwrap();
        let _ = deskd_volume::write_id_xattr(&top.join("sub/f"), 99);
        clear_tree(&top).unwrap();
        assert_eq!(rsrc::read_header(&record).unwrap().unwrap().id, 0);
        assert_eq!(
            rsrc::read_header(&record).unwrap().unwrap().type_code,
            *b"TEXT"
        );
        assert_eq!(deskd_volume::read_id_xattr(&top.join("sub/f")), None);
        assert_eq!(fs::read(top.join(".rsrc/not-a-record")).unwrap(), b"short");
    }
}
