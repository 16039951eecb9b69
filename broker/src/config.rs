//! The broker config file (TOML): parsed into [`FileConfig`] with unknown keys rejected,
//! then validated into [`Config`] with typed paths, durations and addresses.
//!
//! Relative paths are resolved against the config file's directory. Nothing here is a
//! global: the validated `Config` is passed to [`crate::run`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::mint::keys::SigningAlgorithm;

/// Errors loading or validating the config file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the key and line).
        message: String,
    },
    /// A value is invalid.
    #[error("config {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// The config file as written (serde model; unknown keys are errors).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `iss` of minted tokens.
    pub issuer: String,
    /// The listener.
    pub listen: ListenFile,
    /// Signing keys.
    pub signing: SigningFile,
    /// The audit log.
    pub audit: AuditFile,
    /// The registry and task policies.
    pub policies: PoliciesFile,
    /// Workload-JWT issuers the broker trusts.
    #[serde(default)]
    pub trusted_issuer: Vec<TrustedIssuerFile>,
    /// The audience catalogue: every audience a task may name, with its environment.
    #[serde(default)]
    pub audience: Vec<AudienceEntry>,
    /// Certificate authorities whose client certificates the broker accepts (mTLS).
    #[serde(default)]
    pub client_ca: Vec<ClientCaFile>,
    /// Where revocations and disabled identities are kept.
    #[serde(default)]
    pub state: Option<StateFile>,
    /// Which state store: the embedded file journal (default) or PostgreSQL.
    #[serde(default)]
    pub store: Option<StoreFile>,
    /// Admin identities and their roles.
    #[serde(default)]
    pub admin: Vec<AdminFile>,
    /// Break-glass settings.
    #[serde(default)]
    pub break_glass: Option<BreakGlassFile>,
    /// NHI governance settings.
    #[serde(default)]
    pub governance: Option<GovernanceFile>,
    /// `[http]`: connection and request limits ([`crate::http_limits`]).
    #[serde(default)]
    pub http: Option<crate::http_limits::HttpFile>,
    /// `[dpop]`: DPoP proofs at the token endpoint ([`crate::dpop`]).
    #[serde(default)]
    pub dpop: Option<crate::dpop::DpopFile>,
    /// `[console]`: the operator console (`[console.oidc]`: sign-in with the company's
    /// identity provider, [`crate::console::oidc_config`]).
    #[serde(default)]
    pub console: Option<crate::console::oidc_config::ConsoleFile>,
}

/// `[governance]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovernanceFile {
    /// Issuance rate limit of every identity, e.g. `"100/s"` (burst = the count).
    #[serde(default)]
    pub identity_rate_limit: Option<String>,
    /// A registration expiring within this window still gets tokens, with the deadline
    /// in the `Registration-Expires` response header and the audit record (default `30d`).
    #[serde(default)]
    pub expiring_window: Option<String>,
    /// An identity with no issuance for this long is `dormant` (default `30d`).
    #[serde(default)]
    pub dormant_after: Option<String>,
    /// Behavioural monitoring on (default) or off.
    #[serde(default)]
    pub monitoring: Option<bool>,
    /// Default anomaly action: `alert` (default) or `deny`.
    #[serde(default)]
    pub anomaly_action: Option<String>,
    /// Third-party identities may be registered at most this far ahead (e.g. `90d`);
    /// enforced when policies are loaded and by `broker policy lint`.
    #[serde(default)]
    pub third_party_max_registration: Option<String>,
    /// Volume-spike window (default `60s`).
    #[serde(default)]
    pub volume_window: Option<String>,
    /// A window over this factor × the identity's baseline is a spike (default 10).
    #[serde(default)]
    pub volume_factor: Option<f64>,
    /// ...if it is also over this many requests (default 100).
    #[serde(default)]
    pub volume_floor: Option<u64>,
}

/// `[break_glass]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassFile {
    /// Every grant event is POSTed here as JSON (with retries).
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// How long a grant may wait for approval before it expires (default `1h`).
    #[serde(default)]
    pub pending_ttl: Option<String>,
}

/// `[state]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    /// Directory of the embedded state store (default `state`).
    pub dir: PathBuf,
}

/// `[store]`: where shared state lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    /// `file` (default: the journal in `[state] dir`) or `postgres`.
    pub kind: String,
    /// PostgreSQL: a libpq URL or key/value string, without a password.
    #[serde(default)]
    pub url: Option<String>,
    /// PostgreSQL: a file holding the password (trailing newline ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PostgreSQL: an environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// PostgreSQL: `disable` (loopback or a socket directory only) or `verify-full`.
    #[serde(default)]
    pub sslmode: Option<String>,
    /// PostgreSQL with `verify-full`: PEM bundle of the CAs of the database certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PostgreSQL: a replica that has not confirmed its view of the shared state for this
    /// long refuses to issue or introspect (503) until it has (default `1s`).
    #[serde(default)]
    pub max_staleness: Option<String>,
    /// How far replicas' clocks may disagree (`"2s"`): a revocation rule's cut-off
    /// reaches this far past its time (shared store only).
    #[serde(default)]
    pub max_clock_skew: Option<String>,
    /// This replica's name (`[A-Za-z0-9._-]`, up to 64): in every audit record, its
    /// checkpoints and its published keys. Required with `kind = "postgres"`; each
    /// replica on one database needs its own.
    #[serde(default)]
    pub replica_id: Option<String>,
}

/// The validated `[store]`.
#[derive(Debug, Clone)]
pub enum StoreKind {
    /// The embedded journal in `state_dir`.
    File,
    /// PostgreSQL.
    Postgres(crate::store::postgres::PostgresOptions),
}

