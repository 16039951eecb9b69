//! The audit log (stub; being written).

pub mod event;
