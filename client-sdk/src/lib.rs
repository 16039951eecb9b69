//! Client SDK for the JIT token broker.
//!
//! For now this crate holds the wire types ([`types`]) shared by the broker and its
//! clients, so that the JSON contract exists exactly once. Token fetching, renewal and
//! verification land here with the SDK issue.

pub mod types;
