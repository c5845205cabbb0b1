//! LDAP over TLS: StartTLS and ldaps:// against a real slapd that refuses simple binds without
//! TLS, so every bind that works here was encrypted; and the failures an administrator meets
//! (no TLS configured, a certificate from another CA) end with a clear message.
mod common;

use std::process::Command;

use common::*;

/// The example account's uid in testdata/example-tree.ldif.
const EXAMPLE_UID: &str = "4000123";

/// `[Database]` lines of a Setup made for `slapd` (SERVER and PORT), for editing.
fn server_lines(slapd: &Slapd) -> String {
    format!("SERVER = 127.0.0.1\nPORT = {}\n", slapd.port)
}

#[test]
fn start_tls_and_ldaps_provision_and_say_how_they_connected() {
    let tmp = tempfile::tempdir().unwrap();
    let slapd = Slapd::start_tls(&tmp.path().join("ldap"));
    let ca = slapd.ca_file().display().to_string();

    let setup = Setup::new(&tmp.path().join("starttls"), &slapd.url(), "");
    setup.edit_service(
        &server_lines(&slapd),
        &format!("{}START_TLS = 1\nCA_FILE = {ca}\n", server_lines(&slapd)),
    );
    let mut daemon = setup.start(&[]);
    slapd.wait_for(&account_dn(EXAMPLE_UID), "added", is_stamp);
    assert!(setup.home(EXAMPLE_UID).join("incoming").is_dir());
    let log = daemon.log_text();
    assert!(
        log.contains(&format!(
            "connected to {} as {ADMIN} (StartTLS)",
            slapd.url()
        )),
        "{log}"
    );
    assert!(!log.contains("unencrypted"), "{log}");
    assert_eq!(daemon.terminate(), 0);

    let ldaps = format!("ldaps://127.0.0.1:{}/", slapd.ldaps_port.unwrap());
    let setup = Setup::new(&tmp.path().join("ldaps"), &slapd.url(), "");
    setup.edit_service(
        &server_lines(&slapd),
        &format!("SERVER = {ldaps}\nCA_FILE = {ca}\n"),
    );
    let mut daemon = setup.start(&[]);
    slapd.add(&account_ldif(
        "8200001",
        "add",
        "0",
        "0",
        [0, 7, 4, 3, 0],
        "",
    ));
    slapd.wait_for(&account_dn("8200001"), "added", is_stamp);
    assert!(setup.home("8200001").join("incoming").is_dir());
    let log = daemon.log_text();
    assert!(
        log.contains(&format!("connected to {ldaps} as {ADMIN} (TLS)")),
        "{log}"
    );
    assert_eq!(daemon.terminate(), 0);
}

#[test]
fn no_tls_and_a_foreign_certificate_end_with_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let slapd = Slapd::start_tls(&tmp.path().join("ldap"));

    // Without TLS the server refuses the bind; the password was never accepted in clear.
    let setup = Setup::new(&tmp.path().join("plain"), &slapd.url(), "");
    let mut daemon = setup.start(&[]);
    assert_eq!(daemon.wait_exit(), 1);
    let log = daemon.log_text();
    assert!(
        log.contains(&format!(
            "LDAP server {} refused the bind as {ADMIN} after 3 attempts: ",
            slapd.url()
        )) && log.contains("confidentiality required"),
        "{log}"
    );

    // A server certificate that CA_FILE did not sign is refused before the bind.
    let other_ca = tmp.path().join("other-ca.pem");
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=another CA", "-keyout"])
        .arg(tmp.path().join("other-ca.key"))
        .arg("-out")
        .arg(&other_ca)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let setup = Setup::new(&tmp.path().join("foreign"), &slapd.url(), "");
    setup.edit_service(
        &server_lines(&slapd),
        &format!(
            "SERVER = ldaps://127.0.0.1:{}/\nCA_FILE = {}\n",
            slapd.ldaps_port.unwrap(),
            other_ca.display()
        ),
    );
    let mut daemon = setup.start(&[]);
    assert_eq!(daemon.wait_exit(), 1);
    let log = daemon.log_text();
    assert!(
        log.contains("unreachable after 3 attempts: ")
            && log.contains("invalid peer certificate: UnknownIssuer"),
        "{log}"
    );
    assert!(!log.contains("connected to"), "{log}");
    // Nothing was provisioned by either.
    assert_eq!(
        slapd.get(&account_dn(EXAMPLE_UID)).unwrap()["sstProvisioningState"],
        "0"
    );
}

#[test]
fn a_password_sent_in_clear_to_another_host_is_warned_about_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    // A host that is not this one (and never resolves: the daemon gives up after 3 tries).
    let setup = Setup::new(tmp.path(), "ldap://127.0.0.1:389/", "");
    setup.edit_service(
        "SERVER = 127.0.0.1\nPORT = 389\n",
        "SERVER = ldap.example.invalid\nPORT = 389\n",
    );
    let mut daemon = setup.start(&[]);
    assert_eq!(daemon.wait_exit(), 1);
    let log = daemon.log_text();
    assert!(
        log.contains(
            "ldap://ldap.example.invalid:389/: ADMIN_PASSWORD crosses the network unencrypted"
        ),
        "{log}"
    );
    // With StartTLS it is not said.
    let tmp = tempfile::tempdir().unwrap();
    let setup = Setup::new(tmp.path(), "ldap://127.0.0.1:389/", "");
    setup.edit_service(
        "SERVER = 127.0.0.1\nPORT = 389\n",
        "SERVER = ldap.example.invalid\nPORT = 389\nSTART_TLS = 1\n",
    );
    let mut daemon = setup.start(&[]);
    assert_eq!(daemon.wait_exit(), 1);
    assert!(
        !daemon.log_text().contains("unencrypted"),
        "{}",
        daemon.log_text()
    );
}
