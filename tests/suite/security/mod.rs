//! Abuse defences, security events and hardening (issue 9).
mod crash;
mod events;
mod hardening;
mod limits;
