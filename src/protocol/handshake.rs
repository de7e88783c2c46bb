//! The opening handshake: an HTTP/1.1 `GET` with `Upgrade: websocket`,
//! answered by `101 Switching Protocols` (RFC 6455 §4.2) [Rust in Detail, Part 1].
//!
//! The blog parsed requests with http-muncher, a binding to the archived C
//! `http-parser`, and `unwrap`ped every header lookup. Here httparse parses
//! the request head straight from the connection's buffer, incomplete input
//! is `Ok(None)` rather than an error, every header is matched without regard
//! to case, and every way a request can be wrong has its own HTTP status.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest, Sha1};
use std::fmt;

/// The GUID that RFC 6455 §1.3 appends to the client's key.
pub const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The only protocol version there is (§4.1).
pub const WS_VERSION: &str = "13";

/// How many header lines a request may have; more is answered with 431.
pub const MAX_HEADERS: usize = 64;

/// Why a request cannot be upgraded. Each variant knows its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// The bytes are not a valid HTTP/1.1 request, or a required header is missing or wrong.
    BadRequest(&'static str),
    /// A method other than GET (§4.1: "The method of the request MUST be GET").
    MethodNotAllowed,
    /// No WebSocket endpoint at this path.
    NotFound,
    /// A plain HTTP request (no `Upgrade: websocket`) to a WebSocket endpoint.
    UpgradeRequired,
    /// A `Sec-WebSocket-Version` other than 13 (§4.4).
    UnsupportedVersion,
    /// The request head is longer than the limit, or has too many header lines.
    HeadTooLarge,
    /// The request's `Host` or `Origin` is not one this server answers
    /// (see [`origin`](super::origin)).
    Forbidden(&'static str),
}

impl HandshakeError {
    /// The HTTP status code and reason phrase.
    pub fn status(&self) -> (u16, &'static str) {
        let code = match self {
            HandshakeError::BadRequest(_) => 400,
            HandshakeError::MethodNotAllowed => 405,
            HandshakeError::NotFound => 404,
            HandshakeError::UpgradeRequired | HandshakeError::UnsupportedVersion => 426,
            HandshakeError::HeadTooLarge => 431,
            HandshakeError::Forbidden(_) => 403,
        };
        (code, reason_phrase(code))
    }

    /// The HTTP response, with a short plain-text body that says what was wrong.
    pub fn http_response(&self) -> HttpResponse {
        let headers: &[&str] = match self {
            HandshakeError::MethodNotAllowed => &["Allow: GET"],
            // §4.4: tell the client which version we speak.
            HandshakeError::UnsupportedVersion | HandshakeError::UpgradeRequired => {
                &["Upgrade: websocket", "Sec-WebSocket-Version: 13"]
            }
            _ => &[],
        };
        let mut response = HttpResponse::error(self.status().0, &self.to_string());
        response.headers = headers.iter().map(|line| line.to_string()).collect();
        response
    }

    /// The complete HTTP response, as bytes.
    pub fn response(&self) -> Vec<u8> {
        self.http_response().encode()
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::BadRequest(why) => write!(f, "bad request: {why}"),
            HandshakeError::MethodNotAllowed => f.write_str("only GET can open a WebSocket"),
            HandshakeError::NotFound => f.write_str("no WebSocket endpoint at this path"),
            HandshakeError::UpgradeRequired => f.write_str("this is a WebSocket endpoint: send an Upgrade request"),
            HandshakeError::UnsupportedVersion => f.write_str("unsupported WebSocket version: this server speaks 13"),
            HandshakeError::HeadTooLarge => f.write_str("request head too large"),
            HandshakeError::Forbidden(why) => write!(f, "forbidden: {why}"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// A parsed request head, borrowing from the connection's buffer.
#[derive(Debug)]
pub struct Request<'h, 'b> {
    /// The method, e.g. `GET`.
    pub method: &'b str,
    /// The request target, e.g. `/chat?room=lobby`.
    pub target: &'b str,
    /// The minor HTTP version: 1 for HTTP/1.1.
    pub version: u8,
    /// The header lines, in order.
    pub headers: &'h [httparse::Header<'b>],
}

impl<'h, 'b> Request<'h, 'b> {
    /// The target without its query string.
    pub fn path(&self) -> &'b str {
        self.target.split(['?', '#']).next().unwrap_or(self.target)
    }

    /// The value of the first header called `name` (matched without regard to case).
    pub fn header(&self, name: &str) -> Option<&'b [u8]> {
        self.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
    }

    /// How many header lines are called `name`.
    fn header_count(&self, name: &str) -> usize {
        self.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).count()
    }

    /// Whether any `name` header lists `token` in its comma-separated value.
    ///
    /// `Connection: keep-alive, Upgrade` (what Firefox sends) has the token;
    /// so does a request that splits it over two `Connection` lines.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    }

    /// The values of every `name` header, in order.
    pub fn header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'b [u8]> + 's {
        self.headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
    }

    /// Whether the client asked to upgrade to WebSocket at all.
    pub fn is_upgrade(&self) -> bool {
        self.has_token("Upgrade", "websocket")
    }

    /// Checks the WebSocket-specific headers (§4.2.1) and returns the
    /// `Sec-WebSocket-Accept` value for the response.
    ///
    /// The method and path are the caller's business (it routes on them first).
    pub fn validate_upgrade(&self) -> Result<String, HandshakeError> {
        // §4.2.1 item 1: "An HTTP/1.1 or higher GET request".
        if self.version != 1 {
            return Err(HandshakeError::BadRequest("WebSocket needs HTTP/1.1"));
        }
        // Item 2: "A |Host| header field containing the server's authority."
        if self.header_count("Host") != 1 {
            return Err(HandshakeError::BadRequest("exactly one Host header is required"));
        }
        // Item 3: "An |Upgrade| header field containing the value "websocket"".
        if !self.is_upgrade() {
            return Err(HandshakeError::UpgradeRequired);
        }
        // Item 4: "A |Connection| header field that includes the token "Upgrade"".
        if !self.has_token("Connection", "Upgrade") {
            return Err(HandshakeError::BadRequest("Connection header must include Upgrade"));
        }
        // Item 6: "A |Sec-WebSocket-Version| header field, with a value of 13."
        match (self.header_count("Sec-WebSocket-Version"), self.header("Sec-WebSocket-Version")) {
            (1, Some(v)) if v.trim_ascii() == WS_VERSION.as_bytes() => {}
            (0, _) => return Err(HandshakeError::BadRequest("Sec-WebSocket-Version header is missing")),
            _ => return Err(HandshakeError::UnsupportedVersion),
        }
        // Item 5: a |Sec-WebSocket-Key| that "when decoded, is 16 bytes in length".
        if self.header_count("Sec-WebSocket-Key") != 1 {
            return Err(HandshakeError::BadRequest("exactly one Sec-WebSocket-Key header is required"));
        }
        let key = self.header("Sec-WebSocket-Key").unwrap_or_default().trim_ascii();
        match BASE64.decode(key) {
            Ok(decoded) if decoded.len() == 16 => {}
            _ => return Err(HandshakeError::BadRequest("Sec-WebSocket-Key must be 16 bytes in base64")),
        }
        // The key is plain ASCII base64 by now.
        Ok(gen_key(std::str::from_utf8(key).unwrap_or_default()))
    }
}

