//! See benches/signatures.rs.
