//! The ID rules of a volume, as pure functions so they can be property-tested.
//!
//! * `1` is the root's parent, `2` the root; `3..=16` are reserved; the first allocated ID is 17.
//! * Multiples `k * 2^24` for `k = 1..=16` are never handed out: older Netatalk clients compared
//!   IDs in network byte order and rejected those values.
//! * `u32::MAX` (2^32 − 1) is never handed out; reaching it is "ID space exhausted".
//! * The counter only grows, so a deleted ID never comes back from allocation.

/// Parent ID of the volume root.
pub const ROOT_PARENT_ID: u32 = 1;
/// ID of the volume root directory.
pub const ROOT_ID: u32 = 2;
/// The first ID handed out to a new object.
pub const FIRST_ID: u32 = 17;
/// The largest ID that may ever be handed out.
pub const LAST_USABLE_ID: u32 = u32::MAX - 1;

/// The counter past which the ID space is reported as running out (`deskd status`, the server's
/// log at open): 90% of the 32-bit space, with about 429 million IDs still left, which at a
/// thousand new objects a second is five days and at a million a day over a year.
pub const WARN_LAST_ID: u32 = 3_865_470_566;

/// How many IDs allocation can still hand out after `last_id` (skipped values not counted).
pub fn ids_left(last_id: u32) -> u64 {
    let last = u64::from(last_id.max(FIRST_ID - 1));
    let mut left = u64::from(LAST_USABLE_ID).saturating_sub(last);
    // The skipped multiples k * 2^24 (k = 1..=16) still ahead of the counter.
    left -= (1..=16u64).filter(|k| k << 24 > last).count() as u64;
    left
}

/// The warning to show when the counter has passed [`WARN_LAST_ID`], `None` before.
pub fn space_warning(last_id: u32) -> Option<String> {
    (last_id > WARN_LAST_ID).then(|| {
        let left = ids_left(last_id);
        if left == 0 {
            "ID space EXHAUSTED: no new object can be registered in this volume; \
             move its files into a new volume (docs/security.md, \"IDs under attack\")"
                .to_owned()
        } else {
            format!(
                "ID space nearly exhausted: last ID {last_id}, only {left} IDs left; move the volume's files into a new volume before it runs out \
                 (docs/security.md, \"IDs under attack\")"
            )
        }
    })
}

/// True for IDs that allocation must never return (reserved or skipped values).
pub fn is_forbidden(id: u32) -> bool {
    if !(FIRST_ID..=LAST_USABLE_ID).contains(&id) {
        return true;
    }
    id & 0x00FF_FFFF == 0 && (1..=16).contains(&(id >> 24))
}

/// The next candidate after `id` that is not forbidden, or `None` when the space is exhausted.
/// Candidates may still be taken (by a hinted object); the caller checks that.
pub fn next_candidate(id: u32) -> Option<u32> {
    let mut next = id.checked_add(1)?.max(FIRST_ID);
    while is_forbidden(next) {
        if next >= LAST_USABLE_ID {
            return None;
        }
        next += 1;
    }
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fixed_points() {
        assert_eq!(next_candidate(0), Some(17));
        assert_eq!(next_candidate(16), Some(17));
        assert_eq!(next_candidate(17), Some(18));
        assert_eq!(next_candidate((1 << 24) - 1), Some((1 << 24) + 1));
        assert_eq!(next_candidate((16 << 24) - 1), Some((16 << 24) + 1));
        // 17 * 2^24 is not in the skipped range.
        assert_eq!(next_candidate((17 << 24) - 1), Some(17 << 24));
        assert_eq!(next_candidate(LAST_USABLE_ID - 1), Some(LAST_USABLE_ID));
        assert_eq!(next_candidate(LAST_USABLE_ID), None);
        assert_eq!(next_candidate(u32::MAX), None);
    }

    #[test]
    fn the_warning_comes_at_ninety_percent() {
        assert_eq!(ids_left(0), u64::from(LAST_USABLE_ID) - 16 - 16);
        assert_eq!(ids_left(LAST_USABLE_ID), 0);
        assert_eq!(ids_left(LAST_USABLE_ID - 1), 1);
        assert!(space_warning(17).is_none());
        assert!(space_warning(WARN_LAST_ID).is_none());
        assert!(space_warning(WARN_LAST_ID + 1)
            .unwrap()
            .contains("nearly exhausted"));
        assert!(space_warning(LAST_USABLE_ID).unwrap().contains("EXHAUSTED"));
    }

    proptest! {
        #[test]
        fn candidates_grow_and_are_allowed(id in any::<u32>()) {
            match next_candidate(id) {
                Some(n) => {
                    prop_assert!(n > id);
                    prop_assert!(!is_forbidden(n));
                    // Nothing allowed was skipped between id and n.
                    for skipped in (id.saturating_add(1)).max(FIRST_ID)..n {
                        prop_assert!(is_forbidden(skipped));
                    }
                }
                None => prop_assert!(id >= LAST_USABLE_ID),
            }
        }

        #[test]
        fn skipped_values_are_exactly_the_documented_ones(k in 1u32..=16, off in 0u32..3) {
            let v = (k << 24) + off;
            prop_assert_eq!(is_forbidden(v), off == 0);
        }
    }
}
