//! Connection limits: how many Unix-socket connections are open, in all and per uid, and how
//! long a started frame may take to arrive.
//!
//! Every connection costs a thread and descriptors, and anyone may connect to the socket, so
//! the count is bounded: at most `max_connections` in all and `max_connections_per_uid` per
//! uid. Root and the server's own uid are not held to the per-uid limit and have [`RESERVE`]
//! slots beyond `max_connections`, so a flood by other users never locks out an
//! administrator's `dt` or the Netatalk bridge. A connection over a limit is answered with a
//! handshake status that says which limit, then closed; the log says so at most every 10 s.
//! All of it changes on a SIGHUP.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::Limits;

pub use deskd_proto::ratelimit::RateLimited;

/// Slots beyond `max_connections` that only root and the server's own uid may take.
pub const RESERVE: usize = 32;

/// Connections one privileged process may hold and still take a reserve slot: a root service
/// that holds many connections (the Netatalk bridge, one per afpd connection, which any local
/// user can make it open) cannot use up the reserve an administrator's `dt` needs.
pub const RESERVE_PER_PROCESS: usize = 4;

/// Which limit turned a connection away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The uid holds `max_connections_per_uid` connections.
    PerUid { uid: u32, max: usize },
    /// `max_connections` (with the reserve, for the privileged) are open.
    Total { max: usize },
}

impl Refusal {
    /// The handshake status that tells the client.
    pub fn status(self) -> u16 {
        match self {
            Refusal::PerUid { .. } => deskd_proto::transport::STATUS_TOO_MANY_OF_USER,
            Refusal::Total { .. } => deskd_proto::transport::STATUS_TOO_MANY,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::PerUid { uid, max } => write!(
                f,
                "uid {uid} holds {max} connections (max_connections_per_uid)"
            ),
            Refusal::Total { max } => {
                write!(f, "{max} connections are open (max_connections)")
            }
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_uid: HashMap<u32, usize>,
    /// Privileged connections per peer process (for [`RESERVE_PER_PROCESS`]).
    privileged_per_pid: HashMap<i32, usize>,
}

/// One less under `key`; the entry goes at zero.
fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

/// The limits in force and what is open now; shared by the accept threads and connections.
pub struct ConnectionLimits {
    max_connections: AtomicUsize,
    max_per_uid: AtomicUsize,
    frame_timeout_ms: AtomicU64,
    /// The uid the server runs as: privileged like root.
    server_uid: u32,
    open: Mutex<Counts>,
}

/// One Unix-socket connection counted while it lives.
pub struct UnixSlot {
    limits: Arc<ConnectionLimits>,
    uid: u32,
    /// The peer process, when privileged.
    privileged_pid: Option<i32>,
}

impl Drop for UnixSlot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap();
        open.total -= 1;
        release(&mut open.per_uid, &self.uid);
        if let Some(pid) = self.privileged_pid {
            release(&mut open.privileged_per_pid, &pid);
        }
    }
}

impl ConnectionLimits {
    pub fn new(limits: Limits, server_uid: u32) -> ConnectionLimits {
        let new = ConnectionLimits {
            max_connections: AtomicUsize::new(0),
            max_per_uid: AtomicUsize::new(0),
            frame_timeout_ms: AtomicU64::new(0),
            server_uid,
            open: Mutex::new(Counts::default()),
        };
        new.set(limits);
        new
    }

    /// Take new limits (a reload). Connections already open stay open.
    pub fn set(&self, limits: Limits) {
        self.max_connections
            .store(limits.max_connections, Ordering::SeqCst);
        self.max_per_uid
            .store(limits.max_connections_per_uid, Ordering::SeqCst);
        self.frame_timeout_ms
            .store(limits.frame_timeout.as_millis() as u64, Ordering::SeqCst);
    }

    /// How long a started frame, or the handshake, may take.
    pub fn frame_timeout(&self) -> Duration {
        Duration::from_millis(self.frame_timeout_ms.load(Ordering::SeqCst))
    }

    /// Whether `uid` is root or the server's own uid.
    pub fn is_privileged(&self, uid: u32) -> bool {
        uid == 0 || uid == self.server_uid
    }

