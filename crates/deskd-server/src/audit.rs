//! The audit trail: one info line under the tracing target `deskd::audit` for every change a
//! client made that committed, and for every admin action (flush, freeze, thaw, online rebuild
//! start, cancel and repairs, reload), each naming who asked. Admins turn it off or route it
//! with the log filter (`DESKD_LOG=info,deskd::audit=off`).
//!
//! A line is made only after the commit succeeded, so refused and rolled-back requests leave
//! none, and only when the target is enabled, so a server with the audit off formats nothing.
//! Names and program names are the clients' words: [`escape`] makes every control character
//! and every byte that is not UTF-8 visible, so no name can begin a forged line.
//!
//! The lines are written by a thread of their own (`audit`), fed through a bounded queue: the
//! writer only describes what a request changed (a short string) and hands it over, while the
//! log's formatting and its `write(2)` — a quarter of the writer's time per registration when
//! it did them itself (docs/PERFORMANCE.md) — happen beside it. One queue for every line keeps
//! them in the order they were handed over; a full queue makes the writer wait rather than lose
//! a line, and a clean stop waits for the queue to be written out ([`drain`]).

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};

use deskd_db::{Read, WriteBatch};
use deskd_proto::{Request, Response};

use crate::apply::DirCache;

/// The tracing target of every audit line.
pub(crate) const TARGET: &str = "deskd::audit";

/// Whether audit lines are wanted (the log filter lets `deskd::audit` info through).
pub(crate) fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// `bytes` as printable text: control characters (newline, carriage return, escape, …), `"`
/// and `\` are escaped as in Rust strings, and bytes that are not UTF-8 as `\xNN`. Printable
/// UTF-8 (accented names) is kept as it is.
pub(crate) fn escape(bytes: &[u8]) -> String {
    // A path of long names full of control characters would make a line of tens of KB from one
    // request: at most MAX_LOGGED bytes of it are shown, and how long it was.
    let (shown, cut) = match bytes.len().checked_sub(MAX_LOGGED) {
        Some(more) if more > 0 => (&bytes[..MAX_LOGGED], more),
        _ => (bytes, 0),
    };
    let mut out = String::with_capacity(shown.len() + 16);
    escape_into(&mut out, shown);
    // Escapes make a control byte up to 8 characters: the shown text is bounded too.
    if out.len() > MAX_SHOWN {
        let mut end = MAX_SHOWN;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        let _ = write!(out, "…({} bytes in all)", bytes.len());
        return out;
    }
    if cut > 0 {
        let _ = write!(out, "…({} bytes in all)", bytes.len());
    }
    out
}

/// The most characters of one escaped name or path an audit line shows.
const MAX_SHOWN: usize = 1024;

/// The most bytes of one name or path an audit line shows.
pub(crate) const MAX_LOGGED: usize = 512;

