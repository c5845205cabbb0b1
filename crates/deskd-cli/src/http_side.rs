//! `deskd serve`'s HTTP side ([`deskd_http`]): its options from the resolved `[server]`
//! settings, checked and bound before the server starts (so a bad `http_*` setting stops
//! `deskd serve` with a clear error), then served once the socket answers.

use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use deskd_server::{Config, HttpAuth};

/// The HTTP side's options, when `http_listen` is set; the admin page's backup exports a
/// PostgreSQL volume with the settings `exports` holds.
fn options(config: &Config, exports: &Exports) -> Option<deskd_http::Options> {
    let http = config.http.as_ref()?;
    Some(deskd_http::Options {
        listen: http.listen.clone(),
        auth: match http.auth {
            HttpAuth::Actions => deskd_http::AuthMode::Actions,
            HttpAuth::All => deskd_http::AuthMode::All,
        },
        token_file: http.token_file.clone(),
        token_is_tcp: http.token_is_tcp,
        hosts: http.hosts.clone(),
        max_connections: http.max_connections,
        backup_dir: http.backup_dir.clone(),
        socket: config.socket.clone(),
        exports: exports.export_for(),
    })
}

/// The volumes whose desktop is in PostgreSQL, with their `backend` settings, for the admin
/// page's backup, which exports such a volume from its database as `deskd backup --config`
/// does. Replaced at each reload ([`Exports::update`]), so a changed `backend` (a new
/// password file, another host) is the one the next backup uses, as the server's own.
#[derive(Clone, Default)]
pub struct Exports(Arc<RwLock<Vec<crate::pg_admin::PgVolumeRef>>>);

impl Exports {
    /// The PostgreSQL volumes of `config`.
    pub fn new(config: &Config) -> Exports {
        let exports = Exports::default();
        exports.update(config);
        exports
    }

    /// Take the PostgreSQL volumes of a reloaded `config`.
    pub fn update(&self, config: &Config) {
        let pg = config
            .volumes
            .iter()
            .filter_map(|v| {
                let options = v.backend.clone()?;
                let root = std::fs::canonicalize(&v.root).unwrap_or_else(|_| v.root.clone());
                let shown = deskd_pg::connect::parse_target(&options.target)
                    .map(|t| deskd_pg::connect::describe(&t))
                    .unwrap_or_else(|_| "postgresql".to_owned());
                Some(crate::pg_admin::PgVolumeRef {
                    name: root.to_string_lossy().into_owned(),
                    root,
                    options,
                    shown,
                })
            })
            .collect();
        *self.0.write().unwrap() = pg;
    }

    /// What the HTTP side asks for a volume's export.
    fn export_for(&self) -> deskd_http::ExportFor {
        let pg = self.0.clone();
        deskd_http::ExportFor(Arc::new(move |root: &std::path::Path| {
            let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
            pg.read()
                .unwrap()
                .iter()
                .find(|v| v.root == root)
                .map(|v| Box::new(v.clone()) as Box<dyn deskd_backup::Export + Send>)
        }))
    }
}

/// Check the HTTP settings, read the token and bind the address (nothing is served yet).
pub fn bind(config: &Config, exports: &Exports) -> Result<Option<deskd_http::Bound>> {
    options(config, exports)
        .map(deskd_http::bind)
        .transpose()
        .context("cannot start the HTTP side")
}
