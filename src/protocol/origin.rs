//! Who may talk to the server, by the request's `Origin` and `Host`.
//!
//! - **Cross-Site WebSocket Hijacking.** A browser lets any page open a
//!   WebSocket to any server, sending the visitor's cookies, and the page
//!   then reads what comes back. What tells the server where a page came
//!   from is the `Origin` header a browser always sends (RFC 6455 §10.2). An
//!   upgrade whose `Origin` is present and is not the server's own (the
//!   `Host` the request was sent to) nor one it was told to allow is refused
//!   with 403. A request without `Origin` is not from a browser page, which
//!   cannot leave it out: it is accepted.
//! - **DNS rebinding.** A page on `evil.example` whose name is made to
//!   resolve to 127.0.0.1 passes a same-origin check (its `Origin` and
//!   `Host` both say `evil.example`). A server bound to loopback therefore
//!   answers only requests whose `Host` names it as a loopback client does
//!   (`localhost`, `127.0.0.1`, `[::1]`) or as it was told to (403 for the
//!   rest, page and upgrade alike).
//!
//! "The server's own" compares host and port, with a missing port taken as
//! the default of the origin's scheme (80 for `http`, 443 for `https`):
//! `http://localhost` is the origin of a request to `Host: localhost:80`.
//! On a plain server the scheme itself is not compared, so that behind a
//! proxy that ends TLS (the page is `https://chat.example`, the request
//! reaches rust-chat as plain HTTP) the page's own origin still passes. A
//! server that serves TLS itself accepts only `https` pages as its own (a
//! plain-HTTP page of the same name is one a network attacker can write).

use super::handshake::HandshakeError;

/// Which requests the server answers, by their `Origin` and `Host`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    /// Origins allowed besides the request's own, normalized
    /// (`scheme://host:port`, lowercase, the port always there): see [`OriginPolicy::allow_origin`].
    allowed_origins: Vec<String>,
    /// Every origin is allowed (`--allowed-origin '*'`).
    pub any_origin: bool,
    /// When set, the only host names (lowercase, without the port) that
    /// requests may name in `Host`: loopback names and those added.
    pub allowed_hosts: Option<Vec<String>>,
    /// The server serves TLS itself: its own pages are `https` ones.
    pub serving_tls: bool,
}

/// The host names a loopback client uses.
pub const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

impl OriginPolicy {
    /// Allows the origin `origin` (`scheme://host[:port]`, or `*` for any);
    /// an error says what is wrong with it.
    pub fn allow_origin(&mut self, origin: &str) -> Result<(), String> {
        if origin == "*" {
            self.any_origin = true;
            return Ok(());
        }
        let normal = normalize_origin(origin.as_bytes()).ok_or_else(|| {
            format!("'{origin}' is not an origin like https://chat.example or http://localhost:10000")
        })?;
        if !self.allowed_origins.contains(&normal) {
            self.allowed_origins.push(normal);
        }
        Ok(())
    }

