//! Accounts and sessions in Scylla. A username or address is claimed with an LWT on its
//! lookup table (recording when) before the user row lists it, and released only after
//! the row stops listing it; a failed claim undoes the claims made in the same call. Every
//! write to a `users` row is an LWT: created `IF NOT EXISTS`, updated `IF version = ?`
//! (the version read with the record it replaces), deleted `IF EXISTS`. So two updates of
//! one account cannot both land, and a crash between the steps leaves at most a claim no
//! account lists, which [`ScyllaStore::reconcile_accounts`] (run by `corral migrate`)
//! proves orphaned and releases.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use scylla::client::session::Session as CqlSession;
use scylla::statement::prepared::PreparedStatement;
use uuid::Uuid;

use super::{ScyllaStore, err, prepare};
use crate::domain::{Email, Session, TimeZone, TokenHash, User, UserId, Username};
use crate::store::{AccountStore, StoreError};
use scylla::value::CqlValue;

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
type VersionedRow = (
    Uuid,
    String,
    String,
    Option<Vec<String>>,
    String,
    bool,
    DateTime<Utc>,
    Option<String>,
    Option<i64>,
);
type SessionRow = (DateTime<Utc>, DateTime<Utc>);
/// A claim: the name or address, its account, when it was taken (unknown for claims made
/// before `007_account_versions.cql`).
type ClaimRow = (String, Uuid, Option<DateTime<Utc>>);

/// How old a claim no account lists must be before the reconciler releases it: far
/// longer than any account write takes, so a sign-up in progress keeps its claims.
pub const ORPHAN_GRACE: chrono::TimeDelta = chrono::TimeDelta::hours(1);

const COLUMNS: &str =
    "id, username, email, secondary_emails, password_hash, admin, created_at, time_zone";