fn escape_into(out: &mut String, bytes: &[u8]) {
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() || is_line_break(c) => {
                    out.extend(c.escape_default());
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

/// Unicode line and paragraph separators, which some log viewers break lines at.
fn is_line_break(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}' | '\u{85}')
}

/// A path relative to the volume root, quoted and escaped.
fn quoted_path(components: &[Vec<u8>]) -> String {
    format!("\"{}\"", escape(&components.join(&b'/')))
}

/// A client's path as it sent it, quoted and escaped (leading `/` dropped: relative to the
/// root like the others).
fn quoted_client_path(path: &[u8]) -> String {
    let trimmed = path.strip_prefix(b"/").unwrap_or(path);
    format!("\"{}\"", escape(trimmed))
}

/// What the writer learns of a write while its batch is open, for the line it logs once the
/// batch has committed: the path of an object named by ID, the ID of one named by path, as
/// the desktop held them.
#[derive(Default)]
pub(crate) struct Resolved {
    path: Option<Vec<Vec<u8>>>,
    id: Option<u32>,
    /// A registration naming an ID (hint or carried): where that ID's record was before, and
    /// (after) where it is now when the write moved it there (a move made outside deskd).
    moved: Option<Moved>,
    /// A registration: the batch's change mark before it ran (what it removed is read from
    /// the batch afterwards, not looked up: this is the write path).
    mark: usize,
    /// A registration that retired the record at its place (`replaced = "new-id"`): its ID.
    retired: Option<u32>,
}

impl Resolved {
    fn path(path: Option<Vec<Vec<u8>>>) -> Resolved {
        Resolved {
            path,
            ..Resolved::default()
        }
    }

    fn id(id: Option<u32>) -> Resolved {
        Resolved {
            id,
            ..Resolved::default()
        }
    }
}

/// A record a registration named: its ID, its path before the write, and its path after when
/// the write moved it.
type Moved = (u32, Components, Option<Components>);
/// A path as its names from the volume root down.
type Components = Vec<Vec<u8>>;

/// The ID a registration names for its object (the move rule follows it), if any.
fn named_id(request: &Request) -> Option<u32> {
    match request {
        Request::Add { hint, carried, .. } | Request::AddPath { hint, carried, .. } => {
            carried.or(*hint)
        }
        _ => None,
    }
}

/// The ID of the record at the client's `path`, looked up name by name from the root.
fn id_at<B: Read + ?Sized>(b: &B, path: &[u8]) -> Option<u32> {
    let mut id = deskd_db::ROOT_ID;
    for name in path.split(|&c| c == b'/').filter(|n| !n.is_empty()) {
        id = b.lookup(id, name).ok()??.id;
    }
    Some(id)
}

/// Before a write: a removal needs the object's path (by ID) or ID (by path) now, while its
/// record exists.
pub(crate) fn before<B: WriteBatch + ?Sized>(
    b: &B,
    cache: &mut DirCache,
    request: &Request,
) -> Resolved {
    match request {
        Request::Delete { id, .. } => Resolved::path(cache.components_of(b, *id).ok()),
        Request::DeletePath { path, .. } => Resolved::id(id_at(b, path)),
        Request::Add { .. } | Request::AddPath { .. } => Resolved {
            // Only when the request names an ID (the move rule may follow it); not through
            // `cache`: the write may move this record, and the cache is the handlers' too.
            moved: named_id(request).and_then(|named| Some((named, b.path_of(named).ok()?, None))),
            mark: b.change_mark(),
            ..Resolved::default()
        },
        _ => Resolved::default(),
    }
}

/// After a write that succeeded: the path of an object named by ID whose record the write
/// kept (a move: where it is now; Finder info and comments: where it is).
pub(crate) fn after<B: WriteBatch + ?Sized>(
    b: &B,
    cache: &mut DirCache,
    request: &Request,
    resolved: Resolved,
) -> Resolved {
    match request {
        Request::Rename { id, .. }
        | Request::SetInfo { id, .. }
        | Request::CommentSet { id, .. }
        | Request::CommentRemove { id, .. } => Resolved::path(b.path_of(*id).ok()),
        Request::ApplAdd { app_id, .. } | Request::ApplRemove { app_id, .. } => {
            Resolved::path(cache.components_of(b, *app_id).ok())
        }
        Request::RenamePath { to, .. } => Resolved::id(id_at(b, to)),
        Request::Add { .. } | Request::AddPath { .. } => {
            use deskd_db::NameChange;
            let changed = b.changed_since(resolved.mark);
            let renamed = |id: u32| {
                changed
                    .iter()
                    .any(|c| matches!(c, NameChange::Set(set, _) if *set == id))
            };
            Resolved {
                // Moved: the batch renamed the named record (and so, where it is now).
                moved: resolved.moved.and_then(|(named, was, _)| {
                    renamed(named).then(|| Some((named, was, Some(b.path_of(named).ok()?))))?
                }),
                // Retired: a record the registration removed (the one at its place).
                retired: changed.iter().find_map(|c| match c {
                    NameChange::Remove(id) => Some(*id),
                    NameChange::Set(..) => None,
                }),
                ..resolved
            }
        }
        _ => resolved,
    }
}

/// The text of the audit line for `request`, which committed with `response`, or None when
/// it changed nothing (a registration of an object already registered, a removal by path of
/// something never registered).
pub(crate) fn describe(
    request: &Request,
    response: &Response,
    resolved: &Resolved,
) -> Option<String> {
    let path = || {
        resolved
            .path
            .as_deref()
            .map_or_else(|| "(path unknown)".to_owned(), quoted_path)
    };
    let removed = |ids: &[u32]| -> String {
        match ids {
            [] => String::new(),
            ids => format!(
                " removed {}",
                ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
            ),
        }
    };
    let fourcc = |c: &[u8; 4]| escape(c);
    let id = || {
        resolved
            .id
            .map_or_else(|| "-".to_owned(), |id| id.to_string())
    };
    let retired = || {
        resolved.retired.map_or_else(String::new, |old| {
            format!(" (retired id {old}, replaced = new-id)")
        })
    };
    Some(match (request, response) {
        (Request::Add { .. } | Request::AddPath { .. }, Response::Object(o)) if !o.created => {
            match &resolved.moved {
                // The move rule followed a move made outside deskd.
                Some((named, was, Some(at))) if *named == o.id => format!(
                    "move id {} from {} to {} (found by its inode){}",
                    o.id,
                    quoted_path(was),
                    quoted_path(at),
                    retired()
                ),
                _ => return None,
            }
        }
        (Request::Add { parent, name, .. }, Response::Object(o)) => match &o.path {
            Some(p) => format!("add id {} path \"{}\"{}", o.id, escape(p), retired()),
            None => format!(
                "add id {} parent {parent} name \"{}\"{}",
                o.id,
                escape(name),
                retired()
            ),
        },
        (Request::AddPath { path, .. }, Response::Object(o)) => {
            format!(
                "add id {} path {}{}",
                o.id,
                quoted_client_path(path),
                retired()
            )
        }
        (Request::Rename { id, .. }, Response::Removed(ids)) => {
            format!("rename id {id} to {}{}", path(), removed(ids))
        }
        (Request::RenamePath { from, to, .. }, Response::Removed(ids)) => format!(
            "rename id {} path {} to {}{}",
            id(),
            quoted_client_path(from),
            quoted_client_path(to),
            removed(ids)
        ),
        (Request::Delete { id, .. }, Response::Removed(ids)) => {
            format!("delete id {id} path {}{}", path(), removed(ids))
        }
        (Request::DeletePath { .. }, Response::Removed(ids)) if ids.is_empty() => return None,
        (Request::DeletePath { path, .. }, Response::Removed(ids)) => format!(
            "delete id {} path {}{}",
            id(),
            quoted_client_path(path),
            removed(ids)
        ),
        (
            Request::SetInfo {
                id,
                type_code,
                creator,
                flags,
                ..
            },
            _,
        ) => {
            let mut what = String::new();
            if let Some(t) = type_code {
                let _ = write!(what, " type \"{}\"", fourcc(t));
            }
            if let Some(c) = creator {
                let _ = write!(what, " creator \"{}\"", fourcc(c));
            }
            if let Some(f) = flags {
                let _ = write!(what, " flags {f:#06x}");
            }
            format!("set info id {id} path {}{what}", path())
        }
        (Request::CommentSet { id, text, .. }, _) => {
            format!("set comment id {id} path {} ({} bytes)", path(), text.len())
        }
        (Request::CommentRemove { id, .. }, _) => {
            format!("remove comment id {id} path {}", path())
        }
        (
            Request::ApplAdd {
                creator, app_id, ..
            },
            _,
        ) => format!(
            "add APPL creator \"{}\" app id {app_id} path {}",
            fourcc(creator),
            path()
        ),
        (
            Request::ApplRemove {
                creator, app_id, ..
            },
            _,
        ) => format!(
            "remove APPL creator \"{}\" app id {app_id} path {}",
            fourcc(creator),
            path()
        ),
        (
            Request::IconAdd {
                creator,
                type_code,
                itype,
                ..
            },
            _,
        ) => format!(
            "add icon creator \"{}\" type \"{}\" itype {itype}",
            fourcc(creator),
            fourcc(type_code)
        ),
        _ => return None,
    })
}

/// What the audit thread is handed.
enum Message {
    /// `who` did `what` on the volume at `root` (escaped already).
    Line {
        who: Arc<str>,
        root: Arc<str>,
        what: String,
    },
    /// Answer once every line handed over before is written.
    Drain(Sender<()>),
}

/// Lines waiting for the audit thread at most; then the writer waits. With names and paths cut
/// at 1,024 characters a line is at most a few KB, so this bounds the queue to tens of MB.
const QUEUE_LEN: usize = 1 << 13;

/// The audit thread's queue, started with the first line.
fn queue() -> &'static Sender<Message> {
    static QUEUE: OnceLock<Sender<Message>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::bounded::<Message>(QUEUE_LEN);
        // Without the thread the receiver is dropped here, and every line is written by its
        // caller instead (see `hand_over`).
        let _ = std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || {
                let take = |message| match message {
                    Message::Line { who, root, what } => emit(&who, &root, &what),
                    Message::Drain(done) => {
                        let _ = done.send(());
                    }
                };
                // Each line is written as soon as it comes: a line gathered for a few ms
                // before its write was lost at a `kill -9` in about half the tries (the
                // hostile review of stop 39), for a futex wake per line saved.
                rx.iter().for_each(take);
            });
        tx
    })
}

