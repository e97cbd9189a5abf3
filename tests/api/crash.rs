//! Crash tests (issue 14): the real `corral` binary, killed with SIGKILL in the middle of
//! its work and started again on the same data dir.
//!
//! - Uploads: ~100 concurrent uploads, SIGKILL at a random moment, several rounds on one
//!   data dir. Every upload answered 201 must survive (file bytes and metadata), no temp
//!   file may stay behind, and files and records must match one to one: no file under
//!   `images/` without a record, no record without its file.
//! - Reminders: a few hundred reminders fall due together, mailed to an SMTP server on
//!   loopback; SIGKILL while the mails are going out. After a restart every reminder must
//!   be `sent` and mailed at least once; a mail the SMTP server accepted just before the
//!   kill, but the store had not recorded yet, is legitimately sent again (at least once),
//!   with the same Message-ID. Those duplicates are counted and bounded.
//!
//! Everything stays on loopback.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::child::{Corral, Running};
use crate::common::smtp::{Received, SmtpSink};
use crate::common::{files_under, png, sha1_hex};
use chrono::{DateTime, TimeZone, Utc};
use corral::store::{EmbeddedStore, ImageStore, Store};
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use tempfile::TempDir;

/// How long an orderly shutdown (SIGTERM) may take.
const STOP_WITHIN: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Uploads
// ---------------------------------------------------------------------------------------

/// Kill-and-restart rounds on one data dir.
const UPLOAD_ROUNDS: u32 = 5;
/// Uploads started at once in each round.
const UPLOADS: u32 = 100;
/// The last uploads of a round repeat the content of its first ones.
const DUPLICATES: u32 = 5;
/// The SIGKILL comes this many milliseconds (uniformly random) after the uploads start.
const KILL_AFTER_MS: std::ops::Range<u64> = 5..150;

/// An upload the server answered 201.
#[derive(Debug, Clone)]
struct Accepted {
    round: u32,
    id: String,
    name: String,
    sha1: String,
}

