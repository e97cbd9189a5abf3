//! The Scylla backend: one shared session, every statement prepared once, partition keys
//! bound as values, lightweight transactions only where uniqueness needs them. The schema
//! comes from `schema/*.cql` (applied by `corral migrate`).

mod accounts;
pub use accounts::Reconciled;
mod events;
mod feed;
mod images;
mod reminders;

use async_trait::async_trait;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::CqlValue;

use super::{Store, StoreError};

/// The CQL files, in the order they apply. Embedded so a deployed binary can migrate.
pub const SCHEMA: &[(&str, &str)] = &[
    (
        "001_images.cql",
        include_str!("../../../schema/001_images.cql"),
    ),
    (
        "002_accounts.cql",
        include_str!("../../../schema/002_accounts.cql"),
    ),
    (
        "003_events.cql",
        include_str!("../../../schema/003_events.cql"),
    ),
    (
        "004_reminders.cql",
        include_str!("../../../schema/004_reminders.cql"),
    ),
    ("005_mail.cql", include_str!("../../../schema/005_mail.cql")),
    (
        "006_push_feed.cql",
        include_str!("../../../schema/006_push_feed.cql"),
    ),
    (
        "007_account_versions.cql",
        include_str!("../../../schema/007_account_versions.cql"),
    ),
    (
        "008_time_buckets.cql",
        include_str!("../../../schema/008_time_buckets.cql"),
    ),
];

/// Point reads in flight at once when an index page is turned into its records.
const POINT_READS: usize = 16;

/// Where the cluster is and which keyspace is ours.
#[derive(Debug, Clone)]
pub struct ScyllaTarget {
    pub nodes: Vec<String>,
    pub keyspace: String,
    pub replication_factor: u32,
    /// The local datacenter, preferred by the load balancing (`scylla.datacenter`).
    pub datacenter: Option<String>,
}

fn err(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::scylla(e)
}

pub struct ScyllaStore {
    session: Session,
    images: images::Statements,
    accounts: accounts::Statements,
    events: events::Statements,
    reminders: reminders::Statements,
    feed: feed::Statements,
    ping: PreparedStatement,
    /// Where each due-bucket shard is read from (see `reminders::schedule`).
    due_floors: reminders::DueFloors,
}

/// One session for the node: every statement at LOCAL_QUORUM (LWTs' Paxos at
/// LOCAL_SERIAL), sent token-aware to a replica, in the local datacenter when one is set.
async fn session(target: &ScyllaTarget) -> Result<Session, StoreError> {
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(dc) = &target.datacenter {
        policy = policy
            .prefer_datacenter(dc.clone())
            .permit_dc_failover(false);
    }
    let profile = ExecutionProfile::builder()
        .consistency(Consistency::LocalQuorum)
        .serial_consistency(Some(SerialConsistency::LocalSerial))
        .load_balancing_policy(policy.build())
        .build();
    SessionBuilder::new()
        .known_nodes(&target.nodes)
        .default_execution_profile_handle(profile.into_handle())
        .build()
        .await
        .map_err(err)
}

/// What `migrate` did: the schema files it applied now, those recorded before, and what
/// the account reconciler found.
#[derive(Debug, Default)]
pub struct Migrated {
    pub applied: Vec<&'static str>,
    pub already: Vec<&'static str>,
    pub accounts: Reconciled,
}

/// Applies the schema files the keyspace's `schema_version` table does not record, in
/// order, recording each once applied. The first file (the keyspace and that table,
/// every statement idempotent) always runs.
pub async fn migrate(target: &ScyllaTarget) -> Result<Migrated, StoreError> {
    let session = session(target).await?;
    let ks = &target.keyspace;
    let mut done = Migrated::default();
    for (i, (name, cql)) in SCHEMA.iter().enumerate() {
        let recorded = match i {
            0 => false,
            _ => {
                let rows = session
                    .query_unpaged(
                        format!("SELECT file FROM {ks}.schema_version WHERE file = ?"),
                        (name,),
                    )
                    .await
                    .map_err(err)?
                    .into_rows_result()
                    .map_err(err)?;
                rows.rows_num() > 0
            }
        };
        if recorded {
            done.already.push(name);
            continue;
        }
        for statement in statements(cql, target) {
            match session.query_unpaged(statement.as_str(), ()).await {
                Ok(_) => {}
                // A column an earlier, interrupted run of this file added already.
                Err(e) if added_before(&statement, &e.to_string()) => {}
                Err(e) => return Err(StoreError::scylla(format!("{name}: {e}"))),
            }
        }
        session.await_schema_agreement().await.map_err(err)?;
        session
            .query_unpaged(
                format!(
                    "INSERT INTO {ks}.schema_version (file, applied_at) \
                     VALUES (?, toTimestamp(now()))"
                ),
                (name,),
            )
            .await
            .map_err(err)?;
        done.applied.push(name);
    }
    drop(session);
    // Claims a crash left without their account (see `accounts`).
    done.accounts = ScyllaStore::connect(target)
        .await?
        .reconcile_accounts()
        .await?;
    Ok(done)
}

