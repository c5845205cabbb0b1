//! The live connections ("Active Users", as HELIOS Admin shows them): who is at the other end
//! of each (uid and pid from the kernel, the program name, when it connected, the TCP peer) and
//! which volumes it has used. A connection is entered once its handshake is over and leaves
//! when its [`Registration`] is dropped, which every way out of the connection thread does
//! (end of input, an error, a frame timeout, shutdown, a panic). Its size is bounded by the
//! connection limits, since every entry is an open connection.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use deskd_proto::ClientStatus;

use crate::audit;
use crate::figures::{Latencies, RequestFigures, RequestKey};

/// One open connection.
#[derive(Debug)]
pub(crate) struct Client {
    /// The local peer's uid (`SO_PEERCRED`); None over TCP or when the kernel would not say.
    pub(crate) uid: Option<u32>,
    /// The local peer's pid; None over TCP and for a peer in a pid namespace this one cannot
    /// see (the kernel reports 0).
    pub(crate) pid: Option<u32>,
    /// `/proc/PID/comm`, read once at accept: the process chose it, so it is untrusted text.
    pub(crate) program: Option<String>,
    /// Unix time the connection was accepted.
    pub(crate) since: i64,
    /// The TCP peer.
    pub(crate) tcp: Option<SocketAddr>,
    /// Who this is, for the log (`uid 501 pid 4242 (dt)`, `tcp 10.0.0.2:5123`), made once so
    /// an audit line costs no formatting of it; control characters already escaped.
    pub(crate) who: Arc<str>,
    /// Volume handles this connection has used, in the order first used.
    volumes: Mutex<Vec<u32>>,
    /// The requests it made, by volume and kind, with their latencies (`/metrics`).
    pub(crate) requests: RequestFigures,
    /// A connection from inside the server's own process (the afpd CNID listener).
    pub(crate) in_process: bool,
}

impl Client {
    /// A local peer with `uid` and `pid` (0: unknown), its program read from `/proc`.
    pub(crate) fn local(uid: Option<u32>, pid: i32) -> Client {
        let pid = u32::try_from(pid).ok().filter(|&p| p != 0);
        let program = pid.and_then(program_of);
        let who = format!(
            "uid {} pid {} ({})",
            uid.map_or("-".into(), |u| u.to_string()),
            pid.map_or("-".into(), |p| p.to_string()),
            audit::escape(program.as_deref().unwrap_or("-").as_bytes()),
        );
        Client::new(uid, pid, program, None, who.into())
    }

    /// A connection from inside this process for one of its own front ends (the afpd CNID
    /// listener), acting as the server's own user, shown as `program` (`afpd PEER user NAME`:
    /// the name is afpd's, untrusted, so escaped here for the log and kept as text for status).
    pub(crate) fn in_process(uid: u32, program: &str) -> Client {
        let pid = std::process::id();
        let who = format!(
            "uid {uid} pid {pid} ({})",
            audit::escape(program.as_bytes())
        );
        let mut client = Client::new(
            Some(uid),
            Some(pid),
            Some(program.to_owned()),
            None,
            who.into(),
        );
        client.in_process = true;
        client
    }

    /// A TCP peer (it proved it holds the token; the handshake names no user).
    pub(crate) fn tcp(addr: SocketAddr) -> Client {
        Client::new(None, None, None, Some(addr), format!("tcp {addr}").into())
    }

    fn new(
        uid: Option<u32>,
        pid: Option<u32>,
        program: Option<String>,
        tcp: Option<SocketAddr>,
        who: Arc<str>,
    ) -> Client {
        Client {
            uid,
            pid,
            program,
            since: deskd_db::now_unix(),
            tcp,
            who,
            volumes: Mutex::new(Vec::new()),
            requests: RequestFigures::default(),
            in_process: false,
        }
    }

    /// Record that the connection used volume `vol` (cheap when it already did).
    pub(crate) fn used(&self, vol: u32) {
        let mut volumes = self.volumes.lock().unwrap();
        if !volumes.contains(&vol) {
            volumes.push(vol);
        }
    }

    fn has_used(&self, vol: u32) -> bool {
        self.volumes.lock().unwrap().contains(&vol)
    }

    fn status(&self, asker: bool) -> ClientStatus {
        ClientStatus {
            uid: self.uid,
            pid: self.pid,
            program: self.program.clone(),
            since: self.since,
            tcp_peer: self.tcp.map(|a| a.to_string()),
            asker,
        }
    }
}

/// The program name of process `pid` (`/proc/PID/comm`, at most 15 bytes, chosen by the
/// process itself), or None when it cannot be read (gone already, `/proc` hidden).
fn program_of(pid: u32) -> Option<String> {
    let comm = std::fs::read(format!("/proc/{pid}/comm")).ok()?;
    let comm = comm.strip_suffix(b"\n").unwrap_or(&comm);
    Some(String::from_utf8_lossy(comm).into_owned())
}

/// Every open connection, by a number given at registration (so in the order they came).
#[derive(Debug, Default)]
pub(crate) struct Clients {
    open: Mutex<BTreeMap<u64, Arc<Client>>>,
    next: AtomicU64,
    /// The requests of connections already closed, by uid (None: TCP or unknown), volume and
    /// kind. Bounded: uids times served handles times kinds.
    closed: Mutex<HashMap<(Option<u32>, RequestKey), Latencies>>,
}

