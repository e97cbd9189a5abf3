//! Accounts and sessions in Scylla. A username or address is claimed with an LWT on its
//! lookup table before the user row is written; a failed claim undoes the claims made in
//! the same call, so a conflict leaves nothing behind.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use scylla::client::session::Session as CqlSession;
use scylla::statement::prepared::PreparedStatement;
use uuid::Uuid;

use super::{ScyllaStore, err, prepare};
use crate::domain::{Email, Session, TimeZone, TokenHash, User, UserId, Username};
use crate::store::{AccountStore, StoreError};

type UserRow = (
    Uuid,
    String,
    String,
    Option<Vec<String>>,
    String,
    bool,
    DateTime<Utc>,
    Option<String>,
);
type SessionRow = (DateTime<Utc>, DateTime<Utc>);

const COLUMNS: &str =
    "id, username, email, secondary_emails, password_hash, admin, created_at, time_zone";

pub(super) struct Statements {
    claim_username: PreparedStatement,
    claim_email: PreparedStatement,
    release_username: PreparedStatement,
    release_email: PreparedStatement,
    lookup_username: PreparedStatement,
    lookup_email: PreparedStatement,
    write_user: PreparedStatement,
    get_user: PreparedStatement,
    delete_user: PreparedStatement,
    scan_first: PreparedStatement,
    scan_after: PreparedStatement,
    insert_session: PreparedStatement,
    get_session: PreparedStatement,
    delete_session: PreparedStatement,
    delete_sessions: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(s: &CqlSession, ks: &str) -> Result<Self, StoreError> {
        Ok(Self {
            claim_username: prepare(s, format!("INSERT INTO {ks}.users_by_username (username, user_id) VALUES (?, ?) IF NOT EXISTS")).await?,
            claim_email: prepare(s, format!("INSERT INTO {ks}.users_by_email (email, user_id) VALUES (?, ?) IF NOT EXISTS")).await?,
            release_username: prepare(s, format!("DELETE FROM {ks}.users_by_username WHERE username = ? IF user_id = ?")).await?,
            release_email: prepare(s, format!("DELETE FROM {ks}.users_by_email WHERE email = ? IF user_id = ?")).await?,
            lookup_username: prepare(s, format!("SELECT user_id FROM {ks}.users_by_username WHERE username = ?")).await?,
            lookup_email: prepare(s, format!("SELECT user_id FROM {ks}.users_by_email WHERE email = ?")).await?,
            write_user: prepare(s, format!("INSERT INTO {ks}.users ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")).await?,
            get_user: prepare(s, format!("SELECT {COLUMNS} FROM {ks}.users WHERE id = ?")).await?,
            delete_user: prepare(s, format!("DELETE FROM {ks}.users WHERE id = ?")).await?,
            scan_first: prepare(s, format!("SELECT {COLUMNS} FROM {ks}.users LIMIT ?")).await?,
            scan_after: prepare(s, format!("SELECT {COLUMNS} FROM {ks}.users WHERE token(id) > token(?) LIMIT ?")).await?,
            insert_session: prepare(s, format!("INSERT INTO {ks}.sessions (user_id, token_hash, created_at, expires_at) VALUES (?, ?, ?, ?) USING TTL ?")).await?,
            get_session: prepare(s, format!("SELECT created_at, expires_at FROM {ks}.sessions WHERE user_id = ? AND token_hash = ?")).await?,
            delete_session: prepare(s, format!("DELETE FROM {ks}.sessions WHERE user_id = ? AND token_hash = ?")).await?,
            delete_sessions: prepare(s, format!("DELETE FROM {ks}.sessions WHERE user_id = ?")).await?,
        })
    }
}

fn from_row(row: UserRow) -> Result<User, StoreError> {
    let (id, username, email, secondary, password_hash, admin, created_at, time_zone) = row;
    let corrupt = |e: crate::domain::user::AccountError| StoreError::Corrupt(e.to_string());
    Ok(User {
        id: UserId(id),
        username: Username::parse(&username).map_err(corrupt)?,
        email: Email::parse(&email).map_err(corrupt)?,
        secondary_emails: secondary
            .unwrap_or_default()
            .iter()
            .map(|e| Email::parse(e))
            .collect::<Result<_, _>>()
            .map_err(corrupt)?,
        password_hash,
        admin,
        created_at,
        time_zone: time_zone
            .map(|z| TimeZone::parse(&z))
            .transpose()
            .map_err(corrupt)?
            .unwrap_or_default(),
    })
}

impl ScyllaStore {
    async fn write_user(&self, user: &User) -> Result<(), StoreError> {
        let secondary: Vec<&str> = user.secondary_emails.iter().map(Email::as_str).collect();
        let row = (
            user.id.0,
            user.username.as_str(),
            user.email.as_str(),
            secondary,
            &user.password_hash,
            user.admin,
            user.created_at,
            user.time_zone.name(),
        );
        self.run(&self.accounts.write_user, row).await?;
        Ok(())
    }

