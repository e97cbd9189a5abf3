//! The `corral` binary's own messages, as an operator reads them: every start-up and admin
//! failure names what failed once, with the fix when there is one; logs carry no colour
//! codes when they do not go to a terminal, and name the request they were written in;
//! `--help` describes the whole server.

use std::net::TcpListener;
use std::process::Output;
use std::time::Duration;

use crate::common::child::{Corral, Running, run as corral};

/// The failure's stderr, checked to be one line, said once, after a failed exit.
fn failure(out: &Output) -> String {
    assert!(!out.status.success(), "it succeeded: {out:?}");
    let said = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 1, "one line, not:\n{said}");
    let line = lines[0];
    assert!(line.starts_with("corral: "), "{line}");
    // No cause repeated ("x: y: y").
    let parts: Vec<&str> = line.split(": ").collect();
    for pair in parts.windows(2) {
        assert_ne!(pair[0], pair[1], "repeated: {line}");
    }
    assert!(!line.contains('\u{1b}'), "colour codes: {line:?}");
    line.to_owned()
}

/// Makes `name` an admin with `admin create` (password `password-root`), server stopped.
fn admin(server: &Corral, name: &str) {
    let out = server.cli(
        &[
            "admin",
            "create",
            "--username",
            name,
            "--email",
            &format!("{name}@example.org"),
        ],
        &[("CORRAL_ADMIN_PASSWORD", "password-root")],
    );
    assert!(out.status.success(), "{out:?}");
}

/// Signs `name` in (as [`admin`] made it) and returns the token.
async fn sign_in(running: &Running, name: &str) -> String {
    let session: serde_json::Value = running
        .client
        .post(running.url("/v1/sessions"))
        .json(&serde_json::json!({"login": name, "password": "password-root"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    session["token"].as_str().unwrap().to_owned()
}

#[test]
fn a_missing_config_file_is_named_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let line = failure(&corral(&["--config", path.to_str().unwrap(), "serve"], &[]));
    assert!(
        line.contains(path.to_str().unwrap()) && line.contains("No such file"),
        "{line}"
    );
}

#[test]
fn an_unusable_data_dir_is_named_and_nothing_claims_to_listen() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"not a directory").unwrap();
    let data = file.join("data");
    let out = corral(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "serve",
            "--bind",
            "127.0.0.1:0",
        ],
        &[],
    );
    let line = failure(&out);
    assert!(line.contains(data.to_str().unwrap()), "{line}");
    assert!(line.contains("Not a directory"), "{line}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("listening"), "{stdout}");
}

#[test]
fn an_address_in_use_is_named_with_the_way_out() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let line = failure(&corral(
        &[
            "--data-dir",
            dir.path().to_str().unwrap(),
            "serve",
            "--bind",
            &addr,
        ],
        &[],
    ));
    assert!(line.contains(&addr) && line.contains("--bind"), "{line}");
    assert!(line.contains("in use"), "{line}");
}

#[tokio::test]
async fn admin_create_while_the_server_runs_says_to_stop_it_and_logs_have_no_colours() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Corral::new(dir.path());
    let running = server.start().await;
    let data = server.data_dir().to_str().unwrap().to_owned();
    let out = corral(
        &[
            "--data-dir",
            &data,
            "admin",
            "create",
            "--username",
            "root",
            "--email",
            "root@example.org",
        ],
        &[("CORRAL_ADMIN_PASSWORD", "password-root")],
    );
    let line = failure(&out);
    assert!(line.contains(&format!("{data}/corral.redb")), "{line}");
    assert!(line.contains("Stop it first"), "{line}");
    running.stop(Duration::from_secs(10)).await;
    // The server's log went to a file (not a terminal): plain text.
    let log = server.log();
    assert!(log.contains("corral listening"), "{log}");
    assert!(!log.contains('\u{1b}'), "colour codes in the log file");
}

#[test]
fn admin_create_without_a_password_says_how_to_give_one() {
    let dir = tempfile::tempdir().unwrap();
    let line = failure(&corral(
        &[
            "--data-dir",
            dir.path().to_str().unwrap(),
            "admin",
            "create",
            "--username",
            "root",
            "--email",
            "root@example.org",
        ],
        &[],
    ));
    assert!(
        line.contains("CORRAL_ADMIN_PASSWORD") && line.contains("--password"),
        "{line}"
    );
}

