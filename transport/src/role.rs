//! What a certificate lets its holder do. Being signed by the cluster CA only says that a peer
//! belongs to the cluster; the role it was issued for says which requests it may make. Without
//! roles, any holder of a client's key pair (an application server, the SQL front end) could
//! promise journal nodes a new epoch and append records of its choosing, deposing the real
//! sequencer, or report itself a learner and hold back trimming.
//!
//! The role travels in the certificate as a subject alternative name `<role>.role.triad`, so it
//! is covered by the CA's signature, checked by the same library that verified the chain, and
//! needs no certificate parsing of our own. Servers look it up once per connection; each
//! service decides per request ([`crate::Service::permits`]).

use rustls::pki_types::{CertificateDer, ServerName};

/// A peer's place in the cluster, as its certificate states it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerRole {
    /// Stores the log; talks to nobody on its own.
    Journal,
    /// Orders commits and writes them into the journal: the only role that may promise epochs,
    /// append, rebase or send heartbeats to journal nodes.
    Sequencer,
    /// A learner: tails the journal and serves reads.
    Replayer,
    /// Everything outside the cluster's own tiers: applications through the compute shim, the
    /// SQL front end, benchmarks and checks. Also what a certificate without a role (issued
    /// before roles existed) or with more than one counts as.
    Client,
}

impl PeerRole {
    pub const ALL: [PeerRole; 4] =
        [PeerRole::Journal, PeerRole::Sequencer, PeerRole::Replayer, PeerRole::Client];

    pub fn as_str(self) -> &'static str {
        match self {
            PeerRole::Journal => "journal",
            PeerRole::Sequencer => "sequencer",
            PeerRole::Replayer => "replayer",
            PeerRole::Client => "client",
        }
    }

    /// The role named `s` (`journal`, `sequencer`, `replayer` or `client`), as `triad certs`
    /// takes it in `NAME=ROLE`.
    pub fn parse(s: &str) -> Option<PeerRole> {
        PeerRole::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The subject alternative name that carries this role in a certificate.
    pub fn dns_name(self) -> String {
        format!("{}.role.triad", self.as_str())
    }

    /// The role `triad certs` gives a node by its name: names starting with `journal`,
    /// `sequencer` or `replayer` get that role, every other name a client's.
    pub fn of_name(name: &str) -> PeerRole {
        [PeerRole::Journal, PeerRole::Sequencer, PeerRole::Replayer]
            .into_iter()
            .find(|r| name.starts_with(r.as_str()))
            .unwrap_or(PeerRole::Client)
    }

    /// The role a certificate (already verified against the cluster CA) was issued for. One
    /// without a role name, or with several, is a client: the least a member can do.
    pub fn of_certificate(der: &CertificateDer<'_>) -> PeerRole {
        let Ok(cert) = webpki::EndEntityCert::try_from(der) else {
            return PeerRole::Client;
        };
        let mut held = PeerRole::ALL.into_iter().filter(|role| {
            ServerName::try_from(role.dns_name())
                .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
        });
        match (held.next(), held.next()) {
            (Some(role), None) => role,
            _ => PeerRole::Client,
        }
    }

    /// `Ok` when this is `allowed`, else `who` (the refusal's reason: who may do it).
    pub fn must_be(self, allowed: PeerRole, who: &'static str) -> Result<(), &'static str> {
        if self == allowed {
            Ok(())
        } else {
            Err(who)
        }
    }
}

/// Who the peer at the other end of a connection is: the role its certificate was issued for,
/// and the certificate, which also names the node (a learner may only report under its own
/// name, say).
#[derive(Clone, Debug)]
pub struct PeerIdentity {
    role: PeerRole,
    cert: Option<CertificateDer<'static>>,
}

impl PeerIdentity {
    /// The identity a certificate (already verified against the cluster CA) gives.
    pub fn of_certificate(cert: CertificateDer<'static>) -> PeerIdentity {
        PeerIdentity { role: PeerRole::of_certificate(&cert), cert: Some(cert) }
    }

    /// The identity the PEM-encoded certificate `pem` gives; `None` when it is no certificate.
    pub fn of_pem(pem: &str) -> Option<PeerIdentity> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(pem.as_bytes()).ok().map(PeerIdentity::of_certificate)
    }

    /// The peer at the other end of an established connection.
    pub fn of_connection(conn: &quinn::Connection) -> PeerIdentity {
        conn.peer_identity()
            .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
            .and_then(|chain| chain.into_iter().next())
            .map_or(PeerIdentity::bare(PeerRole::Client), PeerIdentity::of_certificate)
    }

    /// A role without a certificate, so without a name: for checking policies in tests.
    pub fn bare(role: PeerRole) -> PeerIdentity {
        PeerIdentity { role, cert: None }
    }

    pub fn role(&self) -> PeerRole {
        self.role
    }

    /// Whether the certificate was issued for the node called `name` (it carries the name as a
    /// subject alternative name, which `triad certs` writes). The names every certificate or
    /// every certificate of a role carries name no node.
    pub fn is_named(&self, name: &str) -> bool {
        let shared = name == crate::SERVER_NAME || PeerRole::ALL.iter().any(|r| r.dns_name() == name);
        let Some(cert) = self.cert.as_ref().filter(|_| !shared) else { return false };
        let (Ok(cert), Ok(name)) = (webpki::EndEntityCert::try_from(cert), ServerName::try_from(name)) else {
            return false;
        };
        cert.verify_is_valid_for_subject_name(&name).is_ok()
    }
}

