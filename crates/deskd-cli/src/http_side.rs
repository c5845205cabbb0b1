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
    })
}

/// Check the HTTP settings, read the token and bind the address (nothing is served yet).
pub fn bind(config: &Config) -> Result<Option<deskd_http::Bound>> {
    options(config)
        .map(deskd_http::bind)
        .transpose()
        .context("cannot start the HTTP side")
}