fn emit(who: &str, root: &str, what: &str) {
    tracing::info!(target: TARGET, "{who} on {root}: {what}");
}

/// The volume root as audit lines name it.
pub(crate) fn root_text(root: &std::path::Path) -> Arc<str> {
    escape(root.as_os_str().as_encoded_bytes()).into()
}

/// Hand a line to the audit thread (waiting while its queue is full); written here when there
/// is no audit thread.
fn hand_over(who: Arc<str>, root: Arc<str>, what: String) {
    let line = Message::Line { who, root, what };
    let line = match queue().try_send(line) {
        Ok(()) => return,
        Err(TrySendError::Full(line)) => match queue().send(line) {
            Ok(()) => return,
            Err(e) => e.into_inner(),
        },
        Err(TrySendError::Disconnected(line)) => line,
    };
    if let Message::Line { who, root, what } = line {
        emit(&who, &root, &what);
    }
}

/// Log that `who` did `what` on the volume at `root` (a committed write's line, handed over
/// right after its batch's replies were sent, by the thread that committed it).
pub(crate) fn committed(who: Arc<str>, root: Arc<str>, what: String) {
    hand_over(who, root, what);
}

/// Log one audit line: `who` did `what` on the volume at `root` (admin verbs, rebuilds,
/// reloads: in order with the writes' lines handed over before).
pub(crate) fn log(who: &str, root: &std::path::Path, what: &str) {
    if enabled() {
        hand_over(who.into(), root_text(root), what.to_owned());
    }
}

