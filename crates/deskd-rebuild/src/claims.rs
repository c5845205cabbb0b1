//! Which ID claims a rebuild believes (docs/security.md, "IDs under attack").
//!
//! The ID in a resource file header, in the `user.deskd.id` mirror or in Netatalk's metadata is
//! a *claim*: whoever can write that carrier can write any number there. A claim is accepted
//! when
//! * the carrier is owned by root or by the volume owner (they could restore the volume anyway),
//! * or a reference desktop (the live one, the old one of `-f` when it can be read, the backup
//!   being restored) has a row with that ID for the same object: the same device and inode (a
//!   plain `mv`), or the same path (a save-by-rename),
//! * or, when no reference desktop can know the ID (there is none, or the ID is above all their
//!   counters: a restore whose live desktop is lost), the ID is not above the highest ID known
//!   to have been handed out (a trusted claim, or the counter a restore asked for): such a claim
//!   cannot move the counter,
//! * or the administrator said `--trust-ids` (after a tar restore of the user files).
//!
//! Everything else is ignored: the object is treated as if it carried no ID.

use crate::plan::OldDesktop;

/// What a rebuild trusts.
#[derive(Default)]
pub struct ClaimPolicy<'a> {
    /// Desktops a claim is checked against: a row with the claimed ID must be the same object.
    pub references: Vec<&'a OldDesktop>,
    /// Accept every claim, whoever wrote it (`--trust-ids`).
    pub trust_all: bool,
    /// The largest ID known to have been handed out besides the references' counters (a
    /// restore's lower bound for the counter); used only when there is no reference.
    pub recorded_max: u32,
}

/// A claim as the walk found it.
pub(crate) struct Claim<'w> {
    pub id: u32,
    /// The owner of the file that carries it (`None`: not known, never trusted).
    pub carrier_uid: Option<u32>,
    /// For a resource file: the owner and mode of its `.rsrc` directory. Whoever may rename
    /// entries there could have put another object's resource file (root's own, with the ID of
    /// an object since deleted) in this place, so the directory must be safe too.
    pub carrier_dir: Option<(u32, u32)>,
    /// The claimant's path relative to the volume root (made only when needed), its device and
    /// inode.
    pub rel_path: &'w dyn Fn() -> Vec<u8>,
    pub dev: u64,
    pub ino: u64,
}

/// What the policy says of a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Believed because of who wrote it (root, the volume owner, or `--trust-ids`); it may
    /// raise the counter.
    Trusted,
    /// A reference desktop has this ID for this very object.
    Verified,
    /// Not trusted and no reference can know it: accepted only up to the highest ID known to
    /// have been handed out (decided by the plan, which knows the trusted claims).
    Unchecked,
    /// Ignored, with the reason (for `-s`).
    Rejected(String),
}