impl std::fmt::Display for PeerRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClusterCa;
    use rustls::pki_types::pem::PemObject;

    fn role_of_issued(ca: &ClusterCa, name: &str, role: PeerRole) -> PeerRole {
        let pem = ca.issue_as(name, role).unwrap().cert_pem;
        PeerRole::of_certificate(&CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
    }

    #[test]
    fn a_certificate_says_the_role_it_was_issued_for() {
        let ca = ClusterCa::generate().unwrap();
        for role in PeerRole::ALL {
            // The name plays no part once issued: a journal-looking name with a client's role
            // is a client.
            assert_eq!(role_of_issued(&ca, "journal-9", role), role);
        }
    }

    #[test]
    fn names_give_roles_by_their_prefix() {
        assert_eq!(PeerRole::of_name("journal-2"), PeerRole::Journal);
        assert_eq!(PeerRole::of_name("sequencer-1"), PeerRole::Sequencer);
        assert_eq!(PeerRole::of_name("replayer-eu"), PeerRole::Replayer);
        for name in ["client", "sql", "app-journal", "Sequencer-1", ""] {
            assert_eq!(PeerRole::of_name(name), PeerRole::Client, "{name}");
        }
    }

    #[test]
    fn roles_are_read_back_from_their_names_only() {
        for role in PeerRole::ALL {
            assert_eq!(PeerRole::parse(role.as_str()), Some(role));
        }
        for other in ["", "Journal", "journal-1", "learner", "role.triad"] {
            assert_eq!(PeerRole::parse(other), None, "{other}");
        }
    }

    #[test]
    fn an_identity_holds_its_own_name_only() {
        let ca = ClusterCa::generate().unwrap();
        let id = PeerIdentity::of_pem(&ca.issue("replayer-1").unwrap().cert_pem).unwrap();
        assert_eq!(id.role(), PeerRole::Replayer);
        assert!(id.is_named("replayer-1"));
        for other in ["replayer-2", "replayer", "client", "", "not a name", "triad", "replayer.role.triad"] {
            assert!(!id.is_named(other), "{other}");
        }
        assert!(!PeerIdentity::bare(PeerRole::Replayer).is_named("replayer-1"));
    }

    #[test]
    fn a_certificate_without_a_role_or_with_two_is_a_client() {
        let ca = ClusterCa::generate().unwrap();
        let pem = ca.issue_with_names("old", &[]).unwrap().cert_pem;
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(PeerRole::of_certificate(&der), PeerRole::Client);
        let both = [PeerRole::Sequencer.dns_name(), PeerRole::Journal.dns_name()];
        let pem = ca.issue_with_names("greedy", &both).unwrap().cert_pem;
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(PeerRole::of_certificate(&der), PeerRole::Client);
        assert_eq!(PeerRole::of_certificate(&CertificateDer::from(vec![1, 2, 3])), PeerRole::Client);
    }
}