/// Wait (5 s at most) until every line handed over so far is written: a clean stop loses none.
pub(crate) fn drain() {
    let (done, wait) = crossbeam_channel::bounded(1);
    if queue().send(Message::Drain(done)).is_ok() {
        let _ = wait.recv_timeout(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_name_is_cut_and_says_how_much_was_left_out() {
        let name = vec![0x1bu8; 2000];
        let shown = escape(&name);
        // Each escape byte shows as 6 characters: the text stops at MAX_SHOWN of them.
        assert!(shown.len() <= MAX_SHOWN + 32, "{}", shown.len());
        assert!(shown.ends_with("…(2000 bytes in all)"), "{shown}");
        let plain = escape(&[b'a'; 2000]);
        let kept = plain
            .strip_suffix("…(2000 bytes in all)")
            .expect("says how long");
        assert_eq!(kept.len(), MAX_LOGGED);
        assert_eq!(escape(b"short"), "short");
    }

    #[test]
    fn names_cannot_break_a_line_or_hide_bytes() {
        assert_eq!(
            escape(b"x\n2026-01-01T00:00:00Z  INFO fake"),
            "x\\n2026-01-01T00:00:00Z  INFO fake"
        );
        assert_eq!(escape(b"a\rb\x1b[31m\t"), "a\\rb\\u{1b}[31m\\t");
        assert_eq!(escape(b"caf\xc3\xa9 \xff\"\\"), "caf\u{e9} \\xff\\\"\\\\");
        assert_eq!(escape("a\u{2028}b".as_bytes()), "a\\u{2028}b");
    }

    #[test]
    fn a_registration_that_created_nothing_is_no_change() {
        let info = deskd_proto::ObjectInfo {
            id: 17,
            parent: 2,
            name: b"f".to_vec(),
            kind: deskd_proto::Kind::File,
            type_code: [0; 4],
            creator: [0; 4],
            flags: 0,
            path: Some(b"d/f".to_vec()),
            created: false,
        };
        let add = Request::AddPath {
            vol: 0,
            path: b"d/f".to_vec(),
            hint: None,
            type_code: None,
            creator: None,
            carried: None,
        };
        let none = Resolved::default();
        assert_eq!(describe(&add, &Response::Object(info.clone()), &none), None);
        let created = deskd_proto::ObjectInfo {
            created: true,
            ..info
        };
        assert_eq!(
            describe(&add, &Response::Object(created), &none).as_deref(),
            Some("add id 17 path \"d/f\"")
        );
    }
}
