use super::*;
use std::os::unix::fs::symlink;

fn volume() -> (tempfile::TempDir, Volume) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("vol/sub")).unwrap();
    std::fs::write(dir.path().join("vol/.Desktop"), b"").unwrap();
    let v = Volume::new(&dir.path().join("vol")).unwrap();
    (dir, v)
}

#[test]
fn relative_paths_resolve_inside() {
    let (_d, v) = volume();
    let r = v.resolve_relative(b"sub/file").unwrap();
    assert_eq!(r.names(), vec![&b"sub"[..], &b"file"[..]]);
    assert_eq!(r.path, v.root().join("sub/file"));
    assert!(v.resolve_relative(b"").unwrap().components.is_empty());
}

#[test]
fn escapes_and_protected_names_are_refused() {
    let (_d, v) = volume();
    assert!(matches!(
        v.resolve_relative(b"../etc"),
        Err(VolumeError::Escape(_))
    ));
    assert!(matches!(
        v.resolve_relative(b"sub/../../x"),
        Err(VolumeError::Escape(_))
    ));
    assert!(matches!(
        v.resolve_relative(b".Desktop"),
        Err(VolumeError::Protected(_))
    ));
    assert!(matches!(
        v.resolve_relative(b"sub/.rsrc/x"),
        Err(VolumeError::Protected(_))
    ));
    let long = vec![b'a'; 256];
    assert!(matches!(
        v.resolve_relative(&long),
        Err(VolumeError::InvalidName(..))
    ));
    assert!(v.resolve_relative(&[b'a'; 255]).is_ok());
}

#[test]
fn symlinks_that_leave_are_refused_and_inside_ones_followed() {
    let (d, v) = volume();
    std::fs::create_dir(d.path().join("outside")).unwrap();
    symlink(d.path().join("outside"), v.root().join("out")).unwrap();
    symlink(v.root().join("sub"), v.root().join("alias")).unwrap();
    assert!(matches!(
        v.resolve_relative(b"out/x"),
        Err(VolumeError::Escape(_))
    ));
    let r = v.resolve_relative(b"alias/x").unwrap();
    assert_eq!(r.names(), vec![&b"sub"[..], &b"x"[..]]);
    // The final component is not followed: the link itself is the object.
    let r = v.resolve_relative(b"out").unwrap();
    assert_eq!(r.path, v.root().join("out"));
}

#[test]
fn locates_the_volume_of_a_path() {
    let (d, v) = volume();
    assert_eq!(
        locate_volume(&v.root().join("sub/f")),
        Some(v.root().to_path_buf())
    );
    assert_eq!(locate_volume(d.path()), None);
}

#[test]
fn non_utf8_names_resolve() {
    let (_d, v) = volume();
    let r = v.resolve_relative(b"sub/bad\xffname").unwrap();
    assert_eq!(r.names()[1], b"bad\xffname");
}

#[test]
fn xattr_mirror_round_trips() {
    let (_d, v) = volume();
    let f = v.root().join("sub/x");
    std::fs::write(&f, b"").unwrap();
    write_id_xattr(&f, 0x0102_0304).unwrap();
    // tmpfs and most Linux file systems support user xattrs; where not, nothing is stored.
    if let Some(id) = read_id_xattr(&f) {
        assert_eq!(id, 0x0102_0304);
        assert_eq!(xattr::get(&f, ID_XATTR).unwrap().unwrap(), vec![1, 2, 3, 4]);
    }
}

#[test]
fn a_symlink_lends_no_mirror_of_its_target() {
    let (_d, v) = volume();
    let f = v.root().join("sub/target");
    std::fs::write(&f, b"").unwrap();
    write_id_xattr(&f, 77).unwrap();
    let link = v.root().join("sub/link");
    std::os::unix::fs::symlink(&f, &link).unwrap();
    if read_id_xattr(&f).is_some() {
        // The file system keeps the mirror: the link, which has none, must not read its
        // target's (dt would send another object's ID as the link's).
        assert_eq!(read_id_xattr(&link), None);
    }
}

#[test]
fn lexical_clean_works() {
    assert_eq!(
        lexical_clean(Path::new("/a/b/../c/./d")),
        PathBuf::from("/a/c/d")
    );
    assert_eq!(lexical_clean(Path::new("/../a")), PathBuf::from("/a"));
}
