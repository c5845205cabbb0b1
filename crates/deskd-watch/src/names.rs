//! Names never reported: deskd's own (`.rsrc` directories and everything under them,
//! `.Desktop*`) and the volume's ignore list (exact names, or prefixes ending in `*`). A path
//! is ignored when any of its components is.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The compiled ignore list.
#[derive(Debug, Clone)]
pub(crate) struct Ignore {
    exact: Vec<OsString>,
    prefixes: Vec<Vec<u8>>,
}

impl Ignore {
    pub(crate) fn new(extra: &[OsString]) -> Self {
        let mut ignore = Ignore {
            exact: vec![OsString::from(".rsrc")],
            prefixes: vec![b".Desktop".to_vec()],
        };
        for name in extra {
            match name.as_bytes().strip_suffix(b"*") {
                Some(prefix) => ignore.prefixes.push(prefix.to_vec()),
                None => ignore.exact.push(name.clone()),
            }
        }
        ignore
    }

    /// One name (a directory entry).
    pub(crate) fn name(&self, name: &OsStr) -> bool {
        self.exact.iter().any(|e| e == name)
            || self.prefixes.iter().any(|p| name.as_bytes().starts_with(p))
    }

    /// A relative path: ignored when any component is.
    pub(crate) fn path(&self, path: &Path) -> bool {
        path.iter().any(|c| self.name(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deskd_names_and_the_list_are_ignored_at_any_depth() {
        let ignore = Ignore::new(&["desk.db".into(), "tmp~*".into()]);
        for path in [
            ".rsrc",
            "a/.rsrc/b",
            ".Desktop",
            ".DesktopServer.db-wal",
            "desk.db",
            "x/tmp~1",
        ] {
            assert!(ignore.path(Path::new(path)), "{path}");
        }
        for path in ["a", "a/rsrc", "a/b.rsrc", "Desktop", "desk.db2", "tmp"] {
            assert!(!ignore.path(Path::new(path)), "{path}");
        }
    }
}