impl StoreFile {
    fn validate(
        &self,
        resolve: &dyn Fn(&Path) -> PathBuf,
        invalid: &dyn Fn(String) -> ConfigError,
    ) -> Result<StoreKind, ConfigError> {
        use crate::store::postgres::{PgTls, PostgresOptions};
        match self.kind.as_str() {
            "file" => {
                if self.url.is_some() || self.password_file.is_some() || self.password_env.is_some()
                {
                    return Err(invalid(
                        "store: url and password settings are for kind = \"postgres\"".into(),
                    ));
                }
                Ok(StoreKind::File)
            }
            "postgres" => {
                if self.replica_id.is_none() {
                    return Err(invalid(
                        "store: kind = \"postgres\" needs replica_id (a name unique among the replicas, e.g. \"broker-a\")".into(),
                    ));
                }
                let url = self.url.clone().ok_or_else(|| {
                    invalid("store: kind = \"postgres\" needs url (e.g. \"postgres://broker@db.internal/broker\")".into())
                })?;
                let password = match (&self.password_file, &self.password_env) {
                    (Some(_), Some(_)) => {
                        return Err(invalid(
                            "store: set password_file or password_env, not both".into(),
                        ));
                    }
                    (Some(file), None) => {
                        let file = resolve(file);
                        let text = std::fs::read_to_string(&file).map_err(|e| {
                            invalid(format!("store.password_file {}: {e}", file.display()))
                        })?;
                        Some(zeroize::Zeroizing::new(
                            text.trim_end_matches(['\r', '\n']).to_owned(),
                        ))
                    }
                    (None, Some(var)) => Some(zeroize::Zeroizing::new(
                        std::env::var(var).map_err(|_| {
                            invalid(format!(
                                "store.password_env: environment variable {var} is not set"
                            ))
                        })?,
                    )),
                    (None, None) => None,
                };
                let tls = match (
                    self.sslmode.as_deref().unwrap_or("verify-full"),
                    &self.ca_file,
                ) {
                    ("disable", None) => PgTls::Disable,
                    ("disable", Some(_)) => {
                        return Err(invalid(
                            "store: ca_file needs sslmode = \"verify-full\"".into(),
                        ));
                    }
                    ("verify-full", Some(ca)) => PgTls::VerifyFull {
                        ca_file: resolve(ca),
                    },
                    ("verify-full", None) => {
                        return Err(invalid(
                            "store: sslmode = \"verify-full\" (the default) needs ca_file, the CA bundle of the database certificate; use sslmode = \"disable\" only for a database on loopback or a unix socket".into(),
                        ));
                    }
                    (other, _) => {
                        return Err(invalid(format!(
                            "store.sslmode = {other:?}: use \"verify-full\" or \"disable\" (an unverified TLS channel, libpq's \"require\", is not offered)"
                        )));
                    }
                };
                let opts = PostgresOptions { url, password, tls };
                let cfg = opts.config().map_err(|e| invalid(format!("store: {e}")))?;
                if opts.tls == PgTls::Disable {
                    let local = cfg.get_hosts().iter().all(|h| match h {
                        tokio_postgres::config::Host::Unix(_) => true,
                        tokio_postgres::config::Host::Tcp(name) => {
                            name == "localhost"
                                || name
                                    .parse::<std::net::IpAddr>()
                                    .is_ok_and(|ip| ip.is_loopback())
                        }
                    });
                    if !local {
                        return Err(invalid(
                            "store: sslmode = \"disable\" is only allowed for a database on loopback or a unix socket; use \"verify-full\" with ca_file".into(),
                        ));
                    }
                }
                Ok(StoreKind::Postgres(opts))
            }
            other => Err(invalid(format!(
                "store.kind = {other:?}: use \"file\" or \"postgres\""
            ))),
        }
    }
}

/// `[[admin]]`: an admin identity, proven like a workload (mTLS or a trusted JWT).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// Name recorded in the audit log as the actor.
    pub name: String,
    /// Roles: `revoke`, `read_audit`, `break_glass_approve`, `admin` (all of them).
    pub roles: Vec<String>,
    /// SPIFFE ID of the admin's client certificate.
    #[serde(default)]
    pub spiffe_id: Option<String>,
    /// Subject CN of the admin's client certificate.
    #[serde(default)]
    pub cert_subject: Option<String>,
    /// Issuer of the admin's JWT (with `subject`).
    #[serde(default)]
    pub issuer: Option<String>,
    /// Subject of the admin's JWT.
    #[serde(default)]
    pub subject: Option<String>,
}

/// An admin role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Revoke tokens, disable and enable identities.
    Revoke,
    /// Read the audit log and reports.
    ReadAudit,
    /// Approve break-glass grants.
    BreakGlassApprove,
    /// Everything.
    Admin,
}

impl Role {
    /// The role a config names (`revoke`, `read_audit`, `break_glass_approve`, `admin`).
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "revoke" => Some(Role::Revoke),
            "read_audit" => Some(Role::ReadAudit),
            "break_glass_approve" => Some(Role::BreakGlassApprove),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Revoke => "revoke",
            Role::ReadAudit => "read_audit",
            Role::BreakGlassApprove => "break_glass_approve",
            Role::Admin => "admin",
        }
    }
}

/// How an admin proves who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminMatch {
    /// Client certificate SPIFFE ID.
    SpiffeId(String),
    /// Client certificate subject CN.
    CertSubject(String),
    /// JWT issuer and subject.
    Jwt {
        /// Issuer.
        issuer: String,
        /// Subject.
        subject: String,
    },
}

/// A validated `[[admin]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// Name (the audit actor).
    pub name: String,
    /// Roles.
    pub roles: Vec<Role>,
    /// Credential.
    pub matcher: AdminMatch,
}

impl Admin {
    /// Whether the admin holds `role` (the `admin` role holds all).
    pub fn has(&self, role: Role) -> bool {
        self.roles.iter().any(|r| *r == role || *r == Role::Admin)
    }
}

/// `[[client_ca]]`: one trusted client-certificate authority (one trust domain).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCaFile {
    /// A name for logs and audit records.
    pub name: String,
    /// PEM bundle of the CA certificate(s).
    pub bundle: PathBuf,
    /// SPIFFE trust domain: SPIFFE IDs in certificates from this CA must be in it.
    #[serde(default)]
    pub trust_domain: Option<String>,
}

/// A validated `[[client_ca]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCa {
    /// Name.
    pub name: String,
    /// PEM bundle path.
    pub bundle: PathBuf,
    /// SPIFFE trust domain, if the CA issues SVIDs.
    pub trust_domain: Option<String>,
}

/// `[listen]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    /// Socket address, e.g. `127.0.0.1:8443`.
    pub addr: String,
    /// Server certificate chain (PEM).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Plain HTTP; allowed only on a loopback address.
    #[serde(default)]
    pub insecure_http: bool,
    /// Largest accepted request body, bytes (default 16384).
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
    /// Whole-request timeout (default `10s`).
    #[serde(default)]
    pub request_timeout: Option<String>,
}