    /// Answers only requests whose `Host` is a loopback name or one of `extra`.
    pub fn restrict_hosts<'a>(&mut self, extra: impl IntoIterator<Item = &'a str>) {
        let mut hosts: Vec<String> = LOOPBACK_HOSTS.iter().map(|h| h.to_string()).collect();
        for host in extra {
            let host = host.to_ascii_lowercase();
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
        self.allowed_hosts = Some(hosts);
    }

    /// The check for every request: its `Host` (`hosts`: each `Host` line's value).
    pub fn check_host<'a>(&self, mut hosts: impl Iterator<Item = &'a [u8]>) -> Result<(), HandshakeError> {
        let Some(allowed) = &self.allowed_hosts else { return Ok(()) };
        let (Some(host), None) = (hosts.next(), hosts.next()) else {
            return Err(HandshakeError::Forbidden("this server answers only requests with one Host header"));
        };
        let name = split_host(host).map(|(name, _)| name.to_ascii_lowercase());
        match name {
            Some(name) if allowed.contains(&name) => Ok(()),
            _ => Err(HandshakeError::Forbidden("this server does not answer to that Host name")),
        }
    }

    /// The check for an upgrade: its `Origin` (`origins`: each `Origin`
    /// line's value) against its `Host` and the allowed origins.
    pub fn check_origin<'a>(
        &self,
        mut origins: impl Iterator<Item = &'a [u8]>,
        host: Option<&[u8]>,
    ) -> Result<(), HandshakeError> {
        let origin = match (origins.next(), origins.next()) {
            (None, _) => return Ok(()), // not a browser page
            (Some(origin), None) => origin,
            (Some(_), Some(_)) => return Err(HandshakeError::Forbidden("more than one Origin header")),
        };
        if self.any_origin {
            return Ok(());
        }
        let refused = HandshakeError::Forbidden("cross-origin WebSocket refused: this page's origin is not allowed");
        let Some(normal) = normalize_origin(origin) else { return Err(refused) };
        if self.allowed_origins.contains(&normal) {
            return Ok(());
        }
        // Same origin: the origin's host and port are the ones the request was sent to.
        let (scheme, authority) = normal.split_once("://").ok_or(refused.clone())?;
        if self.serving_tls && scheme != "https" {
            return Err(refused);
        }
        let (Some(default_port), Some((host_name, host_port))) = (default_port(scheme), host.and_then(split_host))
        else {
            return Err(refused);
        };
        let own = format!("{}:{}", host_name.to_ascii_lowercase(), host_port.unwrap_or(default_port));
        if authority == own { Ok(()) } else { Err(refused) }
    }
}

/// The default port of an origin's scheme (browsers send `http` and `https`).
fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// `scheme://host:port`, lowercase with the port always there, or `None` if
/// `origin` is not a serialized origin (`null`, a path, bad characters).
fn normalize_origin(origin: &[u8]) -> Option<String> {
    let origin = std::str::from_utf8(origin).ok()?.trim();
    let (scheme, authority) = origin.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default = default_port(&scheme)?;
    let (name, port) = split_host(authority.as_bytes())?;
    Some(format!("{scheme}://{}:{}", name.to_ascii_lowercase(), port.unwrap_or(default)))
}

