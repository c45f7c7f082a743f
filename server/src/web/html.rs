//! Server-rendered pages: no inline script or style (the CSP forbids both),
//! every interpolated value escaped.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            _ => out.push(c),
        }
    }
    out
}

/// A whole page. `body` must already be escaped HTML.
pub fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Portcullis</title><link rel=\"stylesheet\" href=\"/static/portcullis.css\"></head>\
         <body><main><h1>{}</h1>{body}</main></body></html>\n",
        escape(title),
        escape(title)
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

/// An error shown to the person in the browser (never redirected).
pub fn error_page(status: StatusCode, message: &str) -> Response {
    page(
        status,
        "Something went wrong",
        &format!("<p class=\"error\">{}</p>", escape(message)),
    )
}

pub fn hidden(name: &str, value: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
        escape(name),
        escape(value)
    )
}

pub const STYLESHEET: &str = include_str!("../../static/portcullis.css");
