//! Accounts, sessions, deletion and admins (the API and the CLI), through a real server.

use crate::common::{TestApp, png, problem};
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test]
async fn the_account_lifecycle_from_sign_up_to_logout() {
    let app = TestApp::spawn().await;
    let body = json!({"username": "Ann", "email": "Ann@Example.com", "password": "password-ann"});
    let created = app.post_json("/v1/users", &body).await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["username"], "ann");
    assert_eq!(created["email"], "ann@example.com");
    assert!(created.get("password_hash").is_none());

    let token = app.log_in("ann").await;
    assert!(token.len() >= 43, "at least 256 bits of secret");
    let me: Value = app
        .call(Method::GET, "/v1/users/me", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["id"], created["id"]);

    // A secondary address: added, usable to log in, removed.
    let added = app
        .call(Method::POST, "/v1/users/me/emails", &token)
        .json(&json!({"email": "Ann.Work@Example.org"}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 201);
    let added: Value = added.json().await.unwrap();
    assert_eq!(added["secondary_emails"], json!(["ann.work@example.org"]));
    let by_email = app
        .client
        .post(app.url("/v1/sessions"))
        .json(&json!({"login": "ann.work@example.org", "password": "password-ann"}))
        .send()
        .await
        .unwrap();
    assert_eq!(by_email.status(), 201);
    let removed = app
        .call(
            Method::DELETE,
            "/v1/users/me/emails/ann.work@example.org",
            &token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 200);
    problem(
        app.call(
            Method::DELETE,
            "/v1/users/me/emails/ann.work@example.org",
            &token,
        )
        .send()
        .await
        .unwrap(),
        404,
    )
    .await;
    problem(
        app.call(
            Method::DELETE,
            "/v1/users/me/emails/ann@example.com",
            &token,
        )
        .send()
        .await
        .unwrap(),
        409,
    )
    .await;

    // A new primary; the old one stays as a secondary address.
    let changed = app
        .call(Method::PATCH, "/v1/users/me", &token)
        .json(&json!({"email": "ann@new.example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    let me: Value = app
        .call(Method::GET, "/v1/users/me", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["email"], "ann@new.example.com");
    assert_eq!(me["secondary_emails"], json!(["ann@example.com"]));

    // Logout: the token stops working at once.
    assert_eq!(
        app.call(Method::DELETE, "/v1/sessions", &token)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let rejected = app
        .call(Method::GET, "/v1/users/me", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(rejected.headers()["www-authenticate"], "Bearer");
    problem(rejected, 401).await;
    problem(app.get("/v1/users/me").await, 401).await;
}

#[tokio::test]
async fn usernames_and_emails_are_unique_across_accounts() {
    let app = TestApp::spawn().await;
    assert_eq!(app.sign_up("bob").await.status(), 201);
    let same_name =
        json!({"username": "BOB", "email": "other@example.com", "password": "password-x"});
    problem(app.post_json("/v1/users", &same_name).await, 409).await;
    let same_email =
        json!({"username": "robert", "email": "Bob@Example.com", "password": "password-x"});
    problem(app.post_json("/v1/users", &same_email).await, 409).await;

    // Another account's address can be neither added nor made primary.
    let carol = app.new_user("carol").await;
    let add = app
        .call(Method::POST, "/v1/users/me/emails", &carol)
        .json(&json!({"email": "bob@example.com"}))
        .send()
        .await
        .unwrap();
    problem(add, 409).await;
    let primary = app
        .call(Method::PATCH, "/v1/users/me", &carol)
        .json(&json!({"email": "bob@example.com"}))
        .send()
        .await
        .unwrap();
    problem(primary, 409).await;
}

#[tokio::test]
async fn bad_sign_ups_get_4xx_problem_json() {
    let app = TestApp::spawn().await;
    let post = |body: Value| app.client.post(app.url("/v1/users")).json(&body).send();
    for (body, what) in [
        (
            json!({"username": "dan", "email": "not-an-email", "password": "password-dan"}),
            "email",
        ),
        (
            json!({"username": "dan", "email": "Dan <dan@example.com>", "password": "password-dan"}),
            "email",
        ),
        (
            json!({"username": "dan", "email": "dan@example.com", "password": "short"}),
            "password",
        ),
        (
            json!({"username": "x", "email": "dan@example.com", "password": "password-dan"}),
            "username",
        ),
        (
            json!({"username": "dan", "email": "dan@example.com"}),
            "password",
        ),
        (
            json!({"username": "dan", "email": "dan@example.com", "password": "password-dan", "admin": true}),
            "admin",
        ),
    ] {
        let body = problem(post(body).await.unwrap(), 400).await;
        assert!(body["detail"].as_str().unwrap().contains(what), "{body}");
    }
    let oversized =
        json!({"username": "dan", "email": "dan@example.com", "password": "x".repeat(100_000)});
    problem(post(oversized).await.unwrap(), 413).await;
    let form = app
        .client
        .post(app.url("/v1/users"))
        .header("content-type", "text/plain")
        .body("username=dan")
        .send()
        .await
        .unwrap();
    problem(form, 415).await;
    let broken = app
        .client
        .post(app.url("/v1/users"))
        .header("content-type", "application/json")
        .body("{\"username\":")
        .send()
        .await
        .unwrap();
    problem(broken, 400).await;
    assert_eq!(
        app.sign_up("dan").await.status(),
        201,
        "nothing was half-created"
    );
}

#[tokio::test]
async fn unknown_users_and_wrong_passwords_get_the_same_401() {
    let app = TestApp::spawn().await;
    app.sign_up("erin").await;
    let attempt = |login: &str, password: &str| {
        app.client
            .post(app.url("/v1/sessions"))
            .json(&json!({"login": login, "password": password}))
            .send()
    };
    let wrong_password = problem(attempt("erin", "password-wrong").await.unwrap(), 401).await;
    let unknown_user = problem(attempt("nobody", "password-erin").await.unwrap(), 401).await;
    assert_eq!(wrong_password, unknown_user);
}

#[tokio::test]
async fn a_deleted_account_s_token_is_refused_and_its_images_are_gone() {
    let app = TestApp::spawn().await;
    let fay = app.new_user("fay").await;
    let second_session = app.log_in("fay").await;
    let upload = |bytes: Vec<u8>| {
        app.call(Method::POST, "/v1/images", &fay)
            .header("content-type", "image/png")
            .body(bytes)
            .send()
    };
    let own: Value = upload(png(6, 6, 900)).await.unwrap().json().await.unwrap();
    // Content fay shares with tester stays on disk for tester.
    let shared_bytes = png(6, 6, 901);
    let shared: Value = upload(shared_bytes.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kept = app.upload_png(shared_bytes).await;
    assert_eq!(app.files_under("images").len(), 2);

    assert_eq!(
        app.call(Method::DELETE, "/v1/users/me", &fay)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    problem(
        app.call(Method::GET, "/v1/users/me", &fay)
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    problem(
        app.call(Method::GET, "/v1/users/me", &second_session)
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    for image in [&own, &shared] {
        problem(
            app.get(&format!("/v1/images/{}", image["id"].as_str().unwrap()))
                .await,
            404,
        )
        .await;
    }
    problem(app.get(own["url"].as_str().unwrap()).await, 404).await;
    assert_eq!(app.get(kept["url"].as_str().unwrap()).await.status(), 200);
    assert_eq!(app.files_under("images").len(), 1);
    let sample: Value = app
        .get("/v1/images/random?count=100")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(sample["images"].as_array().unwrap().len(), 1, "{sample}");
    // The name is free again.
    assert_eq!(app.sign_up("fay").await.status(), 201);
}

#[tokio::test]
async fn admin_routes_refuse_other_users_and_the_cli_makes_admins() {
    let app = TestApp::spawn().await;
    problem(
        app.authed(Method::GET, "/v1/admin/users")
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    problem(app.get("/v1/admin/users").await, 401).await;
    let dir = app.stop().await;

    // `corral admin create` on the same data dir promotes tester and creates root.
    for (name, email) in [
        ("tester", "tester@example.com"),
        ("root", "root@example.com"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_corral"))
            .args([
                "--data-dir",
                dir.path().to_str().unwrap(),
                "admin",
                "create",
                "--username",
                name,
                "--email",
                email,
            ])
            .env("CORRAL_ADMIN_PASSWORD", format!("password-{name}"))
            .output()
            .expect("run corral");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let app = TestApp::spawn_in(dir, |_| {}).await;
    let users: Value = app
        .authed(Method::GET, "/v1/admin/users")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"tester") && names.contains(&"root"));
    let root = app.log_in("root").await;
    let me: Value = app
        .call(Method::GET, "/v1/users/me", &root)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["admin"], true);
    problem(
        app.authed(Method::GET, "/v1/admin/users?limit=0")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
}

#[tokio::test]
async fn concurrent_account_changes_do_not_lose_each_other() {
    let app = TestApp::spawn().await;
    let token = app.new_user("ivy").await;
    let adds = (0..4).map(|i| {
        app.call(Method::POST, "/v1/users/me/emails", &token)
            .json(&json!({"email": format!("ivy{i}@example.com")}))
            .send()
    });
    let statuses: Vec<u16> = futures_util::future::join_all(adds)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    let me: Value = app
        .call(Method::GET, "/v1/users/me", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut emails: Vec<&str> = me["secondary_emails"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    emails.sort();
    assert_eq!(
        emails,
        [
            "ivy0@example.com",
            "ivy1@example.com",
            "ivy2@example.com",
            "ivy3@example.com"
        ]
    );
    // Every address added can be removed again (record and index agree).
    for email in emails {
        let removed = app
            .call(
                Method::DELETE,
                &format!("/v1/users/me/emails/{email}"),
                &token,
            )
            .send()
            .await
            .unwrap();
        assert_eq!(removed.status(), 200, "{email}");
    }
}
