//! One module per endpoint.

pub mod admin;
pub mod break_glass;
pub mod discovery;
pub mod feed;
pub mod health;
pub mod introspect;
pub mod inventory;
pub mod keys;
pub mod revoke;
pub mod token;
