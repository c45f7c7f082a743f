//! Admin web UI for support staff, rendered on the server with Leptos.
//!
//! Pages are Leptos components turned into complete HTML documents on the
//! server; every action is a plain `<form method="post">`, so the UI works
//! with JavaScript switched off and needs no inline script (the CSP allows
//! none). The server (`portcullis::admin_web`) signs staff in, loads the
//! data through the same staff operations as the admin JSON API, and hands
//! the view models in [`model`] to the page functions here. This crate
//! decides nothing: a control it leaves out is refused by the server too.

pub mod model;
mod pages;
mod parts;

use leptos::prelude::*;

pub use pages::{
    audit_page, client_page, clients_page, home_page, message_page, refund_page, refunds_page,
    sessions_page, user_page, users_page,
};

/// Name shown in the title bar.
pub const PRODUCT_NAME: &str = "Portcullis admin";

/// The stylesheet, served by the server at [`STYLESHEET_PATH`].
pub const STYLESHEET: &str = include_str!("../assets/admin.css");
pub const STYLESHEET_PATH: &str = "/assets/admin.css";

/// A complete HTML document from a view.
fn document(title: &str, body: impl IntoView + 'static) -> String {
    let title = format!("{title} · {PRODUCT_NAME}");
    let html = Owner::new().with(|| {
        view! {
            <html lang="en">
                <head>
                    <meta charset="utf-8"/>
                    <meta name="viewport" content="width=device-width, initial-scale=1"/>
                    <meta name="referrer" content="no-referrer"/>
                    <title>{title}</title>
                    <link rel="stylesheet" href=STYLESHEET_PATH/>
                </head>
                <body>{body}</body>
            </html>
        }
        .to_html()
    });
    format!("<!DOCTYPE html>{html}")
}
