//! Accounts: sign-up, login, session authentication, profile changes and deletion.
//!
//! Passwords are hashed with argon2id on blocking threads. Sessions are opaque tokens of
//! which only a SHA-256 is stored. Lookups go through two moka caches (token -> user id,
//! user id -> user) with a short TTL; logout and every account change invalidate them, so
//! on this node a change is seen at once and on other nodes within the TTL.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use chrono::Utc;
use moka::future::Cache;

use crate::domain::user::AccountError;
use crate::domain::{
    Email, Password, Session, SessionToken, TimeZone, TokenHash, User, UserId, Username,
};
use crate::images::{Images, ImagesError};
use crate::reminders::{Reminders, RemindersError};
use crate::store::{SharedStore, StoreError};

/// Most cached sessions and users; beyond this moka evicts the least used.
const CACHE_CAPACITY: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error(transparent)]
    Invalid(#[from] AccountError),
    #[error("that {0} is already taken")]
    Taken(&'static str),
    /// Unknown login or wrong password: deliberately the same error.
    #[error("unknown login or wrong password")]
    BadCredentials,
    #[error("an account has at most {0} secondary addresses")]
    TooManyEmails(usize),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Images(#[from] ImagesError),
    #[error(transparent)]
    Reminders(#[from] RemindersError),
    #[error("password hashing failed: {0}")]
    Hash(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<StoreError> for AccountsError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => Self::Taken(what),
            other => Self::Store(other),
        }
    }
}

/// Settings the accounts module needs.
#[derive(Debug, Clone, Copy)]
pub struct AccountRules {
    pub session_ttl: Duration,
    pub cache_ttl: Duration,
    pub max_secondary_emails: usize,
}

/// Cheap to clone: the caches and the store are shared.
#[derive(Clone)]
pub struct Accounts {
    store: SharedStore,
    /// Deleting an account deletes its images and reminders first.
    images: Images,
    reminders: Reminders,
    rules: AccountRules,
    sessions: Cache<TokenHash, UserId>,
    users: Cache<UserId, Arc<User>>,
    /// Accounts deleted within the cache TTL, so a racing lookup cannot re-cache one.
    deleted: Cache<UserId, ()>,
}

impl Accounts {
    pub fn new(
        store: SharedStore,
        images: Images,
        reminders: Reminders,
        rules: AccountRules,
    ) -> Self {
        Self {
            store,
            images,
            reminders,
            rules,
            sessions: cache(rules.cache_ttl),
            users: cache(rules.cache_ttl),
            deleted: cache(rules.cache_ttl),
        }
    }

    pub fn rules(&self) -> AccountRules {
        self.rules
    }

    pub async fn sign_up(
        &self,
        username: Username,
        email: Email,
        password: Password,
        time_zone: TimeZone,
    ) -> Result<User, AccountsError> {
        let user = User {
            id: UserId::new(),
            username,
            email,
            secondary_emails: Vec::new(),
            password_hash: hash(password).await?,
            admin: false,
            created_at: Utc::now(),
            time_zone,
        };
        self.store.create_user(&user).await?;
        Ok(user)
    }

    /// Checks the password and opens a session. Unknown logins cost a hash check too, so
    /// timing does not tell them apart from wrong passwords.
    pub async fn log_in(
        &self,
        login: &str,
        password: String,
    ) -> Result<(SessionToken, Session), AccountsError> {
        let user = self.store.find_user(login).await?;
        let stored_hash = user
            .as_ref()
            .map_or_else(|| dummy_hash().to_owned(), |u| u.password_hash.clone());
        let matches = verify(password, stored_hash).await?;
        let user = user
            .filter(|_| matches)
            .ok_or(AccountsError::BadCredentials)?;
        let token = SessionToken::generate(user.id);
        let now = Utc::now();
        let session = Session {
            user_id: user.id,
            token_hash: token.hash(),
            created_at: now,
            expires_at: now + self.rules.session_ttl,
        };
        self.store.create_session(&session).await?;
        Ok((token, session))
    }

    /// The user a bearer token belongs to, if the token is valid and unexpired.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Arc<User>>, AccountsError> {
        let Some(token) = SessionToken::parse(token) else {
            return Ok(None);
        };
        let hash = token.hash();
        // The cache is keyed by the secret's hash; the token's user-id half must match
        // too, as it does in the store's lookup (a token is one whole, not two halves).
        let cached = self.sessions.get(&hash).await;
        let user_id = match cached.filter(|id| *id == token.user_id) {
            Some(id) => id,
            None => match self.store.get_session(token.user_id, hash).await? {
                Some(session) => {
                    self.sessions.insert(hash, session.user_id).await;
                    session.user_id
                }
                None => return Ok(None),
            },
        };
        self.user(user_id).await
    }

    /// The user by id, through the cache.
    pub async fn user(&self, id: UserId) -> Result<Option<Arc<User>>, AccountsError> {
        if let Some(user) = self.users.get(&id).await {
            return Ok(Some(user));
        }
        let Some(user) = self.store.get_user(id).await? else {
            return Ok(None);
        };
        let user = Arc::new(user);
        self.users.insert(id, user.clone()).await;
        // A deletion that raced this read must not leave the account cached.
        if self.deleted.contains_key(&id) {
            self.users.invalidate(&id).await;
            return Ok(None);
        }
        Ok(Some(user))
    }

    pub async fn log_out(&self, token: &str) -> Result<(), AccountsError> {
        if let Some(token) = SessionToken::parse(token) {
            // Store first: a lookup racing this cannot re-cache a session that is gone.
            self.store
                .delete_session(token.user_id, token.hash())
                .await?;
            self.sessions.invalidate(&token.hash()).await;
        }
        Ok(())
    }

    /// Applies `change` to the stored user and writes it back; if the record changed in
    /// between (a concurrent update), reads it again and re-applies `change`.
    pub async fn update(
        &self,
        id: UserId,
        change: impl Fn(&mut User) -> Result<(), AccountsError>,
    ) -> Result<User, AccountsError> {
        const ATTEMPTS: usize = 5;
        for _ in 0..ATTEMPTS {
            let before =
                self.store.get_user(id).await?.ok_or_else(|| {
                    AccountsError::NotFound("the account no longer exists".into())
                })?;
            let mut after = before.clone();
            change(&mut after)?;
            match self.store.update_user(&before, &after).await {
                Err(StoreError::Changed) => continue,
                result => result?,
            }
            self.users.invalidate(&id).await;
            return Ok(after);
        }
        Err(AccountsError::Conflict(
            "the account is being changed by another request; retry".into(),
        ))
    }

    /// Changes the primary address and/or the time zone, both or neither. A new primary
    /// address demotes the old one to a secondary address.
    pub async fn change_profile(
        &self,
        id: UserId,
        email: Option<Email>,
        zone: Option<TimeZone>,
    ) -> Result<User, AccountsError> {
        let max = self.rules.max_secondary_emails;
        self.update(id, |user| {
            if let Some(zone) = zone {
                user.time_zone = zone;
            }
            let Some(email) = &email else { return Ok(()) };
            if user.email == *email {
                return Ok(());
            }
            let old = std::mem::replace(&mut user.email, email.clone());
            user.secondary_emails.retain(|e| e != email);
            user.secondary_emails.insert(0, old);
            if user.secondary_emails.len() > max {
                // Keeping the old primary would push out another address: refuse instead.
                return Err(AccountsError::TooManyEmails(max));
            }
            Ok(())
        })
        .await
    }

    pub async fn add_email(&self, id: UserId, email: Email) -> Result<User, AccountsError> {
        let max = self.rules.max_secondary_emails;
        self.update(id, |user| {
            if user.emails().any(|e| *e == email) {
                return Err(AccountsError::Conflict(format!(
                    "{email} is already on the account"
                )));
            }
            if user.secondary_emails.len() >= max {
                return Err(AccountsError::TooManyEmails(max));
            }
            user.secondary_emails.push(email.clone());
            Ok(())
        })
        .await
    }

    pub async fn remove_email(&self, id: UserId, email: Email) -> Result<User, AccountsError> {
        self.update(id, |user| {
            if user.email == email {
                return Err(AccountsError::Conflict(
                    "the primary address cannot be removed; make another one primary first".into(),
                ));
            }
            let before = user.secondary_emails.len();
            user.secondary_emails.retain(|e| *e != email);
            if user.secondary_emails.len() == before {
                return Err(AccountsError::NotFound(format!(
                    "{email} is not on the account"
                )));
            }
            Ok(())
        })
        .await
    }

    /// Removes the account, its images, reminders, addresses and sessions. Its tokens
    /// stop working at once.
    pub async fn delete(&self, user: &User) -> Result<(), AccountsError> {
        // The account goes last: if this stops half-way, it still exists and can retry.
        self.images.delete_all_of(user.id).await?;
        self.reminders.cancel_all_of(user.id).await?;
        self.store.delete_user(user).await?;
        self.deleted.insert(user.id, ()).await;
        self.users.invalidate(&user.id).await;
        Ok(())
    }

    /// Creates an admin, or promotes the existing user with that username.
    pub async fn create_or_promote_admin(
        &self,
        username: Username,
        email: Email,
        password: Password,
    ) -> Result<User, AccountsError> {
        match self.store.find_user(username.as_str()).await? {
            Some(user) => {
                self.update(user.id, |u| {
                    u.admin = true;
                    Ok(())
                })
                .await
            }
            None => {
                let user = self
                    .sign_up(username, email, password, TimeZone::default())
                    .await?;
                self.update(user.id, |u| {
                    u.admin = true;
                    Ok(())
                })
                .await
            }
        }
    }
}

fn cache<K, V>(ttl: Duration) -> Cache<K, V>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    Cache::builder()
        .max_capacity(CACHE_CAPACITY)
        .time_to_live(ttl)
        .build()
}

async fn hash(password: Password) -> Result<String, AccountsError> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.expose().as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| AccountsError::Hash(e.into()))
    })
    .await
    .map_err(|e| AccountsError::Hash(e.into()))?
}

async fn verify(password: String, stored: String) -> Result<bool, AccountsError> {
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&stored).map_err(|e| AccountsError::Hash(e.into()))?;
        Ok(Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await
    .map_err(|e| AccountsError::Hash(e.into()))?
}

/// A real argon2id hash of a random password, verified against for unknown logins.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let mut secret = [0u8; 32];
        rand::fill(&mut secret);
        Argon2::default()
            .hash_password(&secret)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}
