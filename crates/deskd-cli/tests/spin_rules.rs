//! The polling rules (`DESKD_SPIN`, `DESKD_SPIN_US`, docs/deskd.md "Polling"): a value deskd does
//! not understand is a usage error before anything runs (for the server as for a client), and
//! every rule gives the same answers, on a client connection and on the server's own afpd
//! listener, whatever rule the other side uses, also when the traffic pauses so that the
//! adaptive rule stops and resumes polling.

mod common;
#[path = "netatalk_cases/wire.rs"]
#[allow(dead_code, unused_macros)]
mod wire_cases;

use std::process::Command;
use std::time::Duration;

use common::*;
use deskd_netatalk::wire::{op, res};
use wire_cases::{add, afpd, call, request};

const BAD: [(&str, &str); 5] = [
    ("DESKD_SPIN", "sometimes"),
    ("DESKD_SPIN", ""),
    ("DESKD_SPIN_US", "lots"),
    ("DESKD_SPIN_US", "10001"),
    ("DESKD_SPIN_ADAPT", "yes"),
];

#[test]
fn bad_polling_settings_are_usage_errors_before_anything_runs() {
    let env = Env::new(&["vol"]);
    for (variable, value) in BAD {
        let socket = env.path("never.sock");
        let out = Command::new(DESKD)
            .args(["serve", "--socket"])
            .arg(&socket)
            .arg(env.path("vol"))
            .env(variable, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{variable}={value:?}");
        let said = stderr(&out);
        assert!(said.contains(variable), "{variable}={value:?}: {said}");
        assert!(
            !socket.exists(),
            "nothing is served with {variable}={value:?}"
        );
        assert!(!env.path("vol/.Desktop").exists(), "no desktop made");

        let out = env
            .command_for(DESKD, &[b"status"])
            .env(variable, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "status, {variable}={value:?}");
        assert!(stderr(&out).contains(variable));
    }
}

#[test]
fn every_rule_answers_alike_on_client_connections_and_the_afpd_listener() {
    let rules = ["adaptive", "always", "load", "never"];
    for (i, rule) in rules.iter().enumerate() {
        // The client uses another rule than the server.
        let client_rule = rules[(i + 1) % rules.len()];
        let mut env = Env::new(&["vol"]);
        env.server_env = vec![("DESKD_SPIN".into(), (*rule).into())];
        let cnid = env.serve_cnid(Via::InServe, &["vol"], "", None);
        let vol = env.path("vol");
        let names: Vec<String> = (0..30).map(|n| format!("file-{n:02}")).collect();
        for name in &names {
            std::fs::write(vol.join(name), name).unwrap();
        }

        // afpd's side: ADDs and GETs, pausing after every third so that polls run out and
        // the adaptive rule sleeps, probes and polls again.
        let mut s = afpd(&cnid, &vol);
        let mut ids = Vec::new();
        for (n, name) in names.iter().enumerate() {
            let added = add(&mut s, &vol.join(name), 2, 0);
            assert_eq!(added.result, res::OK, "{rule}: ADD {name}");
            let got = call(&mut s, request(op::GET, 0, 2, name.as_bytes()));
            assert_eq!(
                (got.result, got.cnid),
                (res::OK, added.cnid),
                "{rule}: GET {name}"
            );
            ids.push(added.cnid);
            if n % 3 == 2 {
                // Traffic with gaps, not a wait for an event.
                std::thread::sleep(Duration::from_millis(1));
            }
        }

        // A client with another rule sees the same IDs, through the server's socket.
        let out = env
            .command_for(DESKD, &[b"find", b"--volume"])
            .arg(&vol)
            .arg("file-")
            .env("DESKD_SPIN", client_rule)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{rule}/{client_rule}: {}",
            stderr(&out)
        );
        let found = String::from_utf8_lossy(&out.stdout);
        for name in &names {
            assert!(
                found.contains(name.as_str()),
                "{rule}/{client_rule}: {name} in {found}"
            );
        }
        for (name, id) in names.iter().zip(&ids) {
            assert_eq!(env.id_of(&vol.join(name)), *id, "{rule}: {name}");
        }
        let status = env
            .command_for(DESKD, &[b"status"])
            .env("DESKD_SPIN", client_rule)
            .env("DESKD_SPIN_US", "30")
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{rule}/{client_rule}: {}",
            stderr(&status)
        );
    }
}
