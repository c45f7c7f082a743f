//! Abuse defences, security events and hardening (issue 9).
mod events;
mod limits;
