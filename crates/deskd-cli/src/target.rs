//! Where a command-line path lies (in which volume, if any) and the session with deskd that
//! keeps the desktop, the resource files and the xattr mirror right for it.
//!
//! A path is in a volume when one of its (lexical) ancestors holds a `.Desktop`. Inside a
//! volume, the path is resolved physically by [`deskd_volume::Volume`], which refuses `..`
//! escapes, symlinks that leave the volume and protected names.

use crate::connection::ServerAddress;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use deskd_client::{Client, ClientError, ErrorCode, ObjectInfo, Request, Response, VolumeInfo};
use deskd_volume::rsrc::{self, ResourceHeader};
use deskd_volume::Volume;

/// A path inside a volume.
#[derive(Debug, Clone)]
pub struct InVolume {
    /// The volume root as found (lexically).
    pub root: PathBuf,
    pub volume: Volume,
    /// Physical names from the root down (empty for the root).
    pub components: Vec<Vec<u8>>,
}

impl InVolume {
    /// The path relative to the root, as sent to deskd.
    pub fn rel(&self) -> Vec<u8> {
        self.components.join(&b'/')
    }

    /// The absolute physical path.
    pub fn path(&self) -> PathBuf {
        self.volume.path_of(&self.components)
    }

    /// The path of this object's resource file.
    pub fn rsrc_path(&self) -> PathBuf {
        match self.components.split_last() {
            None => rsrc::root_rsrc_path(self.volume.root()),
            Some((name, parent)) => self
                .volume
                .path_of(parent)
                .join(rsrc::RSRC_DIR)
                .join(OsStr::from_bytes(name)),
        }
    }

    /// The same volume, another list of components.
    pub fn with_components(&self, components: Vec<Vec<u8>>) -> InVolume {
        InVolume {
            root: self.root.clone(),
            volume: self.volume.clone(),
            components,
        }
    }

    /// The child `name` of this directory.
    pub fn child(&self, name: &[u8]) -> InVolume {
        let mut c = self.components.clone();
        c.push(name.to_vec());
        self.with_components(c)
    }

    /// True when both name the same volume.
    pub fn same_volume(&self, other: &InVolume) -> bool {
        self.volume.root() == other.volume.root()
    }

    /// How the user sees this path.
    pub fn shown(&self) -> String {
        self.path().display().to_string()
    }
}

/// Where a command-line path lies.
#[derive(Debug, Clone)]
pub enum Place {
    /// Not in any volume: the plain command's behaviour.
    Outside(PathBuf),
    Inside(InVolume),
}

impl Place {
    /// The absolute path of a place a verb may remove or replace; a volume root is refused with
    /// "`shown`: `refusal`".
    pub fn abs_unless_root(&self, shown: &Path, refusal: &str) -> Result<PathBuf> {
        match self {
            Place::Outside(abs) => Ok(abs.clone()),
            Place::Inside(iv) if iv.components.is_empty() => {
                Err(anyhow!("{}: {refusal}", shown.display()))
            }
            Place::Inside(iv) => Ok(iv.path()),
        }
    }
}

/// The highest folder above `abs` (not `abs` itself, which a verb may act on without
/// searching it) that the user may not search, if any.
fn unsearchable_above(abs: &Path) -> Option<PathBuf> {
    abs.ancestors()
        .skip(1)
        .filter(|dir| {
            std::fs::symlink_metadata(dir.join(deskd_volume::DESKTOP_FILE))
                .is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
        })
        .last()
        .map(Path::to_path_buf)
}

/// Why `path` was refused, without the name the refusal starts with when `path` ends with
/// it already (`esc/x: path leaves the volume`, not `esc/x: esc/x: …`); a name deeper in
/// the path (`/v/.rsrc/x: .rsrc: protected name …`) is kept, since it says which part.
fn refusal_for(path: &Path, e: &deskd_volume::VolumeError) -> String {
    use deskd_volume::VolumeError::{Escape, InvalidName, Protected};
    let text = e.to_string();
    let (Escape(named) | Protected(named) | InvalidName(named, _)) = e else {
        return text;
    };
    if !path.as_os_str().as_bytes().ends_with(named.as_bytes()) {
        return text;
    }
    match text
        .strip_prefix(named.as_str())
        .and_then(|t| t.strip_prefix(": "))
    {
        Some(reason) => reason.to_string(),
        None => text,
    }
}

