//! The whole test suite in one binary: router tests (`oneshot` on in-memory
//! SQLite), black-box tests that start the real `portcullis` binary, and the
//! same tests on PostgreSQL when `PORTCULLIS_TEST_PG` names a server
//! (`.ci/run` sets it). See `support` for the harness.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod support;

mod admin_api;
mod admin_ui;
mod admin_ui_forms;
mod foundation;
mod gateway;
mod janitor;
mod mfa;
mod oauth;
mod preissue;
mod refunds;
mod security;
mod sessions;
mod webauthn;