    /// Claims each address; on a conflict releases those claimed here and fails.
    async fn claim_emails<'a>(
        &self,
        id: UserId,
        emails: impl Iterator<Item = &'a Email>,
    ) -> Result<(), StoreError> {
        let mut claimed = Vec::new();
        for email in emails {
            if self
                .lwt(&self.accounts.claim_email, (email.as_str(), id.0))
                .await?
            {
                claimed.push(email);
            } else {
                for email in claimed {
                    self.lwt(&self.accounts.release_email, (email.as_str(), id.0))
                        .await?;
                }
                return Err(StoreError::Conflict("email"));
            }
        }
        Ok(())
    }

    async fn lookup(
        &self,
        statement: &PreparedStatement,
        key: &str,
    ) -> Result<Option<UserId>, StoreError> {
        let rows = self
            .run(statement, (key,))
            .await?
            .into_rows_result()
            .map_err(err)?;
        Ok(rows
            .maybe_first_row::<(Uuid,)>()
            .map_err(err)?
            .map(|(id,)| UserId(id)))
    }

    async fn select_users(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<Vec<User>, StoreError> {
        let rows = self
            .run(statement, values)
            .await?
            .into_rows_result()
            .map_err(err)?;
        rows.rows::<UserRow>()
            .map_err(err)?
            .map(|r| r.map_err(err).and_then(from_row))
            .collect()
    }
}

#[async_trait]
impl AccountStore for ScyllaStore {
    async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        let st = &self.accounts;
        if !self
            .lwt(&st.claim_username, (user.username.as_str(), user.id.0))
            .await?
        {
            return Err(StoreError::Conflict("username"));
        }
        if let Err(e) = self.claim_emails(user.id, user.emails()).await {
            self.lwt(&st.release_username, (user.username.as_str(), user.id.0))
                .await?;
            return Err(e);
        }
        self.write_user(user).await
    }

    async fn get_user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        Ok(self
            .select_users(&self.accounts.get_user, (id.0,))
            .await?
            .pop())
    }

    async fn find_user(&self, login: &str) -> Result<Option<User>, StoreError> {
        let login = login.trim().to_lowercase();
        let id = match self.lookup(&self.accounts.lookup_username, &login).await? {
            Some(id) => Some(id),
            None => self.lookup(&self.accounts.lookup_email, &login).await?,
        };
        match id {
            Some(id) => self.get_user(id).await,
            None => Ok(None),
        }
    }

    async fn update_user(&self, before: &User, after: &User) -> Result<(), StoreError> {
        let added = after.emails().filter(|e| !before.emails().any(|b| b == *e));
        self.claim_emails(after.id, added).await?;
        self.write_user(after).await?;
        for gone in before.emails().filter(|e| !after.emails().any(|a| a == *e)) {
            self.lwt(&self.accounts.release_email, (gone.as_str(), after.id.0))
                .await?;
        }
        Ok(())
    }

    async fn delete_user(&self, user: &User) -> Result<(), StoreError> {
        let st = &self.accounts;
        self.run(&st.delete_sessions, (user.id.0,)).await?;
        self.run(&st.delete_user, (user.id.0,)).await?;
        self.lwt(&st.release_username, (user.username.as_str(), user.id.0))
            .await?;
        for email in user.emails() {
            self.lwt(&st.release_email, (email.as_str(), user.id.0))
                .await?;
        }
        Ok(())
    }

    async fn list_users(
        &self,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<Vec<User>, StoreError> {
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        match after {
            Some(id) => {
                self.select_users(&self.accounts.scan_after, (id.0, limit))
                    .await
            }
            None => self.select_users(&self.accounts.scan_first, (limit,)).await,
        }
    }

    async fn create_session(&self, session: &Session) -> Result<(), StoreError> {
        let ttl = (session.expires_at - Utc::now())
            .num_seconds()
            .clamp(1, i64::from(i32::MAX));
        let ttl = i32::try_from(ttl).unwrap_or(i32::MAX);
        let values = (
            session.user_id.0,
            session.token_hash.0.to_vec(),
            session.created_at,
            session.expires_at,
            ttl,
        );
        self.run(&self.accounts.insert_session, values).await?;
        Ok(())
    }

    async fn get_session(
        &self,
        user: UserId,
        hash: TokenHash,
    ) -> Result<Option<Session>, StoreError> {
        let rows = self
            .run(&self.accounts.get_session, (user.0, hash.0.to_vec()))
            .await?
            .into_rows_result()
            .map_err(err)?;
        let row: Option<SessionRow> = rows.maybe_first_row().map_err(err)?;
        Ok(row
            .map(|(created_at, expires_at)| Session {
                user_id: user,
                token_hash: hash,
                created_at,
                expires_at,
            })
            .filter(|s| s.expires_at > Utc::now()))
    }

    async fn delete_session(&self, user: UserId, hash: TokenHash) -> Result<(), StoreError> {
        self.run(&self.accounts.delete_session, (user.0, hash.0.to_vec()))
            .await?;
        Ok(())
    }
}
