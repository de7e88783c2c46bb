//! The chat page, served to a plain `GET /`: one HTML file with its CSS and
//! JavaScript, embedded in the binary (`static/index.html`).

use crate::app::HttpResponse;

/// The page itself.
pub const INDEX_HTML: &[u8] = include_bytes!("../../static/index.html");

/// `200 OK` with the page.
pub fn response() -> HttpResponse {
    HttpResponse::ok("text/html; charset=utf-8", INDEX_HTML)
}
