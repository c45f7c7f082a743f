//! Portcullis: an OAuth 2.0 / OpenID Connect authorization server for
//! high-risk domains. See `shared/DESIGN.md` and the README.

pub mod admin_api;
pub mod admin_web;
pub mod app;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod error;
pub mod keys;
pub mod mfa;
pub mod oauth;
pub mod oidc;
pub mod ops;
pub mod outbox;
pub mod permissions;
pub mod refunds;
pub mod security;
pub mod sessions;
pub mod store;
pub mod telemetry;
pub mod tokens;
pub mod users;
pub mod web;
