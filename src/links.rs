//! Links Corral puts in its mails: to an event, and the one-click unsubscribe link of a
//! reminder. An unsubscribe link carries a token: the reminder's id and an HMAC-SHA256 of
//! it under the node's link secret (`mail.link_secret`), so it cannot be guessed or made
//! for another reminder, and needs no row of its own. Every node that may answer the link
//! must have the same secret.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::domain::{EventId, ReminderId};

/// Bytes of the HMAC kept in a token (128 bits).
const TAG_BYTES: usize = 16;

/// Makes and checks the links; cheap to clone.
#[derive(Clone)]
pub struct Links {
    /// `http.public_url`, without a trailing slash; empty when unknown.
    base: String,
    key: std::sync::Arc<[u8]>,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Links {
    pub fn new(public_url: &str, key: &[u8]) -> Self {
        Self {
            base: public_url.trim_end_matches('/').to_owned(),
            key: key.into(),
        }
    }

    /// Absolute URLs need `http.public_url`; without it mails carry no links.
    pub fn enabled(&self) -> bool {
        !self.base.is_empty()
    }

    pub fn event(&self, id: EventId) -> Option<String> {
        self.enabled()
            .then(|| format!("{}/v1/events/{id}", self.base))
    }

    /// The one-click unsubscribe URL of a reminder (RFC 8058).
    pub fn unsubscribe(&self, id: ReminderId) -> Option<String> {
        self.enabled()
            .then(|| format!("{}/v1/unsubscribe/{}", self.base, self.token(id)))
    }

    fn mac(&self, id: ReminderId) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(b"unsubscribe:");
        mac.update(id.0.as_bytes());
        mac
    }

    pub fn token(&self, id: ReminderId) -> String {
        let tag = self.mac(id).finalize().into_bytes();
        let mut raw = id.0.as_bytes().to_vec();
        raw.extend_from_slice(&tag[..TAG_BYTES]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The reminder a token was made for, if it was made with this secret.
    pub fn verify(&self, token: &str) -> Option<ReminderId> {
        let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
        if raw.len() != 16 + TAG_BYTES {
            return None;
        }
        let id = ReminderId(uuid::Uuid::from_slice(&raw[..16]).ok()?);
        self.mac(id).verify_truncated_left(&raw[16..]).ok()?;
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_reminder_and_nothing_else() {
        let links = Links::new("https://corral.example/", b"secret");
        let id = ReminderId::new();
        let token = links.token(id);
        assert_eq!(links.verify(&token), Some(id));
        assert_eq!(
            links.unsubscribe(id).unwrap(),
            format!("https://corral.example/v1/unsubscribe/{token}")
        );
        // Another secret, another reminder's id with this tag, a cut or changed token.
        assert_eq!(Links::new("", b"other").verify(&token), None);
        let mut raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        raw[..16].copy_from_slice(ReminderId::new().0.as_bytes());
        assert_eq!(links.verify(&URL_SAFE_NO_PAD.encode(&raw)), None);
        assert_eq!(links.verify(&token[..token.len() - 2]), None);
        assert_eq!(links.verify("not base64!"), None);
    }

    #[test]
    fn without_a_public_url_there_are_no_links() {
        let links = Links::new("", b"secret");
        assert_eq!(links.unsubscribe(ReminderId::new()), None);
        assert_eq!(links.event(EventId::new()), None);
    }
}