/// `[signing]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningFile {
    /// Directory of PKCS#8 PEM keys made by `broker keygen`.
    pub key_dir: PathBuf,
    /// `ES256` or `EdDSA`: the algorithm tokens are signed with unless their audience
    /// names another (default: the newest key's). The key directory must hold a key of
    /// it (a missing one stops the start).
    #[serde(default)]
    pub algorithm: Option<String>,
    /// Rotate each signing key after this long (default: only on demand).
    #[serde(default)]
    pub rotate_every: Option<String>,
    /// How long a new key is published before it signs (default `1h`; at least
    /// `jwks_max_age`).
    #[serde(default)]
    pub prepublish: Option<String>,
    /// How long the JWKS may be cached (`Cache-Control: max-age`, default `5m`).
    #[serde(default)]
    pub jwks_max_age: Option<String>,
    /// How far ahead an active key's publication is guaranteed (default `24h`, the
    /// longest token lifetime): no token outlives it, and a key that stops signing stays
    /// published this long.
    #[serde(default)]
    pub key_lease: Option<String>,
    /// The signing key in a PKCS#11 token (`pkcs11 = { module, slot, token_label,
    /// pin_file, key_label }`): it is the newest key, so it signs; `key_dir` may then
    /// hold no key file. Not with `rotate_every`.
    #[serde(default)]
    pub pkcs11: Option<crate::mint::pkcs11::Pkcs11Config>,
}

/// `[audit]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFile {
    /// Directory of the log segments and the head anchor.
    pub dir: PathBuf,
    /// Segment size before rotation, bytes (default 64 MiB).
    #[serde(default)]
    pub segment_max_bytes: Option<u64>,
}

/// `[policies]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoliciesFile {
    /// Directory of registry/policy TOML files.
    pub dir: PathBuf,
    /// How often the directory is checked for changes (default `2s`).
    #[serde(default)]
    pub reload_interval: Option<String>,
}

/// `[[trusted_issuer]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedIssuerFile {
    /// Expected `iss`.
    pub issuer: String,
    /// Accepted `aud` values; at least one must be in the token.
    pub audiences: Vec<String>,
    /// Algorithm allow-list (`RS256`, `RS384`, `RS512`, `PS256`, `PS384`, `PS512`,
    /// `ES256`, `ES384`, `EdDSA`). `none` and HMAC are never accepted.
    pub algorithms: Vec<String>,
    /// Local JWKS file.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Remote JWKS URL.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Use OIDC discovery (`{issuer}/.well-known/openid-configuration`).
    #[serde(default)]
    pub discovery: bool,
    /// Clock-skew leeway for `exp`/`nbf`/`iat` (default `30s`, at most `5m`).
    #[serde(default)]
    pub leeway: Option<String>,
    /// PEM CA bundle for fetching the JWKS over HTTPS (default: the web PKI roots are
    /// not bundled, so set this for HTTPS issuers).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// JWS `typ` header values accepted (RFC 8725 §3.11), compared without case and
    /// without an `application/` prefix; a token without `typ` is always accepted.
    /// Default `["JWT"]`. `at+jwt` (an access token) is never accepted.
    #[serde(default)]
    pub token_types: Option<Vec<String>>,
    /// Longest lifetime (`exp - iat`, or `exp - now` without `iat`) accepted (default
    /// `24h`, at most `365d`).
    #[serde(default)]
    pub max_lifetime: Option<String>,
    /// Oldest `iat` accepted, as an age (default: none beyond `max_lifetime`).
    #[serde(default)]
    pub max_age: Option<String>,
    /// Each token (by `jti`, which is then required) is accepted once within its
    /// lifetime. Off by default: Kubernetes projected tokens are reused by design.
    #[serde(default)]
    pub single_use: bool,
}

/// `[[audience]]`: one entry of the audience catalogue.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AudienceEntry {
    /// The audience URI (the `aud` of minted tokens).
    pub uri: String,
    /// The environment (trust zone) the audience lives in.
    pub environment: String,
    /// The algorithm this audience's tokens are signed with (`ES256` or `EdDSA`), for
    /// relying parties that take only one; default `[signing] algorithm`. The key
    /// directory must hold a key of it.
    #[serde(default)]
    pub algorithm: Option<SigningAlgorithm>,
}

/// The validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// `iss` of minted tokens.
    pub issuer: String,
    /// Listener address.
    pub addr: SocketAddr,
    /// TLS material, or `None` for plain HTTP on loopback.
    pub tls: Option<TlsFiles>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Whole-request timeout.
    pub request_timeout: Duration,
    /// Key directory.
    pub key_dir: PathBuf,
    /// `[signing] pkcs11`, its paths resolved: the signing key in a PKCS#11 token.
    pub pkcs11: Option<crate::mint::pkcs11::Pkcs11Config>,
    /// `[signing] algorithm` when set: the signing key must use it (checked at start).
    pub algorithm: Option<SigningAlgorithm>,
    /// Key rotation (`[signing] rotate_every`, `prepublish`, `key_lease`).
    pub rotation: crate::mint::lifecycle::RotationPolicy,
    /// `[signing] jwks_max_age`.
    pub jwks_max_age: Duration,
    /// Audit directory.
    pub audit_dir: PathBuf,
    /// Segment rotation size.
    pub audit_segment_max_bytes: u64,
    /// Policy directory.
    pub policy_dir: PathBuf,
    /// Policy change poll interval.
    pub policy_reload_interval: Duration,
    /// Trusted workload-JWT issuers.
    pub trusted_issuers: Vec<TrustedIssuer>,
    /// The audience catalogue.
    pub audiences: Vec<AudienceEntry>,
    /// Trusted client-certificate authorities (empty: mTLS off).
    pub client_cas: Vec<ClientCa>,
    /// State store directory (the file store's journal, and per-replica usage).
    pub state_dir: PathBuf,
    /// Which state store.
    pub store: StoreKind,
    /// Longest a replica serves on an unconfirmed view of a shared store.
    pub store_max_staleness: Duration,
    /// How far replicas' clocks may disagree (shared store only).
    pub store_max_clock_skew: Duration,
    /// This replica's name (`[store] replica_id`), in audit records and checkpoints.
    pub replica_id: Option<String>,
    /// Admin identities.
    pub admins: Vec<Admin>,
    /// Break-glass webhook.
    pub break_glass_webhook: Option<String>,
    /// How long an unapproved grant waits.
    pub break_glass_pending_ttl: Duration,
    /// Per-identity issuance rate limit.
    pub identity_rate_limit: Option<crate::ratelimit::Rate>,
    /// Recertification warning window.
    pub expiring_window: Duration,
    /// Dormancy threshold.
    pub dormant_after: Duration,
    /// Default anomaly action.
    pub anomaly_action: crate::anomaly::AnomalyAction,
    /// Volume-spike settings.
    pub volume: crate::anomaly::VolumeSettings,
    /// Whether behavioural monitoring runs.
    pub monitoring: bool,
    /// Longest registration of a third-party identity.
    pub third_party_max_registration: Option<Duration>,
    /// Connection and request limits (`[http]`).
    pub http: crate::http_limits::HttpLimits,
    /// DPoP settings (`[dpop]`).
    pub dpop: crate::dpop::DpopSettings,
    /// `[console.oidc]`, validated: console sign-in through an OpenID Connect provider.
    pub console_oidc: Option<crate::console::oidc_config::OidcSettings>,
}

