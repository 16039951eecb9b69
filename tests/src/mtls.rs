//! What the mTLS tests (issue 3) share: the registry of certificate-authenticated
//! identities, and a PKI with a server CA and two client CAs (made by `openssl`, see
//! [`crate::pki`]) wired into a TLS broker config.
//!
//! | client CA | `[[client_ca]]` name | trust domain | identities it proves |
//! | --- | --- | --- | --- |
//! | [`Mtls::prod_ca`] | [`PROD_CA`] | [`PROD_TRUST_DOMAIN`] | [`IDENTITY`](crate::IDENTITY) by SPIFFE ID [`PAYMENTS_SPIFFE_ID`] |
//! | [`Mtls::corp_ca`] | [`CORP_CA`] | none | [`REPORTS_IDENTITY`] by subject CN, [`INVENTORY_IDENTITY`] by DNS SAN |

use std::path::Path;

use crate::pki::{Ca, Leaf, LeafSpec, Pki};
use crate::policy::{Binding, Identity, Matcher, PolicyFile, Task, entries};
use crate::{ClientCaOptions, Options, PROD_LEDGER, TlsOptions, expired_file, payments_file};

/// The SPIFFE trust domain of [`PROD_CA`].
pub const PROD_TRUST_DOMAIN: &str = "prod.example.org";
/// `[[client_ca]]` name of the SPIFFE CA (`trust_domain = prod.example.org`).
pub const PROD_CA: &str = "prod-spiffe";
/// `[[client_ca]]` name of the company CA (no trust domain; CN / DNS SAN mapping).
pub const CORP_CA: &str = "corp";
/// The SPIFFE ID that proves [`IDENTITY`](crate::IDENTITY) (payments-api).
pub const PAYMENTS_SPIFFE_ID: &str = "spiffe://prod.example.org/ns/payments/sa/api";
/// The subject CN of the payments workload certificate (informational; it proves nothing
/// on its own, the SPIFFE ID decides).
pub const PAYMENTS_CN: &str = "payments-api.prod";
/// A task of [`IDENTITY`](crate::IDENTITY) with `require_binding = true` (`ledger:read`, 5m).
pub const BOUND_TASK: &str = "ledger-bound";
/// A registered identity proved by a certificate subject CN ([`REPORTS_CN`]).
pub const REPORTS_IDENTITY: &str = "reports-batch";
/// The `cert_subject` of [`REPORTS_IDENTITY`].
pub const REPORTS_CN: &str = "reports-batch.corp";
/// [`REPORTS_IDENTITY`]'s task: `reports:read` on [`REPORTS_AUDIENCE`].
pub const REPORTS_TASK: &str = "reports-read";
/// The audience of [`REPORTS_TASK`] (in the harness's catalogue).
pub const REPORTS_AUDIENCE: &str = "https://reports.prod.example.org";
/// A registered identity proved by a DNS SAN ([`INVENTORY_DNS`]).
pub const INVENTORY_IDENTITY: &str = "inventory-svc";
/// The `dns_name` of [`INVENTORY_IDENTITY`].
pub const INVENTORY_DNS: &str = "inventory.prod.example.org";
/// [`INVENTORY_IDENTITY`]'s task: `ledger:read` on [`PROD_LEDGER`].
pub const INVENTORY_TASK: &str = "ledger-read";

/// [`IDENTITY`](crate::IDENTITY)'s file for mTLS: [`payments_file`]'s JWT matcher, plus the SPIFFE ID
/// matcher, plus [`BOUND_TASK`] (`require_binding = true`).
pub fn payments_mtls_file() -> PolicyFile {
    let mut p = payments_file();
    p.identity
        .matchers
        .push(Matcher::spiffe(PAYMENTS_SPIFFE_ID));
    p.task(
        Task::new(BOUND_TASK, PROD_LEDGER, &["ledger:read"], "5m")
            .require_binding(Binding::Certificate),
    )
}

/// [`REPORTS_IDENTITY`]: proved by a company-CA certificate with subject CN [`REPORTS_CN`].
pub fn reports_file() -> PolicyFile {
    PolicyFile::new(
        Identity::prod(
            REPORTS_IDENTITY,
            "team-reports",
            "carol@example.com",
            "Nightly revenue reports",
            "CHG-2001",
        )
        .matcher(Matcher::cert_subject(REPORTS_CN)),
    )
    .task(Task::new(
        REPORTS_TASK,
        REPORTS_AUDIENCE,
        &["reports:read"],
        "5m",
    ))
}

/// [`INVENTORY_IDENTITY`]: proved by a company-CA certificate with DNS SAN
/// [`INVENTORY_DNS`].
pub fn inventory_file() -> PolicyFile {
    PolicyFile::new(
        Identity::prod(
            INVENTORY_IDENTITY,
            "team-inventory",
            "dave@example.com",
            "Reads ledger balances for stock valuation",
            "CHG-2002",
        )
        .matcher(Matcher::dns_name(INVENTORY_DNS)),
    )
    .task(Task::new(
        INVENTORY_TASK,
        PROD_LEDGER,
        &["ledger:read"],
        "5m",
    ))
}

