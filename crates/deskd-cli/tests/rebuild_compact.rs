//! `deskd rebuild` with its compact records (docs/ARCHITECTURE.md, "Rebuild memory"): the walk
//! keeps of a resource file only what the plan decides from, every name in one arena, and the
//! rare parts (a comment, why a resource file is corrupt) aside. These scenarios check that
//! nothing a user had is lost on the way: a header rewritten with a new ID keeps the rest of
//! what is on disk, names of every length and byte come back whole, and a corrupt resource
//! file is still reported with its reason.

mod common;

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use common::{desktop_paths, stdout, Env};
use deskd_volume::rsrc::{self, ResourceHeader};

fn header_of(path: &Path) -> ResourceHeader {
    rsrc::read_header(&rsrc::rsrc_path(path).unwrap())
        .unwrap()
        .unwrap_or_else(|| panic!("no resource file for {}", path.display()))
}

#[test]
fn a_copied_resource_file_gets_its_new_id_and_keeps_everything_else() {
    let env = Env::new(&["vol/docs"]);
    let root = env.path("vol");
    std::fs::write(root.join("docs/a"), b"a").unwrap();
    let out = env.deskd(&["rebuild", "-f", "vol"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    // The header of `a` with what the walk does not keep (the comment, the serial number, the
    // rest of the Finder info) and a resource fork behind it.
    let a = root.join("docs/a");
    let mut header = header_of(&a);
    header.type_code = *b"PDF ";
    header.creator = *b"CARO";
    header.finder_flags = 0x0100;
    header.serno = 4242;
    header.finder_rest = [7; 22];
    header.comment = b"the comment of a".to_vec();
    let a_rsrc = rsrc::rsrc_path(&a).unwrap();
    rsrc::write_header(&a_rsrc, &header).unwrap();
    let fork = b"resource fork bytes";
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&a_rsrc)
            .unwrap();
        f.write_all(fork).unwrap();
    }
    let a_bytes = std::fs::read(&a_rsrc).unwrap();
    // A copy of `a` made with its resource file (a Finder copy through another server): `b`
    // claims the ID of `a`.
    let b = root.join("docs/b");
    std::fs::write(&b, b"b").unwrap();
    std::fs::copy(&a_rsrc, rsrc::rsrc_path(&b).unwrap()).unwrap();
    let a_id = header.id;

    let out = env.deskd(&["rebuild", "-v", "vol"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(stdout(&out).contains("duplicate"), "{}", stdout(&out));
    let ids = desktop_paths(&root);
    assert_eq!(ids["docs/a"], a_id, "the original keeps its ID");
    let b_id = ids["docs/b"];
    assert_ne!(b_id, a_id);
    // The copy's header: its new ID, and everything else as it was on disk.
    assert_eq!(
        header_of(&b),
        ResourceHeader {
            id: b_id,
            ..header.clone()
        }
    );
    let b_bytes = std::fs::read(rsrc::rsrc_path(&b).unwrap()).unwrap();
    assert!(b_bytes.ends_with(fork), "the fork is kept");
    assert_eq!(b_bytes.len(), a_bytes.len());
    assert_eq!(std::fs::read(&a_rsrc).unwrap(), a_bytes, "a is untouched");
    // The comment went to the desktop for both.
    let scan = env.deskd(&["rebuild", "-s", "vol"]);
    assert_eq!(scan.status.code(), Some(0), "{}", stdout(&scan));
}

#[test]
fn names_of_every_length_and_byte_come_back_whole() {
    let env = Env::new(&["vol"]);
    let root = env.path("vol");
    let longest = "n".repeat(255);
    let names: Vec<Vec<u8>> = vec![
        b"x".to_vec(),
        longest.as_bytes().to_vec(),
        b"caf\xe9 latin-1".to_vec(),
        "caf\u{e9} \u{1f600}".as_bytes().to_vec(),
    ];
    // The same names at three depths, so names of neighbours and of parents meet in the
    // walk's arena in every order.
    let dirs = [root.clone(), root.join("d"), root.join("d").join("e")];
    for dir in &dirs {
        std::fs::create_dir_all(dir).unwrap();
        for name in &names {
            std::fs::write(dir.join(std::ffi::OsStr::from_bytes(name)), b"").unwrap();
        }
    }
    let out = env.deskd(&["rebuild", "-f", "vol"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let first = desktop_paths(&root);
    assert_eq!(first.len(), 1 + 2 + 3 * names.len(), "{first:?}");
    // A check finds nothing, a new desktop from the disk alone keeps every ID, and so does a
    // repair with the old desktop gone to the side.
    let scan = env.deskd(&["rebuild", "-s", "vol"]);
    assert_eq!(scan.status.code(), Some(0), "{}", stdout(&scan));
    let out = env.deskd(&["rebuild", "-f", "vol"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(desktop_paths(&root), first);
    let out = env.deskd(&["rebuild", "vol"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(desktop_paths(&root), first);
    for dir in &dirs {
        for name in &names {
            let path = dir.join(std::ffi::OsStr::from_bytes(name));
            let rel = path.strip_prefix(&root).unwrap();
            let id = first[&String::from_utf8_lossy(rel.as_os_str().as_bytes()).into_owned()];
            assert_eq!(header_of(&path).id, id, "{}", path.display());
        }
    }
}

#[test]
fn a_corrupt_resource_file_is_reported_with_its_reason_and_remade() {
    let env = Env::new(&["vol"]);
    let root = env.path("vol");
    for name in ["good", "bad"] {
        std::fs::write(root.join(name), b"").unwrap();
    }
    let out = env.deskd(&["rebuild", "-f", "vol"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let ids = desktop_paths(&root);
    let bad_rsrc = rsrc::rsrc_path(&root.join("bad")).unwrap();
    std::fs::write(&bad_rsrc, b"short").unwrap();

    let scan = env.deskd(&["rebuild", "-s", "vol"]);
    assert_eq!(scan.status.code(), Some(1), "{}", stdout(&scan));
    let listed = stdout(&scan);
    let line = listed
        .lines()
        .find(|l| l.contains("corrupt-rsrc"))
        .unwrap_or_else(|| panic!("no corrupt-rsrc line:\n{listed}"));
    assert!(line.contains("bad"), "{line}");
    // The reason the walk kept aside.
    assert!(
        line.contains("5 bytes, shorter than the 64-byte file info"),
        "{line}"
    );
    assert_eq!(
        listed.lines().filter(|l| !l.is_empty()).count(),
        1,
        "{listed}"
    );

    let out = env.deskd(&["rebuild", "vol"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(desktop_paths(&root), ids);
    assert_eq!(header_of(&root.join("bad")).id, ids["bad"]);
}