impl Config {
    /// The names of the configured client CAs.
    pub fn client_ca_names(&self) -> Vec<String> {
        self.client_cas.iter().map(|c| c.name.clone()).collect()
    }

    /// The SPIFFE trust domains of the configured client CAs.
    pub fn trust_domains(&self) -> Vec<String> {
        self.client_cas
            .iter()
            .filter_map(|c| c.trust_domain.clone())
            .collect()
    }
}

/// Server TLS files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain PEM.
    pub cert: PathBuf,
    /// Private key PEM.
    pub key: PathBuf,
}

/// Where a trusted issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A local file, re-read when the key set expires (5 min) or a token names an unknown
    /// `kid` (at most once per 10 s).
    File(PathBuf),
    /// A URL.
    Uri(String),
    /// OIDC discovery from the issuer URL.
    Discovery,
}

/// A validated `[[trusted_issuer]]`.
#[derive(Debug, Clone)]
pub struct TrustedIssuer {
    /// Expected `iss`.
    pub issuer: String,
    /// Accepted audiences.
    pub audiences: Vec<String>,
    /// Allowed algorithms (validated names).
    pub algorithms: Vec<String>,
    /// Key source.
    pub jwks: JwksSource,
    /// Leeway.
    pub leeway: Duration,
    /// CA bundle for HTTPS fetches.
    pub ca_file: Option<PathBuf>,
    /// Accepted `typ` values, lowercase, without `application/`.
    pub token_types: Vec<String>,
    /// Longest accepted lifetime.
    pub max_lifetime: Duration,
    /// Oldest accepted `iat`, as an age.
    pub max_age: Option<Duration>,
    /// `jti` required and accepted once.
    pub single_use: bool,
}

impl TrustedIssuer {
    /// An issuer with the default token checks (`typ` JWT or absent, 24 h lifetime,
    /// reusable tokens), as the config loader builds it when those keys are unset.
    pub fn with_defaults(
        issuer: &str,
        audiences: &[&str],
        algorithms: &[&str],
        jwks: JwksSource,
    ) -> Self {
        Self {
            issuer: issuer.to_owned(),
            audiences: audiences.iter().map(|s| (*s).to_owned()).collect(),
            algorithms: algorithms.iter().map(|s| (*s).to_owned()).collect(),
            jwks,
            leeway: Duration::from_secs(30),
            ca_file: None,
            token_types: vec!["jwt".into()],
            max_lifetime: DEFAULT_MAX_TOKEN_LIFETIME,
            max_age: None,
            single_use: false,
        }
    }
}

/// The default `max_lifetime` of a trusted issuer's tokens.
pub const DEFAULT_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A JWS `typ` as compared: lowercase, without the `application/` prefix (RFC 7515 §4.1.9).
pub fn normalized_typ(typ: &str) -> String {
    let t = typ.trim().to_ascii_lowercase();
    t.strip_prefix("application/")
        .map(str::to_owned)
        .unwrap_or(t)
}

#[cfg(test)]
mod duration_regressions {
    /// Found by the `config_toml` fuzz target: adding the parts overflowed `Duration`.
    #[test]
    fn an_overflowing_duration_is_an_error_not_a_panic() {
        let e = super::parse_duration("99999s00000000007386721425538678782d").unwrap_err();
        assert!(e.contains("too"), "{e}");
        assert!(super::parse_duration(&format!("{}s{}s", u64::MAX, u64::MAX)).is_err());
    }
}

/// The JWS algorithms a trusted issuer may be allowed to use.
pub const ACCEPTABLE_ISSUER_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// Whether the broker may fetch a trusted issuer's keys (or discovery document) from
/// `url`: `https`, or plain `http` only to a loopback host (`127.0.0.0/8`, `::1`,
/// `localhost`), the same rule as `listen.insecure_http`. Anything else would let whoever
/// sits on the network path hand the broker signing keys. Checked at config load, for every
/// discovered `jwks_uri`, and for every redirect.
pub fn key_fetch_url_allowed(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let host = parsed
        .host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(format!(
            "{url:?} is plain http: signing keys are fetched over https only (plain http only from a loopback address), or load them from a jwks_file"
        )),
        other => Err(format!("{url:?}: scheme {other:?} is not https")),
    }
}

/// Parses `"500ms"`, `"30s"`, `"10m"`, `"1h"`, `"2d"` or combinations such as `"1h30m"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        if num.is_empty() {
            return Err(format!(
                "invalid duration {s:?}: expected e.g. \"30s\", \"10m\", \"1h\""
            ));
        }
        let n: u64 = num
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: number too large"))?;
        num.clear();
        let unit = match c {
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                Duration::from_millis(n)
            }
            's' => Duration::from_secs(n),
            'm' => Duration::from_secs(n.saturating_mul(60)),
            'h' => Duration::from_secs(n.saturating_mul(3600)),
            'd' => Duration::from_secs(n.saturating_mul(86400)),
            _ => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {c:?} (use ms, s, m, h, d)"
                ));
            }
        };
        total = total
            .checked_add(unit)
            .ok_or_else(|| format!("invalid duration {s:?}: too long"))?;
    }
    if !num.is_empty() {
        return Err(format!(
            "invalid duration {s:?}: missing unit (write \"{num}s\" for seconds)"
        ));
    }
    Ok(total)
}

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Self::from_toml(&text, path, &base)
    }

    /// Parses and validates config text; `base` resolves relative paths.
    pub fn from_toml(text: &str, path: &Path, base: &Path) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        file.validate(path, base)
    }
}