#[test]
fn help_describes_the_whole_server_and_every_admin_flag() {
    let out = corral(&["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["images", "events", "reminders", "accounts"] {
        assert!(
            help.contains(word),
            "--help does not mention {word}:\n{help}"
        );
    }
    let out = corral(&["admin", "create", "--help"], &[]);
    let help = String::from_utf8_lossy(&out.stdout);
    let usage = help.lines().find(|l| l.starts_with("Usage:")).unwrap();
    assert!(
        !usage.contains("--password"),
        "the password is not required: {usage}"
    );
    for flag in [
        "--username <USERNAME>",
        "--email <EMAIL>",
        "--password <PASSWORD>",
    ] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(flag))
            .unwrap();
        assert!(
            line.trim_start().len() > flag.len() + 10,
            "no help for {flag}: {line}"
        );
    }
}

/// The `.eml` files in `outbox` that mention `needle`.
fn mails_with(outbox: &std::path::Path, needle: &str) -> usize {
    std::fs::read_dir(outbox)
        .map(|dir| {
            dir.flatten()
                .filter(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(needle)))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn admin_create_on_a_stopped_servers_data_fires_no_reminder_and_sends_no_mail() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Corral::new(dir.path()).env("CORRAL_REMINDERS__TICK_MS", 200);
    admin(&server, "root");
    let running = server.start().await;
    // The key that signs unsubscribe links is the server's own.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let secret = std::fs::metadata(server.data_dir().join("link_secret")).unwrap();
        assert_eq!(secret.permissions().mode() & 0o777, 0o600);
    }
    let client = crate::common::child::client();
    let call =
        |method: reqwest::Method, path: &str, token: Option<&str>, body: serde_json::Value| {
            let mut request = client.request(method, running.url(path)).json(&body);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            async move {
                let response = request.send().await.unwrap();
                assert!(response.status().is_success(), "{}", response.status());
                response.json::<serde_json::Value>().await.unwrap()
            }
        };
    let token = sign_in(&running, "root").await;
    let starts = chrono::Utc::now() + chrono::Duration::days(1);
    let event = serde_json::json!({
        "title": "Shearing day", "topics": ["farm"],
        "starts_at": starts.to_rfc3339(), "ends_at": (starts + chrono::Duration::hours(1)).to_rfc3339(),
        "location": {"name": "The barn", "lat": 45.0, "lon": 5.0},
    });
    let event = call(reqwest::Method::POST, "/v1/events", Some(&token), event).await;
    let due = chrono::Utc::now() + chrono::Duration::seconds(2);
    let reminder = serde_json::json!({"event_id": event["id"], "remind_at": due.to_rfc3339()});
    let reminder = call(
        reqwest::Method::POST,
        "/v1/reminders",
        Some(&token),
        reminder,
    )
    .await;
    let id = reminder["id"].as_str().unwrap().to_owned();
    running.stop(Duration::from_secs(10)).await;

    // The reminder falls due while the server is down; an admin command runs meanwhile.
    tokio::time::sleep(Duration::from_secs(3)).await;
    admin(&server, "root2");
    let outbox = server.data_dir().join("outbox");
    assert_eq!(
        mails_with(&outbox, &id),
        0,
        "admin create sent the reminder"
    );

    // The server, started again, is the one that sends it.
    let _running = server.start().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while mails_with(&outbox, &id) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the server never sent it"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn log_lines_written_during_a_request_name_its_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Corral::new(dir.path()).env("CORRAL_LOG__FORMAT", "json");
    admin(&server, "root");
    let running = server.start().await;
    let token = sign_in(&running, "root").await;
    // One id chosen by the client, one made by the server; each request logs a line.
    let list = |id: Option<&'static str>| {
        let mut request = running
            .client
            .get(running.url("/v1/admin/users"))
            .bearer_auth(&token);
        if let Some(id) = id {
            request = request.header("x-request-id", id);
        }
        request.send()
    };
    let chosen = list(Some("trace-me-7")).await.unwrap();
    assert_eq!(chosen.headers()["x-request-id"], "trace-me-7");
    let made = list(None).await.unwrap();
    let generated = made.headers()["x-request-id"].to_str().unwrap().to_owned();
    running.stop(Duration::from_secs(10)).await;
    let ids: Vec<String> = server
        .log()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|entry| entry["fields"]["message"] == "admin listed users")
        .map(|entry| {
            entry["span"]["request_id"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(
        ids,
        ["trace-me-7", generated.as_str()],
        "{}",
        server.log_tail(20)
    );
}
