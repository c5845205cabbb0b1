//! Arguments of `dt chmod`, `dt chown` and `dt chgrp`: modes in octal or chmod(1)'s symbolic
//! form, and owners and groups by name or number.

/// Why a mode, owner or group given to `dt chmod`, `dt chown` or `dt chgrp` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModeError {
    #[error("invalid mode {spec:?}: an octal mode is at most 7777 (digits 0-7)")]
    Octal { spec: String },
    #[error("invalid mode {spec:?}: {found:?} where +, - or = belongs")]
    NotAnOperation { spec: String, found: char },
    #[error("invalid mode {spec:?}: {found:?} is not a permission")]
    NotAPermission { spec: String, found: char },
    #[error("invalid mode {spec:?}: each clause needs +, - or =")]
    NoOperation { spec: String },
    #[error("invalid user: {0:?}")]
    User(String),
    #[error("invalid group: {0:?}")]
    Group(String),
    #[error("invalid owner {0:?}")]
    Owner(String),
    #[error("{0:?} has no login group")]
    NoLoginGroup(String),
}

/// A parsed chmod mode: octal (absolute) or symbolic clauses applied to the current mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModeSpec {
    /// An octal mode; `setid` are the set-user/group-ID bits it names: a directory keeps the
    /// others (GNU chmod's rule; five digits, `00755`, name both).
    Absolute {
        mode: u32,
        setid: u32,
    },
    Symbolic(Vec<Clause>),
}

/// One symbolic clause, `[ugoa]*` followed by operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    /// Bits of the classes named (`u` 0o4700, `g` 0o2070, `o` 0o1007); `None` when none were
    /// named, which means all classes, with the umask's bits left alone (POSIX).
    who: Option<u32>,
    ops: Vec<(char, Perm)>,
}

/// What an operation adds, removes or sets.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Perm {
    /// `rwxXst` letters.
    Letters(String),
    /// `u`, `g` or `o`: the bits that class has now.
    CopyOf(char),
}

const USER: u32 = 0o4700;
const GROUP: u32 = 0o2070;
const OTHER: u32 = 0o1007;

/// Parse a chmod(1) mode: `640`, `u+x`, `go-w,a+r`, `u=rwx,g=rx,o=`, `g=u`, `+X`.
pub fn parse_mode(spec: &str) -> Result<ModeSpec, ModeError> {
    let spec_owned = || spec.to_string();
    if !spec.is_empty() && spec.bytes().all(|b| b.is_ascii_digit()) {
        return match u32::from_str_radix(spec, 8) {
            Ok(mode) if spec.len() <= 5 && mode <= 0o7777 => Ok(ModeSpec::Absolute {
                mode,
                setid: if spec.len() == 5 {
                    0o6000
                } else {
                    mode & 0o6000
                },
            }),
            _ => Err(ModeError::Octal { spec: spec_owned() }),
        };
    }
    let mut clauses = Vec::new();
    for part in spec.split(',') {
        let mut chars = part.chars().peekable();
        let mut who = None;
        while let Some(&c) = chars.peek() {
            let bits = match c {
                'u' => USER,
                'g' => GROUP,
                'o' => OTHER,
                'a' => USER | GROUP | OTHER,
                _ => break,
            };
            who = Some(who.unwrap_or(0) | bits);
            chars.next();
        }
        let mut ops = Vec::new();
        while let Some(op) = chars.next() {
            if !matches!(op, '+' | '-' | '=') {
                return Err(ModeError::NotAnOperation {
                    spec: spec_owned(),
                    found: op,
                });
            }
            let mut letters = String::new();
            let mut copy = None;
            while let Some(&c) = chars.peek() {
                match c {
                    'r' | 'w' | 'x' | 'X' | 's' | 't' if copy.is_none() => letters.push(c),
                    'u' | 'g' | 'o' if letters.is_empty() && copy.is_none() => copy = Some(c),
                    '+' | '-' | '=' => break,
                    _ => {
                        return Err(ModeError::NotAPermission {
                            spec: spec_owned(),
                            found: c,
                        })
                    }
                }
                chars.next();
            }
            ops.push((op, copy.map_or(Perm::Letters(letters), Perm::CopyOf)));
        }
        if ops.is_empty() {
            return Err(ModeError::NoOperation { spec: spec_owned() });
        }
        clauses.push(Clause { who, ops });
    }
    Ok(ModeSpec::Symbolic(clauses))
}