impl FileConfig {
    /// Validates the file model into a [`Config`].
    pub fn validate(self, path: &Path, base: &Path) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let dur =
            |key: &str, v: &Option<String>, default: Duration| -> Result<Duration, ConfigError> {
                match v {
                    None => Ok(default),
                    Some(s) => parse_duration(s).map_err(|e| invalid(format!("{key}: {e}"))),
                }
            };

        if self.issuer.trim().is_empty() {
            return Err(invalid("issuer must not be empty".into()));
        }
        let addr: SocketAddr = self.listen.addr.parse().map_err(|_| {
            invalid(format!(
                "listen.addr {:?} is not a socket address such as 127.0.0.1:8443",
                self.listen.addr
            ))
        })?;
        let tls = match (
            &self.listen.tls_cert,
            &self.listen.tls_key,
            self.listen.insecure_http,
        ) {
            (Some(c), Some(k), false) => Some(TlsFiles {
                cert: resolve(c),
                key: resolve(k),
            }),
            (_, _, true) => {
                if !addr.ip().is_loopback() {
                    return Err(invalid(format!(
                        "listen.insecure_http = true is only allowed on a loopback address, not {addr}: \
                         configure listen.tls_cert and listen.tls_key"
                    )));
                }
                None
            }
            _ => {
                return Err(invalid(
                    "listen.tls_cert and listen.tls_key are required (TLS is the default); \
                     plain HTTP needs listen.insecure_http = true on a loopback address"
                        .into(),
                ));
            }
        };
        let algorithm = match &self.signing.algorithm {
            None => None,
            Some(a) => Some(a.parse().map_err(|e: crate::mint::keys::KeyError| {
                invalid(format!("signing.algorithm: {e}"))
            })?),
        };

        let rotation = crate::mint::lifecycle::RotationPolicy {
            rotate_every: match &self.signing.rotate_every {
                None => None,
                Some(_) => Some(dur(
                    "signing.rotate_every",
                    &self.signing.rotate_every,
                    Duration::ZERO,
                )?),
            },
            prepublish: dur(
                "signing.prepublish",
                &self.signing.prepublish,
                Duration::from_secs(3600),
            )?,
            lease: dur(
                "signing.key_lease",
                &self.signing.key_lease,
                Duration::from_secs(crate::revocation::MAX_TOKEN_LIFETIME_SECS),
            )?,
        };
        let pkcs11 = self.signing.pkcs11.clone().map(|mut p| {
            p.module = resolve(&p.module);
            p.pin_file = resolve(&p.pin_file);
            p
        });
        let jwks_max_age = dur(
            "signing.jwks_max_age",
            &self.signing.jwks_max_age,
            Duration::from_secs(300),
        )?;
        if jwks_max_age > rotation.prepublish {
            return Err(invalid(format!(
                "signing.prepublish ({}s) must be at least signing.jwks_max_age ({}s): a verifier's cached JWKS must hold a new key before it signs",
                rotation.prepublish.as_secs(),
                jwks_max_age.as_secs()
            )));
        }
        if rotation.lease.is_zero()
            || rotation.lease.as_secs() > crate::revocation::MAX_TOKEN_LIFETIME_SECS
        {
            return Err(invalid(
                "signing.key_lease must be more than 0 and at most 24h".into(),
            ));
        }
        if let Some(every) = rotation.rotate_every
            && every <= rotation.prepublish
        {
            return Err(invalid(format!(
                "signing.rotate_every ({}s) must be longer than signing.prepublish ({}s)",
                every.as_secs(),
                rotation.prepublish.as_secs()
            )));
        }

        let mut trusted_issuers = Vec::new();
        for (i, t) in self.trusted_issuer.iter().enumerate() {
            let at = format!("trusted_issuer[{i}] ({})", t.issuer);
            if t.issuer.is_empty() {
                return Err(invalid(format!("{at}: issuer must not be empty")));
            }
            if trusted_issuers
                .iter()
                .any(|x: &TrustedIssuer| x.issuer == t.issuer)
            {
                return Err(invalid(format!("{at}: issuer listed twice")));
            }
            if t.audiences.is_empty() {
                return Err(invalid(format!(
                    "{at}: audiences must name at least one audience"
                )));
            }
            if t.algorithms.is_empty() {
                return Err(invalid(format!(
                    "{at}: algorithms must list at least one algorithm"
                )));
            }
            for a in &t.algorithms {
                if !ACCEPTABLE_ISSUER_ALGORITHMS.contains(&a.as_str()) {
                    return Err(invalid(format!(
                        "{at}: algorithm {a:?} is not accepted (allowed: {}; `none` and HMAC never are)",
                        ACCEPTABLE_ISSUER_ALGORITHMS.join(", ")
                    )));
                }
            }
            let sources = usize::from(t.jwks_file.is_some())
                + usize::from(t.jwks_uri.is_some())
                + usize::from(t.discovery);
            if sources != 1 {
                return Err(invalid(format!(
                    "{at}: set exactly one of jwks_file, jwks_uri or discovery = true"
                )));
            }
            let jwks = if let Some(f) = &t.jwks_file {
                JwksSource::File(resolve(f))
            } else if let Some(u) = &t.jwks_uri {
                key_fetch_url_allowed(u).map_err(|e| invalid(format!("{at}.jwks_uri: {e}")))?;
                JwksSource::Uri(u.clone())
            } else {
                key_fetch_url_allowed(&t.issuer).map_err(|e| {
                    invalid(format!("{at}: discovery from issuer {:?}: {e}", t.issuer))
                })?;
                JwksSource::Discovery
            };
            let leeway = dur(&format!("{at}.leeway"), &t.leeway, Duration::from_secs(30))?;
            if leeway > Duration::from_secs(300) {
                return Err(invalid(format!("{at}: leeway must be at most 5m")));
            }
            if t.issuer.trim_end_matches('/') == self.issuer.trim_end_matches('/') {
                return Err(invalid(format!(
                    "{at}: the broker's own issuer cannot be a trusted issuer: its access tokens are not identity credentials (RFC 8725 §3.11)"
                )));
            }
            let token_types: Vec<String> = match &t.token_types {
                None => vec!["jwt".into()],
                Some(v) => v.iter().map(|s| normalized_typ(s)).collect(),
            };
            if let Some(bad) = token_types.iter().find(|t| *t == "at+jwt" || t.is_empty()) {
                return Err(invalid(format!(
                    "{at}.token_types: {bad:?} cannot be accepted: access tokens (at+jwt) are never identity credentials"
                )));
            }
            let max_lifetime = dur(
                &format!("{at}.max_lifetime"),
                &t.max_lifetime,
                DEFAULT_MAX_TOKEN_LIFETIME,
            )?;
            if max_lifetime.is_zero() || max_lifetime > Duration::from_secs(365 * 86400) {
                return Err(invalid(format!(
                    "{at}: max_lifetime must be more than 0 and at most 365d"
                )));
            }
            let max_age = match &t.max_age {
                None => None,
                Some(_) => Some(dur(&format!("{at}.max_age"), &t.max_age, Duration::ZERO)?),
            };
            trusted_issuers.push(TrustedIssuer {
                issuer: t.issuer.clone(),
                audiences: t.audiences.clone(),
                algorithms: t.algorithms.clone(),
                jwks,
                leeway,
                ca_file: t.ca_file.as_deref().map(resolve),
                token_types,
                max_lifetime,
                max_age,
                single_use: t.single_use,
            });
        }