/// Classify `path`. Errors for paths that are in a volume but escape it or use protected names.
/// Only `.Desktop` files say where volumes are here; [`Session::place`] also asks the server.
pub fn place(path: &Path) -> Result<Place> {
    let abs = deskd_volume::absolute(path)?;
    let Some(root) = deskd_volume::locate_volume(&abs) else {
        if let Some(dir) = unsearchable_above(&abs) {
            // The volume may be there, behind a folder the user may not search: saying
            // "not in a deskd volume" would be wrong, and the path cannot be used anyway.
            bail!(
                "{}: permission denied (cannot search {})",
                path.display(),
                dir.display()
            );
        }
        return Ok(Place::Outside(abs));
    };
    inside(path, &abs, root)
}

/// `path` (absolute: `abs`) in the volume whose root, as found above it, is `root`.
fn inside(path: &Path, abs: &Path, root: PathBuf) -> Result<Place> {
    // The error names the root already.
    let volume = Volume::new(&root).context("cannot open volume")?;
    let rel = abs.strip_prefix(&root).expect("volume root is an ancestor");
    let resolved = volume
        .resolve_relative(rel.as_os_str().as_bytes())
        .map_err(|e| anyhow!("{}: {}", path.display(), refusal_for(path, &e)))?;
    Ok(Place::Inside(InVolume {
        root,
        volume,
        components: resolved
            .components
            .iter()
            .map(|c| c.as_bytes().to_vec())
            .collect(),
    }))
}