/// A `Host` value (or an origin's authority) as its name and port:
/// `example.com:8080`, `127.0.0.1`, `[::1]:10000`. `None` if it is not one
/// (empty, a user part, a path, a port that is not a number, odd characters).
fn split_host(value: &[u8]) -> Option<(&str, Option<u16>)> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (name, port) = if value.starts_with('[') {
        let end = value.find(']')?;
        let (name, rest) = value.split_at(end + 1);
        match rest {
            "" => (name, None),
            _ => (name, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match value.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (value, None),
        }
    };
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':');
    if name.is_empty() || !name.chars().all(allowed) || (!name.starts_with('[') && name.contains(':')) {
        return None;
    }
    let port = match port {
        None => None,
        Some(port) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => Some(port.parse().ok()?),
        Some(_) => return None,
    };
    Some((name, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(policy: &OriginPolicy, origin: &str, host: &str) -> bool {
        policy.check_origin([origin.as_bytes()].into_iter(), Some(host.as_bytes())).is_ok()
    }

    fn host(policy: &OriginPolicy, host: &str) -> bool {
        policy.check_host([host.as_bytes()].into_iter()).is_ok()
    }

    #[test]
    fn the_pages_own_origin_passes_and_a_foreign_one_does_not() {
        let policy = OriginPolicy::default();
        assert!(origin(&policy, "http://127.0.0.1:10000", "127.0.0.1:10000"));
        assert!(origin(&policy, "http://localhost:10000", "localhost:10000"));
        assert!(origin(&policy, "https://chat.example", "chat.example"), "behind a proxy that ends TLS");
        assert!(!origin(&policy, "http://evil.example", "127.0.0.1:10000"));
        assert!(!origin(&policy, "http://127.0.0.1:9999", "127.0.0.1:10000"), "another port is another origin");
        assert!(!origin(&policy, "null", "127.0.0.1:10000"), "a sandboxed page or a file");
        assert!(!origin(&policy, "http://127.0.0.1:10000/path", "127.0.0.1:10000"), "not an origin");
        assert!(!origin(&policy, "ftp://127.0.0.1:10000", "127.0.0.1:10000"));
        // No Host to compare with: refused.
        assert!(policy.check_origin([&b"http://a"[..]].into_iter(), None).is_err());
    }

    #[test]
    fn a_tls_server_takes_only_https_pages_as_its_own() {
        let policy = OriginPolicy { serving_tls: true, ..OriginPolicy::default() };
        assert!(origin(&policy, "https://chat.example", "chat.example"));
        assert!(origin(&policy, "https://127.0.0.1:10000", "127.0.0.1:10000"));
        assert!(!origin(&policy, "http://chat.example", "chat.example"), "a page a network attacker can write");
        assert!(!origin(&policy, "http://127.0.0.1:10000", "127.0.0.1:10000"));
    }

    #[test]
    fn case_and_default_ports_do_not_matter() {
        let policy = OriginPolicy::default();
        assert!(origin(&policy, "HTTP://LocalHost:10000", "localhost:10000"));
        assert!(origin(&policy, "http://localhost:10000", "LOCALHOST:10000"));
        assert!(origin(&policy, "http://chat.example", "chat.example:80"));
        assert!(origin(&policy, "http://chat.example:80", "chat.example"));
        assert!(origin(&policy, "https://chat.example", "chat.example:443"));
        assert!(!origin(&policy, "https://chat.example", "chat.example:80"));
        assert!(origin(&policy, "http://[::1]:10000", "[::1]:10000"));
        assert!(!origin(&policy, "http://[::1]:10000", "[::2]:10000"));
    }

    #[test]
    fn without_an_origin_anything_passes_and_two_are_refused() {
        let policy = OriginPolicy::default();
        assert!(policy.check_origin(std::iter::empty(), Some(b"127.0.0.1:1")).is_ok(), "not a browser");
        let two = [&b"http://a"[..], &b"http://a"[..]];
        assert!(policy.check_origin(two.into_iter(), Some(b"a")).is_err());
    }

    #[test]
    fn allowed_origins_widen_the_check_and_star_allows_all() {
        let mut policy = OriginPolicy::default();
        policy.allow_origin("https://app.example").unwrap();
        policy.allow_origin("http://localhost:3000").unwrap();
        assert!(origin(&policy, "https://app.example", "chat.example"));
        assert!(origin(&policy, "https://APP.example:443", "chat.example"));
        assert!(origin(&policy, "http://localhost:3000", "127.0.0.1:10000"));
        assert!(!origin(&policy, "http://app.example", "chat.example"), "exact: the scheme counts here");
        assert!(!origin(&policy, "https://app.example:8443", "chat.example"));
        assert!(!origin(&policy, "https://evil.example", "chat.example"));
        assert!(policy.allow_origin("app.example").is_err(), "no scheme");
        assert!(policy.allow_origin("https://app.example/").is_err(), "a path");
        policy.allow_origin("*").unwrap();
        assert!(origin(&policy, "https://evil.example", "chat.example"));
        assert!(origin(&policy, "null", "chat.example"));
    }

    #[test]
    fn on_loopback_only_loopback_names_and_added_ones_are_answered() {
        let mut policy = OriginPolicy::default();
        assert!(host(&policy, "evil.example:10000"), "not restricted unless asked");
        policy.restrict_hosts(["Chat.Internal"]);
        for name in ["localhost:10000", "127.0.0.1:10000", "[::1]:10000", "LOCALHOST", "chat.internal:10000"] {
            assert!(host(&policy, name), "{name}");
        }
        for name in ["evil.example:10000", "127.0.0.2:10000", "localhost.evil.example", "", "user@localhost", "a b"] {
            assert!(!host(&policy, name), "{name}");
        }
        assert!(policy.check_host(std::iter::empty()).is_err(), "no Host");
        assert!(policy.check_host([&b"localhost"[..], &b"localhost"[..]].into_iter()).is_err(), "two");
    }

    #[test]
    fn host_values_are_split_into_name_and_port() {
        assert_eq!(split_host(b"example.com:8080"), Some(("example.com", Some(8080))));
        assert_eq!(split_host(b"[::1]:10000"), Some(("[::1]", Some(10000))));
        assert_eq!(split_host(b"[::1]"), Some(("[::1]", None)));
        assert_eq!(split_host(b"localhost"), Some(("localhost", None)));
        for bad in [&b"host:99999"[..], b"host:", b"host:x", b"::1", b"[::1", b"", b"a/b", b"\xff"] {
            assert_eq!(split_host(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
