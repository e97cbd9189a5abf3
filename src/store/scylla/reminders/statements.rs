//! The prepared CQL of reminders, their indexes, the schedule and the mail queue.

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::COLUMNS;
use crate::domain::ReminderState;
use crate::store::StoreError;
use crate::store::scylla::prepare;

pub struct Statements {
    pub(super) insert: PreparedStatement,
    pub(super) get: PreparedStatement,
    pub(super) update: PreparedStatement,
    pub(super) delete: PreparedStatement,
    pub(super) delete_any: PreparedStatement,
    pub(super) fire: PreparedStatement,
    pub(super) fail: PreparedStatement,
    pub(super) sent: PreparedStatement,
    pub(super) undeliverable: PreparedStatement,
    pub(super) add_by_user: PreparedStatement,
    pub(super) remove_by_user: PreparedStatement,
    pub(super) by_user: PreparedStatement,
    pub(super) by_user_after: PreparedStatement,
    pub(super) add_due: PreparedStatement,
    pub(super) remove_due: PreparedStatement,
    pub(super) due_in: PreparedStatement,
    pub(super) due_any: PreparedStatement,
    pub(super) add_bucket: PreparedStatement,
    pub(super) buckets: PreparedStatement,
    pub(super) forget_bucket: PreparedStatement,
    pub(super) take_lease: PreparedStatement,
    pub(super) swap_lease: PreparedStatement,
    pub(super) drop_lease: PreparedStatement,
    pub(super) put_job: PreparedStatement,
    pub(super) jobs: PreparedStatement,
    pub(super) remove_job: PreparedStatement,
    pub(super) floor: PreparedStatement,
    pub(super) set_floor: PreparedStatement,
    pub(super) put_dead: PreparedStatement,
    pub(super) add_dead_month: PreparedStatement,
    pub(super) dead_months: PreparedStatement,
    pub(super) dead: PreparedStatement,
    pub(super) dead_after: PreparedStatement,
}

