//! The LDAP side: connecting and binding, finding pending entries, and the writes that move an
//! entry through its states (claim, done, failed).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::controls::{Assertion, MakeCritical};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, Mod, Scope, SearchEntry};
use rustls::{ClientConfig, RootCertStore};

use crate::account::{Attributes, Mode};
use crate::config::Database;

/// How long one LDAP operation may take before the connection counts as lost.
pub const OP_TIMEOUT: Duration = Duration::from_secs(30);

/// Entries that ask for work now or later (the date is checked by the selfcare rule).
pub const PENDING_FILTER: &str = "(&(sstProvisioningState=0)(|(sstProvisioningMode=add)(sstProvisioningMode=modify)(sstProvisioningMode=delete)))";

/// LDAP result codes we act on.
pub const RC_NO_SUCH_OBJECT: u32 = 32;
pub const RC_ASSERTION_FAILED: u32 = 122;
pub const RC_UNAVAILABLE_CRITICAL_EXTENSION: u32 = 12;

/// Opens a connection and binds as ADMIN_USER.
pub async fn connect(db: &Database) -> Result<Ldap, LdapError> {
    let mut settings = LdapConnSettings::new()
        .set_conn_timeout(Duration::from_secs(10))
        .set_starttls(db.start_tls);
    if db.start_tls || db.url.starts_with("ldaps://") {
        settings = settings.set_config(tls_config(db)?);
    }
    let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &db.url).await?;
    ldap3::drive!(conn);
    ldap.with_timeout(OP_TIMEOUT)
        .simple_bind(&db.admin_user, &db.admin_password)
        .await?
        .success()?;
    Ok(ldap)
}

/// The TLS client settings: the server's certificate must chain to CA_FILE's certificates, or
/// to the system's trusted CAs, and name the host of SERVER. There is no way to turn the check
/// off: a connection that anyone can intercept would hand them ADMIN_PASSWORD.
fn tls_config(db: &Database) -> Result<Arc<ClientConfig>, LdapError> {
    let mut roots = RootCertStore::empty();
    match &db.ca_certificates {
        Some(certs) => {
            for cert in certs {
                roots.add(cert.clone()).map_err(TlsSetupError::CaFile)?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (_, unusable) = roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(TlsSetupError::NoTrustedCa {
                    first: found.errors.into_iter().next(),
                    unusable,
                }
                .into());
            }
        }
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(TlsSetupError::Protocols)?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Why the TLS client settings could not be made. ldap3 has no variant for it, so it reaches
/// the caller as the source of an [`LdapError::Io`].
#[derive(Debug, thiserror::Error)]
enum TlsSetupError {
    // The rustls errors are part of the message and deliberately not a `source`: the
    // `std::io::Error` this travels in hands its inner error's source on, and printed with
    // anyhow's `{:#}` it would be repeated after the message.
    /// A certificate of CA_FILE that rustls does not take.
    #[error("CA_FILE: {0}")]
    CaFile(rustls::Error),
    /// No CA_FILE and no usable system CA: no server certificate could ever be trusted.
    #[error(
        "no trusted CA certificates found on this system{}; set [Database] CA_FILE \
         ({unusable} unusable)",
        .first.as_ref().map_or(String::new(), |e| format!(" ({e})"))
    )]
    NoTrustedCa {
        first: Option<rustls_native_certs::Error>,
        unusable: usize,
    },
    /// The crypto provider offers none of the default protocol versions.
    #[error("{0}")]
    Protocols(rustls::Error),
}

impl From<TlsSetupError> for LdapError {
    fn from(e: TlsSetupError) -> LdapError {
        LdapError::Io {
            source: std::io::Error::other(e),
        }
    }
}

/// Every entry under SERVICE_SUBTREE that asks for add, modify or delete with state "0",
/// read in pages so a server size limit does not cut the list short.
pub async fn pending(ldap: &mut Ldap, base: &str) -> Result<Vec<(String, Attributes)>, LdapError> {
    let adapters: Vec<Box<dyn Adapter<_, _>>> = vec![
        Box::new(EntriesOnly::new()),
        Box::new(PagedResults::new(500)),
    ];
    let mut stream = ldap
        .with_timeout(OP_TIMEOUT)
        .streaming_search_with(adapters, base, Scope::Subtree, PENDING_FILTER, vec!["*"])
        .await?;
    let mut out = Vec::new();
    while let Some(entry) = stream.next().await? {
        let e = SearchEntry::construct(entry);
        out.push((e.dn, e.attrs));
    }
    stream.finish().await.success()?;
    Ok(out)
}

/// The current attributes of one entry; None when it no longer exists.
pub async fn read(ldap: &mut Ldap, dn: &str) -> Result<Option<Attributes>, LdapError> {
    let res = ldap
        .with_timeout(OP_TIMEOUT)
        .search(dn, Scope::Base, "(objectClass=*)", vec!["*"])
        .await?;
    if res.1.rc == RC_NO_SUCH_OBJECT {
        return Ok(None);
    }
    let (entries, _) = res.success()?;
    Ok(entries
        .into_iter()
        .next()
        .map(|e| SearchEntry::construct(e).attrs))
}

fn replace(attr: &'static str, value: String) -> Mod<String> {
    Mod::Replace(attr.to_owned(), HashSet::from([value]))
}

/// Writes the "-ing" mode, but only while the entry still asks for `mode` with state "0" (an
/// LDAP assertion): that write is the lock, so two daemons, or a stale copy of the entry,
/// never start the same work twice. Ok(false): the entry changed or went away first.
pub async fn claim(ldap: &mut Ldap, dn: &str, mode: Mode) -> Result<bool, LdapError> {
    let filter = format!(
        "(&(sstProvisioningMode={})(sstProvisioningState=0))",
        mode.requested()
    );
    let res = ldap
        .with_controls(Assertion { filter }.critical())
        .with_timeout(OP_TIMEOUT)
        .modify(
            dn,
            vec![replace("sstProvisioningMode", mode.running().to_owned())],
        )
        .await?;
    match res.rc {
        0 => Ok(true),
        RC_ASSERTION_FAILED | RC_NO_SUCH_OBJECT => Ok(false),
        _ => Err(LdapError::LdapResult { result: res }),
    }
}

/// The work is done: the "-ed" mode, return value 0 and the UTC completion time, in one write.
pub async fn finish(ldap: &mut Ldap, dn: &str, mode: Mode, stamp: &str) -> Result<(), LdapError> {
    ldap.with_timeout(OP_TIMEOUT)
        .modify(
            dn,
            vec![
                replace("sstProvisioningMode", mode.done().to_owned()),
                replace("sstProvisioningReturnValue", "0".to_owned()),
                replace("sstProvisioningState", stamp.to_owned()),
            ],
        )
        .await?
        .success()?;
    Ok(())
}

/// The work failed: the "-ing" mode and state "0" stay, the return value says why.
pub async fn fail(ldap: &mut Ldap, dn: &str, return_value: i32) -> Result<(), LdapError> {
    ldap.with_timeout(OP_TIMEOUT)
        .modify(
            dn,
            vec![replace(
                "sstProvisioningReturnValue",
                return_value.to_string(),
            )],
        )
        .await?
        .success()?;
    Ok(())
}