/// How one upload ended, as the client saw it.
enum Ended {
    Created(Accepted),
    /// Another status (503 when the server is busy, say).
    Status(u16),
    /// No complete answer: the kill cut it off.
    CutOff,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_uploads_loses_no_accepted_image_and_leaves_files_and_records_matched() {
    let root = TempDir::new().unwrap();
    let mut corral = Corral::new(root.path())
        .env("CORRAL_RATE_LIMITS__ENABLED", "false")
        .env("CORRAL_UPLOADS__ALLOW_ANONYMOUS", "true")
        // Every upload of a round is admitted (none refused with 503 for being one too many).
        .env("CORRAL_UPLOADS__MAX_IN_FLIGHT", 2 * UPLOADS);
    let started = Instant::now();
    let mut accepted: Vec<Accepted> = Vec::new();
    let mut faults: Vec<String> = Vec::new();
    let mut rounds_with_orphans = 0;
    // Orphan files seen so far: one stays an orphan in every later round.
    let mut orphans_seen = std::collections::BTreeSet::new();

    for round in 0..UPLOAD_ROUNDS {
        let server = corral.start().await;
        let mut uploads = tokio::task::JoinSet::new();
        for i in 0..UPLOADS {
            // Distinct pixels, so distinct sha1s; the last few repeat the first few.
            let nth = if i >= UPLOADS - DUPLICATES {
                i - (UPLOADS - DUPLICATES)
            } else {
                i
            };
            let body = png(24, 24, round * UPLOADS + nth);
            uploads.spawn(upload(
                server.client.clone(),
                server.url("/v1/images"),
                body,
                round,
            ));
        }
        let kill_after = Duration::from_millis(rand::random_range(KILL_AFTER_MS));
        tokio::time::sleep(kill_after).await;
        server.kill();

        let (mut created, mut other, mut cut_off) = (0, BTreeMap::new(), 0);
        while let Some(ended) = uploads.join_next().await {
            match ended.expect("upload task") {
                Ended::Created(image) => {
                    created += 1;
                    accepted.push(image);
                }
                Ended::Status(status) => *other.entry(status).or_insert(0) += 1,
                Ended::CutOff => cut_off += 1,
            }
        }

        // Restarted on the same data dir: every upload ever answered 201 is still served.
        let server = corral.start().await;
        let lost = check_served(&server, &accepted).await;
        faults.extend(lost.iter().map(|l| format!("round {round}: {l}")));
        server.stop(STOP_WITHIN).await;

        // Stopped cleanly: files and records must match one to one.
        let mut audit = audit(corral.data_dir()).await;
        audit
            .orphan_files
            .retain(|f| orphans_seen.insert(f.clone()));
        if !audit.orphan_files.is_empty() {
            rounds_with_orphans += 1;
        }
        eprintln!(
            "uploads round {round}: SIGKILL {kill_after:?} after the start; {created} answered 201, \
             other statuses {other:?}, {cut_off} cut off; after restart: {} files, {} records, \
             {} lost 201s, {} new orphan files ({} in all), {} records without a file, {} temp files",
            audit.files,
            audit.records,
            lost.len(),
            audit.orphan_files.len(),
            orphans_seen.len(),
            audit.records_without_file.len(),
            audit.temp_files.len(),
        );
        faults.extend(
            audit
                .faults()
                .into_iter()
                .map(|f| format!("round {round}: {f}")),
        );
    }

    eprintln!(
        "uploads: {UPLOAD_ROUNDS} rounds in {:?}; {} uploads answered 201 in all; \
         {rounds_with_orphans} of {UPLOAD_ROUNDS} rounds left new orphan files, {} in all",
        started.elapsed(),
        accepted.len(),
        orphans_seen.len(),
    );
    assert!(
        faults.is_empty(),
        "{} faults after SIGKILL and restart ({rounds_with_orphans} of {UPLOAD_ROUNDS} rounds \
         with orphan files):\n{}",
        faults.len(),
        faults.join("\n")
    );
}

/// One raw PNG upload, anonymous.
async fn upload(client: reqwest::Client, url: String, body: Vec<u8>, round: u32) -> Ended {
    let sha1 = sha1_hex(&body);
    let Ok(response) = client
        .post(url)
        .header("content-type", "image/png")
        .body(body)
        .send()
        .await
    else {
        return Ended::CutOff;
    };
    let status = response.status().as_u16();
    let Ok(image) = response.json::<Value>().await else {
        return Ended::CutOff;
    };
    if status != 201 {
        return Ended::Status(status);
    }
    assert_eq!(
        image["sha1"],
        sha1.as_str(),
        "201 for other content: {image}"
    );
    Ended::Created(Accepted {
        round,
        id: image["id"].as_str().expect("id").to_owned(),
        name: image["name"].as_str().expect("name").to_owned(),
        sha1,
    })
}

/// Reads back every accepted upload: its bytes at `/i/<name>` (sha1 compared) and its
/// metadata at `/v1/images/<id>`. Returns what is missing or wrong.
async fn check_served(server: &Running, accepted: &[Accepted]) -> Vec<String> {
    let checks = futures_util::stream::iter(accepted.iter().cloned())
        .map(|image| {
            let client = server.client.clone();
            let file_url = server.url(&format!("/i/{}", image.name));
            let meta_url = server.url(&format!("/v1/images/{}", image.id));
            async move {
                let mut wrong = Vec::new();
                let file = client.get(file_url).send().await.expect("GET /i");
                let status = file.status();
                let bytes = file.bytes().await.expect("file body");
                if status != 200 {
                    wrong.push(format!(
                        "{} (accepted in round {}): /i/{} answers {status}",
                        image.id, image.round, image.name
                    ));
                } else if sha1_hex(&bytes) != image.sha1 {
                    wrong.push(format!(
                        "{} (accepted in round {}): /i/{} serves other bytes",
                        image.id, image.round, image.name
                    ));
                }
                let meta = client.get(meta_url).send().await.expect("GET /v1/images");
                let status = meta.status();
                let body: Value = meta.json().await.unwrap_or_default();
                if status != 200
                    || body["sha1"] != image.sha1.as_str()
                    || body["name"] != image.name.as_str()
                {
                    wrong.push(format!(
                        "{} (accepted in round {}): /v1/images/{} answers {status} {body}",
                        image.id, image.round, image.id
                    ));
                }
                wrong
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    checks.into_iter().flatten().collect()
}

/// Files against records in a stopped server's data dir.
#[derive(Default)]
struct Audit {
    files: usize,
    records: usize,
    /// Image files no record names (by the scan or by the sha1 index).
    orphan_files: Vec<String>,
    /// Records whose file is not there.
    records_without_file: Vec<String>,
    /// Anything left under `<data>/tmp`.
    temp_files: Vec<String>,
    /// Other inconsistencies: stray files, bytes not matching their name, the sha1 index
    /// disagreeing with the records.
    other: Vec<String>,
}

impl Audit {
    fn faults(&self) -> Vec<String> {
        let mut out = Vec::new();
        out.extend(
            self.orphan_files
                .iter()
                .map(|f| format!("file without a record: {f}")),
        );
        out.extend(
            self.records_without_file
                .iter()
                .map(|r| format!("record without a file: {r}")),
        );
        out.extend(
            self.temp_files
                .iter()
                .map(|t| format!("temp file left: {t}")),
        );
        out.extend(self.other.iter().cloned());
        out
    }
}

/// Opens the store of a stopped server with the library and compares it with the files:
/// published records with `images/`, drafts with `drafts/`.
async fn audit(data: &Path) -> Audit {
    let mut audit = Audit {
        temp_files: files_under(&data.join("tmp"))
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        ..Audit::default()
    };
    let store = EmbeddedStore::open(data).expect("open the stopped server's store");
    // name -> ids, published and drafts apart.
    let (mut published, mut drafts): (BTreeMap<String, Vec<String>>, BTreeMap<_, Vec<_>>) =
        Default::default();
    let mut after = None;
    loop {
        let page = store.scan_images(after, 500).await.expect("scan images");
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for image in &page {
            let shelf = if image.is_draft() {
                &mut drafts
            } else {
                &mut published
            };
            shelf
                .entry(image.name.clone())
                .or_default()
                .push(image.id.to_string());
        }
        audit.records += page.len();
    }
    for (dir, records) in [("images", &published), ("drafts", &drafts)] {
        let on_disk = named_files(&data.join(dir), &mut audit);
        audit.files += on_disk.len();
        for name in on_disk.keys() {
            let sha1 = &name[..40];
            let indexed = match dir {
                "images" => store.count_images_with_sha1(sha1).await,
                _ => store.count_drafts_with_sha1(sha1).await,
            }
            .expect("count");
            let scanned = records.get(name).map_or(0, Vec::len);
            if scanned == 0 || indexed == 0 {
                audit.orphan_files.push(format!("{dir}/{name}"));
            }
            if indexed != scanned as u64 {
                audit.other.push(format!(
                    "{dir}/{name}: the sha1 index counts {indexed} records, the scan {scanned}"
                ));
            }
        }
        for (name, ids) in records {
            if !on_disk.contains_key(name) {
                audit
                    .records_without_file
                    .push(format!("{dir}/{name} (images {})", ids.join(", ")));
            }
        }
    }
    store.close().await.expect("close the store");
    audit
}

/// name -> path of every file under `dir`, each checked to hash to its name.
fn named_files(dir: &Path, audit: &mut Audit) -> BTreeMap<String, std::path::PathBuf> {
    let mut on_disk = BTreeMap::new();
    for path in files_under(dir) {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let Some((sha1, _ext)) = name.split_once('.').filter(|(s, _)| s.len() == 40) else {
            audit.other.push(format!("stray file: {}", path.display()));
            continue;
        };
        let bytes = std::fs::read(&path).expect("read an image file");
        if sha1_hex(&bytes) != sha1 {
            audit.other.push(format!(
                "{}: its bytes do not hash to its name (torn write?)",
                path.display()
            ));
        }
        on_disk.insert(name, path);
    }
    on_disk
}

// ---------------------------------------------------------------------------------------
// Attaching drafts
// ---------------------------------------------------------------------------------------

/// Kill-and-restart rounds of attaching.
const ATTACH_ROUNDS: u32 = 3;
/// Drafts attached at once in each round: the first 10 share their content with a
/// published image, the last 10 with another draft of the round.
const DRAFTS: u32 = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_attaches_publishes_each_draft_whole_or_not_at_all() {
    let root = TempDir::new().unwrap();
    let mut corral = Corral::new(root.path()).env("CORRAL_RATE_LIMITS__ENABLED", "false");
    let mut faults = Vec::new();
    for round in 0..ATTACH_ROUNDS {
        let server = corral.start().await;
        if round == 0 {
            let body = json!({"username": "attacher", "email": "attacher@example.com",
                "password": "password-attacher"});
            let response = send(&server, None, Method::POST, "/v1/users", Some(body)).await;
            assert_eq!(response.status(), 201);
        }
        let token = log_in(&server, "attacher").await;
        let content = |n: u32| png(16, 16, 50_000 + round * 1000 + n);
        let upload = |bytes: Vec<u8>, draft: bool| {
            let request = server
                .client
                .post(server.url(&format!("/v1/images?draft={draft}")))
                .bearer_auth(&token)
                .header("content-type", "image/png")
                .body(bytes);
            async move {
                let response = request.send().await.expect("upload");
                assert_eq!(response.status(), 201);
                response.json::<Value>().await.unwrap()
            }
        };
        for n in 0..10 {
            upload(content(n), false).await;
        }
        let mut drafts = Vec::new();
        for i in 0..DRAFTS {
            let n = if i >= DRAFTS - 10 { i - 10 } else { i };
            drafts.push(upload(content(n), true).await);
        }
        let mut attaches = tokio::task::JoinSet::new();
        for draft in &drafts {
            let request = server
                .client
                .post(server.url("/v1/images/attach"))
                .bearer_auth(&token)
                .json(&json!({"images": [{"id": draft["id"]}]}));
            let id = draft["id"].as_str().unwrap().to_owned();
            attaches.spawn(async move {
                let status = request.send().await.map(|r| r.status().as_u16()).ok();
                (id, status)
            });
        }
        // The 40 attaches take ~100 ms in all on a debug build.
        let kill_after = Duration::from_millis(rand::random_range(2..60));
        tokio::time::sleep(kill_after).await;
        server.kill();
        let mut attached = HashSet::new();
        while let Some(done) = attaches.join_next().await {
            if let (id, Some(200)) = done.expect("attach task") {
                attached.insert(id);
            }
        }

        // Every draft is whole on one side: published (an answered attach must be), its
        // file at /i/; or still a draft, its file at /file for its owner.
        let server = corral.start().await;
        let token = log_in(&server, "attacher").await;
        let mut published = 0;
        for draft in &drafts {
            let id = draft["id"].as_str().unwrap();
            let meta = send(
                &server,
                Some(&token),
                Method::GET,
                &format!("/v1/images/{id}"),
                None,
            )
            .await;
            let meta: Value = meta.json().await.unwrap_or_default();
            let path = match meta["state"].as_str() {
                Some("published") => format!("/i/{}", draft["name"].as_str().unwrap()),
                Some("draft") if !attached.contains(id) => format!("/v1/images/{id}/file"),
                _ => {
                    faults.push(format!(
                        "round {round}: {id} (attached: {}) reads {meta}",
                        attached.contains(id)
                    ));
                    continue;
                }
            };
            published += usize::from(meta["state"] == "published");
            let file = send(&server, Some(&token), Method::GET, &path, None).await;
            let status = file.status();
            let bytes = file.bytes().await.unwrap();
            if status != 200 || sha1_hex(&bytes) != draft["sha1"].as_str().unwrap() {
                faults.push(format!("round {round}: {id}: {path} answers {status}"));
            }
        }
        server.stop(STOP_WITHIN).await;
        let audit = audit(corral.data_dir()).await;
        eprintln!(
            "attach round {round}: SIGKILL {kill_after:?} after the start; {} answered 200, \
             {published} published after restart; {} files, {} records",
            attached.len(),
            audit.files,
            audit.records,
        );
        faults.extend(
            audit
                .faults()
                .into_iter()
                .map(|f| format!("round {round}: {f}")),
        );
    }
    assert!(faults.is_empty(), "{}", faults.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Reminders
// ---------------------------------------------------------------------------------------

/// Kill-and-restart rounds on one data dir.
const REMINDER_ROUNDS: usize = 3;
/// Users, each setting one reminder for each of the round's events.
const USERS: usize = 10;
/// Events per round: USERS x EVENTS reminders fall due in each round.
const EVENTS: usize = 30;
/// `mail.concurrency`, set explicitly (it is also the default).
const MAIL_CONCURRENCY: usize = 8;
/// How far ahead the round's reminders are due (they are created meanwhile).
const DUE_IN: Duration = Duration::from_secs(3);
/// The round's reminders fall due spread over this long.
const DUE_SPREAD_MS: i64 = 500;

/// A reminder set in a round, and the mail it must cause.
struct Planned {
    id: String,
    user: usize,
    to: String,
    subject: String,
}

impl Planned {
    /// The Message-ID the reminder's mail carries (src/mail.rs: `<kind.id@from-domain>`).
    fn message_id(&self) -> String {
        format!("<reminder.{}@example.org>", self.id)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_reminders_fire_mails_each_at_least_once_with_bounded_duplicates() {
    let sink = SmtpSink::start().await;
    let root = TempDir::new().unwrap();
    let mut corral = Corral::new(root.path())
        .env("CORRAL_RATE_LIMITS__ENABLED", "false")
        .env("CORRAL_MAIL__TRANSPORT", "smtp")
        .env("CORRAL_MAIL__FROM", "Corral <corral@example.org>")
        .env("CORRAL_MAIL__SMTP__HOST", "127.0.0.1")
        .env("CORRAL_MAIL__SMTP__PORT", sink.port())
        .env("CORRAL_MAIL__SMTP__TLS", "none")
        .env("CORRAL_MAIL__SMTP__TIMEOUT_SECS", 5)
        .env("CORRAL_MAIL__CONCURRENCY", MAIL_CONCURRENCY)
        .env("CORRAL_MAIL__RETRY_INITIAL_MS", 100)
        .env("CORRAL_MAIL__RETRY_MAX_MS", 300)
        .env("CORRAL_MAIL__MAX_ATTEMPTS", 50)
        .env("CORRAL_REMINDERS__TICK_MS", 200);
    let started = Instant::now();

    // The admin comes from the CLI, run on the data dir before the server starts.
    let made = corral.cli(
        &[
            "admin",
            "create",
            "--username",
            "root",
            "--email",
            "root@example.com",
        ],
        &[("CORRAL_ADMIN_PASSWORD", "password-root")],
    );
    assert!(
        made.status.success(),
        "admin create: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let mut server = corral.start().await;
    let admin = log_in(&server, "root").await;
    let mut tokens = Vec::new();
    for u in 0..USERS {
        let name = format!("crash{u}");
        let body = json!({"username": name, "email": format!("{name}@example.com"), "password": format!("password-{name}")});
        let response = send(&server, None, Method::POST, "/v1/users", Some(body)).await;
        assert_eq!(response.status(), 201, "sign up {name}");
        tokens.push(log_in(&server, &name).await);
    }

    let mut faults = Vec::new();
    let mut total_duplicates = 0;
    for round in 0..REMINDER_ROUNDS {
        // The round's events, then one reminder per (user, event), due together soon.
        let mut events = Vec::new();
        for e in 0..EVENTS {
            let title = format!("Crash r{round} e{e}");
            events.push((create_event(&server, &admin, &title).await, title));
        }
        let due = Instant::now() + DUE_IN;
        let base = Utc::now() + chrono::Duration::from_std(DUE_IN).unwrap();
        let count = USERS * EVENTS;
        let spread =
            |k: usize| chrono::Duration::milliseconds(DUE_SPREAD_MS * k as i64 / count as i64);
        let planned: Vec<Planned> = futures_util::stream::iter(0..count)
            .map(|k| {
                let (user, event) = (k % USERS, k / USERS);
                let (event_id, title) = &events[event];
                let body =
                    json!({"event_id": event_id, "remind_at": (base + spread(k)).to_rfc3339()});
                let (server, token) = (&server, &tokens[user]);
                async move {
                    let response = send(
                        server,
                        Some(token),
                        Method::POST,
                        "/v1/reminders",
                        Some(body),
                    )
                    .await;
                    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
                    let reminder: Value = response.json().await.unwrap();
                    Planned {
                        id: reminder["id"].as_str().unwrap().to_owned(),
                        user,
                        to: format!("crash{user}@example.com"),
                        subject: format!("Reminder: {title}"),
                    }
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        assert!(
            Instant::now() < due,
            "creating {count} reminders took longer than {DUE_IN:?}"
        );
        let message_ids: HashSet<String> = planned.iter().map(Planned::message_id).collect();
        let of_round = |m: &Received| {
            m.header("Message-ID")
                .is_some_and(|id| message_ids.contains(&id))
                || m.header("Subject")
                    .is_some_and(|s| s.starts_with(&format!("Reminder: Crash r{round} ")))
        };

        // SIGKILL once a random share of the round's mails has reached the SMTP server.
        let kill_at = rand::random_range(10..count - 20);
        let deadline = due + Duration::from_secs(20);
        let arrived = loop {
            let arrived = sink.count(of_round);
            if arrived >= kill_at {
                break arrived;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: only {arrived} of {count} mails arrived"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        server.kill();
        let at_kill = sink.count(of_round);

        // Restarted on the same data dir (and so the same node id): every reminder ends `sent`.
        server = corral.start().await;
        let restarted = Instant::now();
        let states = wait_all_sent(&server, &tokens, &planned, Duration::from_secs(30)).await;
        let caught_up = restarted.elapsed();
        if let Err(states) = states {
            faults.push(format!(
                "round {round}: not every reminder became sent: {states:?}"
            ));
        }

        // Every reminder mailed at least once, every copy with its Message-ID.
        let mut by_rcpt_subject: HashMap<(String, String), Vec<String>> = HashMap::new();
        for m in sink.received().iter().filter(|m| of_round(m)) {
            let key = (m.to.join(","), m.header("Subject").unwrap_or_default());
            by_rcpt_subject
                .entry(key)
                .or_default()
                .push(m.header("Message-ID").unwrap_or_default());
        }
        let mut duplicates = 0;
        for p in &planned {
            let key = (p.to.clone(), p.subject.clone());
            match by_rcpt_subject.remove(&key) {
                None => faults.push(format!(
                    "round {round}: reminder {} (user {}) was never mailed",
                    p.id, p.user
                )),
                Some(ids) => {
                    duplicates += ids.len() - 1;
                    if let Some(other) = ids.iter().find(|id| **id != p.message_id()) {
                        faults.push(format!(
                            "round {round}: a mail of reminder {} carries Message-ID {other}, \
                             not {}",
                            p.id,
                            p.message_id()
                        ));
                    }
                }
            }
        }
        for ((to, subject), ids) in by_rcpt_subject {
            faults.push(format!(
                "round {round}: {} unexpected mails to {to}: {subject} ({ids:?})",
                ids.len()
            ));
        }
        // At the kill, the mails the SMTP server may have accepted without the store
        // recording them: up to `concurrency` deliveries in flight, plus the deliveries
        // already finished and waiting in the mailer's batch for their one store write
        // (their slots were refilled meanwhile), at most `concurrency` more.
        let bound = 2 * MAIL_CONCURRENCY;
        if duplicates > bound {
            faults.push(format!(
                "round {round}: {duplicates} mails sent twice, more than the {bound} that can \
                 be delivered but unrecorded at a kill"
            ));
        }
        total_duplicates += duplicates;
        eprintln!(
            "reminders round {round}: SIGKILL with {arrived}..{at_kill} of {count} mails arrived; \
             after restart all sent in {caught_up:?}; {duplicates} sent twice (Message-IDs \
             matching)"
        );
    }
    server.stop(STOP_WITHIN).await;
    eprintln!(
        "reminders: {REMINDER_ROUNDS} rounds in {:?}; {total_duplicates} duplicates in all",
        started.elapsed()
    );
    assert!(
        faults.is_empty(),
        "{} faults after SIGKILL and restart:\n{}",
        faults.len(),
        faults.join("\n")
    );
}

async fn send(
    server: &Running,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = server.client.request(method, server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.expect("request")
}

/// Logs `name` in (password `password-<name>`) and returns the bearer token.
async fn log_in(server: &Running, name: &str) -> String {
    let body = json!({"login": name, "password": format!("password-{name}")});
    let response = send(server, None, Method::POST, "/v1/sessions", Some(body)).await;
    assert_eq!(response.status(), 201, "log in as {name}");
    let session: Value = response.json().await.unwrap();
    session["token"].as_str().expect("token").to_owned()
}

fn starts() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2031, 6, 1, 18, 0, 0).unwrap()
}

/// Creates an event as the admin; returns its id.
async fn create_event(server: &Running, admin: &str, title: &str) -> String {
    let body = json!({
        "title": title,
        "description": "Bring a hat.",
        "topics": ["parade"],
        "starts_at": starts().to_rfc3339(),
        "ends_at": (starts() + chrono::Duration::hours(2)).to_rfc3339(),
        "location": {"name": "Champ de Mars", "lat": 48.8556, "lon": 2.2986},
    });
    let response = send(server, Some(admin), Method::POST, "/v1/events", Some(body)).await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let event: Value = response.json().await.unwrap();
    event["id"].as_str().unwrap().to_owned()
}

/// Polls the users' reminder lists until every planned reminder is `sent`. On timeout,
/// returns how many are in each state (a reminder stuck in `sending` shows there).
async fn wait_all_sent(
    server: &Running,
    tokens: &[String],
    planned: &[Planned],
    within: Duration,
) -> Result<(), BTreeMap<String, usize>> {
    let wanted: HashSet<&str> = planned.iter().map(|p| p.id.as_str()).collect();
    let deadline = Instant::now() + within;
    loop {
        let mut states: BTreeMap<String, usize> = BTreeMap::new();
        for token in tokens {
            let mut cursor: Option<String> = None;
            loop {
                let path = match &cursor {
                    Some(c) => format!("/v1/reminders?limit=100&cursor={c}"),
                    None => "/v1/reminders?limit=100".to_owned(),
                };
                let response = send(server, Some(token), Method::GET, &path, None).await;
                assert_eq!(response.status(), 200);
                let page: Value = response.json().await.unwrap();
                for r in page["reminders"].as_array().unwrap() {
                    if wanted.contains(r["id"].as_str().unwrap()) {
                        let state = r["state"].as_str().unwrap().to_owned();
                        *states.entry(state).or_insert(0) += 1;
                    }
                }
                match page["next"].as_str() {
                    Some(next) => cursor = Some(next.to_owned()),
                    None => break,
                }
            }
        }
        if states.get("sent") == Some(&planned.len()) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(states);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
