#![allow(clippy::unwrap_used, clippy::expect_used)]
//! End-to-end tests of issues 2 and 3: the real `broker` binary, a test workload issuer,
//! real HTTP(S), the audit files on disk and the CLI tools; for mTLS, certificates made by
//! the `openssl` CLI and the real `curl` as the client. One test binary; every test starts
//! its own broker in its own temp dir on a free loopback port (see `broker_tests`).
//!
//! - `issuance`: workload JWT → verified access token, every claim, the `issued` record.
//! - `denials`: one test per refusal rule: status, OAuth error, `denied` record.
//! - `lint`: `broker policy lint` on each load-time error.
//! - `audit`: `broker audit verify`, tampering, torn-tail repair, fail-closed issuance.
//! - `concurrency`: 1,000 issuances from 32 clients, every `jti` logged exactly once.
//! - `conformance`: outside OAuth/JOSE libraries (Node oauth4webapi and jose, Python
//!   authlib, joserfc, PyJWT) against the broker, EdDSA and ES256, HTTP and TLS.
//! - `dev`: `broker serve --dev` smoke test.
//! - `explain`: `broker policy explain`, the dry run: decision and every rule's outcome.
//! - `mtls`: client certificate → certificate-bound token (`cnf.x5t#S256`), CN / DNS SAN
//!   identities, token exchange over mTLS, `require_binding`, RFC 8705 metadata.
//! - `mtls_denials`: each mTLS refusal, at the TLS handshake or as an OAuth error, with its
//!   `denied` record.
//! - `hostile_http`: silent, slowloris, idle HTTP/2 and flooding connections, oversized
//!   heads and declared bodies, each closed or refused within its `[http]` limit while a
//!   well-behaved client keeps being served.
//! - `tls_reload`: server certificate and client CA rotation without a restart; broken
//!   replacements keep the old material live.
//! - `pkcs11`: a signing key in a SoftHSM2 token (`broker keys hsm-generate`, `[signing]
//!   pkcs11`), tokens verified from the JWKS by jsonwebtoken and PyJWT, no key file.
//!
//! - `metrics`: `/metrics` histograms under traffic, `promtool check metrics` and
//!   `check rules`, and `traceparent` on the token path.
//!
//! Tests that need `openssl`, `curl`, Node or Python skip with a note when one is missing,
//! and fail instead under `CI=true`.

mod audit;
mod break_glass;
mod concurrency;
mod conformance;
mod console;
mod console_oidc;
mod delegation;
mod denial_flood;
mod denials;
mod dev;
mod dpop;
mod explain;
mod full_disk;
mod governance;
mod hostile_http;
mod issuance;
mod issuer_keys;
mod keys;
mod lint;
mod metrics;
mod mtls;
mod mtls_denials;
mod pkcs11;
mod replicas;
mod revocation;
mod sdk;
mod tls_reload;
