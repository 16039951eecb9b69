//! The serde model of one registry file, exactly as written.
//!
//! Every table rejects unknown keys. Nothing here is validated beyond types: checking and
//! compiling into the runtime types happens in [`super::load`] ("parse, don't validate":
//! only [`super::load`] produces a [`super::PolicySet`], and it never produces one from a
//! file that fails a check).

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};

/// One registry file: one identity and its tasks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyFile {
    /// `[identity]`.
    pub(crate) identity: IdentityFile,
    /// `[[task]]`.
    #[serde(default)]
    pub(crate) task: Vec<TaskFile>,
}

/// `[identity]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IdentityFile {
    pub(crate) id: String,
    pub(crate) owner: String,
    pub(crate) steward: String,
    pub(crate) purpose: String,
    pub(crate) environment: String,
    pub(crate) ticket: String,
    #[serde(default)]
    pub(crate) approved_by: Option<String>,
    /// A date, written either as a string (`"2027-02-01"`) or as a TOML date (`2027-02-01`).
    pub(crate) expires: DateText,
    #[serde(default)]
    pub(crate) third_party: bool,
    /// A resource server allowed to introspect tokens and read the revocation feed.
    #[serde(default)]
    pub(crate) may_introspect: bool,
    /// What anomalies do: `alert` (default) or `deny`.
    #[serde(default)]
    pub(crate) anomaly_action: Option<String>,
    /// `[[identity.match]]`.
    #[serde(default, rename = "match")]
    pub(crate) matchers: Vec<MatchFile>,
}

/// `[[identity.match]]`: exactly one kind must be set (checked by the loader).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MatchFile {
    #[serde(default)]
    pub(crate) spiffe_id: Option<String>,
    #[serde(default)]
    pub(crate) issuer: Option<String>,
    #[serde(default)]
    pub(crate) subject: Option<String>,
    #[serde(default)]
    pub(crate) claims: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub(crate) cert_subject: Option<String>,
    #[serde(default)]
    pub(crate) dns_name: Option<String>,
    /// For `cert_subject` / `dns_name`: the `[[client_ca]]` (by name) the certificate must
    /// chain to.
    #[serde(default)]
    pub(crate) ca: Option<String>,
}

/// `[[task]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TaskFile {
    pub(crate) name: String,
    pub(crate) audience: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) max_ttl: String,
    #[serde(default)]
    pub(crate) source_cidrs: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) require_binding: BindingFile,
    /// Token bucket for this task, e.g. `"10/m"` (burst = the count).
    #[serde(default)]
    pub(crate) rate_limit: Option<String>,
    /// `[[task.delegation]]`: who may act for this identity on this task.
    #[serde(default)]
    pub(crate) delegation: Vec<DelegationFile>,
}

/// `require_binding`: `true` or `"mtls"` (certificate-bound, RFC 8705), `"dpop"` (DPoP-
/// bound, RFC 9449), or `false` (default).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(untagged)]
pub(crate) enum BindingFile {
    /// `true` (mTLS) or `false`.
    Flag(bool),
    /// `"mtls"` or `"dpop"`.
    Kind(String),
    /// Not set.
    #[default]
    #[serde(skip)]
    Unset,
}

/// `[[task.delegation]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DelegationFile {
    pub(crate) actors: Vec<String>,
    #[serde(default)]
    pub(crate) scopes: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) max_ttl: Option<String>,
    #[serde(default)]
    pub(crate) max_depth: Option<usize>,
}

/// The text of a date value: a TOML string, or a TOML date/datetime rendered back to text
/// (so that the loader can say "must be a date" about `2027-02-01T10:00:00Z`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DateText(pub(crate) String);

impl<'de> Deserialize<'de> for DateText {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DateText;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a date such as \"2027-02-01\"")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<DateText, E> {
                Ok(DateText(v.to_owned()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<DateText, A::Error> {
                // The toml deserializer presents native dates as a private one-key map;
                // `Datetime`'s own impl knows how to read it.
                let dt =
                    toml::value::Datetime::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(DateText(dt.to_string()))
            }
        }
        deserializer.deserialize_any(V)
    }
}
