//! `triad certs` as a user runs it, again and again on one directory: the CA and every
//! certificate that holds its role are kept (members keep their identities, and new members
//! are issued certificates the old ones trust), a certificate without its role is reissued,
//! and without the CA's key nothing is issued under a new CA by mistake.

use std::path::Path;
use std::process::Command;

fn certs(dir: &Path, names: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_triad"))
        .args(["certs", "--dir"])
        .arg(dir)
        .args(["--names", names])
        .output()
        .unwrap()
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap()
}

#[test]
fn certs_keeps_the_ca_and_what_holds_its_role_and_reissues_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    assert!(certs(dir, "journal-1,sequencer-1,client").status.success());
    let (ca, journal) = (read(dir, "ca.pem"), read(dir, "journal-1.pem"));
    assert_eq!(triad_transport::TlsConfig::role_of_pem(&journal), Some(triad_transport::PeerRole::Journal));

    // Again, with a new member: everything there is kept, the newcomer is issued.
    let out = certs(dir, "journal-1,sequencer-1,client,replayer-1");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(read(dir, "ca.pem"), ca, "the CA must never be replaced");
    assert_eq!(read(dir, "journal-1.pem"), journal, "a certificate holding its role is kept");
    let replayer = read(dir, "replayer-1.pem");
    assert_eq!(triad_transport::TlsConfig::role_of_pem(&replayer), Some(triad_transport::PeerRole::Replayer));

    // A sequencer's certificate without the sequencer's role (as before roles) is reissued.
    std::fs::copy(dir.join("client.pem"), dir.join("sequencer-1.pem")).unwrap();
    let out = certs(dir, "sequencer-1");
    assert!(String::from_utf8_lossy(&out.stdout).contains("reissued: the old one held client"));
    let sequencer = read(dir, "sequencer-1.pem");
    assert_eq!(
        triad_transport::TlsConfig::role_of_pem(&sequencer),
        Some(triad_transport::PeerRole::Sequencer)
    );
    assert_eq!(read(dir, "ca.pem"), ca);

    // Without the CA's key, what needs issuing is refused rather than signed by a new CA.
    std::fs::remove_file(dir.join("ca.key")).unwrap();
    std::fs::remove_file(dir.join("journal-1.pem")).unwrap();
    let out = certs(dir, "journal-1");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no ca.key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read(dir, "ca.pem"), ca);
}

#[test]
fn certs_takes_a_role_given_with_the_name_and_refuses_bad_names_and_roles() {
    use triad_transport::{PeerRole, TlsConfig};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A role given with the name wins over the name's prefix, both ways.
    let out = certs(dir, "j1=journal,seq-a=sequencer,replayer-x=client,app");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (name, role) in [
        ("j1", PeerRole::Journal),
        ("seq-a", PeerRole::Sequencer),
        ("replayer-x", PeerRole::Client),
        ("app", PeerRole::Client),
    ] {
        assert_eq!(TlsConfig::role_in(dir, name), Some(role), "{name}");
    }
    // Asked again with the same roles, everything is kept; with another role, that one is
    // reissued in it.
    let j1 = read(dir, "j1.pem");
    let out = certs(dir, "j1=journal,replayer-x=replayer");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(read(dir, "j1.pem"), j1);
    assert_eq!(TlsConfig::role_in(dir, "replayer-x"), Some(PeerRole::Replayer));

    let refused = |names: &str, says: &str| {
        let out = certs(dir, names);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{names}: {stderr}");
    };
    refused("j2=jornal", "unknown role \"jornal\"");
    refused("../outside=journal", "not a usable node name");
    refused("=journal", "not a usable node name");
    refused("j3=journal,j3=client", "j3 is named twice");
    assert!(!dir.join("j2.pem").exists() && !dir.join("j3.pem").exists());
    assert!(!tmp.path().parent().unwrap().join("outside.pem").exists());
}
