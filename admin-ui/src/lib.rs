//! Admin web UI for support staff (issue 8: Leptos, server-rendered through
//! `leptos_axum`, served on the admin listener). Until then this crate only
//! reserves its place in the workspace so the layout matches DESIGN.md.

/// Name shown in the admin UI's title bar.
pub const PRODUCT_NAME: &str = "Portcullis admin";