/// Whether the file system holding `path` is mounted read-only.
fn on_read_only_fs(path: &Path) -> bool {
    rustix::fs::statvfs(path)
        .is_ok_and(|st| st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
}

/// A lazily opened connection to deskd and the volume handles it gave out.
pub struct Session {
    server: ServerAddress,
    client: Option<Client>,
    handles: HashMap<PathBuf, VolumeInfo>,
    /// The roots the server serves, once asked ([`Session::place`]); empty when no server
    /// answered.
    served: Option<Vec<VolumeInfo>>,
    /// The configured roots the server refused, once asked, canonical ([`Session::place`]).
    refused: Option<Vec<(PathBuf, deskd_proto::VolumeNotServed)>>,
    /// The verb, when it only looks (`info`, `ls`…): with no deskd answering, its error says
    /// what it needs deskd for, not that only read-only access is left (which is for verbs
    /// that change something).
    reading_verb: Option<&'static str>,
    /// Set while a verb that changes something registers what it is about to change (`dt
    /// set`): nothing is on disk yet, so a refusal is not a change "on disk but NOT recorded".
    before_any_change: bool,
}

/// Whether dt sends `request` after it changed the disk (registering what it made, telling
/// deskd of a rename or removal it did), when the verb changes anything.
fn changes_disk_first(request: &Request) -> bool {
    matches!(
        request,
        Request::AddPath { .. } | Request::RenamePath { .. } | Request::DeletePath { .. }
    )
}

/// The `AddPath` request that registers `iv`: with `use_hints`, the ID its xattr mirror (or else
/// its resource file) carries, and the type and creator its resource file has. Always, as
/// `carried`, the ID the object itself carries (its xattr mirror moves with it; else its
/// resource file's): deskd follows a move made outside it by that ID, never picks one by it.
fn add_request(
    vol: u32,
    iv: &InVolume,
    header: Option<&ResourceHeader>,
    use_hints: bool,
) -> Request {
    // The xattr mirror travels with the inode; the resource file stays with the name when
    // something else moves over it (a plain `mv`), so the mirror says first which object
    // this is.
    let carried = deskd_volume::read_id_xattr(&iv.path())
        .or_else(|| header.map(|h| h.id).filter(|&id| id != 0));
    let hint = if use_hints { carried } else { None };
    let (type_code, creator) = match header {
        Some(h) if h.type_code != [0; 4] || h.creator != [0; 4] => {
            (Some(h.type_code), Some(h.creator))
        }
        _ => (None, None),
    };
    Request::AddPath {
        vol,
        path: iv.rel(),
        hint,
        type_code,
        creator,
        carried,
    }
}

/// The end of a "no deskd" error for a verb that only looks: what it needs deskd for, and
/// the two ways to a deskd that answers.
fn needs_deskd(verb: &str, root: &Path) -> String {
    format!(
        "dt {verb} reads this volume's desktop through deskd: start `deskd serve {}`, or name \
         the socket of the deskd that serves it (--socket, $DESKD_SOCKET)",
        root.display()
    )
}

/// A write refused for want of permission (or on a read-only file system).
fn is_not_permitted(e: &deskd_volume::VolumeError) -> bool {
    matches!(
        e,
        deskd_volume::VolumeError::Io { error, .. }
            if matches!(error.raw_os_error(), Some(libc::EACCES | libc::EPERM | libc::EROFS))
    )
}

/// How long a request that deskd refused with `ShuttingDown` is sent again. deskd gives that
/// answer when it is stopping, or when a reload closed the volume's desktop to reopen it just as
/// the request reached it. Nothing of the request was recorded then, so sending it again is
/// safe, and a reopening takes tens of milliseconds.
const RESEND_FOR: Duration = Duration::from_secs(4);

fn refused_while_closing(e: &ClientError) -> bool {
    e.code() == Some(ErrorCode::ShuttingDown)
}

impl Session {
    pub fn new(server: ServerAddress) -> Session {
        Session {
            server,
            client: None,
            handles: HashMap::new(),
            served: None,
            refused: None,
            reading_verb: None,
            before_any_change: false,
        }
    }

    /// The session of a verb that only looks (`verb`: its name, as the user types it).
    pub fn for_reading(self, verb: &'static str) -> Session {
        Session {
            reading_verb: Some(verb),
            ..self
        }
    }

    /// Classify `path` as [`place`] does; when no `.Desktop` is found above it, ask the server
    /// (once) which of the volumes it serves holds it, the deepest root first: a volume on
    /// read-only media has no `.Desktop` of its own (its desktop is a temporary one). With no
    /// server answering, the path is outside any volume, as before.
    pub fn place(&mut self, path: &Path) -> Result<Place> {
        let found = place(path)?;
        let Place::Outside(abs) = &found else {
            return Ok(found);
        };
        if self.served.is_none() {
            // Quietly: outside volumes dt works without a server.
            let asked = self
                .server
                .connect()
                .ok()
                .and_then(|mut c| c.volumes().ok().map(|v| (c, v)));
            self.served = Some(match asked {
                Some((client, volumes)) => {
                    self.client.get_or_insert(client);
                    volumes
                }
                None => Vec::new(),
            });
        }
        let served = self.served.as_ref().expect("just asked");
        // Canonical ancestors, as the server knows its roots; the first match is the deepest.
        for dir in abs.ancestors() {
            let Ok(canonical) = dir.canonicalize() else {
                continue;
            };
            if let Some(info) = served
                .iter()
                .find(|v| Path::new(OsStr::from_bytes(&v.root)) == canonical)
            {
                self.handles.insert(canonical, info.clone());
                return inside(path, abs, dir.to_path_buf());
            }
        }
        // A configured volume the server refused, whose root holds no `.Desktop` here (a
        // volume moved out of its database whose SQLite desktop is kept on another host's
        // disk): refused as such, not a plain file operation outside any volume (a `dt touch`
        // there made the file and registered nothing, silently: stop 43).
        if self.refused.is_none() {
            let asked = match self.client.as_mut() {
                Some(client) => client.not_served().unwrap_or_default(),
                None => Vec::new(),
            };
            self.refused = Some(
                asked
                    .into_iter()
                    .map(|n| {
                        let root = Path::new(OsStr::from_bytes(&n.root));
                        (
                            root.canonicalize().unwrap_or_else(|_| root.to_path_buf()),
                            n,
                        )
                    })
                    .collect(),
            );
        }
        let refused = self.refused.as_ref().expect("just asked");
        if refused.is_empty() {
            return Ok(found);
        }
        for dir in abs.ancestors() {
            let Ok(canonical) = dir.canonicalize() else {
                continue;
            };
            if let Some((_, n)) = refused.iter().find(|(root, _)| *root == canonical) {
                let shown = canonical.display().to_string();
                bail!(
                    "{shown}: deskd at {} refused this volume: {}; `deskd status` shows whether \
                     it is served now",
                    self.server.endpoint,
                    n.why_past(&shown)
                );
            }
        }
        Ok(found)
    }

    /// A client error as the user reads it. With no deskd answering, a verb that changes
    /// something says only read-only access is possible (HELIOS's words); a verb that only
    /// looks says what it needs deskd for and how to get one.
    fn explain(&self, root: &Path, e: ClientError) -> anyhow::Error {
        let root_shown = root.display();
        match (e, self.reading_verb) {
            (ClientError::Timeout, None) => {
                anyhow!("{root_shown}: deskd: timed out; only read-only access possible")
            }
            (ClientError::Timeout, Some(verb)) => anyhow!(
                "{root_shown}: deskd at {} did not answer within the client timeout (--timeout, \
                 $DESKD_CLIENT_TIMEOUT); {}",
                self.server.endpoint,
                needs_deskd(verb, root)
            ),
            (e @ (ClientError::Connect { .. } | ClientError::Closed), None) => {
                anyhow!("{root_shown}: {e}; only read-only access possible")
            }
            (e @ (ClientError::Connect { .. } | ClientError::Closed), Some(verb)) => {
                anyhow!("{root_shown}: {e}; {}", needs_deskd(verb, root))
            }
            // The server's words carry no prefix of their own: "deskd: " says who refused.
            (ClientError::Server(reply), _) => anyhow!("deskd: {}", reply.message),
            (other, _) => anyhow!("{root_shown}: {other}"),
        }
    }

    fn client(&mut self, root: &Path) -> Result<&mut Client> {
        if self.client.is_none() {
            let c = self.server.connect().map_err(|e| self.explain(root, e))?;
            self.client = Some(c);
        }
        Ok(self.client.as_mut().expect("just set"))
    }

    /// The server's handle for the volume of `iv`.
    pub fn handle(&mut self, iv: &InVolume) -> Result<u32> {
        self.volume_info(iv).map(|v| v.vol)
    }

    fn volume_info(&mut self, iv: &InVolume) -> Result<VolumeInfo> {
        let root = iv.volume.root().to_path_buf();
        if let Some(v) = self.handles.get(&root) {
            return Ok(v.clone());
        }
        let info = self.client(&root)?.open_volume(&root);
        let info = info.map_err(|e| {
            let refused = (e.code() == Some(ErrorCode::NoSuchVolume))
                .then(|| self.client.as_mut().and_then(|c| c.refused_volume(&root)))
                .flatten();
            if let Some(n) = refused {
                // Configured, and refused: why (to root and the volume's owner), and where
                // to look, not "add it to the configuration".
                let shown = root.display().to_string();
                let why = n.why_past(&shown);
                anyhow!(
                    "{shown}: deskd at {} refused this volume: {why}; `deskd status` shows \
                     whether it is served now",
                    self.server.endpoint
                )
            } else if e.code() == Some(ErrorCode::NoSuchVolume) {
                // The server names no path to a peer it does not trust; dt knows it.
                anyhow!(
                    "{}: deskd at {} does not serve this volume: add it to that deskd's volumes \
                     (command line or configuration, then reload), or give the socket of the \
                     deskd that serves it (--socket, $DESKD_SOCKET)",
                    root.display(),
                    self.server.endpoint
                )
            } else {
                self.explain(&root, e)
            }
        })?;
        self.handles.insert(root, info.clone());
        Ok(info)
    }

    /// Send a request about the volume of `iv` (built from its handle) and wait; sent again
    /// for up to `RESEND_FOR` (4 s) while deskd refuses it with `ShuttingDown`.
    pub fn call(&mut self, iv: &InVolume, make: impl FnOnce(u32) -> Request) -> Result<Response> {
        let vol = self.handle(iv)?;
        let root = iv.root.clone();
        let request = make(vol);
        let began = Instant::now();
        // A verb that only looks (`dt info` registering what it shows) changed nothing first.
        let after_disk =
            self.reading_verb.is_none() && !self.before_any_change && changes_disk_first(&request);
        loop {
            match self.client(&root)?.call(request.clone()) {
                Err(e) if refused_while_closing(&e) && began.elapsed() < RESEND_FOR => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                result => return result.map_err(|e| self.explain_write(iv, after_disk, e)),
            }
        }
    }

    /// [`Session::explain`], but a write dt sends after its change on disk (`after_disk`),
    /// refused read-only although dt found the volume writable before it touched the disk
    /// (the database lost in between, the file system filled): the change is on disk and not
    /// in the desktop. Said so, with how the desktop learns it, not "nothing was recorded,
    /// try again" (a retry would find the file there).
    fn explain_write(&self, iv: &InVolume, after_disk: bool, e: ClientError) -> anyhow::Error {
        let checked_writable = self
            .handles
            .get(iv.volume.root())
            .is_some_and(|v| !v.read_only);
        match &e {
            ClientError::Server(reply)
                if after_disk && checked_writable && reply.code == ErrorCode::ReadOnly =>
            {
                let root = iv.volume.root().display();
                // The server's reason, without its root and its "nothing was recorded, try
                // again" (true of the desktop; the disk has the change, and a retry would
                // find it there).
                let message = &reply.message;
                let message = message
                    .strip_prefix(&format!("{root}: "))
                    .unwrap_or(message);
                let message = message
                    .split_once("; nothing was recorded")
                    .map_or(message, |(why, _)| why);
                anyhow!(
                    "{}: changed on disk but NOT recorded in the desktop: the volume became \
                     read-only after dt checked it ({}). The desktop learns the change at the \
                     volume's next rescan (a watched volume) or rebuild: once the volume is \
                     writable again (`deskd status`), run `deskd rebuild {root}` (online)",
                    iv.path().display(),
                    message
                )
            }
            _ => self.explain(iv.volume.root(), e),
        }
    }

    /// Before touching the disk: deskd must serve the volume, and not as read-only.
    pub fn check_writable(&mut self, iv: &InVolume) -> Result<()> {
        let info = self.volume_info(iv)?;
        if info.read_only {
            // The server's reason when it has one (a database unreachable, a full or
            // read-only file system): the generic list named every cause but the database
            // (newcomer review of stop 41). Asked only on this refusal path.
            let root = iv.root.clone();
            let reason = self
                .client(&root)
                .ok()
                .and_then(|c| c.status(Some(info.vol)).ok())
                .and_then(|s| s.into_iter().find(|s| s.vol == info.vol))
                .and_then(|s| s.read_only_reason);
            return Err(match reason {
                Some(why) => anyhow!(
                    "{}: volume is read-only: {why} (`deskd status` shows it)",
                    iv.root.display()
                ),
                None => anyhow!(
                    "{}: volume is read-only (configured read_only or --read-only, or served so \
                     because its file system is read-only or full, or its database is \
                     unreachable: `deskd status` says which)",
                    iv.root.display()
                ),
            });
        }
        Ok(())
    }

    /// On a read-only volume, the object at `iv` if it is registered already: showing it
    /// needs no write (and on a volume served read-only because its file system is full, none
    /// could be made). None on a writable volume.
    pub fn registered_if_read_only(&mut self, iv: &InVolume) -> Result<Option<ObjectInfo>> {
        if !self.volume_info(iv)?.read_only {
            return Ok(None);
        }
        self.lookup(iv)
    }

    /// The registered object at `iv`, if any.
    pub fn lookup(&mut self, iv: &InVolume) -> Result<Option<ObjectInfo>> {
        let rel = iv.rel();
        match self.call(iv, |vol| Request::LookupPath { vol, path: rel })? {
            Response::MaybeObject(o) => Ok(o),
            other => Err(anyhow!("unexpected reply {other:?}")),
        }
    }

    /// [`Session::register`] for a verb that has not changed the disk yet (`dt set` registers
    /// the object before it writes its Mac information): a refusal then says nothing was
    /// changed, not that the disk was.
    pub fn register_before_changing(&mut self, iv: &InVolume) -> Result<ObjectInfo> {
        self.before_any_change = true;
        let registered = self.register(iv, true);
        self.before_any_change = false;
        registered
    }

    /// Register the object at `iv` (an existing path) and keep its resource file and xattr
    /// mirror right. With `use_hints`, an ID from its resource file or xattr is kept if free.
    pub fn register(&mut self, iv: &InVolume, use_hints: bool) -> Result<ObjectInfo> {
        let header = rsrc::read_header(&iv.rsrc_path()).ok().flatten();
        let info = match self.call(iv, |vol| add_request(vol, iv, header.as_ref(), use_hints))? {
            Response::Object(o) => o,
            other => return Err(anyhow!("unexpected reply {other:?}")),
        };
        // Test hook: widen the moment between the server's answer and the resource file, which
        // an online rebuild must not mistake for damage.
        #[cfg(feature = "test-hooks")]
        if let Some(ms) = std::env::var("DESKD_TEST_PAUSE_BEFORE_RECORD_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        self.carry_mac_info(iv, &info, header.as_ref())?;
        crate::at::race_pause("before-record");
        self.write_record(iv, &info, header)?;
        if info.created {
            // Directories registered on the way need their resource files too.
            for depth in 0..iv.components.len() {
                let ancestor = iv.with_components(iv.components[..depth].to_vec());
                if !ancestor.rsrc_path().exists() {
                    let rel = ancestor.rel();
                    if let Response::Object(a) = self.call(&ancestor, |vol| Request::AddPath {
                        vol,
                        path: rel,
                        hint: None,
                        type_code: None,
                        creator: None,
                        carried: None,
                    })? {
                        self.write_record(&ancestor, &a, None)?;
                    }
                }
            }
        }
        Ok(info)
    }

    /// Register objects of one volume as [`Session::register`] does, but pipelined: one round
    /// trip for all of them instead of one each. Parents must come before their children (the
    /// server applies the requests in order). `done` is called as each object is recorded.
    /// Each object comes with its resource-file header as the caller read it (`None`: none).
    pub fn register_many(
        &mut self,
        objects: Vec<(InVolume, Option<ResourceHeader>)>,
        use_hints: bool,
        done: &mut dyn FnMut(),
    ) -> Result<()> {
        let Some((first, _)) = objects.first() else {
            return Ok(());
        };
        let vol = self.handle(first)?;
        let root = first.root.clone();
        let mut sent = Vec::with_capacity(objects.len());
        let client = self.client(&root)?;
        let result = (|| {
            for (iv, header) in &objects {
                sent.push(client.send(add_request(vol, iv, header.as_ref(), use_hints))?);
            }
            client.flush()
        })();
        result.map_err(|e| self.explain(&root, e))?;
        for ((iv, header), id) in objects.into_iter().zip(sent) {
            let reply = match self.client(&root)?.wait(id) {
                // Caught by a reopening: this one again, on its own.
                Err(e) if refused_while_closing(&e) => {
                    self.call(&iv, |vol| add_request(vol, &iv, header.as_ref(), use_hints))?
                }
                reply => reply.map_err(|e| self.explain_write(&iv, true, e))?,
            };
            let info = match reply {
                Response::Object(o) => o,
                other => return Err(anyhow!("unexpected reply {other:?}")),
            };
            self.carry_mac_info(&iv, &info, header.as_ref())?;
            self.write_record(&iv, &info, header)?;
            done();
        }
        Ok(())
    }

    /// A record just made for an object whose resource file came with it (a copy, a move
    /// between volumes) takes the Finder flags and the comment that file holds: registration
    /// carries only type and creator. A record that existed keeps what the desktop says.
    fn carry_mac_info(
        &mut self,
        iv: &InVolume,
        info: &ObjectInfo,
        header: Option<&ResourceHeader>,
    ) -> Result<()> {
        let Some(header) = header.filter(|_| info.created) else {
            return Ok(());
        };
        let id = info.id;
        if header.finder_flags != 0 {
            let flags = Some(header.finder_flags);
            self.call(iv, |vol| Request::SetInfo {
                vol,
                id,
                type_code: None,
                creator: None,
                flags,
            })?;
        }
        if !header.comment.is_empty() {
            let text = header.comment.clone();
            self.call(iv, |vol| Request::CommentSet { vol, id, text })?;
        }
        Ok(())
    }

    /// Write the resource file (keeping a fork and Finder info already there) and the xattr;
    /// nothing on a read-only volume on a read-only file system (its IDs live only in the
    /// server's temporary desktop).
    pub fn write_record(
        &mut self,
        iv: &InVolume,
        info: &ObjectInfo,
        header: Option<ResourceHeader>,
    ) -> Result<()> {
        if self.volume_info(iv)?.read_only && on_read_only_fs(iv.volume.root()) {
            return Ok(());
        }
        // Through the object's folder pinned from the root without following a link: a folder
        // swapped for a link since the server walked the path leads nowhere else
        // (docs/security.md, "dt's path races").
        let pinned = if iv.components.is_empty() {
            None
        } else {
            Some(
                crate::at::pin_in_volume(iv.volume.root(), &iv.components)
                    .with_context(|| format!("cannot write resource file of {}", iv.shown()))?,
            )
        };
        let (rsrc_path, object_path) = match &pinned {
            Some(p) => (p.rsrc_path(), p.path()),
            None => (iv.rsrc_path(), iv.path()),
        };
        let mut header = header.unwrap_or_else(|| {
            ResourceHeader::new(0, info.type_code, info.creator, deskd_db::now_unix() as u32)
        });
        if header.id != info.id || !rsrc_path.exists() {
            header.id = info.id;
            match rsrc::write_header(&rsrc_path, &header) {
                Ok(()) => {}
                // A user who may only read the folder cannot keep the on-disk copy of an ID
                // deskd gave for what they looked at: deskd's record is the ID, the copy is
                // for rebuilds, and whoever may write the folder writes it.
                Err(e) if is_not_permitted(&e) => {}
                // The errors name the file already.
                Err(e) => return Err(e).context("cannot write resource file"),
            }
        }
        deskd_volume::write_id_xattr(&object_path, info.id).context("cannot write ID xattr")?;
        Ok(())
    }
}
