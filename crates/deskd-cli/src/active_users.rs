//! The "active users" of a volume as `deskd status` prints them (HELIOS Admin's Active Users):
//! one line per connection in the text output, an array of objects in the JSON. Program names
//! come from `/proc` and were chosen by the client process: control characters are escaped
//! before they reach a terminal.

use deskd_proto::{ClientStatus, VolumeStatus};

use crate::output::ctime_string;

/// `text` with every control character escaped (`\n`, `\u{1b}`), so a program name cannot
/// move the cursor, clear the screen or begin a line of its own.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The user name of `uid`, when the password database has one.
fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// Who one connection is, for a person: `uid 501 (alice) pid 4242 dt` or `tcp 10.0.0.2:5123`.
fn who(c: &ClientStatus) -> String {
    let mut out = match (c.uid, &c.tcp_peer) {
        (_, Some(peer)) => format!("tcp {}", printable(peer)),
        (Some(uid), None) => match user_name(uid) {
            Some(name) => format!("uid {uid} ({})", printable(&name)),
            None => format!("uid {uid}"),
        },
        (None, None) => "uid -".to_owned(),
    };
    if c.tcp_peer.is_none() {
        let pid = c.pid.map_or("-".to_owned(), |p| p.to_string());
        let program = c.program.as_deref().map_or("-".to_owned(), printable);
        out.push_str(&format!(" pid {pid} {program}"));
    }
    out
}

/// The `active users:` block of one volume in `deskd status`'s text output.
pub fn text_lines(s: &VolumeStatus) -> Vec<String> {
    let mut lines = vec![match s.hidden_clients {
        0 => format!("  active users: {}", s.clients.len()),
        n => format!(
            "  active users: {} ({n} of other users not shown: root or the volume owner sees them)",
            s.clients.len() as u64 + u64::from(n)
        ),
    }];
    for c in &s.clients {
        let mut line = format!("    {}  since {}", who(c), ctime_string(c.since));
        if c.asker {
            line.push_str("  (this request)");
        }
        lines.push(line);
    }
    lines
}

/// The `clients` array of one volume in `deskd status --json`.
pub fn json(s: &VolumeStatus) -> serde_json::Value {
    s.clients
        .iter()
        .map(|c| {
            serde_json::json!({
                "uid": c.uid,
                "user": c.uid.and_then(user_name),
                "pid": c.pid,
                "program": c.program,
                "since": c.since,
                "tcp_peer": c.tcp_peer,
                "this_request": c.asker,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_name_cannot_reach_the_terminal_raw() {
        assert_eq!(printable("x\n\u{1b}[2Jy"), "x\\n\\u{1b}[2Jy");
        let c = ClientStatus {
            uid: Some(0),
            pid: None,
            program: Some("evil\rname".into()),
            since: 0,
            tcp_peer: None,
            asker: false,
        };
        assert!(who(&c).ends_with("pid - evil\\rname"), "{}", who(&c));
    }
}