impl ModeSpec {
    /// The new permission bits of an object whose mode is `current`; `umask` applies to
    /// clauses that name no class.
    pub fn apply(&self, current: u32, is_dir: bool, umask: u32) -> u32 {
        let clauses = match self {
            ModeSpec::Absolute { mode, setid } => {
                let kept = if is_dir { 0o6000 & !setid } else { 0 };
                return (current & kept) | (mode & !kept);
            }
            ModeSpec::Symbolic(c) => c,
        };
        let mut mode = current & 0o7777;
        for clause in clauses {
            let (who, mask) = match clause.who {
                Some(w) => (w, 0o7777),
                None => (USER | GROUP | OTHER, !umask & 0o7777),
            };
            for (op, perm) in &clause.ops {
                let bits = match perm {
                    Perm::Letters(letters) => letter_bits(letters, mode, is_dir),
                    Perm::CopyOf(class) => copy_bits(*class, mode),
                } & who;
                match op {
                    '+' => mode |= bits & mask,
                    '-' => mode &= !(bits & mask),
                    // `=` clears the classes' rwx (and s/t), then sets; a directory's set-id
                    // bits survive `=`, as GNU chmod keeps them.
                    _ => {
                        let keep = if is_dir { 0o6000 } else { 0 };
                        mode = (mode & !(who & !keep & 0o7777)) | (bits & mask);
                    }
                }
            }
        }
        mode
    }
}

/// The bits of `rwxXst` letters for all classes (the caller masks them to the clause's).
fn letter_bits(letters: &str, mode: u32, is_dir: bool) -> u32 {
    let mut bits = 0;
    for c in letters.chars() {
        bits |= match c {
            'r' => 0o444,
            'w' => 0o222,
            'x' => 0o111,
            // X: execute only for directories and for files someone may execute already.
            'X' if is_dir || mode & 0o111 != 0 => 0o111,
            's' => 0o6000,
            't' => 0o1000,
            _ => 0,
        };
    }
    bits
}

/// `g=u` and the like: the rwx bits class `class` has now, copied to every class.
fn copy_bits(class: char, mode: u32) -> u32 {
    let rwx = match class {
        'u' => (mode >> 6) & 7,
        'g' => (mode >> 3) & 7,
        _ => mode & 7,
    };
    rwx << 6 | rwx << 3 | rwx
}

/// The process umask (read by setting it and setting it back; dt is single-threaded here).
pub fn umask() -> u32 {
    use rustix::{fs::Mode, process::umask};
    let old = umask(Mode::from_raw_mode(0o022));
    umask(old);
    old.as_raw_mode()
}

/// A user name or number (a number need not have a passwd entry, as for chown(1)).
pub fn user_id(name: &str) -> Result<u32, ModeError> {
    name.parse::<u32>()
        .ok()
        .or_else(|| passwd(name).map(|(uid, _)| uid))
        .ok_or_else(|| ModeError::User(name.to_string()))
}

/// The uid and login group of a user by name or number, from the passwd database, through
/// nix's `User` lookups: the reentrant `getpwuid_r`/`getpwnam_r`, thread-safe where `getpwnam`
/// returns a static buffer any thread may overwrite.
fn passwd(user: &str) -> Option<(u32, u32)> {
    use nix::unistd::{Uid, User};
    let entry = match user.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(user),
    };
    entry
        .ok()
        .flatten()
        .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
}

/// A group name or number (by name through nix's `Group::from_name`, the reentrant
/// `getgrnam_r`).
pub fn group_id(name: &str) -> Result<u32, ModeError> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|gr| gr.gid.as_raw())
        .ok_or_else(|| ModeError::Group(name.to_string()))
}

/// `OWNER`, `OWNER:GROUP`, `OWNER:` (the owner's login group, as chown(1)) or `:GROUP`.
pub fn parse_owner(spec: &str) -> Result<(Option<u32>, Option<u32>), ModeError> {
    let (user, group) = match spec.split_once([':', '.']) {
        None => (spec, None),
        Some((u, g)) => (u, Some(g)),
    };
    let uid = if user.is_empty() {
        None
    } else {
        Some(user_id(user)?)
    };
    let gid = match group {
        None => None,
        Some("") => match uid {
            Some(_) => Some(login_group(user)?),
            None => return Err(ModeError::Owner(spec.to_string())),
        },
        Some(g) => Some(group_id(g)?),
    };
    if uid.is_none() && gid.is_none() {
        return Err(ModeError::Owner(spec.to_string()));
    }
    Ok((uid, gid))
}

