//! Drafts (seed 002): an upload made while a form is filled stays private until the form
//! is submitted and attaches it, and is gone if it never is. Random images by tag. All
//! through the real HTTP API, with the files checked on disk.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{TestApp, metric, png, problem, random_ids};

/// Uploads `bytes` as a draft with `token` (anonymously with `None`); the answer's JSON.
async fn draft(app: &TestApp, token: Option<&str>, bytes: Vec<u8>, tags: &str) -> Value {
    let mut request = app
        .client
        .post(app.url(&format!("/v1/images?draft=true&tags={tags}")))
        .header("content-type", "image/png")
        .body(bytes);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    response.json().await.unwrap()
}

async fn attach(app: &TestApp, token: &str, body: Value) -> reqwest::Response {
    app.call(Method::POST, "/v1/images/attach", token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn id(image: &Value) -> &str {
    image["id"].as_str().unwrap()
}

async fn my_ids(app: &TestApp, token: &str) -> Vec<String> {
    let body: Value = app
        .call(Method::GET, "/v1/users/me/images", token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn status_of(request: reqwest::RequestBuilder) -> u16 {
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn a_draft_is_private_until_attached_then_public_everywhere() {
    let app = TestApp::spawn().await;
    let other = app.new_user("otter").await;
    let bytes = png(20, 10, 1801);
    let image = draft(&app, Some(&app.token), bytes.clone(), "llama").await;
    assert_eq!(image["state"], "draft");
    assert!(image["expires_at"].is_string(), "{image}");
    assert!(
        image.get("claim_token").is_none(),
        "an owned draft needs no token"
    );
    let (id, url) = (id(&image), image["url"].as_str().unwrap());
    let draft_url = image["draft_url"].as_str().unwrap();
    let path = url.strip_prefix(&app.url("")).unwrap_or(url).to_owned();

    // Nowhere public: not /random (by tag or not), not the owner's listing, not the
    // file URL, not to another user or to nobody.
    assert!(random_ids(&app, "count=10").await.is_empty());
    assert!(random_ids(&app, "count=10&tag=llama").await.is_empty());
    assert!(my_ids(&app, &app.token).await.is_empty());
    assert_eq!(app.get(&path).await.status(), 404);
    assert_eq!(app.get(&format!("/v1/images/{id}")).await.status(), 404);
    let as_other = |p: &str| app.call(Method::GET, p, &other);
    assert_eq!(status_of(as_other(&format!("/v1/images/{id}"))).await, 404);
    assert_eq!(
        status_of(as_other(&format!("/v1/images/{id}/file"))).await,
        404
    );
    assert_eq!(
        app.get(&format!("/v1/images/{id}/file")).await.status(),
        404
    );
    // Its owner sees it, and its bytes (never cached by others).
    let own: Value = app
        .authed(Method::GET, &format!("/v1/images/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(own["state"], "draft");
    let file = app
        .client
        .get(app.url(draft_url))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    assert_eq!(file.status(), 200);
    assert_eq!(file.headers()["cache-control"], "private, no-store");
    assert_eq!(file.bytes().await.unwrap().as_ref(), bytes.as_slice());
    // Its file is kept apart from the published ones.
    assert!(app.files_under("images").is_empty());
    assert_eq!(app.files_under("drafts").len(), 1);

    // Someone else cannot attach it.
    problem(
        attach(&app, &other, json!({"images": [{"id": id}]})).await,
        404,
    )
    .await;

    // Attached (with the form's tags), it is everywhere.
    let response = attach(
        &app,
        &app.token,
        json!({"images": [{"id": id}], "tags": ["llama", "fluffy"]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let attached: Value = response.json().await.unwrap();
    let published = &attached["images"][0];
    assert_eq!(published["state"], "published");
    assert_eq!(published["tags"], json!(["fluffy", "llama"]));
    assert!(published.get("expires_at").is_none());
    assert_eq!(random_ids(&app, "count=10").await, [id]);
    assert_eq!(random_ids(&app, "count=10&tag=fluffy").await, [id]);
    assert_eq!(my_ids(&app, &app.token).await, [id]);
    assert_eq!(app.get(&path).await.status(), 200);
    assert_eq!(status_of(as_other(&format!("/v1/images/{id}"))).await, 200);
    assert_eq!(app.files_under("images").len(), 1);
    assert!(
        app.files_under("drafts").is_empty(),
        "the draft's copy went"
    );

    // Attaching again changes nothing.
    let again = attach(&app, &app.token, json!({"images": [{"id": id}]})).await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["images"][0]["tags"], json!(["fluffy", "llama"]));
    assert_eq!(random_ids(&app, "count=10").await, [id]);
}

#[tokio::test]
async fn attach_is_all_or_nothing() {
    let app = TestApp::spawn().await;
    let other = app.new_user("otter").await;
    let a = draft(&app, Some(&app.token), png(9, 9, 1811), "").await;
    let b = draft(&app, Some(&app.token), png(9, 9, 1812), "").await;
    let theirs = draft(&app, Some(&other), png(9, 9, 1813), "").await;
    let published = app.upload_png(png(9, 9, 1814)).await;
    for bad in [
        json!({"id": "not-a-uuid"}),
        json!({"id": "0190b9a4-0000-7000-8000-000000000000"}),
        json!({"id": id(&theirs)}),
    ] {
        let body = json!({"images": [{"id": id(&a)}, bad, {"id": id(&b)}]});
        problem(attach(&app, &app.token, body).await, 404).await;
    }
    // Nothing was attached: only the published image is public.
    assert_eq!(random_ids(&app, "count=10").await, [id(&published)]);
    assert_eq!(my_ids(&app, &app.token).await, [id(&published)]);
    assert_eq!(app.files_under("drafts").len(), 3);
    assert_eq!(app.files_under("images").len(), 1);

    // Malformed requests are 400s.
    for body in [
        json!({"images": []}),
        json!({"images": [{"id": id(&a)}], "tags": ["no spaces"]}),
        json!({"images": [{"id": id(&a), "extra": 1}]}),
        json!({"ids": [id(&a)]}),
    ] {
        problem(attach(&app, &app.token, body).await, 400).await;
    }
    let anonymous = app
        .post_json("/v1/images/attach", &json!({"images": [{"id": id(&a)}]}))
        .await;
    problem(anonymous, 401).await;

    // Both at once, then both are public.
    let both = json!({"images": [{"id": id(&a)}, {"id": id(&b)}, {"id": id(&a)}]});
    assert_eq!(attach(&app, &app.token, both).await.status(), 200);
    let public: HashSet<String> = random_ids(&app, "count=10").await.into_iter().collect();
    let expected: HashSet<String> = [&a, &b, &published]
        .iter()
        .map(|i| id(i).to_owned())
        .collect();
    assert_eq!(public, expected);
}

#[tokio::test]
async fn an_attach_racing_a_delete_of_one_of_its_drafts_attaches_all_or_nothing() {
    let app = TestApp::spawn_with(|s| s.rate_limits.enabled = false).await;
    let mut attached = 0;
    for round in 0..60 {
        let a = draft(&app, Some(&app.token), png(8, 8, 1900 + 2 * round), "").await;
        let b = draft(&app, Some(&app.token), png(8, 8, 1901 + 2 * round), "").await;
        let both = json!({"images": [{"id": id(&a)}, {"id": id(&b)}]});
        let delete = app.authed(Method::DELETE, &format!("/v1/images/{}", id(&b)));
        // One or the other starts a little later each round, so that the delete lands in
        // each step of the attach in one round or another.
        let lag =
            |late: bool| Duration::from_micros(if late { 150 * u64::from(round / 2) } else { 0 });
        let attach = async {
            tokio::time::sleep(lag(round % 2 == 0)).await;
            attach(&app, &app.token, both).await
        };
        let delete = async {
            tokio::time::sleep(lag(round % 2 == 1)).await;
            delete.send().await
        };
        let (attach, delete) = tokio::join!(attach, delete);
        assert_eq!(delete.unwrap().status(), 204);
        let a_file = format!("/i/{}", a["name"].as_str().unwrap());
        match attach.status().as_u16() {
            200 => {
                attached += 1;
                assert_eq!(app.get(&a_file).await.status(), 200);
            }
            404 => {
                // Nothing attached: the other draft's bytes are not public.
                assert_eq!(app.get(&a_file).await.status(), 404, "round {round}");
                let a_now = app.authed(Method::GET, &format!("/v1/images/{}", id(&a)));
                let a_now: Value = a_now.send().await.unwrap().json().await.unwrap();
                assert_eq!(a_now["state"], "draft", "round {round}");
            }
            status => panic!("round {round}: attach answered {status}"),
        }
    }
    eprintln!("{attached} of 60 attaches won the race");
    // Published files are exactly the attached first drafts' (the second is deleted
    // either way); no intent is left.
    assert_eq!(app.files_under("images").len(), attached);
    assert!(app.files_under("intents").is_empty());
}

#[tokio::test]
async fn an_anonymous_draft_is_attached_with_its_claim_token_only() {
    let app = TestApp::spawn_with(|s| s.uploads.allow_anonymous = true).await;
    let image = draft(&app, None, png(7, 7, 1821), "cat").await;
    let token = image["claim_token"]
        .as_str()
        .expect("a claim token")
        .to_owned();
    let id = id(&image).to_owned();
    // Shown once: reading it again does not show the token.
    let read = app
        .client
        .get(app.url(&format!("/v1/images/{id}")))
        .header("claim-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let read: Value = read.json().await.unwrap();
    assert!(read.get("claim_token").is_none());
    let wrong = app
        .client
        .get(app.url(&format!("/v1/images/{id}/file")))
        .header("claim-token", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 404);

    for bad in [json!({"id": id}), json!({"id": id, "claim_token": "wrong"})] {
        problem(
            attach(&app, &app.token, json!({"images": [bad]})).await,
            404,
        )
        .await;
    }
    assert!(random_ids(&app, "count=5").await.is_empty());
    let right = json!({"images": [{"id": id, "claim_token": token}]});
    let response = attach(&app, &app.token, right.clone()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(my_ids(&app, &app.token).await, [id.as_str()]);
    assert_eq!(random_ids(&app, "count=5&tag=cat").await, [id.as_str()]);
    // Once attached to someone, the token attaches it to nobody else.
    let thief = app.new_user("thief").await;
    problem(attach(&app, &thief, right).await, 404).await;
}

#[tokio::test]
async fn an_expired_draft_is_gone_at_once_and_swept_with_its_file() {
    let app = TestApp::spawn_with(|s| s.uploads.draft_ttl_secs = 1).await;
    let swept_before = metric(&app, "corral_drafts_expired_total", "").await;
    // One draft shares its content with a published image: that file must stay.
    let shared = png(11, 11, 1831);
    let published = app.upload_png(shared.clone()).await;
    let lone = draft(&app, Some(&app.token), png(11, 11, 1832), "").await;
    let twin = draft(&app, Some(&app.token), shared, "").await;
    assert_eq!(app.files_under("drafts").len(), 2);
    let id = id(&lone).to_owned();
    let expires: chrono::DateTime<chrono::Utc> =
        lone["expires_at"].as_str().unwrap().parse().unwrap();
    // Past its expiry it is gone for its owner and for attach, sweeper or not.
    while chrono::Utc::now() <= expires {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let read = app.authed(Method::GET, &format!("/v1/images/{id}"));
    assert_eq!(status_of(read).await, 404);
    problem(
        attach(&app, &app.token, json!({"images": [{"id": id}]})).await,
        404,
    )
    .await;

    // The sweeper then removes both records and the draft files, not the published one.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let lone_gone = app
            .store
            .get_image(id.parse().unwrap())
            .await
            .unwrap()
            .is_none();
        let twin_gone = app
            .store
            .get_image(twin["id"].as_str().unwrap().parse().unwrap())
            .await
            .unwrap()
            .is_none();
        if lone_gone && twin_gone && app.files_under("drafts").is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the drafts were never swept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.files_under("images").len(), 1);
    let path = format!("/i/{}", published["name"].as_str().unwrap());
    assert_eq!(app.get(&path).await.status(), 200);
    let swept = metric(&app, "corral_drafts_expired_total", "").await;
    assert!(swept >= swept_before + 2.0, "{swept_before} -> {swept}");
}

#[tokio::test]
async fn a_draft_file_left_by_a_crash_without_its_record_is_removed_at_start() {
    let app = TestApp::spawn().await;
    let kept = draft(&app, Some(&app.token), png(5, 5, 1841), "").await;
    let dir = app.stop().await;
    // As a crash between an upload's file and its record would leave it.
    let name = format!("{}.png", "e".repeat(40));
    let orphan = dir.path().join("drafts/ee/ee").join(&name);
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, b"not really a png").unwrap();
    std::fs::write(
        dir.path().join("intents").join(format!("draft-{name}")),
        b"",
    )
    .unwrap();
    let app = TestApp::spawn_in(dir, |_| {}).await;
    assert!(!orphan.exists(), "the orphan draft file was removed");
    let files = app.files_under("drafts");
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with(kept["name"].as_str().unwrap()));
}

#[tokio::test]
async fn random_by_tag_draws_only_tagged_images_and_reaches_rare_ones() {
    // A sample of 2 out of 10 images: the one "rare" image is usually not in it, so
    // drawing it must fall back to the store's tag index.
    let app = TestApp::spawn_with(|s| s.images.reservoir_capacity = 2).await;
    let rare = app
        .authed(Method::POST, "/v1/images?tags=rare,llama")
        .header("content-type", "image/png")
        .body(png(6, 6, 1850))
        .send()
        .await
        .unwrap();
    assert_eq!(rare.status(), 201);
    let rare: Value = rare.json().await.unwrap();
    let mut llamas = HashSet::from([id(&rare).to_owned()]);
    for seed in 0..9 {
        let tags = if seed % 3 == 0 { "llama" } else { "alpaca" };
        let image = app
            .authed(Method::POST, &format!("/v1/images?tags={tags}"))
            .header("content-type", "image/png")
            .body(png(6, 6, 1851 + seed))
            .send()
            .await
            .unwrap();
        let image: Value = image.json().await.unwrap();
        if tags == "llama" {
            llamas.insert(id(&image).to_owned());
        }
    }
    let store_reads = metric(&app, "corral_random_tag_store_reads_total", "").await;
    for _ in 0..5 {
        assert_eq!(random_ids(&app, "tag=rare").await, [id(&rare)]);
        assert_eq!(random_ids(&app, "tag=RARE&count=5").await, [id(&rare)]);
        let drawn = random_ids(&app, "tag=llama&count=10").await;
        assert_eq!(drawn.len(), 4, "every llama, once each");
        assert_eq!(drawn.iter().cloned().collect::<HashSet<_>>(), llamas);
    }
    // The sample holds at most 2 of the 4 llamas: each such draw read the store.
    let read = metric(&app, "corral_random_tag_store_reads_total", "").await - store_reads;
    assert!(read >= 5.0, "{read}");
    assert!(random_ids(&app, "tag=unicorn&count=3").await.is_empty());
    // Seeded draws by tag repeat.
    let seeded = random_ids(&app, "tag=llama&count=2&seed=abc").await;
    assert_eq!(seeded.len(), 2);
    assert_eq!(random_ids(&app, "tag=llama&count=2&seed=abc").await, seeded);
    for bad in [
        "tag=",
        "tag=no%20spaces",
        &format!("tag={}", "t".repeat(65)),
    ] {
        problem(app.get(&format!("/v1/images/random?{bad}")).await, 400).await;
    }

    // The redirect takes the tag too, and 404s when nothing carries it.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let redirect = client
        .get(app.url("/i/random?tag=rare"))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 302);
    assert_eq!(redirect.headers()["cache-control"], "no-store");
    let location = redirect.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(location, format!("/i/{}", rare["name"].as_str().unwrap()));
    assert_eq!(
        client
            .get(app.url(&location))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    problem(
        client
            .get(app.url("/i/random?tag=unicorn"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    problem(
        client.get(app.url("/i/random?tag=")).send().await.unwrap(),
        400,
    )
    .await;
}

#[tokio::test]
async fn a_retag_moves_an_image_between_tag_draws() {
    let app = TestApp::spawn().await;
    let image = app.upload_png(png(6, 6, 1870)).await;
    let id = id(&image).to_owned();
    assert!(random_ids(&app, "tag=blue").await.is_empty());
    let retag = |tag: &'static str| {
        app.authed(Method::PATCH, &format!("/v1/images/{id}"))
            .json(&json!({"tags": [tag]}))
            .send()
    };
    assert_eq!(retag("blue").await.unwrap().status(), 200);
    assert_eq!(random_ids(&app, "tag=blue").await, [id.as_str()]);
    assert_eq!(retag("green").await.unwrap().status(), 200);
    assert!(random_ids(&app, "tag=blue").await.is_empty());
    assert_eq!(random_ids(&app, "tag=green").await, [id]);
}
