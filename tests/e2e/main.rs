#![allow(clippy::unwrap_used, clippy::expect_used)]
//! End-to-end tests of issue 2: the real `broker` binary, a test workload issuer, real
//! HTTP, the audit files on disk and the CLI tools. One test binary; every test starts its
//! own broker in its own temp dir on a free loopback port (see `broker_tests`).
//!
//! - `issuance`: workload JWT → verified access token, every claim, the `issued` record.
//! - `denials`: one test per refusal rule: status, OAuth error, `denied` record.
//! - `lint`: `broker policy lint` on each load-time error.
//! - `audit`: `broker audit verify`, tampering, torn-tail repair, fail-closed issuance.
//! - `concurrency`: 1,000 issuances from 32 clients, every `jti` logged exactly once.
//! - `dev`: `broker serve --dev` smoke test.

mod audit;
mod concurrency;
mod denials;
mod dev;
mod issuance;
mod lint;