fn login_group(user: &str) -> Result<u32, ModeError> {
    passwd(user)
        .map(|(_, gid)| gid)
        .ok_or_else(|| ModeError::NoLoginGroup(user.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn octal_and_errors() {
        assert_eq!(
            parse_mode("640"),
            Ok(ModeSpec::Absolute {
                mode: 0o640,
                setid: 0
            })
        );
        assert_eq!(
            parse_mode("04755"),
            Ok(ModeSpec::Absolute {
                mode: 0o4755,
                setid: 0o6000
            })
        );
        for bad in ["", "8", "77777", "u+q", "u", "z+r", "u+x,", "+rw=u+q"] {
            assert!(parse_mode(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_owner("0:0"), Ok((Some(0), Some(0))));
        assert_eq!(parse_owner("root"), Ok((Some(0), None)));
        assert_eq!(parse_owner(":0"), Ok((None, Some(0))));
        assert!(parse_owner("no-such-user-here").is_err());
        assert!(parse_owner(":").is_err());
    }

    #[test]
    fn owners_and_groups_by_name_come_from_the_passwd_and_group_databases() {
        // root (uid 0, login group 0) and the group root exist on every Linux system.
        assert_eq!(parse_owner("root:"), Ok((Some(0), Some(0))));
        assert_eq!(
            parse_owner("0:"),
            Ok((Some(0), Some(0))),
            "login group by uid"
        );
        assert_eq!(parse_owner(":root"), Ok((None, Some(0))));
        assert_eq!(parse_owner("root:root"), Ok((Some(0), Some(0))));
        // A number needs no passwd entry, but its login group does.
        assert_eq!(user_id("4000000000"), Ok(4_000_000_000));
        assert_eq!(
            parse_owner("4000000000:"),
            Err(ModeError::NoLoginGroup("4000000000".to_string()))
        );
        for bad in ["no-such-group-here", "ro\0ot"] {
            assert_eq!(group_id(bad), Err(ModeError::Group(bad.to_string())));
        }
        assert_eq!(
            user_id("ro\0ot"),
            Err(ModeError::User("ro\0ot".to_string()))
        );
    }

    fn clause() -> impl Strategy<Value = String> {
        (
            "[ugoa]{0,2}",
            proptest::collection::vec(("[-+=]", "[rwxXst]{0,3}|[ugo]"), 1..3),
        )
            .prop_map(|(who, ops)| {
                let mut s = who;
                for (op, perm) in ops {
                    s.push_str(&op);
                    s.push_str(&perm);
                }
                s
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// The real chmod(1) on a real file or directory is the reference.
        #[test]
        fn symbolic_modes_do_what_chmod_does(
            clauses in prop_oneof![
                proptest::collection::vec(clause(), 1..3),
                "0?[0-7]{1,4}".prop_map(|octal| vec![octal]),
            ],
            start in 0u32..0o7777,
            is_dir: bool,
        ) {
            let spec = clauses.join(",");
            let d = tempfile::tempdir().unwrap();
            let path = d.path().join("x");
            if is_dir {
                std::fs::create_dir(&path).unwrap();
            } else {
                std::fs::write(&path, b"").unwrap();
            }
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(start)).unwrap();
            // Set-id bits the kernel itself drops or keeps are not chmod's symbolic rules.
            let current = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
            let out = std::process::Command::new("chmod")
                .arg("--")
                .arg(&spec)
                .arg(&path)
                .output()
                .unwrap();
            // chmod also exits 1 (with a warning) when the umask kept a bit from changing.
            let valid = !String::from_utf8_lossy(&out.stderr).contains("invalid mode");
            let parsed = parse_mode(&spec);
            prop_assert_eq!(valid, parsed.is_ok(), "{:?}", spec);
            if let Ok(m) = parsed {
                let want = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
                prop_assert_eq!(m.apply(current, is_dir, umask()), want, "{:?} on {:o}", spec, current);
            }
        }
    }
}
