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
        // No audience is configured: a token that names one is not refused for it.
        validation.validate_aud = false;
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
        // Issuers that compute `exp` as `now() / 1000 + n` send a fraction: rounded, as the check above did.
        let expires = data.claims.get("exp").and_then(|exp| {
            exp.as_u64().or_else(|| exp.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f.round() as u64))
        });
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

    /// How many expiries are kept.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Drops the entries of connections that are gone (`alive` says which
    /// are not), once they are most of the heap: members who leave before
    /// their tokens expire do not pile up.
    pub fn compact(&mut self, live: usize, alive: impl Fn(crate::app::ConnId) -> bool) {
        if self.0.len() > 2 * live + 64 {
            self.0.retain(|std::cmp::Reverse((_, id))| alive(*id));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::ConnId;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    fn sign(claims: serde_json::Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_secret(b"secret").unwrap();
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    }

    fn now() -> f64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
    }

    #[test]
    fn a_fractional_exp_and_an_audience_are_accepted() {
        let verifier = TokenConfig::new(b"secret".to_vec(), false).unwrap().verifier();
        let exp = now() + 60.4;
        let identity = verifier.verify(&sign(serde_json::json!({"sub": "bob", "exp": exp}))).unwrap();
        assert_eq!(identity.expires, Some(exp.round() as u64), "a JavaScript exp (Date.now() / 1000 + 60)");
        let with_aud = sign(serde_json::json!({"sub": "bob", "aud": "chat.example"}));
        assert_eq!(verifier.verify(&with_aud).map(|i| i.nick), Ok("bob".to_string()));
    }

    #[test]
    fn expiries_of_members_who_left_do_not_pile_up() {
        let mut expiries = Expiries::default();
        let t0 = Instant::now();
        for generation in 1..=1000u64 {
            expiries.push(t0 + Duration::from_secs(3600), ConnId { index: 0, generation });
            // One member left at a time: only the newest is still here.
            expiries.compact(1, |id| id.generation == generation);
        }
        assert!(expiries.len() <= 2 + 64 + 1, "{} kept", expiries.len());
        assert_eq!(expiries.due(t0 + Duration::from_secs(7200)).last(), Some(&ConnId { index: 0, generation: 1000 }));
    }
}
