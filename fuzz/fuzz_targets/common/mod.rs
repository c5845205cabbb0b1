//! A real deskd server in the fuzzing process, on a temp volume, started once and kept for the
//! whole run (shared by the session targets through `#[path]`).
#![allow(dead_code)] // each target uses its own part
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use deskd_server::{ConfigFile, Server};

/// The server, its socket and volume; the temp dir lives as long as the server.
pub struct LiveServer {
    pub socket: PathBuf,
    pub volume: PathBuf,
    _server: Server,
    _dir: tempfile::TempDir,
}

impl LiveServer {
    /// Serves a new volume holding `files` (paths relative to the volume; parents are made).
    pub fn start(files: &[&str]) -> LiveServer {
        let dir = tempfile::tempdir().unwrap();
        let volume = dir.path().join("vol");
        for file in files {
            let path = volume.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        }
        std::fs::create_dir_all(&volume).unwrap();
        let socket = dir.path().join("deskd.sock");
        let mut file = ConfigFile::default();
        file.server.state_dir = Some(dir.path().join("state"));
        let config = file
            .resolve(socket.clone(), std::slice::from_ref(&volume))
            .unwrap();
        let server = Server::start(config).unwrap();
        LiveServer {
            socket,
            volume,
            _server: server,
            _dir: dir,
        }
    }
}

/// How long a peer may take to answer or close before the fuzzer calls it a hang.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Reads what the peer sends until it closes; a read that times out (after [`PATIENCE`], set on
/// the stream) means `who` neither answered nor closed, which fails the input.
pub fn read_until_closed(stream: &mut impl Read, who: &str) {
    let mut replies = Vec::new();
    if let Err(e) = stream.read_to_end(&mut replies) {
        assert!(
            e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut,
            "{who} neither answered nor closed within {PATIENCE:?}"
        );
    }
}
