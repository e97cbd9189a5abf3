//! Accounts and sessions in the embedded store. Uniqueness of usernames and addresses is
//! checked and claimed inside one write transaction, so two sign-ups cannot both win.

use async_trait::async_trait;
use chrono::Utc;
use redb::{ReadableDatabase, ReadableTable, WriteTransaction};

use super::{
    EmbeddedStore, SESSIONS, USERS, USERS_BY_EMAIL, USERS_BY_USERNAME, decode, encode, scan,
};
use crate::domain::{Session, TokenHash, User, UserId};
use crate::store::{AccountStore, StoreError};

/// Claims every address of `user` not yet pointing at it; Conflict if one is another's.
fn claim_emails(tx: &WriteTransaction, user: &User) -> Result<(), StoreError> {
    let mut emails = tx.open_table(USERS_BY_EMAIL)?;
    let id = user.id.0.as_u128();
    for email in user.emails() {
        let owner = emails.get(email.as_str())?.map(|v| v.value());
        match owner {
            Some(other) if other != id => return Err(StoreError::Conflict("email")),
            Some(_) => {}
            None => {
                emails.insert(email.as_str(), id)?;
            }
        }
    }
    Ok(())
}

#[async_trait]
impl AccountStore for EmbeddedStore {
    async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        let user = user.clone();
        self.write(move |tx| {
            let id = user.id.0.as_u128();
            {
                let mut names = tx.open_table(USERS_BY_USERNAME)?;
                if names.get(user.username.as_str())?.is_some() {
                    return Err(StoreError::Conflict("username"));
                }
                names.insert(user.username.as_str(), id)?;
            }
            claim_emails(tx, &user)?;
            tx.open_table(USERS)?
                .insert(id, encode(&user)?.as_slice())?;
            Ok(())
        })
        .await
    }

    async fn get_user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.read_now(|db| {
            let table = db.begin_read()?.open_table(USERS)?;
            let row = table.get(id.0.as_u128())?;
            row.map(|v| decode(v.value())).transpose()
        })
    }

    async fn find_user(&self, login: &str) -> Result<Option<User>, StoreError> {
        let login = login.trim().to_lowercase();
        self.read_now(|db| {
            let tx = db.begin_read()?;
            let by_name = tx
                .open_table(USERS_BY_USERNAME)?
                .get(login.as_str())?
                .map(|v| v.value());
            let id = match by_name {
                Some(id) => Some(id),
                None => tx
                    .open_table(USERS_BY_EMAIL)?
                    .get(login.as_str())?
                    .map(|v| v.value()),
            };
            let Some(id) = id else { return Ok(None) };
            let row = tx.open_table(USERS)?.get(id)?;
            row.map(|v| decode(v.value())).transpose()
        })
    }

    async fn update_user(&self, before: &User, after: &User) -> Result<(), StoreError> {
        let (before, after) = (before.clone(), after.clone());
        self.write(move |tx| {
            // Compare and swap: the record must still be what the caller read.
            let current: Option<User> = tx
                .open_table(USERS)?
                .get(before.id.0.as_u128())?
                .map(|v| decode(v.value()))
                .transpose()?;
            if current.as_ref() != Some(&before) {
                return Err(StoreError::Changed);
            }
            claim_emails(tx, &after)?;
            {
                let mut emails = tx.open_table(USERS_BY_EMAIL)?;
                for gone in before.emails().filter(|e| !after.emails().any(|a| a == *e)) {
                    emails.remove(gone.as_str())?;
                }
            }
            tx.open_table(USERS)?
                .insert(after.id.0.as_u128(), encode(&after)?.as_slice())?;
            Ok(())
        })
        .await
    }

    async fn delete_user(&self, user: &User) -> Result<(), StoreError> {
        let user = user.clone();
        self.write(move |tx| {
            let id = user.id.0.as_u128();
            tx.open_table(USERS)?.remove(id)?;
            tx.open_table(USERS_BY_USERNAME)?
                .remove(user.username.as_str())?;
            {
                let mut emails = tx.open_table(USERS_BY_EMAIL)?;
                for email in user.emails() {
                    emails.remove(email.as_str())?;
                }
            }
            tx.open_table(SESSIONS)?
                .retain_in((id, [0u8; 32])..=(id, [u8::MAX; 32]), |_, _| false)?;
            Ok(())
        })
        .await
    }

    async fn list_users(
        &self,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<Vec<User>, StoreError> {
        self.with_db(move |db| scan(db, USERS, after.map(|id| id.0), limit))
            .await
    }

    async fn create_session(&self, session: &Session) -> Result<(), StoreError> {
        let session = session.clone();
        self.write(move |tx| {
            let user = session.user_id.0.as_u128();
            {
                let mut sessions = tx.open_table(SESSIONS)?;
                // Purge this user's expired sessions, so the table does not grow forever.
                let now = Utc::now();
                sessions.retain_in((user, [0u8; 32])..=(user, [u8::MAX; 32]), |_, v| {
                    decode::<Session>(v).is_ok_and(|s| s.expires_at > now)
                })?;
                sessions.insert((user, session.token_hash.0), encode(&session)?.as_slice())?;
            }
            Ok(())
        })
        .await
    }

    async fn get_session(
        &self,
        user: UserId,
        hash: TokenHash,
    ) -> Result<Option<Session>, StoreError> {
        self.read_now(|db| {
            let table = db.begin_read()?.open_table(SESSIONS)?;
            let row = table.get((user.0.as_u128(), hash.0))?;
            let session: Option<Session> = row.map(|v| decode(v.value())).transpose()?;
            Ok(session.filter(|s| s.expires_at > Utc::now()))
        })
    }

    async fn delete_session(&self, user: UserId, hash: TokenHash) -> Result<(), StoreError> {
        self.write(move |tx| {
            tx.open_table(SESSIONS)?
                .remove((user.0.as_u128(), hash.0))?;
            Ok(())
        })
        .await
    }
}
