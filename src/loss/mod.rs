//! Losses: each returns the scalar loss and accumulates (`+=`) its gradient
//! with respect to the predictions into a caller-owned buffer.

pub mod hardnet;
pub mod l1;
pub mod mse;
pub mod triplet;