impl ClaimPolicy<'_> {
    /// Judge one claim. `volume_owner` is the uid owning the volume root.
    pub(crate) fn judge(&self, claim: &Claim<'_>, volume_owner: u32) -> Verdict {
        if self.trust_all {
            return Verdict::Trusted;
        }
        let trusted = |uid: u32| uid == 0 || uid == volume_owner;
        // Only its owner (and root) can rename in a directory no one else may write, or one
        // with the sticky bit.
        let dir_safe = claim.carrier_dir.is_none_or(|(uid, mode)| {
            trusted(uid) && (mode & 0o022 == 0 || mode & libc::S_ISVTX != 0)
        });
        if claim.carrier_uid.is_some_and(trusted) && dir_safe {
            return Verdict::Trusted;
        }
        if self.references.is_empty() {
            return Verdict::Unchecked;
        }
        let mut recorded_elsewhere = false;
        for reference in &self.references {
            if let Some(row) = reference.objects.get(&claim.id) {
                let same_inode = (row.dev, row.ino) == (claim.dev, claim.ino);
                if same_inode
                    || reference
                        .rel_path(claim.id)
                        .is_some_and(|p| p == (claim.rel_path)())
                {
                    return Verdict::Verified;
                }
                recorded_elsewhere = true;
            }
        }
        // Above every reference's counter: handed out after the references were made (a restore
        // whose live desktop is lost), or never. Nothing can tell; the plan's bound decides.
        let newest = self.references.iter().map(|r| r.last_id).max().unwrap_or(0);
        if !recorded_elsewhere && claim.id > newest {
            return Verdict::Unchecked;
        }
        let owner = match (claim.carrier_uid, dir_safe) {
            (Some(u), true) => format!("uid {u}"),
            (Some(u), false) => format!("uid {u} in a folder others can rename in"),
            (None, _) => "an unknown owner".to_owned(),
        };
        Verdict::Rejected(if recorded_elsewhere {
            format!(
                "written by {owner} (not root or the volume owner), and the desktop has ID {} \
                 for another object",
                claim.id
            )
        } else {
            format!(
                "written by {owner} (not root or the volume owner), and the desktop has no \
                 object with ID {}",
                claim.id
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deskd_db::{Kind, Object, ROOT_ID};

    /// A desktop with `docs/a` = ID 20 (inode 7), last ID 30.
    fn reference() -> OldDesktop {
        let mut old = OldDesktop {
            last_id: 30,
            ..Default::default()
        };
        for (id, parent, name, ino) in [(17, ROOT_ID, "docs", 6), (20, 17, "a", 7)] {
            old.objects.insert(
                id,
                Object {
                    id,
                    parent,
                    name: name.as_bytes().to_vec(),
                    kind: if id == 17 { Kind::Dir } else { Kind::File },
                    dev: 1,
                    ino,
                    type_code: [0; 4],
                    creator: [0; 4],
                    flags: 0,
                    ctime: 0,
                },
            );
        }
        old
    }

    fn claim(id: u32, uid: u32, path: &'static str, ino: u64) -> Claim<'static> {
        let rel_path: &'static dyn Fn() -> Vec<u8> = Box::leak(Box::new(move || path.into()));
        Claim {
            id,
            carrier_uid: Some(uid),
            carrier_dir: None,
            rel_path,
            dev: 1,
            ino,
        }
    }

    #[test]
    fn who_wrote_it_or_what_the_desktop_says_decides() {
        let old = reference();
        let policy = ClaimPolicy {
            references: vec![&old],
            ..Default::default()
        };
        // Root and the volume owner (uid 1000) are believed.
        assert_eq!(policy.judge(&claim(25, 0, "x", 9), 1000), Verdict::Trusted);
        assert_eq!(
            policy.judge(&claim(25, 1000, "x", 9), 1000),
            Verdict::Trusted
        );
        // A user's claim: the same inode (moved) or the same path (saved over) is verified.
        assert_eq!(
            policy.judge(&claim(20, 65534, "b", 7), 1000),
            Verdict::Verified
        );
        assert_eq!(
            policy.judge(&claim(20, 65534, "docs/a", 8), 1000),
            Verdict::Verified
        );
        // Another object's ID, a dead one, one past the counter.
        assert!(matches!(
            policy.judge(&claim(20, 65534, "c", 9), 1000),
            Verdict::Rejected(_)
        ));
        assert!(matches!(
            policy.judge(&claim(25, 65534, "c", 9), 1000),
            Verdict::Rejected(_)
        ));
        assert_eq!(
            policy.judge(&claim(31, 65534, "c", 9), 1000),
            Verdict::Unchecked
        );
        // Root's resource file in a folder others may rename in is no better than theirs.
        let in_open_dir = Claim {
            carrier_dir: Some((0, 0o40777)),
            ..claim(25, 0, "x", 9)
        };
        assert!(matches!(
            policy.judge(&in_open_dir, 1000),
            Verdict::Rejected(_)
        ));
        let sticky = Claim {
            carrier_dir: Some((0, 0o41777)),
            ..claim(25, 0, "x", 9)
        };
        assert_eq!(policy.judge(&sticky, 1000), Verdict::Trusted);
        // No reference: the plan bounds it. --trust-ids: everything goes.
        let none = ClaimPolicy::default();
        assert_eq!(
            none.judge(&claim(25, 65534, "c", 9), 1000),
            Verdict::Unchecked
        );
        let all = ClaimPolicy {
            trust_all: true,
            ..Default::default()
        };
        assert_eq!(all.judge(&claim(25, 65534, "c", 9), 1000), Verdict::Trusted);
    }
}