/// The mTLS policy directory: payments-api (JWT + SPIFFE), reports-batch (CN),
/// inventory-svc (DNS SAN) and the expired legacy-job.
pub fn mtls_policies() -> Vec<(String, String)> {
    entries(&[
        payments_mtls_file(),
        reports_file(),
        inventory_file(),
        expired_file(),
    ])
}

/// A PKI for a TLS broker: the server's CA and certificate, and the two client CAs.
#[derive(Debug)]
pub struct Mtls {
    /// The temp dir everything lives in.
    pub pki: Pki,
    /// Signs the broker's server certificate (what clients pass as `--cacert`).
    pub server_ca: Ca,
    /// The broker's server certificate: `CN=broker.test`, SANs `IP:127.0.0.1`,
    /// `DNS:localhost`.
    pub server: Leaf,
    /// The SPIFFE CA of trust domain [`PROD_TRUST_DOMAIN`] ([`PROD_CA`]).
    pub prod_ca: Ca,
    /// The company CA without a trust domain ([`CORP_CA`]).
    pub corp_ca: Ca,
}

impl Default for Mtls {
    fn default() -> Self {
        Self::new()
    }
}

impl Mtls {
    /// Makes the CAs and the server certificate with `openssl`.
    pub fn new() -> Self {
        let pki = Pki::new();
        let server_ca = pki.ca("server-ca", "E2E Server CA");
        let server = server_ca.issue(&LeafSpec::server("server", "broker.test"));
        let prod_ca = pki.ca("prod-ca", "E2E SPIFFE CA prod.example.org");
        let corp_ca = pki.ca("corp-ca", "E2E Corp Issuing CA");
        Self {
            pki,
            server_ca,
            server,
            prod_ca,
            corp_ca,
        }
    }

    /// The TLS options: server certificate, and both client CAs.
    pub fn tls(&self) -> TlsOptions {
        TlsOptions {
            cert: self.server.cert.clone(),
            key: self.server.key.clone(),
            server_ca: self.server_ca.cert.clone(),
            client_cas: vec![
                ClientCaOptions {
                    name: PROD_CA.to_owned(),
                    bundle: self.prod_ca.cert.clone(),
                    trust_domain: Some(PROD_TRUST_DOMAIN.to_owned()),
                },
                ClientCaOptions {
                    name: CORP_CA.to_owned(),
                    bundle: self.corp_ca.cert.clone(),
                    trust_domain: None,
                },
            ],
        }
    }

    /// A TLS broker with [`mtls_policies`].
    pub fn options(&self) -> Options {
        Options {
            policies: mtls_policies(),
            tls: Some(self.tls()),
            ..Options::default()
        }
    }

    /// The payments workload's X.509-SVID: prod CA, URI SAN [`PAYMENTS_SPIFFE_ID`],
    /// CN [`PAYMENTS_CN`], EKU clientAuth.
    pub fn payments_client(&self) -> Leaf {
        self.payments_client_named("payments")
    }

    /// [`Mtls::payments_client`] under another file name (a second certificate of the
    /// same workload: new key, new thumbprint).
    pub fn payments_client_named(&self, name: &str) -> Leaf {
        self.prod_ca
            .issue(&LeafSpec::client(name, PAYMENTS_CN).uri(PAYMENTS_SPIFFE_ID))
    }

    /// The reports workload's company certificate: corp CA, CN [`REPORTS_CN`].
    pub fn reports_client(&self) -> Leaf {
        self.corp_ca.issue(&LeafSpec::client("reports", REPORTS_CN))
    }

    /// The inventory workload's company certificate: corp CA, CN `inventory`, DNS SAN
    /// [`INVENTORY_DNS`].
    pub fn inventory_client(&self) -> Leaf {
        self.corp_ca
            .issue(&LeafSpec::client("inventory", "inventory").dns(INVENTORY_DNS))
    }

    /// The server CA file.
    pub fn server_ca_file(&self) -> &Path {
        &self.server_ca.cert
    }
}

/// The start of every mTLS test: when `openssl` and `curl` run (see
/// [`crate::pki::tools_present`]: skip outside CI, fail under `CI=true`), a fresh PKI and a
/// TLS broker trusting both client CAs with [`mtls_policies`].
pub fn mtls_broker(test: &str) -> Option<(Mtls, crate::TestBroker)> {
    if !crate::pki::tools_present(test, &["openssl", "curl"]) {
        return None;
    }
    let m = Mtls::new();
    let b = crate::TestBroker::start(m.options());
    assert!(
        b.base_url().starts_with("https://"),
        "a TLS broker announces an https URL: {}",
        b.base_url()
    );
    Some((m, b))
}
