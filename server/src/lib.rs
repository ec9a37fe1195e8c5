//! Rollcall server: face enrolment, recognition and attendance over an authenticated HTTP API.

pub mod allocator;
pub mod app;
pub mod auth;
pub mod cache;
pub mod config;
pub mod dashboard;
pub mod dedupe;
pub mod error;
pub mod eval;
pub mod index;
pub mod metrics;
pub mod phash;
pub mod photos;
pub mod queue;
pub mod reports;
pub mod routes;
pub mod session;
pub mod settings;
pub mod store;
pub mod sync;
pub mod upload;

/// Default match threshold (cosine similarity), from the models crate.
pub use rollcall_models::pipeline::DEFAULT_MATCH_THRESHOLD;