/// A connection's place in [`Clients`]; dropping it removes the connection.
pub(crate) struct Registration {
    clients: Arc<Clients>,
    key: u64,
    pub(crate) client: Arc<Client>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Both locks at once (open, then closed, as a scrape takes them): a scrape sees the
        // connection's requests either open or closed, never neither nor both, so no counter
        // seems to go back.
        let mut open = self.clients.open.lock().unwrap();
        let mut closed = self.clients.closed.lock().unwrap();
        let uid = self.client.uid;
        self.client.requests.each(|key, cell| {
            closed.entry((uid, key)).or_default().add(cell);
        });
        open.remove(&self.key);
    }
}

/// What a peer is shown of one volume's clients.
pub(crate) struct Shown {
    pub(crate) clients: Vec<ClientStatus>,
    pub(crate) hidden: u32,
}

impl Clients {
    /// Enter `client` until the returned registration is dropped.
    pub(crate) fn register(self: &Arc<Self>, client: Client) -> Registration {
        let key = self.next.fetch_add(1, Ordering::SeqCst);
        let client = Arc::new(client);
        self.open.lock().unwrap().insert(key, client.clone());
        Registration {
            clients: self.clone(),
            key,
            client,
        }
    }

    /// The clients of volume `vol` the asker may see: all of them (`see_all`: a trusted peer
    /// or the volume's admin), else only those of its own uid, the others counted.
    pub(crate) fn of_volume(&self, vol: u32, asker: &Client, see_all: bool) -> Shown {
        let open = self.open.lock().unwrap();
        let mut shown = Shown {
            clients: Vec::new(),
            hidden: 0,
        };
        for client in open.values().filter(|c| c.has_used(vol)) {
            let is_asker = std::ptr::eq(Arc::as_ptr(client), asker);
            if see_all || is_asker || (client.uid.is_some() && client.uid == asker.uid) {
                shown.clients.push(client.status(is_asker));
            } else {
                shown.hidden += 1;
            }
        }
        shown
    }

    /// The requests of every connection, open or closed, whose uid `counts` (None: a TCP
    /// connection or an unknown uid) for the volume, summed by volume and kind.
    pub(crate) fn requests(
        &self,
        counts: impl Fn(Option<u32>, u32) -> bool,
    ) -> HashMap<RequestKey, Latencies> {
        let mut sum: HashMap<RequestKey, Latencies> = HashMap::new();
        // Open, then closed, both held (as [`Registration`]'s drop takes them).
        let open = self.open.lock().unwrap();
        for client in open.values() {
            client.requests.each(|key, cell| {
                if counts(client.uid, key.0) {
                    sum.entry(key).or_default().add(cell);
                }
            });
        }
        for (&(uid, key), cell) in self.closed.lock().unwrap().iter() {
            if counts(uid, key.0) {
                sum.entry(key).or_default().add(cell);
            }
        }
        sum
    }

    /// Open connections per transport: (local socket, TCP, in-process).
    pub(crate) fn per_transport(&self) -> (u64, u64, u64) {
        let open = self.open.lock().unwrap();
        let tcp = open.values().filter(|c| c.tcp.is_some()).count() as u64;
        let in_process = open.values().filter(|c| c.in_process).count() as u64;
        (open.len() as u64 - tcp - in_process, tcp, in_process)
    }

    /// Open connections that have used volume `vol` (`Status` shows them or counts them).
    pub(crate) fn of_volume_count(&self, vol: u32) -> u64 {
        let open = self.open.lock().unwrap();
        open.values().filter(|c| c.has_used(vol)).count() as u64
    }

    /// How many connections are open (tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.open.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_that_may_not_see_all_gets_its_own_uid_and_a_count() {
        let clients = Arc::new(Clients::default());
        let me = clients.register(Client::local(Some(65534), 0));
        let other = clients.register(Client::local(Some(1000), 0));
        let tcp = clients.register(Client::tcp("127.0.0.1:9".parse().unwrap()));
        for r in [&me, &other, &tcp] {
            r.client.used(0);
        }
        let shown = clients.of_volume(0, &me.client, false);
        assert_eq!(shown.clients.len(), 1);
        assert!(shown.clients[0].asker);
        assert_eq!(shown.clients[0].uid, Some(65534));
        assert_eq!(shown.hidden, 2);
        let all = clients.of_volume(0, &other.client, true);
        assert_eq!(all.clients.len(), 3);
        assert_eq!(all.hidden, 0);
        assert_eq!(clients.of_volume(1, &me.client, true).clients.len(), 0);
        drop(other);
        assert_eq!(clients.len(), 2);
    }

    #[test]
    fn pid_zero_is_unknown_and_names_no_program() {
        let c = Client::local(Some(5), 0);
        assert_eq!((c.pid, c.program.as_deref()), (None, None));
        assert_eq!(&*c.who, "uid 5 pid - (-)");
        let me = Client::local(Some(0), std::process::id() as i32);
        assert!(me.program.is_some());
    }
}
