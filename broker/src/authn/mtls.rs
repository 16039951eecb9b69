//! mTLS callers: what a verified client certificate says, and which registry identity it
//! proves.
//!
//! The TLS layer ([`crate::tls`]) has already verified the chain to a configured CA
//! (validity window, client-auth usage where present). This module reads the leaf's
//! names: the SPIFFE ID from the URI SAN (exactly one), else the subject CN and DNS SANs,
//! and enforces the CA's SPIFFE trust domain. Certificate bytes are never logged; the
//! SHA-256 fingerprint is.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::policy::{Identity, PolicySet};

/// A verified client certificate, as the handlers see it (request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// RFC 8705 thumbprint: base64url SHA-256 of the DER leaf certificate.
    pub x5t_s256: String,
    /// Hex SHA-256 of the DER leaf (for logs and audit records).
    pub sha256_hex: String,
    /// SPIFFE IDs in the URI SANs.
    pub spiffe_ids: Vec<String>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// Subject common name.
    pub subject_cn: Option<String>,
    /// The configured CA that verified the chain.
    pub ca_name: Option<String>,
    /// That CA's SPIFFE trust domain.
    pub trust_domain: Option<String>,
}

/// Request extension present when the connection presented a client certificate: the
/// verified certificate's names, or why they could not be read.
#[derive(Debug, Clone)]
pub struct ClientCert(pub std::sync::Arc<Result<PeerCert, String>>);

/// Why a certificate does not prove an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRefusal {
    /// Stable rule name for the audit log.
    pub rule: &'static str,
    /// Operator-readable reason.
    pub reason: String,
}

impl PeerCert {
    /// Reads the names of a DER leaf certificate.
    pub fn from_der(
        der: &[u8],
        ca_name: Option<String>,
        trust_domain: Option<String>,
    ) -> Result<Self, String> {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| format!("client certificate is not parseable X.509: {e}"))?;
        let mut spiffe_ids = Vec::new();
        let mut dns_names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) if u.starts_with("spiffe://") => {
                        spiffe_ids.push((*u).to_owned())
                    }
                    GeneralName::DNSName(d) => dns_names.push(d.to_ascii_lowercase()),
                    _ => {}
                }
            }
        }
        let subject_cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        Ok(Self {
            x5t_s256: URL_SAFE_NO_PAD.encode(digest.as_ref()),
            sha256_hex: crate::hex::to_hex(digest.as_ref()),
            spiffe_ids,
            dns_names,
            subject_cn,
            ca_name,
            trust_domain,
        })
    }

    /// The one SPIFFE ID of the certificate, checked against the CA's trust domain.
    pub fn spiffe_id(&self) -> Result<Option<&str>, CertRefusal> {
        match self.spiffe_ids.as_slice() {
            [] => Ok(None),
            [one] => {
                let td = one
                    .strip_prefix("spiffe://")
                    .and_then(|rest| rest.split('/').next())
                    .unwrap_or_default();
                match &self.trust_domain {
                    Some(expected) if expected == td => Ok(Some(one.as_str())),
                    Some(expected) => Err(CertRefusal {
                        rule: "spiffe_id_outside_trust_domain",
                        reason: format!(
                            "certificate SPIFFE ID {one} is outside trust domain {expected} of CA {}",
                            self.ca_name.as_deref().unwrap_or("?")
                        ),
                    }),
                    // A CA that declares no trust domain is not a SPIFFE authority: it
                    // must not vouch for SPIFFE IDs (of any trust domain).
                    None => Err(CertRefusal {
                        rule: "spiffe_id_outside_trust_domain",
                        reason: format!(
                            "certificate SPIFFE ID {one} comes from CA {}, which declares no trust_domain, so it cannot vouch for SPIFFE IDs",
                            self.ca_name.as_deref().unwrap_or("?")
                        ),
                    }),
                }
            }
            many => Err(CertRefusal {
                rule: "multiple_spiffe_ids",
                reason: format!(
                    "certificate carries {} SPIFFE IDs; an SVID has exactly one",
                    many.len()
                ),
            }),
        }
    }

    /// The registry identity this certificate proves.
    pub fn identity<'p>(&self, policies: &'p PolicySet) -> Result<&'p Identity, CertRefusal> {
        if let Some(id) = self.spiffe_id()? {
            return policies.match_spiffe_id(id).ok_or_else(|| CertRefusal {
                rule: "unknown_identity",
                reason: format!(
                    "no registered identity matches SPIFFE ID {id}: register it with an [[identity.match]] spiffe_id"
                ),
            });
        }
        policies
            .match_cert(
                self.subject_cn.as_deref(),
                &self.dns_names,
                self.ca_name.as_deref(),
            )
            .ok_or_else(|| CertRefusal {
                rule: "unknown_identity",
                reason: format!(
                    "no registered identity matches certificate subject CN {:?} / DNS names {:?} from CA {} (SHA-256 {})",
                    self.subject_cn.as_deref().unwrap_or(""),
                    self.dns_names,
                    self.ca_name.as_deref().unwrap_or("?"),
                    self.sha256_hex
                ),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ids: &[&str], td: Option<&str>) -> PeerCert {
        PeerCert {
            x5t_s256: String::new(),
            sha256_hex: String::new(),
            spiffe_ids: ids.iter().map(|s| s.to_string()).collect(),
            dns_names: vec![],
            subject_cn: None,
            ca_name: Some("ca".into()),
            trust_domain: td.map(str::to_owned),
        }
    }

    #[test]
    fn exactly_one_spiffe_id_inside_the_trust_domain() {
        assert_eq!(
            peer(&["spiffe://prod.example.org/a"], Some("prod.example.org")).spiffe_id(),
            Ok(Some("spiffe://prod.example.org/a"))
        );
        assert_eq!(
            peer(&["spiffe://dev.example.org/a"], Some("prod.example.org"))
                .spiffe_id()
                .unwrap_err()
                .rule,
            "spiffe_id_outside_trust_domain"
        );
        assert_eq!(
            peer(
                &["spiffe://prod.example.org/a", "spiffe://prod.example.org/b"],
                None
            )
            .spiffe_id()
            .unwrap_err()
            .rule,
            "multiple_spiffe_ids"
        );
        assert_eq!(peer(&[], None).spiffe_id(), Ok(None));
        assert_eq!(
            peer(&["spiffe://prod.example.org/a"], None)
                .spiffe_id()
                .unwrap_err()
                .rule,
            "spiffe_id_outside_trust_domain",
            "a CA without a trust domain cannot vouch for SPIFFE IDs"
        );
    }
}