/// Whether `error` says the column `statement` (an `ALTER TABLE ... ADD`) adds is
/// there already.
fn added_before(statement: &str, error: &str) -> bool {
    statement.to_ascii_uppercase().starts_with("ALTER TABLE")
        && statement.to_ascii_uppercase().contains(" ADD ")
        && error.contains("conflicts with an existing column")
}

/// Splits a schema file into statements, substituting the placeholders.
fn statements(cql: &str, target: &ScyllaTarget) -> Vec<String> {
    let body: String = cql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    body.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.replace("${keyspace}", &target.keyspace).replace(
                "${replication_factor}",
                &target.replication_factor.to_string(),
            )
        })
        .collect()
}

/// Prepares a statement, marked idempotent when it is (so the driver may retry it).
async fn prepare(session: &Session, cql: String) -> Result<PreparedStatement, StoreError> {
    let idempotent = idempotent(&cql);
    let mut statement = session.prepare(cql).await.map_err(err)?;
    statement.set_is_idempotent(idempotent);
    Ok(statement)
}

/// Whether running `cql` twice does what running it once does, so that a retry after a
/// timeout is safe: every plain read and write here (they set values, never add to
/// them), not a lightweight transaction (`IF ...`), whose second run may answer
/// "not applied" to its own first.
fn idempotent(cql: &str) -> bool {
    let upper = cql.to_ascii_uppercase();
    !upper.contains(" IF ") && !upper.contains("COUNTER")
}

impl ScyllaStore {
    /// Connects and prepares every statement. The schema must already be applied.
    pub async fn connect(target: &ScyllaTarget) -> Result<Self, StoreError> {
        let session = session(target).await?;
        let ks = &target.keyspace;
        Ok(Self {
            images: images::Statements::prepare(&session, ks).await?,
            accounts: accounts::Statements::prepare(&session, ks).await?,
            events: events::Statements::prepare(&session, ks).await?,
            reminders: reminders::Statements::prepare(&session, ks).await?,
            feed: feed::Statements::prepare(&session, ks).await?,
            ping: prepare(&session, "SELECT now() FROM system.local".into()).await?,
            due_floors: Default::default(),
            session,
        })
    }

