//! Cross-cutting defences (DESIGN "Security defaults"): rate limits and
//! lockout, security events and their webhooks, request hardening.
pub mod events;
pub mod hardening;
pub mod limits;
pub mod lockout;
pub mod spikes;
pub mod webhooks;
