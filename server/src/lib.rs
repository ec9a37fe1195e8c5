//! Rollcall server: face enrolment, recognition and attendance over an authenticated HTTP API.

pub mod app;
pub mod auth;
pub mod config;
pub mod error;
pub mod eval;
pub mod index;
pub mod metrics;
pub mod photos;
pub mod queue;
pub mod reports;
pub mod routes;
pub mod store;
pub mod upload;

/// Default minimum cosine similarity between a face and an enrolled face to call it a match.
pub const DEFAULT_MATCH_THRESHOLD: f32 = 0.92;
