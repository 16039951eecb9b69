//! The JIT token broker: authenticates workloads (workload-identity JWTs, mTLS),
//! evaluates task-scoped policy, mints short-lived signed access tokens, and records
//! every decision in a tamper-evident, append-only audit log before answering.
//!
//! # Layout
//!
//! - [`config`]: the TOML config file, validated into [`config::Config`].
//! - [`clock`]: time behind a trait.
//! - [`authn`]: who is calling (workload JWT validation, issuer key sources).
//! - [`policy`]: the NHI registry and task policies; the allow/deny decision.
//! - [`reload`]: the live policy set and its atomic hot reload.
//! - [`mint`]: access-token claims and signing; [`mint::keys`] owns private keys.
//! - [`audit`]: the hash-chained, group-committed audit log and its verifier.
//! - [`issuance`]: the token path as a service in typed stages (parse, authenticate,
//!   admission, record) with one typed [`issuance::Refusal`].
//! - [`introspection`]: whether a broker token is active; [`grant_lifecycle`]: closing
//!   break-glass grants and the expiry sweep.
//! - [`state`]: the services the handlers share ([`state::AppState`]); [`error`]: the one
//!   error type on the wire.
//! - [`api`]: the HTTP surface (axum router, thin handlers, recording before answering).
//! - [`server`]: startup, the accept loop, limits, graceful shutdown.
//! - [`http_limits`]: connection admission (total, per source), per-connection deadlines
//!   (first byte, header, idle, TLS handshake), header and body limits (`[http]`).
//! - [`tls`]: server TLS on rustls/aws-lc-rs.
//! - [`metrics`]: counters and histograms for `/metrics` (`prometheus-client`).
//! - [`trace`]: W3C `traceparent` on the OAuth endpoints, `trace_id` in the JSON logs.
//! - [`ratelimit`]: issuance token buckets; [`usage`]: behaviour history; [`anomaly`]: behavioural monitoring.
//! - [`revocation`], [`store`]: revocations, disabled identities, the state journal (file
//!   or PostgreSQL, shared by replicas); [`checkpointer`]: audit checkpoints in the store.
//! - [`ids`]: random identifiers.
//! - [`breakglass`]: emergency grants that revoke themselves.
//! - [`dev`]: `broker serve --dev` bootstrap.

pub mod admin_changes;
pub mod anomaly;
pub mod api;
pub mod audit;
pub mod authn;
pub mod breakglass;
pub mod checkpointer;
pub mod clock;
pub mod config;
pub mod console;
pub mod denial_budget;
pub mod dev;
pub mod dpop;
pub mod error;
pub mod grant_lifecycle;
mod hex;
pub mod http_limits;
pub mod ids;
pub mod introspection;
pub mod issuance;
pub mod metrics;
pub mod mint;
pub mod policy;
pub mod ratelimit;
pub mod record_first;
pub mod reload;
pub mod revocation;
pub mod server;
pub mod single_use;
pub mod state;
pub mod store;
pub mod tls;
pub mod trace;
pub mod usage;

pub use server::{Broker, StartError, run, start};
