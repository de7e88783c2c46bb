//! Signed identities: a client may connect with `?token=JWT` (HS256, signed
//! with the server's secret). A valid token's `sub` is the member's
//! nickname, reserved for it while it is connected, and its `exp` (if any)
//! ends the connection when it passes (1008 "token expired").
//!
//! The token is checked at the upgrade: a bad signature, a malformed token
//! or an expired one is answered with HTTP 401, and so is a client without
//! a token when tokens are required. It is never logged: the server logs the
//! path without its query, and the chat keeps only what it read from it.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::fmt;

/// The chat's token settings: the HS256 secret, and whether a token is required.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenConfig {
    secret: Vec<u8>,
    /// Refuse clients without a token (401).
    pub require: bool,
}

impl fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenConfig").field("secret", &"(hidden)").field("require", &self.require).finish()
    }
}

impl TokenConfig {
    /// Tokens signed with `secret` (not empty).
    pub fn new(secret: impl Into<Vec<u8>>, require: bool) -> Result<TokenConfig, String> {
        let secret = secret.into();
        if secret.is_empty() {
            return Err("the token secret is empty".into());
        }
        Ok(TokenConfig { secret, require })
    }

    /// What checks tokens (made once).
    pub(super) fn verifier(&self) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        // `exp` is optional, and exact: no leeway beyond what the issuer chose.
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        Verifier { key: DecodingKey::from_secret(&self.secret).ok(), validation, require: self.require }
    }
}

/// Checks tokens against the secret.
pub struct Verifier {
    /// `None` only if the secret could not be made a key (then no token passes).
    key: Option<DecodingKey>,
    validation: Validation,
    pub(super) require: bool,
}

/// Who a valid token says the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Identity {
    /// Its `sub`: the nickname.
    pub nick: String,
    /// Its `exp`, in seconds since the Unix epoch.
    pub expires: Option<u64>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier").field("require", &self.require).finish_non_exhaustive()
    }
}

impl Verifier {
    /// The identity in `token`, or why it is refused (the 401's text).
    pub(super) fn verify(&self, token: &str) -> Result<Identity, &'static str> {
        let key = self.key.as_ref().ok_or("tokens cannot be checked")?;
        let data = jsonwebtoken::decode::<serde_json::Value>(token, key, &self.validation).map_err(|err| match err
            .kind()
        {
            ErrorKind::ExpiredSignature => "token expired",
            ErrorKind::InvalidSignature => "token signature does not match",
            ErrorKind::InvalidAlgorithm => "token must be signed with HS256",
            _ => "malformed token",
        })?;
        let sub = data.claims.get("sub").and_then(serde_json::Value::as_str).ok_or("token has no sub")?;
        if !super::is_valid_name(sub) {
            return Err("token sub is not a valid nickname (1-32 letters, digits, _ or -)");
        }
        let expires = data.claims.get("exp").and_then(serde_json::Value::as_u64);
        Ok(Identity { nick: sub.to_string(), expires })
    }
}

/// When each signed connection's token expires, soonest first.
#[derive(Debug, Default)]
pub(super) struct Expiries(std::collections::BinaryHeap<std::cmp::Reverse<(std::time::Instant, crate::app::ConnId)>>);

impl Expiries {
    pub fn push(&mut self, at: std::time::Instant, id: crate::app::ConnId) {
        self.0.push(std::cmp::Reverse((at, id)));
    }

    /// The soonest expiry.
    pub fn next(&self) -> Option<std::time::Instant> {
        self.0.peek().map(|std::cmp::Reverse((at, _))| *at)
    }

    /// Takes the connections whose tokens have expired by `now`.
    pub fn due(&mut self, now: std::time::Instant) -> Vec<crate::app::ConnId> {
        let mut due = Vec::new();
        while let Some(std::cmp::Reverse((at, id))) = self.0.peek().copied() {
            if at > now {
                break;
            }
            self.0.pop();
            due.push(id);
        }
        due
    }

    /// Moves everything in `other` here.
    pub fn take_from(&mut self, other: &mut Expiries) {
        self.0.append(&mut other.0);
    }

    /// Asks the server to close each connection whose token has expired.
    pub fn close_due(&mut self, hub: &mut crate::app::Hub, now: std::time::Instant) {
        for id in self.due(now) {
            let reason = "token expired".to_string();
            hub.apply(crate::app::Effect::Close { id, code: crate::protocol::close_code::POLICY, reason });
        }
    }
}
