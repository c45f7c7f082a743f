//! Issue 3: OAuth 2.0 / OpenID Connect endpoints.

mod attacks;
pub mod flow;
mod interop;
pub mod staff;