    /// A slot for one more connection of process `pid` of `uid` (None when the kernel would
    /// not say: counted under an uid no one has), or which limit refuses it.
    pub fn admit(self: &Arc<Self>, uid: Option<u32>, pid: i32) -> Result<UnixSlot, Refusal> {
        let uid = uid.unwrap_or(u32::MAX);
        let max = self.max_connections.load(Ordering::SeqCst);
        let per_uid = self.max_per_uid.load(Ordering::SeqCst);
        let privileged = self.is_privileged(uid);
        let mut open = self.open.lock().unwrap();
        if privileged {
            // The reserve is for processes with few connections (an administrator's tools).
            let of_process = open.privileged_per_pid.get(&pid).copied().unwrap_or(0);
            let limit = if of_process < RESERVE_PER_PROCESS {
                max + RESERVE
            } else {
                max
            };
            if open.total >= limit {
                return Err(Refusal::Total { max: limit });
            }
        } else {
            if open.per_uid.get(&uid).copied().unwrap_or(0) >= per_uid {
                return Err(Refusal::PerUid { uid, max: per_uid });
            }
            if open.total >= max {
                return Err(Refusal::Total { max });
            }
        }
        open.total += 1;
        *open.per_uid.entry(uid).or_default() += 1;
        if privileged {
            *open.privileged_per_pid.entry(pid).or_default() += 1;
        }
        Ok(UnixSlot {
            limits: self.clone(),
            uid,
            privileged_pid: privileged.then_some(pid),
        })
    }

    /// Unix-socket connections open now.
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.open.lock().unwrap().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_uid: usize) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits::new(
            Limits {
                max_connections: total,
                max_connections_per_uid: per_uid,
                frame_timeout: Duration::from_secs(1),
            },
            999,
        ))
    }

    #[test]
    fn one_uid_cannot_take_every_slot() {
        let l = limits(5, 2);
        let a: Vec<_> = (0..2).map(|_| l.admit(Some(1000), 1).unwrap()).collect();
        assert_eq!(
            l.admit(Some(1000), 1).err(),
            Some(Refusal::PerUid { uid: 1000, max: 2 })
        );
        let b: Vec<_> = (0..2).map(|_| l.admit(Some(1001), 2).unwrap()).collect();
        let c = l.admit(Some(1002), 3).unwrap();
        assert_eq!(
            l.admit(Some(1003), 4).err(),
            Some(Refusal::Total { max: 5 })
        );
        drop(c);
        let _c = l.admit(Some(1003), 4).unwrap();
        drop((a, b));
        assert_eq!(l.open(), 1);
    }

    #[test]
    fn root_and_the_server_uid_have_a_reserve() {
        let l = limits(2, 2);
        let _others: Vec<_> = [1000, 1001].map(|u| l.admit(Some(u), 7).unwrap()).into();
        // Many processes of root and the server's uid, a few connections each.
        let privileged: Vec<_> = (0..RESERVE)
            .map(|i| {
                let uid = if i % 2 == 0 { 0 } else { 999 };
                l.admit(Some(uid), 100 + (i / 2) as i32).unwrap()
            })
            .collect();
        assert_eq!(
            l.admit(Some(0), 1).err(),
            Some(Refusal::Total { max: 2 + RESERVE })
        );
        drop(privileged);
        assert_eq!(l.admit(None, 8).err(), Some(Refusal::Total { max: 2 }));
    }

    #[test]
    fn one_root_process_cannot_use_up_the_reserve() {
        let l = limits(2, 2);
        let _others: Vec<_> = [1000, 1001].map(|u| l.admit(Some(u), 7).unwrap()).into();
        let bridge: Vec<_> = (0..RESERVE_PER_PROCESS)
            .map(|_| l.admit(Some(0), 42).unwrap())
            .collect();
        assert_eq!(l.admit(Some(0), 42).err(), Some(Refusal::Total { max: 2 }));
        // An administrator's dt, another process, still gets in.
        let _dt = l.admit(Some(0), 43).unwrap();
        drop(bridge);
    }

    #[test]
    fn a_reload_changes_the_limits() {
        let l = limits(1, 1);
        let _a = l.admit(Some(5), 5).unwrap();
        assert!(l.admit(Some(6), 6).is_err());
        l.set(Limits {
            max_connections: 3,
            max_connections_per_uid: 2,
            frame_timeout: Duration::from_secs(7),
        });
        let _b = l.admit(Some(5), 5).unwrap();
        assert_eq!(l.frame_timeout(), Duration::from_secs(7));
    }
}
