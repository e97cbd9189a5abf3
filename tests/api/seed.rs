//! `corral seed` writes image rows (sharing real files) and events straight through the
//! store; a server started on the seeded data dir serves them.

use crate::common::TestApp;
use corral::config::{Overrides, Settings};
use serde_json::Value;

#[tokio::test]
async fn seeded_images_and_events_are_served() {
    let dir = tempfile::TempDir::new().unwrap();
    let overrides = Overrides {
        bind: None,
        data_dir: Some(dir.path().to_owned()),
    };
    let settings = Settings::load(None, &overrides).unwrap();
    corral::seed::seed(&settings, 25_000, 300)
        .await
        .expect("seed");

    let app = TestApp::spawn_in(dir, |_| {}).await;
    let mut count = 0;
    let mut after = None;
    loop {
        let page = app.store.scan_images(after, 10_000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        count += page.len();
    }
    assert_eq!(count, 25_000);

    let random: Value = app
        .get("/v1/images/random?count=10")
        .await
        .json()
        .await
        .unwrap();
    let images = random["images"].as_array().unwrap();
    assert_eq!(images.len(), 10);
    for image in images {
        let url = image["url"].as_str().unwrap();
        let file = app.get(url).await;
        assert_eq!(file.status(), 200, "{url}");
        assert_eq!(file.headers()["content-type"], "image/png");
    }
    let to = (chrono::Utc::now() + chrono::Duration::days(90))
        .to_rfc3339()
        .replace('+', "%2B");
    let page: Value = app
        .get(&format!("/v1/events?topic=music&to={to}&limit=100"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 60, "{page}");
    app.stop().await;
}