    async fn run(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<QueryResult, StoreError> {
        self.session
            .execute_unpaged(statement, values)
            .await
            .map_err(err)
    }

    /// Runs a lightweight transaction; returns whether it was applied.
    async fn lwt(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<bool, StoreError> {
        Ok(self.cas(statement, values).await?.applied)
    }

    /// Runs a lightweight transaction; returns whether it was applied and the columns the
    /// server sent with the answer (the row as it found it, when it did not apply).
    async fn cas(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Cas, StoreError> {
        let rows = self
            .run(statement, values)
            .await?
            .into_rows_result()
            .map_err(err)?;
        let names: Vec<String> = rows
            .column_specs()
            .iter()
            .map(|spec| spec.name().to_owned())
            .collect();
        let row: scylla::value::Row = rows.first_row().map_err(err)?;
        let columns: Vec<(String, Option<CqlValue>)> = names.into_iter().zip(row.columns).collect();
        let mut cas = Cas {
            applied: false,
            columns,
        };
        cas.applied = match cas.column("[applied]") {
            Some(CqlValue::Boolean(applied)) => *applied,
            other => {
                return Err(StoreError::scylla(format!(
                    "unexpected LWT answer {other:?}"
                )));
            }
        };
        Ok(cas)
    }
}

/// A lightweight transaction's answer.
struct Cas {
    applied: bool,
    /// Every column of the answer by name, `[applied]` included.
    columns: Vec<(String, Option<CqlValue>)>,
}

impl Cas {
    /// A column's value; `None` when it is null or was not sent.
    fn column(&self, name: &str) -> Option<&CqlValue> {
        self.columns
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, value)| value.as_ref())
    }
}

/// Converts a stored integer back, refusing values that do not fit.
fn stored<T: TryFrom<S>, S: Copy + std::fmt::Display>(v: S) -> Result<T, StoreError> {
    T::try_from(v).map_err(|_| StoreError::Corrupt(format!("stored value {v} is out of range")))
}

#[async_trait]
impl Store for ScyllaStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.run(&self.ping, ()).await?;
        Ok(())
    }

    async fn close(&self) -> Result<(), StoreError> {
        // The session closes its connections when dropped; writes are acknowledged already.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_file_is_embedded_in_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/schema");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".cql"))
            .collect();
        on_disk.sort();
        let embedded: Vec<&str> = SCHEMA.iter().map(|(name, _)| *name).collect();
        assert_eq!(embedded, on_disk);
    }

    #[test]
    fn statements_are_split_and_placeholders_filled() {
        let target = ScyllaTarget {
            nodes: vec![],
            keyspace: "ks1".into(),
            replication_factor: 3,
            datacenter: None,
        };
        let all: Vec<String> = SCHEMA
            .iter()
            .flat_map(|(_, cql)| statements(cql, &target))
            .collect();
        assert!(all[0].starts_with("CREATE KEYSPACE IF NOT EXISTS ks1"));
        assert!(all[0].contains("'replication_factor': 3"));
        // LWT needs a keyspace without tablets (see the schema's note).
        assert!(
            all[0].contains("AND tablets = {'enabled': false}"),
            "{}",
            all[0]
        );
        assert!(all.iter().all(|s| !s.contains("${") && !s.contains(';')));
        assert!(all.iter().any(|s| s.contains("ks1.images_by_sha1")));
    }

    #[test]
    fn a_rerun_of_a_half_applied_file_passes_over_the_columns_it_added() {
        let error = "Database returned an error: The query is syntactically correct but \
                     invalid, Error message: Invalid column name version because it \
                     conflicts with an existing column";
        assert!(added_before(
            "ALTER TABLE ks.users ADD version bigint",
            error
        ));
        assert!(!added_before("CREATE TABLE ks.users (id uuid)", error));
        assert!(!added_before(
            "ALTER TABLE ks.users ADD version bigint",
            "Unavailable"
        ));
    }

    /// Every statement text of the backend, as it appears in its source (each is one
    /// string literal, possibly with `format!` placeholders such as `{ks}`).
    fn statement_texts() -> Vec<String> {
        let sources = [
            include_str!("mod.rs"),
            include_str!("accounts.rs"),
            include_str!("events.rs"),
            include_str!("feed.rs"),
            include_str!("images.rs"),
            include_str!("reminders/mod.rs"),
            include_str!("reminders/statements.rs"),
            include_str!("reminders/mail_queue.rs"),
            include_str!("reminders/schedule.rs"),
        ];
        let starts = [
            "SELECT ",
            "INSERT INTO ",
            "UPDATE ",
            "DELETE FROM ",
            "BEGIN ",
        ];
        let mut found = Vec::new();
        for source in sources {
            for literal in source.split('"').skip(1).step_by(2) {
                if starts.iter().any(|s| literal.starts_with(s)) && literal.contains("{ks}") {
                    found.push(literal.replace("\\\n", " "));
                }
            }
        }
        found
    }

    #[test]
    fn every_statement_binds_its_values_filters_nothing_and_keeps_lwts_to_one_partition() {
        let texts = statement_texts();
        assert!(texts.len() >= 60, "found only {} statements", texts.len());
        for cql in &texts {
            let upper = cql.to_ascii_uppercase();
            assert!(!upper.contains("ALLOW FILTERING"), "{cql}");
            // Values are bound, never spliced in: the only quoted text is a constant of
            // the code (a reminder state), and no comparison is with a literal number.
            for quoted in cql.split('\'').skip(1).step_by(2) {
                assert!(
                    quoted.starts_with('{') && quoted.ends_with('}'),
                    "a literal in {cql}"
                );
            }
            for op in ["= ", "> ", "< "] {
                for rhs in cql.split(op).skip(1) {
                    let first = rhs.chars().next().unwrap_or(' ');
                    assert!(
                        !first.is_ascii_digit(),
                        "compares with a literal number: {cql}"
                    );
                }
            }
            if let Some((head, _)) = upper.split_once(" IF ") {
                // A lightweight transaction names one partition: equality on its key,
                // no range or IN.
                let whole = head.split(" WHERE ").nth(1).unwrap_or("");
                assert!(
                    !whole.contains(" IN ")
                        && !whole.contains('>')
                        && !whole.contains('<')
                        && !whole.contains("TOKEN("),
                    "an LWT over more than one partition: {cql}"
                );
                assert!(
                    upper.starts_with("INSERT") || !whole.is_empty(),
                    "an LWT without a key: {cql}"
                );
            }
        }
    }

    #[test]
    fn plain_statements_are_idempotent_and_lightweight_transactions_are_not() {
        for plain in [
            "SELECT id FROM ks.images WHERE id = ?",
            "INSERT INTO ks.sessions (a, b) VALUES (?, ?) USING TTL ?",
            "UPDATE ks.images SET tags = ? WHERE id = ?",
            "DELETE FROM ks.images_by_tag WHERE tag = ? AND id = ?",
        ] {
            assert!(idempotent(plain), "{plain}");
        }
        for lwt in [
            "INSERT INTO ks.users_by_username (u, id) VALUES (?, ?) IF NOT EXISTS",
            "UPDATE ks.images SET tags = ? WHERE id = ? IF EXISTS",
            "UPDATE ks.reminders SET state = ? WHERE id = ? if state = ?",
        ] {
            assert!(!idempotent(lwt), "{lwt}");
        }
    }
}
