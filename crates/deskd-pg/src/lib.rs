//! The deskd desktop on PostgreSQL (issue 28): one database holds many volumes, and several
//! `deskd serve` processes on several hosts may share one volume's desktop.
//!
//! This is the first slice (docs/ARCHITECTURE.md, "The desktop on PostgreSQL (issue 28):
//! design"): connecting ([`connect`]), creating and checking the schema, its format version
//! and the volume's identity ([`schema`]), and the objects, IDs and comments of a volume
//! ([`PgDesktop`], [`PgBatch`]), the change log the other servers follow ([`follow`]), and freeze as an exported
//! snapshot for `pg_dump` ([`freeze`]), and a whole volume copied in and out by `deskd migrate`
//! ([`transfer`]). Both implement deskd-db's storage traits
//! ([`deskd_db::Read`], and [`deskd_db::WriteBatch`] for the batch), so code written against
//! the traits runs on SQLite and PostgreSQL alike. Nothing in `deskd serve` or the configuration uses it yet.
//!
//! The crate is apart from deskd-db so that the PostgreSQL client and its async runtime stay
//! out of every tool that only ever opens an SQLite desktop; it reuses deskd-db's types and
//! rules ([`deskd_db::Object`], [`deskd_db::ids`], [`deskd_db::validate_name`]).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backend;
pub mod connect;
pub mod error;
pub mod follow;
pub mod freeze;
pub mod schema;
pub mod store;
#[cfg(feature = "test-cluster")]
pub mod test_cluster;
pub mod transfer;

pub use connect::{connect, ConnectOptions, PasswordSource};
pub use error::{PgError, Result};
pub use follow::{ChangeListener, Notice};
pub use freeze::Frozen;
pub use schema::{VolumeKey, FORMAT_VERSION};
pub use store::{Change, PgBatch, PgDesktop};
