//! Who may choose an ID (docs/security.md, "IDs under attack").
//!
//! A hint asks for a particular ID for a new object. Honoured for anyone, it lets one request
//! move the counter to the end of the 32-bit space (every later create fails) or hand a deleted
//! object's ID, and so its old aliases, to another file. Hints therefore count only from peers
//! who could rebuild or restore the volume anyway: root, the server's own uid and the volume
//! owner on the Unix socket, and TCP clients only when `tcp_admin = true`. Everyone else's hint
//! is dropped before the request is queued, so the object gets a fresh ID from the counter.
//!
//! A dropped hint of `Add`/`AddPath` is kept as the request's `carried` ID: that only lets
//! deskd follow a move made outside it (the record of that ID has the object's own dev/ino and
//! is gone from its place, apply/register.rs), which no peer can use to take another's ID.

use deskd_proto::Request;

/// Whether a peer's hints are honoured. `uid` is the Unix peer's uid (`None` over TCP or when
/// the kernel would not say), `owner_uid` the volume owner, `tcp_admin` the `[server]` setting.
pub fn hints_trusted(uid: Option<u32>, tcp: bool, owner_uid: u32, tcp_admin: bool) -> bool {
    if tcp {
        return tcp_admin;
    }
    let me = rustix::process::geteuid().as_raw();
    uid.is_some_and(|uid| uid == 0 || uid == me || uid == owner_uid)
}

/// Drop the hint of a request (a new object then gets the next ID from the counter); an
/// `Add`'s or `AddPath`'s becomes its `carried` ID unless it has one. Returns whether there
/// was a hint.
pub fn drop_hint(request: &mut Request) -> bool {
    match request {
        Request::Add { hint, carried, .. } | Request::AddPath { hint, carried, .. } => {
            let dropped = hint.take();
            if carried.is_none() {
                *carried = dropped;
            }
            dropped.is_some()
        }
        Request::RenamePath { hint, .. } => hint.take().is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_admins_choose_ids() {
        assert!(hints_trusted(Some(0), false, 1000, false));
        assert!(hints_trusted(Some(1000), false, 1000, false));
        assert!(!hints_trusted(Some(65534), false, 1000, false));
        assert!(!hints_trusted(None, false, 1000, false));
        assert!(!hints_trusted(None, true, 1000, false));
        assert!(hints_trusted(None, true, 1000, true));
    }

    #[test]
    fn every_hinted_request_loses_its_hint() {
        let mut add = Request::AddPath {
            vol: 0,
            path: b"a".to_vec(),
            hint: Some(0xFFFF_FFF0),
            type_code: None,
            creator: None,
            carried: None,
        };
        assert!(drop_hint(&mut add));
        assert!(matches!(
            add,
            Request::AddPath {
                hint: None,
                carried: Some(0xFFFF_FFF0),
                ..
            }
        ));
        assert!(!drop_hint(&mut add));
    }
}
