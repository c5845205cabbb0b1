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