/// Parses a request head from the front of `buf`.
///
/// Returns `Ok(None)` while the head is incomplete, and
/// `Ok(Some((request, head_len)))` once it is, where `head_len` counts the
/// bytes up to and including the blank line; anything after it (a client's
/// first frame, sent in the same write) belongs to the WebSocket stream.
/// A head that is longer than `max_head` bytes, or has more than `headers.len()`
/// lines, is [`HandshakeError::HeadTooLarge`] — even before it is complete.
pub fn parse_request<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
    max_head: usize,
) -> Result<Option<(Request<'h, 'b>, usize)>, HandshakeError> {
    // Only the first `max_head` bytes may belong to the head; anything past
    // them is either the client's first frames or a head that is too long.
    let window = &buf[..buf.len().min(max_head)];
    let mut req = httparse::Request::new(headers);
    match req.parse(window) {
        Ok(httparse::Status::Complete(head_len)) => {
            let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
                return Err(HandshakeError::BadRequest("incomplete request line"));
            };
            Ok(Some((Request { method, target, version, headers: req.headers }, head_len)))
        }
        Ok(httparse::Status::Partial) if buf.len() >= max_head => Err(HandshakeError::HeadTooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HandshakeError::HeadTooLarge),
        Err(_) => Err(HandshakeError::BadRequest("malformed HTTP request")),
    }
}

/// Computes `Sec-WebSocket-Accept` from the client's `Sec-WebSocket-Key`
/// (§4.2.2 item 5.4): base64 of the SHA-1 of the key followed by [`WS_GUID`].
/// The blog's name for it is kept.
pub fn gen_key(key: &str) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(WS_GUID.as_bytes());
    BASE64.encode(sha1.finalize())
}