impl Statements {
    pub async fn prepare(s: &Session, ks: &str) -> Result<Self, StoreError> {
        let scheduled = ReminderState::Scheduled.as_str();
        let sending = ReminderState::Sending.as_str();
        let sent = ReminderState::Sent.as_str();
        let failed = ReminderState::Failed.as_str();
        Ok(Self {
            insert: prepare(
                s,
                format!(
                    "INSERT INTO {ks}.reminders ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS"
                ),
            )
            .await?,
            get: prepare(s, format!("SELECT {COLUMNS} FROM {ks}.reminders WHERE id = ?")).await?,
            // Conditions cover what places the index rows (state, remind_at) and what a
            // writer changes (email, and updated_at, which every change sets).
            update: prepare(
                s,
                format!(
                    "UPDATE {ks}.reminders SET user_id = ?, event_id = ?, remind_at = ?, email = ?, state = ?, detail = ?, created_at = ?, updated_at = ? WHERE id = ? IF state = ? AND remind_at = ? AND email = ? AND updated_at = ?"
                ),
            )
            .await?,
            delete: prepare(
                s,
                format!("DELETE FROM {ks}.reminders WHERE id = ? IF state = ? AND remind_at = ?"),
            )
            .await?,
            delete_any: prepare(s, format!("DELETE FROM {ks}.reminders WHERE id = ? IF EXISTS"))
                .await?,
            fire: prepare(
                s,
                format!(
                    "UPDATE {ks}.reminders SET state = '{sending}', updated_at = ? WHERE id = ? IF state = '{scheduled}' AND remind_at = ? AND email = ?"
                ),
            )
            .await?,
            fail: prepare(
                s,
                format!(
                    "UPDATE {ks}.reminders SET state = '{failed}', detail = ?, updated_at = ? WHERE id = ? IF state = '{scheduled}' AND remind_at = ?"
                ),
            )
            .await?,
            sent: prepare(
                s,
                format!(
                    "UPDATE {ks}.reminders SET state = '{sent}', updated_at = ? WHERE id = ? IF state = '{sending}'"
                ),
            )
            .await?,
            undeliverable: prepare(
                s,
                format!(
                    "UPDATE {ks}.reminders SET state = '{failed}', detail = ?, updated_at = ? WHERE id = ? IF state = '{sending}'"
                ),
            )
            .await?,
            add_by_user: prepare(
                s,
                format!(
                    "INSERT INTO {ks}.reminders_by_user (user_id, remind_at, id) VALUES (?, ?, ?)"
                ),
            )
            .await?,
            remove_by_user: prepare(
                s,
                format!(
                    "DELETE FROM {ks}.reminders_by_user WHERE user_id = ? AND remind_at = ? AND id = ?"
                ),
            )
            .await?,
            by_user: prepare(
                s,
                format!(
                    "SELECT remind_at, id FROM {ks}.reminders_by_user WHERE user_id = ? LIMIT ?"
                ),
            )
            .await?,
            by_user_after: prepare(
                s,
                format!(
                    "SELECT remind_at, id FROM {ks}.reminders_by_user WHERE user_id = ? AND (remind_at, id) > (?, ?) LIMIT ?"
                ),
            )
            .await?,
            add_due: prepare(
                s,
                format!(
                    "INSERT INTO {ks}.reminders_due (minute, shard, remind_at, id) VALUES (?, ?, ?, ?)"
                ),
            )
            .await?,
            remove_due: prepare(
                s,
                format!(
                    "DELETE FROM {ks}.reminders_due WHERE minute = ? AND shard = ? AND remind_at = ? AND id = ?"
                ),
            )
            .await?,
            due_in: prepare(
                s,
                format!(
                    "SELECT remind_at, id FROM {ks}.reminders_due WHERE minute = ? AND shard = ?"
                ),
            )
            .await?,
            due_any: prepare(
                s,
                format!(
                    "SELECT id FROM {ks}.reminders_due WHERE minute = ? AND shard = ? LIMIT 1"
                ),
            )
            .await?,
            add_bucket: prepare(
                s,
                format!("INSERT INTO {ks}.due_buckets (shard, minute) VALUES (?, ?)"),
            )
            .await?,
            buckets: prepare(
                s,
                format!("SELECT minute FROM {ks}.due_buckets WHERE shard = ? AND minute >= ? AND minute <= ?"),
            )
            .await?,
            forget_bucket: prepare(
                s,
                format!("DELETE FROM {ks}.due_buckets WHERE shard = ? AND minute = ?"),
            )
            .await?,
            take_lease: prepare(
                s,
                format!(
                    "INSERT INTO {ks}.bucket_leases (minute, shard, node, until) VALUES (?, ?, ?, ?) IF NOT EXISTS"
                ),
            )
            .await?,
            swap_lease: prepare(
                s,
                format!(
                    "UPDATE {ks}.bucket_leases SET node = ?, until = ? WHERE minute = ? AND shard = ? IF node = ? AND until = ?"
                ),
            )
            .await?,
            drop_lease: prepare(
                s,
                format!("DELETE FROM {ks}.bucket_leases WHERE minute = ? AND shard = ? IF EXISTS"),
            )
            .await?,
            put_job: prepare(
                s,
                format!("INSERT INTO {ks}.mail_jobs (node, minute, id, job) VALUES (?, ?, ?, ?)"),
            )
            .await?,
            jobs: prepare(
                s,
                format!("SELECT job FROM {ks}.mail_jobs WHERE node = ? AND minute = ?"),
            )
            .await?,
            remove_job: prepare(
                s,
                format!("DELETE FROM {ks}.mail_jobs WHERE node = ? AND minute = ? AND id = ?"),
            )
            .await?,
            floor: prepare(s, format!("SELECT minute FROM {ks}.mail_floors WHERE node = ?")).await?,
            set_floor: prepare(
                s,
                format!("INSERT INTO {ks}.mail_floors (node, minute) VALUES (?, ?)"),
            )
            .await?,
            put_dead: prepare(
                s,
                format!("INSERT INTO {ks}.dead_letters (month, id, letter) VALUES (?, ?, ?)"),
            )
            .await?,
            add_dead_month: prepare(
                s,
                format!("INSERT INTO {ks}.dead_letter_months (k, month) VALUES (?, ?)"),
            )
            .await?,
            dead_months: prepare(
                s,
                format!("SELECT month FROM {ks}.dead_letter_months WHERE k = ? AND month >= ?"),
            )
            .await?,
            dead: prepare(
                s,
                format!("SELECT letter FROM {ks}.dead_letters WHERE month = ? LIMIT ?"),
            )
            .await?,
            dead_after: prepare(
                s,
                format!("SELECT letter FROM {ks}.dead_letters WHERE month = ? AND id > ? LIMIT ?"),
            )
            .await?,
        })
    }
}