        let mut audiences: Vec<AudienceEntry> = Vec::new();
        for a in &self.audience {
            if a.uri.is_empty() || a.environment.is_empty() {
                return Err(invalid(
                    "audience entries need both uri and environment".into(),
                ));
            }
            if audiences.iter().any(|x| x.uri == a.uri) {
                return Err(invalid(format!("audience {:?} is listed twice", a.uri)));
            }
            audiences.push(a.clone());
        }

        let mut client_cas: Vec<ClientCa> = Vec::new();
        for c in &self.client_ca {
            if c.name.is_empty() {
                return Err(invalid("client_ca entries need a name".into()));
            }
            if client_cas.iter().any(|x| x.name == c.name) {
                return Err(invalid(format!("client_ca {:?} is listed twice", c.name)));
            }
            if let Some(td) = &c.trust_domain
                && (td.is_empty() || td.contains('/') || td.contains(':'))
            {
                return Err(invalid(format!(
                    "client_ca {:?}: trust_domain {td:?} must be a bare name such as prod.example.org",
                    c.name
                )));
            }
            client_cas.push(ClientCa {
                name: c.name.clone(),
                bundle: resolve(&c.bundle),
                trust_domain: c.trust_domain.clone(),
            });
        }
        if !client_cas.is_empty() && tls.is_none() {
            return Err(invalid(
                "client_ca needs TLS: set listen.tls_cert and listen.tls_key (mTLS cannot run over plain HTTP)".into(),
            ));
        }

        let mut admins: Vec<Admin> = Vec::new();
        for a in &self.admin {
            let at = format!("admin {:?}", a.name);
            if a.name.is_empty() || admins.iter().any(|x| x.name == a.name) {
                return Err(invalid(format!(
                    "{at}: admin names must be present and unique"
                )));
            }
            let mut roles = Vec::new();
            for r in &a.roles {
                roles.push(Role::parse(r).ok_or_else(|| {
                    invalid(format!(
                        "{at}: unknown role {r:?} (revoke, read_audit, break_glass_approve, admin)"
                    ))
                })?);
            }
            if roles.is_empty() {
                return Err(invalid(format!("{at}: give at least one role")));
            }
            let matcher = match (&a.spiffe_id, &a.cert_subject, &a.issuer, &a.subject) {
                (Some(s), None, None, None) => AdminMatch::SpiffeId(s.clone()),
                (None, Some(c), None, None) => AdminMatch::CertSubject(c.clone()),
                (None, None, Some(i), Some(s)) => AdminMatch::Jwt {
                    issuer: i.clone(),
                    subject: s.clone(),
                },
                _ => {
                    return Err(invalid(format!(
                        "{at}: set exactly one credential: spiffe_id, cert_subject, or issuer + subject"
                    )));
                }
            };
            if let AdminMatch::Jwt { issuer, .. } = &matcher
                && !self.trusted_issuer.iter().any(|t| &t.issuer == issuer)
            {
                return Err(invalid(format!(
                    "{at}: issuer {issuer:?} is not a [[trusted_issuer]]"
                )));
            }
            admins.push(Admin {
                name: a.name.clone(),
                roles,
                matcher,
            });
        }

