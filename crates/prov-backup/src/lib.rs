//! prov-backup: provisions rsnapshot backup accounts from LDAP.
//!
//! The daemon watches backup-account entries under `[Database] SERVICE_SUBTREE` with RFC 4533
//! content sync (or polling when the server has no syncprov). An entry whose
//! `sstProvisioningMode` is add, modify or delete, with `sstProvisioningState` "0" and an
//! execution date of 0 or not after today, is claimed (the "-ing" mode, written under an LDAP
//! assertion), worked on — the account tree under the backup root, the rsnapshot configuration
//! checked by `rsnapshot configtest`, the quota — and reported back: the "-ed" mode, return
//! value 0 and a UTC timestamp, or on failure a non-zero return value.
//!
//! Modules: [`config`] (the INI files), [`account`] (entry rules and paths), [`rsnapshot`],
//! [`provision`] (the disk work), [`directory`] (LDAP operations), [`daemon`] (the loop),
//! [`cookie`], [`lock`], [`log`].

#![forbid(unsafe_code)]

pub mod account;
pub mod config;
pub mod cookie;
pub mod daemon;
pub mod directory;
pub mod lock;
pub mod log;
pub mod provision;
pub mod rsnapshot;
