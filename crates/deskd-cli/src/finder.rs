//! Finder flags and color labels by name, for `dt set` and `dt info`: the letters of
//! Netatalk's `ad set -f` (uppercase sets, lowercase clears) and long names, and the label
//! names of `ad set -l` (none, grey, green, violet, blue, yellow, red, orange).

/// The label bits inside the Finder flags (`kColor`): label number `n` is `n << 1`.
pub const LABEL_BITS: u16 = 0x000e;

/// One Finder flag: its bit, its `ad set` letter and its long name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flag {
    /// The bit in the 16-bit Finder flags.
    pub bit: u16,
    /// Netatalk's `ad set -f` letter (lowercase form).
    pub letter: char,
    /// The name `dt set --flags` and `dt info` use.
    pub name: &'static str,
}

/// Every named Finder flag, in bit order (Netatalk's include/atalk/adouble.h).
pub const FLAGS: [Flag; 11] = [
    Flag {
        bit: 1,
        letter: 'd',
        name: "on-desk",
    },
    Flag {
        bit: 1 << 4,
        letter: 'e',
        name: "hidden-extension",
    },
    Flag {
        bit: 1 << 6,
        letter: 'm',
        name: "shared",
    },
    Flag {
        bit: 1 << 7,
        letter: 'n',
        name: "no-inits",
    },
    Flag {
        bit: 1 << 8,
        letter: 'i',
        name: "inited",
    },
    Flag {
        bit: 1 << 10,
        letter: 'c',
        name: "custom-icon",
    },
    Flag {
        bit: 1 << 11,
        letter: 't',
        name: "stationery",
    },
    Flag {
        bit: 1 << 12,
        letter: 's',
        name: "name-locked",
    },
    Flag {
        bit: 1 << 13,
        letter: 'b',
        name: "bundle",
    },
    Flag {
        bit: 1 << 14,
        letter: 'v',
        name: "invisible",
    },
    Flag {
        bit: 1 << 15,
        letter: 'a',
        name: "alias",
    },
];

/// The color labels by number (Netatalk's `ad set -l` names; 0 is no label).
pub const LABELS: [&str; 8] = [
    "none", "grey", "green", "violet", "blue", "yellow", "red", "orange",
];

/// Why a `--flags` or `--label` value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FinderError {
    #[error(
        "{0:?}: Finder flags are a 16-bit number (decimal or 0x hex), ad set letters \
         (uppercase sets, lowercase clears: {letters}) or names with + or - \
         ({names}), comma-separated",
        letters = letters(),
        names = names()
    )]
    Flags(String),
    #[error("{0:?}: a label is a number 0-7 or one of {names}", names = LABELS.join(", "))]
    Label(String),
}

fn letters() -> String {
    FLAGS.iter().map(|f| f.letter).collect()
}

fn names() -> String {
    FLAGS.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
}

/// A change to the Finder flags: a number replaces them all; letters and names set and clear
/// single flags and leave the others (and the label) as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagsChange {
    /// Replace every bit (label bits included).
    Replace(u16),
    /// Set these bits, then clear those.
    Edit { set: u16, clear: u16 },
}

impl FlagsChange {
    /// The flags after the change, from `current`.
    pub fn apply(self, current: u16) -> u16 {
        match self {
            FlagsChange::Replace(n) => n,
            FlagsChange::Edit { set, clear } => (current | set) & !clear,
        }
    }
}

