//! OAuth 2.0 protocol: clients, authorization, token endpoint (issue 3).

pub mod clients;