/// The `101 Switching Protocols` response for an accepted upgrade, with any
/// `extra` header lines (the negotiated extension).
pub fn accept_response(accept: &str, extra: Option<&str>) -> Vec<u8> {
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(line) = extra {
        response.push_str(line);
        response.push_str("\r\n");
    }
    response.push_str("\r\n");
    response.into_bytes()
}

/// A complete HTTP response after which the server closes the connection.
pub fn http_response(code: u16, phrase: &str, extra_headers: &[&str], content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {code} {phrase}\r\n");
    for line in extra_headers {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str(&format!(
        "Content-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut response = head.into_bytes();
    response.extend_from_slice(body);
    response
}

/// The reason phrase of the statuses this server answers with.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A plain HTTP response that an application answers a GET with (a page,
/// or a refusal). The connection is closed after it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code, e.g. 200 or 403.
    pub status: u16,
    /// The `Content-Type` of the body.
    pub content_type: &'static str,
    /// Extra header lines, each `Name: value` without the line end (a line
    /// with a line break in it is not sent).
    pub headers: Vec<String>,
    /// The body.
    pub body: std::borrow::Cow<'static, [u8]>,
}

impl HttpResponse {
    /// `200 OK` with a body.
    pub fn ok(content_type: &'static str, body: impl Into<std::borrow::Cow<'static, [u8]>>) -> HttpResponse {
        HttpResponse { status: 200, content_type, headers: Vec::new(), body: body.into() }
    }

    /// An error status with a one-line plain-text explanation.
    pub fn error(status: u16, message: &str) -> HttpResponse {
        let body = format!("{message}\n").into_bytes();
        HttpResponse { status, content_type: "text/plain; charset=utf-8", headers: Vec::new(), body: body.into() }
    }

    /// The bytes on the wire. A header line with a line break in it is left
    /// out, so that no application can split the response by mistake.
    pub fn encode(&self) -> Vec<u8> {
        let headers: Vec<&str> =
            self.headers.iter().map(String::as_str).filter(|line| !line.contains(['\r', '\n'])).collect();
        http_response(self.status, reason_phrase(self.status), &headers, self.content_type, &self.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 8192;

    const RFC_REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\n\
        Host: server.example.com\r\n\
        Upgrade: websocket\r\n\
        Connection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Origin: http://example.com\r\n\
        Sec-WebSocket-Protocol: chat, superchat\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    fn validate(bytes: &[u8]) -> Result<String, HandshakeError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let (req, _) = parse_request(bytes, &mut headers, MAX)?.expect("complete request");
        req.validate_upgrade()
    }

    fn with_headers(lines: &[&str]) -> Vec<u8> {
        let mut s = String::from("GET / HTTP/1.1\r\n");
        for line in lines {
            s.push_str(line);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        s.into_bytes()
    }

    const GOOD: [&str; 5] = [
        "Host: localhost",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ];

    fn good_except(index: usize, replacement: Option<&str>) -> Vec<u8> {
        let mut lines: Vec<&str> = GOOD.to_vec();
        match replacement {
            Some(line) => lines[index] = line,
            None => {
                lines.remove(index);
            }
        }
        with_headers(&lines)
    }

    #[test]
    fn rfc_accept_key() {
        // RFC 6455 §1.3.
        assert_eq!(gen_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(validate(RFC_REQUEST).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn the_rfc_request_parses_with_its_path_and_length() {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut buf = RFC_REQUEST.to_vec();
        buf.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]); // a first frame in the same write
        let (req, len) = parse_request(&buf, &mut headers, MAX).unwrap().unwrap();
        assert_eq!(len, RFC_REQUEST.len());
        assert_eq!(req.path(), "/chat");
        assert_eq!(req.method, "GET");
        assert!(req.is_upgrade());
    }

    #[test]
    fn every_strict_prefix_is_incomplete() {
        for cut in 0..RFC_REQUEST.len() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            assert!(parse_request(&RFC_REQUEST[..cut], &mut headers, MAX).unwrap().is_none(), "cut {cut}");
        }
    }

    #[test]
    fn headers_match_without_regard_to_case_and_in_lists() {
        let req = with_headers(&[
            "host: localhost",
            "UPGRADE: WebSocket",
            "connection: keep-alive, upgrade",
            "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
            "SEC-WEBSOCKET-VERSION: 13",
        ]);
        assert_eq!(validate(&req).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let split = with_headers(&[
            "Host: localhost",
            "Upgrade: websocket",
            "Connection: keep-alive",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        ]);
        assert!(validate(&split).is_ok());
    }

    #[test]
    fn each_missing_or_wrong_header_has_its_status() {
        let status = |bytes: Vec<u8>| validate(&bytes).unwrap_err().status().0;
        assert_eq!(status(good_except(0, None)), 400, "no Host");
        assert_eq!(status(good_except(1, None)), 426, "no Upgrade");
        assert_eq!(status(good_except(1, Some("Upgrade: h2c"))), 426, "Upgrade to something else");
        assert_eq!(status(good_except(2, None)), 400, "no Connection");
        assert_eq!(status(good_except(2, Some("Connection: keep-alive"))), 400, "Connection without Upgrade");
        assert_eq!(status(good_except(3, None)), 400, "no key");
        assert_eq!(status(good_except(3, Some("Sec-WebSocket-Key: c2hvcnQ="))), 400, "key of 5 bytes");
        assert_eq!(status(good_except(3, Some("Sec-WebSocket-Key: not base64!!"))), 400, "key not base64");
        assert_eq!(status(good_except(4, None)), 400, "no version");
        assert_eq!(status(good_except(4, Some("Sec-WebSocket-Version: 8"))), 426, "version 8");
        let mut twice = GOOD.to_vec();
        twice.push("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==");
        assert_eq!(status(with_headers(&twice)), 400, "two keys");
    }

    #[test]
    fn http_1_0_is_rejected() {
        let mut req = with_headers(&GOOD);
        req[13] = b'0'; // "GET / HTTP/1.0"
        assert_eq!(&req[..14], b"GET / HTTP/1.0");
        assert_eq!(validate(&req).unwrap_err().status().0, 400);
    }

    #[test]
    fn malformed_requests_are_400() {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let err = parse_request(b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n", &mut headers, MAX).unwrap_err();
        assert_eq!(err.status().0, 400);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let err = parse_request(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", &mut headers, MAX).unwrap_err();
        assert_eq!(err.status().0, 400, "a TLS ClientHello");
    }

    #[test]
    fn the_head_limit_is_enforced_at_its_edge() {
        // A request whose head is exactly the limit passes; one byte more is 431.
        let base = with_headers(&GOOD);
        let pad_line = |n: usize| format!("X-Pad: {}", "a".repeat(n));
        let filler = MAX - base.len() - "X-Pad: \r\n".len();
        let mut lines = GOOD.to_vec();
        let pad = pad_line(filler);
        lines.push(&pad);
        let exact = with_headers(&lines);
        assert_eq!(exact.len(), MAX);
        assert!(validate(&exact).is_ok());
        let pad = pad_line(filler + 1);
        lines.pop();
        lines.push(&pad);
        let over = with_headers(&lines);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        assert_eq!(parse_request(&over, &mut headers, MAX).unwrap_err(), HandshakeError::HeadTooLarge);
        // An unfinished head is refused as soon as it reaches the limit.
        let endless = vec![b'a'; MAX];
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let start = b"GET / HTTP/1.1\r\nX-Long: ";
        let mut partial = start.to_vec();
        partial.extend_from_slice(&endless[..MAX - start.len() - 1]);
        assert!(parse_request(&partial, &mut headers, MAX).unwrap().is_none());
        partial.push(b'a');
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        assert_eq!(parse_request(&partial, &mut headers, MAX).unwrap_err(), HandshakeError::HeadTooLarge);
    }

    #[test]
    fn too_many_header_lines_is_431() {
        let lines: Vec<String> = (0..MAX_HEADERS + 1).map(|i| format!("X-{i}: y")).collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        assert_eq!(parse_request(&with_headers(&refs), &mut headers, MAX).unwrap_err(), HandshakeError::HeadTooLarge);
    }

    #[test]
    fn error_responses_are_complete_http() {
        let resp = String::from_utf8(HandshakeError::UnsupportedVersion.response()).unwrap();
        assert!(resp.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(resp.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        let (head, body) = resp.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let resp = String::from_utf8(HandshakeError::MethodNotAllowed.response()).unwrap();
        assert!(resp.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(resp.contains("\r\nAllow: GET\r\n"));
    }

    #[test]
    fn query_strings_are_not_part_of_the_path() {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let (req, _) = parse_request(b"GET /echo?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", &mut headers, MAX).unwrap().unwrap();
        assert_eq!(req.path(), "/echo");
        assert_eq!(req.target, "/echo?x=1");
    }
}