        let bg = self.break_glass.clone();
        let break_glass_pending_ttl = dur(
            "break_glass.pending_ttl",
            &bg.as_ref().and_then(|b| b.pending_ttl.clone()),
            Duration::from_secs(3600),
        )?;
        let gov = self.governance.clone();
        let identity_rate_limit = match gov.as_ref().and_then(|g| g.identity_rate_limit.as_deref())
        {
            None => None,
            Some(r) => Some(
                crate::ratelimit::Rate::parse(r)
                    .map_err(|e| invalid(format!("governance.identity_rate_limit: {e}")))?,
            ),
        };
        let expiring_window = dur(
            "governance.expiring_window",
            &gov.as_ref().and_then(|g| g.expiring_window.clone()),
            Duration::from_secs(30 * 86400),
        )?;
        let dormant_after = dur(
            "governance.dormant_after",
            &gov.as_ref().and_then(|g| g.dormant_after.clone()),
            Duration::from_secs(30 * 86400),
        )?;
        let anomaly_action = match gov.as_ref().and_then(|g| g.anomaly_action.as_deref()) {
            None => crate::anomaly::AnomalyAction::Alert,
            Some(a) => crate::anomaly::AnomalyAction::parse(a).ok_or_else(|| {
                invalid(format!(
                    "governance.anomaly_action {a:?} must be \"alert\" or \"deny\""
                ))
            })?,
        };
        let volume_window = dur(
            "governance.volume_window",
            &gov.as_ref().and_then(|g| g.volume_window.clone()),
            Duration::from_secs(60),
        )?;
        let volume = crate::anomaly::VolumeSettings {
            window_secs: volume_window.as_secs().max(1),
            factor: gov.as_ref().and_then(|g| g.volume_factor).unwrap_or(10.0),
            floor: gov.as_ref().and_then(|g| g.volume_floor).unwrap_or(100),
        };
        let third_party_max_registration =
            match gov
                .as_ref()
                .and_then(|g| g.third_party_max_registration.as_deref())
            {
                None => None,
                Some(d) => Some(parse_duration(d).map_err(|e| {
                    invalid(format!("governance.third_party_max_registration: {e}"))
                })?),
            };
        let console_oidc = crate::console::oidc_config::OidcSettings::from_file(
            self.console.as_ref().and_then(|c| c.oidc.as_ref()),
            &resolve,
            &self.issuer,
        )
        .map_err(&invalid)?;
        Ok(Config {
            monitoring: gov.as_ref().and_then(|g| g.monitoring).unwrap_or(true),
            third_party_max_registration,
            anomaly_action,
            volume,
            dormant_after,
            identity_rate_limit,
            expiring_window,
            break_glass_webhook: bg.and_then(|b| b.webhook_url),
            break_glass_pending_ttl,
            state_dir: resolve(
                &self
                    .state
                    .as_ref()
                    .map_or_else(|| PathBuf::from("state"), |s| s.dir.clone()),
            ),
            store_max_staleness: dur(
                "store.max_staleness",
                &self.store.as_ref().and_then(|s| s.max_staleness.clone()),
                Duration::from_secs(1),
            )?,
            replica_id: match self.store.as_ref().and_then(|s| s.replica_id.clone()) {
                Some(id) if valid_replica_id(&id) => Some(id),
                Some(id) => {
                    return Err(invalid(format!(
                        "store.replica_id {id:?}: use 1 to 64 of A-Z a-z 0-9 . _ -"
                    )));
                }
                None => None,
            },
            store_max_clock_skew: dur(
                "store.max_clock_skew",
                &self.store.as_ref().and_then(|s| s.max_clock_skew.clone()),
                Duration::from_secs(2),
            )?,
            store: match &self.store {
                Some(s) => s.validate(&resolve, &invalid)?,
                None => StoreKind::File,
            },
            admins,
            client_cas,
            issuer: self.issuer,
            addr,
            tls,
            max_body_bytes: self.listen.max_body_bytes.unwrap_or(16 * 1024),
            request_timeout: dur(
                "listen.request_timeout",
                &self.listen.request_timeout,
                Duration::from_secs(10),
            )?,
            http: crate::http_limits::from_file(self.http.as_ref()).map_err(&invalid)?,
            dpop: crate::dpop::DpopSettings::from_file(self.dpop.as_ref(), &resolve)
                .map_err(&invalid)?,
            console_oidc,
            key_dir: resolve(&self.signing.key_dir),
            pkcs11,
            algorithm,
            rotation,
            jwks_max_age,
            audit_dir: resolve(&self.audit.dir),
            audit_segment_max_bytes: self.audit.segment_max_bytes.unwrap_or(64 * 1024 * 1024),
            policy_dir: resolve(&self.policies.dir),
            policy_reload_interval: dur(
                "policies.reload_interval",
                &self.policies.reload_interval,
                Duration::from_secs(2),
            )?,
            trusted_issuers,
            audiences,
        })
    }
}

