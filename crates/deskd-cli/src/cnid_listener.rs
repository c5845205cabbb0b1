//! The listener afpd's CNID requests (`cnid scheme = dbd`) arrive on, opened the same way for
//! the standalone bridge (`deskd netatalk`, a connection to deskd per afpd connection) and for
//! `deskd serve` itself (`[netatalk]` in deskd.toml: each afpd connection's thread runs its
//! requests through the server's own dispatch, with no socket hop and no second thread;
//! docs/netatalk.md). The request mapping is `deskd_netatalk`'s, for both.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use deskd_client::{ClientError, Request, Response};
use deskd_netatalk::dbpath::AfpConf;
use deskd_netatalk::{Desk, Limits};
use deskd_server::{InProcessConnection, InProcessConnector, NetatalkPrefs};

/// The options of a CNID listener (the bridge's command line, or deskd.toml's `[netatalk]`).
pub struct Options {
    pub listen: String,
    pub max_connections: usize,
    /// Seconds.
    pub frame_timeout: u64,
    pub afp_conf: Option<PathBuf>,
    pub dbpath: String,
}

impl Options {
    /// deskd.toml's `[netatalk]` table, with the bridge's defaults for what it leaves out.
    pub fn from_prefs(prefs: &NetatalkPrefs) -> Options {
        let defaults = Limits::default();
        Options {
            listen: prefs.listen.clone(),
            max_connections: prefs.max_connections.unwrap_or(defaults.max_connections),
            frame_timeout: prefs
                .frame_timeout
                .unwrap_or(defaults.frame_timeout.as_secs()),
            afp_conf: prefs.afp_conf.clone(),
            dbpath: prefs
                .dbpath
                .clone()
                .unwrap_or_else(|| deskd_netatalk::dbpath::DEFAULT_TEMPLATE.to_owned()),
        }
    }
}

/// A bound listener with what its connections need.
pub struct Listener {
    listener: TcpListener,
    limits: Limits,
    afp_conf: Option<Arc<AfpConf>>,
}

/// Read afp.conf (when named, or at its standard place) and bind `options.listen`: a bad file
/// or a taken port is said now, before anything is served.
pub fn open(options: &Options) -> Result<Listener> {
    // Named: it must be readable. The default only when it is there.
    let afp_conf = options.afp_conf.clone().or_else(|| {
        let standard = PathBuf::from("/etc/netatalk/afp.conf");
        standard.exists().then_some(standard)
    });
    let afp_conf = match afp_conf {
        Some(path) => {
            let conf = AfpConf {
                path,
                default_template: options.dbpath.clone(),
            };
            // Read once now, so that a bad file is said at start; afterwards at each afpd
            // connection (an edit needs no restart).
            conf.read()?;
            Some(Arc::new(conf))
        }
        None => {
            tracing::warn!(
                "no afp.conf (afp_conf): afpd's vol dbpath folders are not made; afpd's icon \
                 and APPL desktop needs them (docs/netatalk.md)"
            );
            None
        }
    };
    let listen = &options.listen;
    let listener =
        TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    if !listener.local_addr()?.ip().is_loopback() {
        tracing::warn!(
            "{listen} is not a loopback address: afpd's CNID protocol has no authentication, \
             so anyone who reaches it can register and rename objects (within what deskd \
             verifies on disk)"
        );
    }
    Ok(Listener {
        listener,
        limits: Limits {
            max_connections: options.max_connections.max(1),
            frame_timeout: Duration::from_secs(options.frame_timeout.max(1)),
        },
        afp_conf,
    })
}

impl Listener {
    /// Serve afpd connections, each through its own connection to deskd made by `connect`,
    /// until the listener fails for good. `whose` ends the log line that gives the address.
    pub fn serve(self, connect: deskd_netatalk::SharedConnect, whose: &str) -> Result<()> {
        tracing::info!(
            "serving Netatalk's CNID protocol on {} {whose}",
            self.listener.local_addr()?
        );
        deskd_netatalk::serve(self.listener, connect, self.limits, self.afp_conf);
        Ok(())
    }

    /// Serve afpd connections from inside `deskd serve`, on a thread of their own.
    pub fn spawn_in_serve(self, server: InProcessConnector) -> Result<()> {
        let connect = Arc::new(move |who: &str| -> Result<Box<dyn Desk>, ClientError> {
            Ok(Box::new(InServe(server.connect_as(who))))
        });
        std::thread::Builder::new()
            .name("afpd-accept".into())
            .spawn(move || {
                if let Err(e) = self.serve(connect, "inside deskd serve") {
                    tracing::error!("the afpd CNID listener stopped: {e:#}");
                }
            })
            .context("cannot start the afpd CNID listener")?;
        Ok(())
    }
}

/// An afpd connection's way into the server it runs in.
struct InServe(InProcessConnection);

impl Desk for InServe {
    fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        self.0.call(request).map_err(ClientError::Server)
    }
}
