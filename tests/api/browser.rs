//! The web page at `/`, driven in headless Chromium over WebDriver (fantoccini and
//! chromedriver): sign up, upload an image, see it arrive in the live strip over the
//! WebSocket, and see the random grid load it; set a reminder from an event's card,
//! cancel it and delete the image from the page; then Swagger UI's "Try it out" on
//! `/v1/images/random`. With `SCREENSHOTS_DIR=<dir>` it also saves the page at desktop
//! and phone width (the ones in `docs/`). Without Chromium and chromedriver the test
//! says so and passes, unless `REQUIRE_BROWSER=1` (which `.ci/run` sets) makes a
//! missing browser a failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{TestApp, png};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// An executable on PATH (or named by `env`), if there is one.
fn find(env: &str, names: &[&str]) -> Option<PathBuf> {
    match std::env::var_os(env) {
        Some(path) => Some(PathBuf::from(path)),
        None => crate::common::on_path(names),
    }
}

/// chromedriver on a free loopback port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start(binary: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        // Owned from here, so it is killed even if the wait below panics.
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        for _ in 0..100 {
            if let Ok(response) = client.get(format!("{}/status", driver.url)).send().await
                && response.status().is_success()
            {
                return driver;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not answer on {}", driver.url);
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver, chromium: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// Waits (up to 10 s) until `selector`'s text contains `needle`; returns the text.
async fn text_with(page: &Client, selector: &str, needle: &str) -> String {
    let mut last = String::new();
    for _ in 0..100 {
        if let Ok(element) = page.find(Locator::Css(selector)).await {
            last = element.text().await.unwrap_or_default();
            if last.contains(needle) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{selector} never showed {needle:?}; it shows {last:?}");
}

/// Waits (up to 10 s) for an element matching `selector`.
async fn element(page: &Client, selector: &str) -> fantoccini::elements::Element {
    page.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(selector))
        .await
        .unwrap_or_else(|e| panic!("no {selector} appeared: {e}"))
}

/// Clicks the element matching `selector` once it is there, finding it again if the page
/// re-rendered it between the find and the click.
async fn click_css(page: &Client, selector: &str) -> Result<(), fantoccini::error::CmdError> {
    for _ in 0..20 {
        match element(page, selector).await.click().await {
            Err(e) if e.is_stale_element_reference() => continue,
            done => return done,
        }
    }
    panic!("{selector} kept going stale");
}

/// The attribute `name` of the element matching `selector` once it is there, read in one
/// step in the page (so a re-render in between cannot make it stale).
async fn attr_css(page: &Client, selector: &str, name: &str) -> Option<String> {
    element(page, selector).await;
    let value = page
        .execute(
            "const e = document.querySelector(arguments[0]); return e && e.getAttribute(arguments[1]);",
            vec![json!(selector), json!(name)],
        )
        .await
        .unwrap_or_else(|e| panic!("reading {name} of {selector}: {e}"));
    value.as_str().map(str::to_owned)
}

/// Returns an error rather than panicking on a WebDriver failure, so its message is the
/// last thing the test prints (no backtrace after it).
#[tokio::test]
async fn sign_up_upload_and_see_it_live_and_in_the_random_grid() -> Result<(), String> {
    let required = std::env::var("REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    let driver = find("CHROMEDRIVER", &["chromedriver"]);
    let chromium = find(
        "CHROMIUM",
        &["chromium", "chromium-browser", "google-chrome"],
    );
    let (Some(driver), Some(chromium)) = (driver, chromium) else {
        assert!(
            !required,
            "REQUIRE_BROWSER=1 but chromium and chromedriver are not both installed"
        );
        eprintln!(
            "skipping the browser test: chromium and chromedriver are not both on PATH \
             (apt-get install chromium chromium-driver)"
        );
        return Ok(());
    };
    let app = TestApp::spawn_with(|s| s.rate_limits.enabled = false).await;
    let driver = Driver::start(&driver).await;
    let page = browser(&driver, &chromium).await;
    let mut outcome = drive(&app, &page).await;
    if outcome.is_ok() {
        outcome = try_it_out(&app, &page).await;
    }
    let _ = page.close().await;
    outcome.map_err(|e| format!("WebDriver: {e}"))
}

/// Types `text` into the element with id `id`.
async fn fill(page: &Client, id: &str, text: &str) -> Result<(), fantoccini::error::CmdError> {
    page.find(Locator::Id(id)).await?.send_keys(text).await
}

/// Empties the input with id `id`.
async fn clear(page: &Client, id: &str) -> Result<(), fantoccini::error::CmdError> {
    page.find(Locator::Id(id)).await?.clear().await
}

/// Clicks the element with id `id`.
async fn click(page: &Client, id: &str) -> Result<(), fantoccini::error::CmdError> {
    page.find(Locator::Id(id)).await?.click().await
}

/// Waits (up to 10 s) until nothing matches `selector`.
async fn gone(page: &Client, selector: &str) {
    for _ in 0..100 {
        if page.find(Locator::Css(selector)).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{selector} is still there");
}

/// With `SCREENSHOTS_DIR=<dir>`, the page at desktop and phone width, as PNGs.
async fn screenshots(page: &Client) -> Result<(), fantoccini::error::CmdError> {
    let Some(dir) = std::env::var_os("SCREENSHOTS_DIR") else {
        return Ok(());
    };
    let dir = PathBuf::from(dir);
    for (name, width, height) in [
        ("page-desktop.png", 1280, 1000),
        ("page-phone.png", 390, 844),
    ] {
        page.set_window_size(width, height).await?;
        page.execute("window.scrollTo(0, 0)", vec![]).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        std::fs::write(dir.join(name), page.screenshot().await?).unwrap();
    }
    page.set_window_size(1280, 1000).await?;
    Ok(())
}

async fn drive(app: &TestApp, page: &Client) -> Result<(), fantoccini::error::CmdError> {
    let event = app
        .create_event("Llama Walk", chrono::Utc::now() + chrono::Duration::days(2))
        .await;
    page.goto(&app.url("/")).await?;
    text_with(page, "#ws-status", "live").await;
    // The events filter shows the window it searched (today and the next six days), and
    // the event two days on is in it.
    let from = page
        .find(Locator::Id("events-from"))
        .await?
        .prop("value")
        .await?;
    assert_eq!(
        from.as_deref(),
        Some(chrono::Local::now().format("%Y-%m-%d").to_string().as_str())
    );
    element(page, &format!("#events-list li[data-id='{event}']")).await;
    let favicon = app.get("/favicon.ico").await;
    assert_eq!(favicon.status(), 200);
    assert_eq!(favicon.headers()["content-type"], "image/svg+xml");

    // Sign up (the page signs in after it).
    element(page, "#signup-username")
        .await
        .send_keys("walker")
        .await?;
    fill(page, "signup-email", "walker@example.com").await?;
    fill(page, "signup-password", "password-walker").await?;
    click(page, "signup-submit").await?;
    text_with(page, "#session-status", "Signed in as walker").await;
    // Signed in, the account forms give way to who you are and a way out.
    text_with(page, "#account-summary", "Signed in as walker").await;
    assert!(
        !page
            .find(Locator::Id("account-details"))
            .await?
            .is_displayed()
            .await?
    );
    assert!(
        page.find(Locator::Id("account-signout"))
            .await?
            .is_displayed()
            .await?
    );
    let user = app
        .store
        .find_user("walker")
        .await
        .unwrap()
        .expect("walker signed up");

    // Upload a PNG through the file input.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("llama.png");
    let bytes = png(24, 16, 42);
    std::fs::write(&file, &bytes).unwrap();
    // Choosing the file uploads it at once, as a draft: nowhere public yet.
    fill(page, "upload-file", file.to_str().unwrap()).await?;
    text_with(page, "#upload-status", "draft").await;
    let random: Value = app.get("/v1/images/random").await.json().await.unwrap();
    assert_eq!(random["images"], json!([]), "a draft is not drawn");
    // As if it expired while the form stayed open: Publish uploads the file again.
    let mut drafts = app.store.scan_images(None, 10).await.unwrap();
    drafts.retain(|i| i.is_draft() && i.owner == Some(user.id));
    assert_eq!(drafts.len(), 1, "the picked file is one draft");
    let deleted = app
        .client
        .delete(app.url(&format!("/v1/images/{}", drafts[0].id)))
        .bearer_auth(app.log_in(user.username.as_str()).await)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    // Publish attaches it, with the form's tags.
    fill(page, "upload-tags", "llama, browser").await?;
    click(page, "upload-submit").await?;
    let name = format!("{}.png", crate::common::sha1_hex(&bytes));
    text_with(page, "#upload-status", "Published").await;
    let mine: Value = app
        .client
        .get(app.url("/v1/users/me/images"))
        .bearer_auth(app.log_in(user.username.as_str()).await)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = mine["images"][0]["id"]
        .as_str()
        .expect("the upload is walker's")
        .to_owned();
    assert_eq!(mine["images"][0]["name"], name.as_str());

    // It arrives in the live strip over the WebSocket...
    let alt = attr_css(page, &format!("#live-strip img[data-id='{id}']"), "alt").await;
    assert!(
        alt.is_some_and(|alt| !alt.is_empty()),
        "images have alt text"
    );

    // ...and the random grid, the only image in the pool, shows it: a small WebP variant
    // from /i/ (a 24 px image is not enlarged).
    click(page, "random-refresh").await?;
    let src = attr_css(page, &format!("#random-grid img[data-id='{id}']"), "src").await;
    assert!(
        src.as_ref()
            .is_some_and(|src| src.ends_with(&format!("/i/{name}?w=256&format=auto"))),
        "{src:?}"
    );
    let mut loaded = Value::Null;
    for _ in 0..50 {
        loaded = page
            .execute(
                "const img = document.querySelector(arguments[0]); return img && img.complete && img.naturalWidth;",
                vec![json!(format!("#random-grid img[data-id='{id}']"))],
            )
            .await?;
        if loaded == json!(24) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(loaded, json!(24), "the grid image loaded at its real width");
    assert_eq!(mine["images"][0]["tags"], json!(["browser", "llama"]));

    // The grid's tag filter: the image has "browser", nothing has "zebra".
    fill(page, "random-tag", "zebra").await?;
    click(page, "random-refresh").await?;
    text_with(page, "#random-status", "No images tagged").await;
    clear(page, "random-tag").await?;
    fill(page, "random-tag", "browser").await?;
    click(page, "random-refresh").await?;
    let tagged = attr_css(page, &format!("#random-grid img[data-id='{id}']"), "src").await;
    assert!(tagged.is_some(), "the tag filter shows the tagged image");

    // The page paints placeholders: its BlurHash decoder turns the hash of a red picture
    // (made by the crate the server uses) into a red picture.
    let red: Vec<u8> = [200u8, 20, 20, 255].repeat(8 * 6);
    let hash = blurhash::encode(4, 3, 8, 6, &red).expect("a hash");
    let painted = page
        .execute_async(
            "const done = arguments[arguments.length - 1]; \
             const url = blurhashUrl(arguments[0]); if (!url) { done(null); return; } \
             const img = new Image(); img.onerror = () => done(null); \
             img.onload = () => { \
               const c = document.createElement('canvas'); c.width = 32; c.height = 32; \
               const g = c.getContext('2d'); g.drawImage(img, 0, 0); \
               done(Array.from(g.getImageData(16, 16, 1, 1).data)); }; \
             img.src = url;",
            vec![json!(hash)],
        )
        .await?;
    let rgba: Vec<u64> = serde_json::from_value(painted.clone()).unwrap_or_default();
    assert!(
        rgba.len() == 4 && rgba[0] > 170 && rgba[1] < 60 && rgba[2] < 60,
        "the placeholder of a red picture: {painted}"
    );

    // Your images lists the upload; a reminder for the event, set from its card.
    element(page, &format!("#mine-list li[data-id='{id}']")).await;
    click_css(
        page,
        &format!("#events-list li[data-id='{event}'] form.remind button[type='submit']"),
    )
    .await?;
    let reminder = attr_css(
        page,
        "#reminders-list li[data-state='scheduled']",
        "data-id",
    )
    .await
    .expect("the reminder's id");
    screenshots(page).await?;

    // Cancel the reminder and delete the image from the page; the server agrees.
    let token = app.log_in(user.username.as_str()).await;
    let status_of = |path: String| {
        let request = app.client.get(app.url(&path)).bearer_auth(&token);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    click_css(
        page,
        &format!("#reminders-list li[data-id='{reminder}'] button.cancel"),
    )
    .await?;
    gone(page, &format!("#reminders-list li[data-id='{reminder}']")).await;
    assert_eq!(status_of(format!("/v1/reminders/{reminder}")).await, 404);
    click_css(
        page,
        &format!("#mine-list li[data-id='{id}'] button.delete"),
    )
    .await?;
    gone(page, &format!("#mine-list li[data-id='{id}']")).await;
    assert_eq!(status_of(format!("/v1/images/{id}")).await, 404);
    Ok(())
}

/// Swagger UI's "Try it out" → "Execute" on `GET /v1/images/random` (a query parameter
/// it must be able to leave out) gets a 200.
async fn try_it_out(app: &TestApp, page: &Client) -> Result<(), fantoccini::error::CmdError> {
    page.goto(&app.url("/docs/")).await?;
    let op = "#operations-images-random";
    click_css(page, &format!("{op} .opblock-summary")).await?;
    click_css(page, &format!("{op} .try-out__btn")).await?;
    click_css(page, &format!("{op} .execute")).await?;
    text_with(
        page,
        &format!("{op} .live-responses-table .response .response-col_status"),
        "200",
    )
    .await;
    Ok(())
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_from_the_binary() {
    let app = TestApp::spawn().await;
    for (path, kind, needle) in [
        ("/", "text/html", "/web/app.js"),
        ("/web/app.js", "text/javascript", "/v1/ws"),
        ("/web/style.css", "text/css", "{"),
    ] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        assert!(
            headers["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        assert_eq!(headers["cache-control"], "no-cache", "{path}");
        assert!(
            headers["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("script-src 'self'"),
            "{path}"
        );
        assert!(response.text().await.unwrap().contains(needle), "{path}");
        // Revalidation: the same ETag is a 304 without a body.
        let etag = headers["etag"].clone();
        let again = app
            .client
            .get(app.url(path))
            .header("if-none-match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path}");
        assert!(again.bytes().await.unwrap().is_empty());
    }
}