/// Whether `id` is a usable replica name.
fn valid_replica_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes `text` to `path` with permission bits `mode` (tests of secret files).
    pub(crate) fn write_file_with_mode(path: &Path, text: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    const SAMPLE: &str = r#"
issuer = "https://broker.example.org"
[listen]
addr = "127.0.0.1:8443"
tls_cert = "tls/server.pem"
tls_key  = "tls/server.key"
insecure_http = false
[signing]
key_dir = "keys"
algorithm = "EdDSA"
[audit]
dir = "audit"
[policies]
dir = "policies"
[[trusted_issuer]]
issuer = "https://kubernetes.default.svc.cluster.local"
audiences = ["jit-broker"]
algorithms = ["RS256", "ES256"]
jwks_file = "k8s-jwks.json"
[[audience]]
uri = "https://ledger.prod.example.org"
environment = "prod"
"#;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("broker.toml"), Path::new("/etc/broker"))
    }

    #[test]
    fn sample_from_the_issue_loads_with_resolved_paths() {
        let c = load(SAMPLE).unwrap();
        assert_eq!(c.key_dir, PathBuf::from("/etc/broker/keys"));
        assert_eq!(
            c.trusted_issuers[0].jwks,
            JwksSource::File("/etc/broker/k8s-jwks.json".into())
        );
        assert_eq!(c.trusted_issuers[0].leeway, Duration::from_secs(30));
        assert!(c.tls.is_some());
    }

    #[test]
    fn the_dpop_nonce_secret_file_is_read_relative_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        write_file_with_mode(
            &dir.path().join("dpop-nonce.secret"),
            "0123456789abcdef0123456789abcdef\n",
            0o600,
        );
        let text = format!(
            "{SAMPLE}[dpop]\nrequire_nonce = true\nnonce_secret_file = \"dpop-nonce.secret\"\n"
        );
        let c = Config::from_toml(&text, &dir.path().join("broker.toml"), dir.path()).unwrap();
        assert!(c.dpop.require_nonce);
        assert!(c.dpop.nonce_secret.is_some());
        // Elsewhere, the relative path names a file that is not there: refused at start.
        let err = load(&text).unwrap_err().to_string();
        assert!(err.contains("/etc/broker/dpop-nonce.secret"), "{err}");
    }

    #[test]
    fn pkcs11_signing_key_resolves_its_paths_and_allows_scheduled_rotation() {
        let text = SAMPLE.replace(
            "algorithm = \"EdDSA\"",
            "pkcs11 = { module = \"lib/softhsm2.so\", token_label = \"broker\", pin_file = \"hsm.pin\", key_label = \"signing-1\" }",
        );
        let c = load(&text).unwrap();
        let p = c.pkcs11.as_ref().unwrap();
        assert_eq!(p.module, PathBuf::from("/etc/broker/lib/softhsm2.so"));
        assert_eq!(p.pin_file, PathBuf::from("/etc/broker/hsm.pin"));
        assert_eq!(p.token_label.as_deref(), Some("broker"));
        assert_eq!(p.slot, None);
        assert_eq!(p.key_label, "signing-1");
        assert!(load(SAMPLE).unwrap().pkcs11.is_none());
        // Scheduled rotation generates the successors in the token.
        let rotating = load(&text.replace(
            "key_dir = \"keys\"",
            "key_dir = \"keys\"\nrotate_every = \"30d\"",
        ))
        .unwrap();
        assert_eq!(
            rotating.rotation.rotate_every,
            Some(Duration::from_secs(30 * 86_400))
        );
        let err = load(&text.replace("key_label", "colour")).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = load(&SAMPLE.replace("[audit]", "[audit]\ncolour = \"red\"")).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn key_fetch_urls_are_https_or_loopback_http() {
        for ok in [
            "https://issuer.example.org/keys",
            "http://127.0.0.1:8080/jwks.json",
            "http://127.1.2.3/jwks.json",
            "http://[::1]:9000/keys",
            "http://localhost/keys",
        ] {
            assert!(key_fetch_url_allowed(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://issuer.example.org/keys",
            "http://10.0.0.1/keys",
            "http://127.0.0.1.evil.example/keys",
            "ftp://issuer.example.org/keys",
            "file:///etc/jwks.json",
            "not a url",
        ] {
            assert!(key_fetch_url_allowed(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plain_http_key_sources_are_refused_at_load() {
        let base = |issuer: &str, source: &str| {
            format!(
                "issuer = \"https://b\"\n[listen]\naddr = \"127.0.0.1:0\"\ninsecure_http = true\n[signing]\nkey_dir = \"k\"\n[audit]\ndir = \"a\"\n[policies]\ndir = \"p\"\n[[trusted_issuer]]\nissuer = \"{issuer}\"\naudiences = [\"x\"]\nalgorithms = [\"RS256\"]\n{source}\n"
            )
        };
        let err = load(&base("https://i", "jwks_uri = \"http://i.example/keys\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("jwks_uri") && err.contains("https"), "{err}");
        let err = load(&base("http://i.example", "discovery = true"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("discovery") && err.contains("https"), "{err}");
        assert!(load(&base("https://i", "jwks_uri = \"https://i/keys\"")).is_ok());
        assert!(load(&base("http://127.0.0.1:1", "discovery = true")).is_ok());
    }

    #[test]
    fn store_settings_are_checked_at_load() {
        let with = |store: &str| load(&format!("{SAMPLE}\n[store]\n{store}\n"));
        assert!(matches!(load(SAMPLE).unwrap().store, StoreKind::File));
        assert!(matches!(
            with("kind = \"file\"").unwrap().store,
            StoreKind::File
        ));
        let pg =
            with("kind = \"postgres\"\nreplica_id = \"a\"\nurl = \"postgres://b@127.0.0.1/b\"\nsslmode = \"disable\"")
                .unwrap();
        assert!(matches!(pg.store, StoreKind::Postgres(_)));
        assert_eq!(pg.store_max_staleness, Duration::from_secs(1));
        assert_eq!(pg.store_max_clock_skew, Duration::from_secs(2));
        assert_eq!(pg.replica_id.as_deref(), Some("a"));
        let refused = |store: &str, needle: &str| {
            let err = with(store).unwrap_err().to_string();
            assert!(err.contains(needle), "{store}: {err}");
            err
        };
        let err = refused(
            "kind = \"postgres\"\nreplica_id = \"a\"\nurl = \"postgres://b:hunter2@127.0.0.1/b\"\nsslmode = \"disable\"",
            "password_file",
        );
        assert!(!err.contains("hunter2"), "{err}");
        refused(
            "kind = \"postgres\"\nreplica_id = \"a\"\nurl = \"postgres://b@db.example.org/b\"\nsslmode = \"disable\"",
            "loopback",
        );
        refused(
            "kind = \"postgres\"\nreplica_id = \"a\"\nurl = \"postgres://b@db.example.org/b\"",
            "ca_file",
        );
        refused(
            "kind = \"postgres\"\nreplica_id = \"a\"\nurl = \"postgres://b@db.example.org/b\"\nsslmode = \"require\"",
            "not offered",
        );
        refused(
            "kind = \"postgres\"\nreplica_id = \"a\"\nurl = \"postgres://b@127.0.0.1/b\"\nsslmode = \"disable\"\npassword_env = \"BROKER_TEST_SURELY_UNSET_VAR\"",
            "is not set",
        );
        refused("kind = \"mysql\"", "\"file\" or \"postgres\"");
        refused(
            "kind = \"file\"\nurl = \"postgres://x\"",
            "kind = \"postgres\"",
        );
        refused("kind = \"file\"\npool = 3", "unknown field");
        refused(
            "kind = \"postgres\"\nurl = \"postgres://b@127.0.0.1/b\"\nsslmode = \"disable\"",
            "replica_id",
        );
        refused(
            "kind = \"postgres\"\nreplica_id = \"a b\"\nurl = \"postgres://b@127.0.0.1/b\"\nsslmode = \"disable\"",
            "store.replica_id",
        );
    }

    #[test]
    fn insecure_http_only_on_loopback() {
        let t = SAMPLE.replace("insecure_http = false", "insecure_http = true");
        assert!(load(&t).unwrap().tls.is_none());
        let t = t.replace("127.0.0.1:8443", "0.0.0.0:8443");
        assert!(load(&t).unwrap_err().to_string().contains("loopback"));
    }

    #[test]
    fn hmac_and_none_cannot_be_allowed() {
        for alg in ["HS256", "none"] {
            let t = SAMPLE.replace(r#"["RS256", "ES256"]"#, &format!("[\"{alg}\"]"));
            assert!(load(&t).unwrap_err().to_string().contains("never"), "{alg}");
        }
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let c = load(include_str!("../../broker.example.toml")).unwrap();
        assert_eq!(c.trusted_issuers.len(), 2);
        assert_eq!(c.trusted_issuers[1].jwks, JwksSource::Discovery);
        assert_eq!(c.audiences.len(), 2);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
    }
}

/// Reads a secret from the file at `path` for the config key `key`: one line of 1 to
/// 1,024 bytes (a trailing newline is dropped), in a file readable by its owner only. The
/// errors name the file and the key, never the content.
pub fn read_secret_file(path: &Path, key: &str) -> Result<zeroize::Zeroizing<String>, String> {
    let shown = path.display();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(path).map_err(|e| format!("{key} {shown}: {e}"))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!("{key} {shown} is readable by others: chmod 600 it"));
        }
    }
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| format!("{key} {shown}: {e}"))?,
    );
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() || secret.len() > 1024 || secret.contains(['\n', '\r']) {
        return Err(format!(
            "{key} {shown} must hold the secret on one line (1 to 1024 bytes)"
        ));
    }
    Ok(zeroize::Zeroizing::new(secret.to_owned()))
}