pub(super) struct Statements {
    claim_username: PreparedStatement,
    claim_email: PreparedStatement,
    release_username: PreparedStatement,
    release_email: PreparedStatement,
    release_email_claim: PreparedStatement,
    release_username_claim: PreparedStatement,
    refresh_email: PreparedStatement,
    get_email_claim: PreparedStatement,
    get_user_serial: PreparedStatement,
    lookup_username: PreparedStatement,
    lookup_email: PreparedStatement,
    create_user: PreparedStatement,
    update_user: PreparedStatement,
    get_user: PreparedStatement,
    get_version: PreparedStatement,
    scan_usernames: PreparedStatement,
    scan_emails: PreparedStatement,
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
            claim_username: prepare(s, format!("INSERT INTO {ks}.users_by_username (username, user_id, claimed_at) VALUES (?, ?, ?) IF NOT EXISTS")).await?,
            claim_email: prepare(s, format!("INSERT INTO {ks}.users_by_email (email, user_id, claimed_at) VALUES (?, ?, ?) IF NOT EXISTS")).await?,
            release_username: prepare(s, format!("DELETE FROM {ks}.users_by_username WHERE username = ? IF user_id = ?")).await?,
            release_email: prepare(s, format!("DELETE FROM {ks}.users_by_email WHERE email = ? IF user_id = ?")).await?,
            // A claim is released by the call that took it (or last renewed it) only.
            release_email_claim: prepare(s, format!("DELETE FROM {ks}.users_by_email WHERE email = ? IF user_id = ? AND claimed_at = ?")).await?,
            release_username_claim: prepare(s, format!("DELETE FROM {ks}.users_by_username WHERE username = ? IF user_id = ? AND claimed_at = ?")).await?,
            refresh_email: prepare(s, format!("UPDATE {ks}.users_by_email SET claimed_at = ? WHERE email = ? IF user_id = ?")).await?,
            get_email_claim: prepare(s, format!("SELECT user_id, claimed_at FROM {ks}.users_by_email WHERE email = ?")).await?,
            get_user_serial: {
                // A Paxos read: it sees the outcome of every compare-and-set before it.
                let mut read = prepare(s, format!("SELECT {COLUMNS} FROM {ks}.users WHERE id = ?")).await?;
                read.set_consistency(scylla::statement::Consistency::LocalSerial);
                read
            },
            scan_usernames: prepare(s, format!("SELECT username, user_id, claimed_at FROM {ks}.users_by_username")).await?,
            scan_emails: prepare(s, format!("SELECT email, user_id, claimed_at FROM {ks}.users_by_email")).await?,
            lookup_username: prepare(s, format!("SELECT user_id FROM {ks}.users_by_username WHERE username = ?")).await?,
            lookup_email: prepare(s, format!("SELECT user_id FROM {ks}.users_by_email WHERE email = ?")).await?,
            create_user: prepare(s, format!("INSERT INTO {ks}.users ({COLUMNS}, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1) IF NOT EXISTS")).await?,
            update_user: prepare(s, format!("UPDATE {ks}.users SET username = ?, email = ?, secondary_emails = ?, password_hash = ?, admin = ?, time_zone = ?, version = ? WHERE id = ? IF version = ? AND username = ?")).await?,
            get_user: prepare(s, format!("SELECT {COLUMNS} FROM {ks}.users WHERE id = ?")).await?,
            get_version: prepare(s, format!("SELECT {COLUMNS}, version FROM {ks}.users WHERE id = ?")).await?,
            delete_user: prepare(s, format!("DELETE FROM {ks}.users WHERE id = ? IF EXISTS")).await?,
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
    /// Claims each address for `id`; returns those this call claimed, each with its
    /// `claimed_at` (the token its release needs). An address the account holds already
    /// has its claim renewed instead (so that a concurrent update which took it cannot
    /// release it from under this one) and is not returned. On a conflict it releases
    /// what it claimed and fails.
    async fn claim_emails<'a>(
        &self,
        id: UserId,
        emails: impl Iterator<Item = &'a Email>,
    ) -> Result<Vec<(&'a Email, DateTime<Utc>)>, StoreError> {
        let st = &self.accounts;
        let mut claimed = Vec::new();
        for email in emails {
            let at = now_ms();
            let cas = self
                .cas(&st.claim_email, (email.as_str(), id.0, at))
                .await?;
            if cas.applied {
                claimed.push((email, at));
                continue;
            }
            let ours =
                matches!(cas.column("user_id"), Some(CqlValue::Uuid(owner)) if *owner == id.0);
            if ours
                && self
                    .lwt(&st.refresh_email, (at, email.as_str(), id.0))
                    .await?
            {
                continue;
            }
            self.release_claims(id, &claimed).await?;
            return Err(StoreError::Conflict("email"));
        }
        Ok(claimed)
    }

    /// Releases claims this call took, unless renewed since (see `claim_emails`).
    async fn release_claims(
        &self,
        id: UserId,
        claims: &[(&Email, DateTime<Utc>)],
    ) -> Result<(), StoreError> {
        for (email, at) in claims {
            let key = (email.as_str(), id.0, *at);
            self.lwt(&self.accounts.release_email_claim, key).await?;
        }
        Ok(())
    }

    /// The account's claims on `emails` with their tokens, read before the update that
    /// drops them, so that releasing them after it spares a claim renewed meanwhile (the
    /// address added back by a later update).
    async fn claims_of<'a>(
        &self,
        id: UserId,
        emails: &[&'a Email],
    ) -> Result<Vec<(&'a Email, Option<DateTime<Utc>>)>, StoreError> {
        let mut claims = Vec::new();
        for email in emails {
            let rows = self
                .run(&self.accounts.get_email_claim, (email.as_str(),))
                .await?
                .into_rows_result()
                .map_err(err)?;
            let claim: Option<(Uuid, Option<DateTime<Utc>>)> =
                rows.maybe_first_row().map_err(err)?;
            if let Some((_, at)) = claim.filter(|(owner, _)| *owner == id.0) {
                claims.push((*email, at));
            }
        }
        Ok(claims)
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
        let name = user.username.as_str();
        if !self
            .lwt(&st.claim_username, (name, user.id.0, now_ms()))
            .await?
        {
            return Err(StoreError::Conflict("username"));
        }
        if let Err(e) = self.claim_emails(user.id, user.emails()).await {
            // A fresh account holds no address already, so nothing was renewed.
            self.lwt(&st.release_username, (name, user.id.0)).await?;
            return Err(e);
        }
        let secondary: Vec<&str> = user.secondary_emails.iter().map(Email::as_str).collect();
        let row = (
            user.id.0,
            name,
            user.email.as_str(),
            secondary,
            &user.password_hash,
            user.admin,
            user.created_at,
            user.time_zone.name(),
        );
        // Ids are fresh v7 UUIDs: the row cannot exist, but an LWT keeps every write to
        // `users` a Paxos write (plain and Paxos writes must not mix on one row).
        self.lwt(&st.create_user, row).await?;
        Ok(())
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
        let st = &self.accounts;
        // The version that goes with `before`: the update applies only if it is still
        // the stored one.
        let rows = self
            .run(&st.get_version, (before.id.0,))
            .await?
            .into_rows_result()
            .map_err(err)?;
        let Some((stored, version)) = rows
            .maybe_first_row::<VersionedRow>()
            .map_err(err)?
            .map(|row| {
                let (id, username, email, secondary, hash, admin, created, zone, version) = row;
                let user = (id, username, email, secondary, hash, admin, created, zone);
                from_row(user).map(|user| (user, version))
            })
            .transpose()?
        else {
            return Err(StoreError::Changed);
        };
        if stored != *before {
            return Err(StoreError::Changed);
        }
        if after.username != before.username {
            return Err(StoreError::Corrupt("usernames do not change".into()));
        }
        let added: Vec<&Email> = after
            .emails()
            .filter(|e| !before.emails().any(|b| b == *e))
            .collect();
        let gone: Vec<&Email> = before
            .emails()
            .filter(|e| !after.emails().any(|a| a == *e))
            .collect();
        let to_release = self.claims_of(after.id, &gone).await?;
        let claimed = self.claim_emails(after.id, added.into_iter()).await?;
        let secondary: Vec<&str> = after.secondary_emails.iter().map(Email::as_str).collect();
        let values = (
            after.username.as_str(),
            after.email.as_str(),
            secondary,
            &after.password_hash,
            after.admin,
            after.time_zone.name(),
            version.unwrap_or(0) + 1,
            after.id.0,
            version,
            // Never null on a stored account: the condition fails on a deleted one
            // instead of writing a row of these columns alone.
            before.username.as_str(),
        );
        if !self.lwt(&st.update_user, values).await? {
            // Another write landed first. Give back the addresses claimed here, except
            // those the account now lists (read through Paxos, so that write is seen).
            let now = self
                .select_users(&st.get_user_serial, (after.id.0,))
                .await?
                .pop();
            let listed = |e: &Email| now.as_ref().is_some_and(|u| u.emails().any(|l| l == e));
            let ours: Vec<(&Email, DateTime<Utc>)> =
                claimed.into_iter().filter(|(e, _)| !listed(e)).collect();
            self.release_claims(after.id, &ours).await?;
            return Err(StoreError::Changed);
        }
        // The update stands: a release that fails leaves an orphan claim for the
        // reconciler, not an error for a change that was made.
        for (email, at) in to_release {
            let key = (email.as_str(), after.id.0, at);
            if let Err(error) = self.lwt(&st.release_email_claim, key).await {
                tracing::warn!(%error, account = %after.id.0, "could not release a dropped address; `corral migrate` will");
            }
        }
        Ok(())
    }

    async fn delete_user(&self, user: &User) -> Result<(), StoreError> {
        let st = &self.accounts;
        self.run(&st.delete_sessions, (user.id.0,)).await?;
        self.lwt(&st.delete_user, (user.id.0,)).await?;
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

/// Now, to the millisecond: what a `timestamp` column keeps, so a claim's `claimed_at`
/// compares equal to the value it was written with.
fn now_ms() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

/// What the reconciler does with one claim.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Its account lists it (or may be being written right now).
    Keep,
    /// No account lists it and it is older than [`ORPHAN_GRACE`]: a crash left it.
    Release,
}

