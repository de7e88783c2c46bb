//! The chat page, served to a plain `GET /`: an HTML file, its script and
//! its style (`static/index.html`, `chat.js`, `chat.css`), embedded in the
//! binary.
//!
//! The page is sent with a Content Security Policy that lets it load
//! scripts and styles, and open connections, only from its own origin (so a
//! message that slipped past the page's escaping still could not run a
//! script or send anything elsewhere) and that no other site may frame it;
//! with `nosniff`, and without a referrer when it links out.

use crate::app::HttpResponse;

/// The page itself.
pub const INDEX_HTML: &[u8] = include_bytes!("../../static/index.html");

/// Its script.
pub const CHAT_JS: &[u8] = include_bytes!("../../static/chat.js");

/// Its style.
pub const CHAT_CSS: &[u8] = include_bytes!("../../static/chat.css");

/// The policy the page is sent with. `'self'` covers `ws:`/`wss:` to the
/// page's own host and port (CSP Level 3), so the page — and the blog's
/// console snippet typed into it — can reach the chat; the icon is a `data:` URL.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The headers every part of the page is sent with.
fn headers() -> Vec<String> {
    vec![
        format!("Content-Security-Policy: {CONTENT_SECURITY_POLICY}"),
        "X-Content-Type-Options: nosniff".to_string(),
        "Referrer-Policy: no-referrer".to_string(),
    ]
}

fn with_headers(mut response: HttpResponse) -> HttpResponse {
    response.headers = headers();
    response
}

/// `200 OK` with the page.
pub fn response() -> HttpResponse {
    with_headers(HttpResponse::ok("text/html; charset=utf-8", INDEX_HTML))
}

/// `200 OK` with the page's script or style at `path`, if it is one of them.
pub fn asset(path: &str) -> Option<HttpResponse> {
    let (content_type, body) = match path {
        "/chat.js" => ("text/javascript; charset=utf-8", CHAT_JS),
        "/chat.css" => ("text/css; charset=utf-8", CHAT_CSS),
        _ => return None,
    };
    Some(with_headers(HttpResponse::ok(content_type, body)))
}
