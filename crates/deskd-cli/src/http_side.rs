//! `deskd serve`'s HTTP side ([`deskd_http`]): its options from the resolved `[server]`
//! settings, checked and bound before the server starts (so a bad `http_*` setting stops
//! `deskd serve` with a clear error), then served once the socket answers.

use anyhow::{Context, Result};
use deskd_server::{Config, HttpAuth};

/// The HTTP side's options, when `http_listen` is set.
pub fn options(config: &Config) -> Option<deskd_http::Options> {
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
        exports: exports(config),
    })
}

/// The admin page's backup of a volume served from PostgreSQL exports it from its database,
/// as `deskd backup --config` does (the volumes' `backend` as at start).
fn exports(config: &Config) -> deskd_http::ExportFor {
    let pg: Vec<crate::pg_admin::PgVolumeRef> = config
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
    if pg.is_empty() {
        return deskd_http::ExportFor::none();
    }
    deskd_http::ExportFor(std::sync::Arc::new(move |root: &std::path::Path| {
        let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        pg.iter()
            .find(|v| v.root == root)
            .map(|v| Box::new(v.clone()) as Box<dyn deskd_backup::Export + Send>)
    }))
}

/// Check the HTTP settings, read the token and bind the address (nothing is served yet).
pub fn bind(config: &Config) -> Result<Option<deskd_http::Bound>> {
    options(config)
        .map(deskd_http::bind)
        .transpose()
        .context("cannot start the HTTP side")
}