/// Judges the claim of `key` (a username when `username`, else an address) for the
/// account `owner` read as `row`: kept while the account lists it, or while it is young
/// enough to belong to a write in progress. A claim from before claims were dated counts
/// as old.
fn judge(
    key: &str,
    username: bool,
    claimed_at: Option<DateTime<Utc>>,
    row: Option<&User>,
    now: DateTime<Utc>,
) -> Verdict {
    let listed = row.is_some_and(|user| match username {
        true => user.username.as_str() == key,
        false => user.emails().any(|e| e.as_str() == key),
    });
    let young = claimed_at.is_some_and(|at| now - at < ORPHAN_GRACE);
    if listed || young {
        Verdict::Keep
    } else {
        Verdict::Release
    }
}

/// What [`ScyllaStore::reconcile_accounts`] found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Claims looked at.
    pub claims: u64,
    /// Claims released: no account listed them.
    pub released: u64,
}

impl ScyllaStore {
    /// Walks every username and address claim and releases those no account lists
    /// (older than [`ORPHAN_GRACE`]): what a crash between an account write's steps
    /// leaves behind. Safe while nodes serve: a release applies only if the claim still
    /// names the same account.
    pub async fn reconcile_accounts(&self) -> Result<Reconciled, StoreError> {
        use futures_util::TryStreamExt;
        let st = &self.accounts;
        let mut done = Reconciled::default();
        for (scan, release, username) in [
            // Released with the token read, so a claim renewed since the scan stays.
            (&st.scan_usernames, &st.release_username_claim, true),
            (&st.scan_emails, &st.release_email_claim, false),
        ] {
            let mut claims = self
                .session
                .execute_iter(scan.clone(), ())
                .await
                .map_err(err)?
                .rows_stream::<ClaimRow>()
                .map_err(err)?;
            while let Some((key, owner, claimed_at)) = claims.try_next().await.map_err(err)? {
                done.claims += 1;
                let row = self.get_user(UserId(owner)).await?;
                if judge(&key, username, claimed_at, row.as_ref(), Utc::now()) != Verdict::Release {
                    continue;
                }
                // Confirmed through Paxos: an account write that timed out may be
                // accepted but not yet committed, which a plain read does not see and
                // the next write to the row would complete, listing a released claim.
                let row = self
                    .select_users(&st.get_user_serial, (owner,))
                    .await?
                    .pop();
                if judge(&key, username, claimed_at, row.as_ref(), Utc::now()) == Verdict::Release
                    && self.lwt(release, (key.as_str(), owner, claimed_at)).await?
                {
                    tracing::warn!(claim = %key, account = %owner, "released a claim no account lists");
                    done.released += 1;
                }
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User {
            id: UserId::new(),
            username: Username::parse("alice").unwrap(),
            email: Email::parse("alice@example.com").unwrap(),
            secondary_emails: vec![Email::parse("al@example.org").unwrap()],
            password_hash: "x".into(),
            admin: false,
            created_at: Utc::now(),
            time_zone: TimeZone::default(),
        }
    }

    #[test]
    fn a_claim_its_account_lists_is_kept_however_old() {
        let now = Utc::now();
        let old = Some(now - chrono::TimeDelta::days(30));
        let alice = user();
        assert_eq!(judge("alice", true, old, Some(&alice), now), Verdict::Keep);
        assert_eq!(
            judge("al@example.org", false, old, Some(&alice), now),
            Verdict::Keep
        );
        assert_eq!(
            judge("alice@example.com", false, None, Some(&alice), now),
            Verdict::Keep
        );
    }

    #[test]
    fn an_old_claim_without_its_account_or_not_listed_is_released() {
        let now = Utc::now();
        let old = Some(now - ORPHAN_GRACE - chrono::TimeDelta::seconds(1));
        let alice = user();
        // The account is gone (a crash after deleting the row, before the releases).
        assert_eq!(judge("alice", true, old, None, now), Verdict::Release);
        // The account no longer lists the address (a crash before its release).
        assert_eq!(
            judge("old@example.com", false, old, Some(&alice), now),
            Verdict::Release
        );
        // A username claim is not kept by an address of the same text.
        assert_eq!(
            judge("al@example.org", true, old, Some(&alice), now),
            Verdict::Release
        );
        // Claims made before they were dated count as old.
        assert_eq!(judge("bob", true, None, None, now), Verdict::Release);
    }

    #[test]
    fn a_young_claim_is_kept_for_the_write_that_may_be_making_its_account() {
        let now = Utc::now();
        let young = Some(now - ORPHAN_GRACE + chrono::TimeDelta::seconds(5));
        assert_eq!(judge("alice", true, young, None, now), Verdict::Keep);
    }

    #[test]
    fn every_write_to_a_user_row_is_a_compare_and_set() {
        // The statements are built from these texts in `Statements::prepare`.
        let src = include_str!("accounts.rs");
        for write in [
            "INSERT INTO {ks}.users (",
            "UPDATE {ks}.users ",
            "DELETE FROM {ks}.users ",
        ] {
            for line in src
                .lines()
                .filter(|l| l.contains(write) && l.contains("prepare("))
            {
                assert!(line.contains(" IF "), "not a compare-and-set: {line}");
            }
        }
    }
}