/// Parse `dt set --flags`: `0x4000` or `16384` (replace), `Vd` (ad set letters: set
/// invisible, clear on-desk), `+invisible,-on-desk` or `invisible` (names; no sign sets).
pub fn parse_flags(s: &str) -> Result<FlagsChange, FinderError> {
    let refuse = || FinderError::Flags(s.to_string());
    let number = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16).ok(),
        None if s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
        None => None,
    };
    if let Some(n) = number {
        return Ok(FlagsChange::Replace(n));
    }
    let (mut set, mut clear) = (0u16, 0u16);
    for token in s.split(',') {
        let (on, word) = match token.as_bytes().first() {
            Some(b'+') => (Some(true), &token[1..]),
            Some(b'-') => (Some(false), &token[1..]),
            _ => (None, token),
        };
        if let Some(flag) = FLAGS.iter().find(|f| f.name.eq_ignore_ascii_case(word)) {
            if on.unwrap_or(true) {
                set |= flag.bit;
            } else {
                clear |= flag.bit;
            }
            continue;
        }
        // ad set letters carry their own sign (the case); a + or - before them is an error.
        if on.is_some() || word.is_empty() {
            return Err(refuse());
        }
        for c in word.chars() {
            let flag = FLAGS
                .iter()
                .find(|f| f.letter == c.to_ascii_lowercase())
                .ok_or_else(refuse)?;
            if c.is_ascii_uppercase() {
                set |= flag.bit;
            } else {
                clear |= flag.bit;
            }
        }
    }
    Ok(FlagsChange::Edit { set, clear })
}

/// Parse `dt set --label`: a name (any case) or a number 0-7.
pub fn parse_label(s: &str) -> Result<u8, FinderError> {
    if let Ok(n) = s.parse::<u8>() {
        if usize::from(n) < LABELS.len() {
            return Ok(n);
        }
    }
    LABELS
        .iter()
        .position(|l| l.eq_ignore_ascii_case(s))
        .map(|n| n as u8)
        .ok_or_else(|| FinderError::Label(s.to_string()))
}

/// The flags with label `n` in place of theirs.
pub fn with_label(flags: u16, label: u8) -> u16 {
    (flags & !LABEL_BITS) | ((u16::from(label) << 1) & LABEL_BITS)
}

/// The label number the flags carry.
pub fn label_of(flags: u16) -> u8 {
    ((flags & LABEL_BITS) >> 1) as u8
}

/// The label's name.
pub fn label_name(flags: u16) -> &'static str {
    LABELS[usize::from(label_of(flags))]
}

/// The names of the flags set, in bit order, and any other bit (outside the label) in hex.
pub fn flag_names(flags: u16) -> Vec<String> {
    let mut names: Vec<String> = FLAGS
        .iter()
        .filter(|f| flags & f.bit != 0)
        .map(|f| f.name.to_string())
        .collect();
    let known = FLAGS.iter().fold(LABEL_BITS, |all, f| all | f.bit);
    if flags & !known != 0 {
        names.push(format!("0x{:04x}", flags & !known));
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_replace_letters_and_names_edit() {
        assert_eq!(parse_flags("16384"), Ok(FlagsChange::Replace(0x4000)));
        assert_eq!(parse_flags("0x4001"), Ok(FlagsChange::Replace(0x4001)));
        assert_eq!(
            parse_flags("Vd"),
            Ok(FlagsChange::Edit {
                set: 0x4000,
                clear: 1
            })
        );
        assert_eq!(
            parse_flags("+invisible,-on-desk"),
            Ok(FlagsChange::Edit {
                set: 0x4000,
                clear: 1
            })
        );
        assert_eq!(
            parse_flags("Alias"),
            Ok(FlagsChange::Edit {
                set: 0x8000,
                clear: 0
            })
        );
        for bad in ["", "x", "+V", "-", "70000", "V,", "0xg"] {
            assert!(parse_flags(bad).is_err(), "{bad:?}");
        }
        let change = parse_flags("Vd").unwrap();
        assert_eq!(change.apply(0x0001 | 0x000c), 0x4000 | 0x000c);
    }

    #[test]
    fn labels_by_name_and_number() {
        assert_eq!(parse_label("red"), Ok(6));
        assert_eq!(parse_label("Grey"), Ok(1));
        assert_eq!(parse_label("7"), Ok(7));
        assert!(parse_label("8").is_err());
        assert!(parse_label("pink").is_err());
        let flags = with_label(0x4000, 6);
        assert_eq!(flags, 0x400c);
        assert_eq!(label_name(flags), "red");
        assert_eq!(flag_names(flags), ["invisible"]);
        assert_eq!(flag_names(0x0022), ["0x0020"]);
        assert_eq!(label_name(0x0022), "grey");
    }
}
