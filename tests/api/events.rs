//! The events catalogue: admin-only writes, every filter and their combinations, the
//! radius boundary, paging without repeats or gaps, and index rows following edits.

use std::collections::HashSet;

use crate::common::TestApp;
use chrono::{DateTime, Duration, TimeZone, Utc};
use corral::domain::geo::Point;
use reqwest::Method;
use serde_json::{Value, json};

const PARIS: (f64, f64) = (48.8566, 2.3522);
/// ~5 km from the centre of Paris.
const VINCENNES: (f64, f64) = (48.8474, 2.4392);
const LONDON: (f64, f64) = (51.5074, -0.1278);

fn base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2031, 3, 1, 12, 0, 0).unwrap()
}

fn event(title: &str, topics: &[&str], at: (f64, f64), starts: DateTime<Utc>) -> Value {
    json!({
        "title": title,
        "description": "",
        "topics": topics,
        "starts_at": starts.to_rfc3339(),
        "ends_at": (starts + Duration::hours(2)).to_rfc3339(),
        "location": {"name": title, "lat": at.0, "lon": at.1},
    })
}

async fn create(app: &TestApp, admin: &str, body: &Value) -> Value {
    let response = app
        .client
        .post(app.url("/v1/events"))
        .bearer_auth(admin)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    response.json().await.unwrap()
}

/// Titles of every event matching `query`, following every page.
async fn titles(app: &TestApp, query: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("/v1/events?{query}&cursor={c}"),
            None => format!("/v1/events?{query}"),
        };
        let response = app.get(&url).await;
        assert_eq!(
            response.status(),
            200,
            "{url}: {}",
            response.text().await.unwrap()
        );
        let page: Value = response.json().await.unwrap();
        out.extend(
            page["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["title"].as_str().unwrap().to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return out,
        }
    }
}

fn at(t: DateTime<Utc>) -> String {
    t.to_rfc3339().replace('+', "%2B")
}

#[tokio::test]
async fn only_admins_write_events_and_anyone_reads_them() {
    let app = TestApp::spawn().await;
    let body = event("gig", &["music"], PARIS, base());
    let anonymous = app.post_json("/v1/events", &body).await;
    assert_eq!(anonymous.status(), 401);
    let user = app
        .authed(Method::POST, "/v1/events")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(user.status(), 403);

    let admin = app.admin().await;
    let created = create(&app, &admin, &body).await;
    let path = format!("/v1/events/{}", created["id"].as_str().unwrap());
    let read: Value = app.get(&path).await.json().await.unwrap();
    assert_eq!(read, created);
    assert_eq!(read["starts_at"], "2031-03-01T12:00:00Z");

    let patch = json!({"title": "renamed"});
    assert_eq!(
        app.authed(Method::PATCH, &path)
            .json(&patch)
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        app.authed(Method::DELETE, &path)
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let renamed = app
        .client
        .patch(app.url(&path))
        .bearer_auth(&admin)
        .json(&patch)
        .send()
        .await
        .unwrap();
    assert_eq!(renamed.status(), 200);
    assert_eq!(
        app.client
            .delete(app.url(&path))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(app.get(&path).await.status(), 404);
    assert_eq!(app.get("/v1/events/not-an-id").await.status(), 404);
}

#[tokio::test]
async fn every_filter_and_combination_finds_exactly_the_matching_events() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let b = base();
    for (title, topics, place, day) in [
        ("paris-music", vec!["music"], PARIS, 1),
        ("london-music-food", vec!["music", "food"], LONDON, 2),
        ("vincennes-food", vec!["food"], VINCENNES, 3),
        ("paris-music-later", vec!["music"], PARIS, 10),
    ] {
        create(
            &app,
            &admin,
            &event(title, &topics, place, b + Duration::days(day)),
        )
        .await;
    }
    let from = format!("from={}", at(b));
    let month = format!("{from}&to={}", at(b + Duration::days(30)));
    // Time: the default window is a week from `from`.
    assert_eq!(
        titles(&app, &from).await,
        ["paris-music", "london-music-food", "vincennes-food"]
    );
    assert_eq!(titles(&app, &month).await.len(), 4);
    let one_day = format!(
        "from={}&to={}",
        at(b + Duration::hours(36)),
        at(b + Duration::hours(60))
    );
    assert_eq!(titles(&app, &one_day).await, ["london-music-food"]);
    // Topic (case-insensitive), alone and with time.
    assert_eq!(
        titles(&app, &format!("{from}&topic=Music")).await,
        ["paris-music", "london-music-food"]
    );
    assert_eq!(
        titles(&app, &format!("{month}&topic=music")).await,
        ["paris-music", "london-music-food", "paris-music-later"]
    );
    // Place, alone and with topic and time.
    let paris = format!("near={},{}", PARIS.0, PARIS.1);
    assert_eq!(
        titles(&app, &format!("{month}&{paris}&radius_km=10")).await,
        ["paris-music", "vincennes-food", "paris-music-later"]
    );
    assert_eq!(
        titles(&app, &format!("{month}&{paris}&radius_km=2")).await,
        ["paris-music", "paris-music-later"]
    );
    assert_eq!(
        titles(&app, &format!("{month}&{paris}&radius_km=400"))
            .await
            .len(),
        4
    );
    assert_eq!(
        titles(&app, &format!("{month}&{paris}&radius_km=10&topic=food")).await,
        ["vincennes-food"]
    );
    assert_eq!(
        titles(&app, &format!("{from}&{paris}&topic=music")).await,
        ["paris-music"]
    );
    assert!(
        titles(&app, &format!("{month}&topic=theatre"))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn the_radius_includes_its_boundary_and_nothing_beyond() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let place = (48.0, 2.0);
    create(
        &app,
        &admin,
        &event("edge", &["x"], place, base() + Duration::hours(1)),
    )
    .await;
    let centre = (48.1, 2.0);
    // Computed as the server does (event point to search centre); `{r}` prints an f64
    // exactly, so the server compares this very number.
    let exact = Point::new(place.0, place.1)
        .unwrap()
        .distance_km(Point::new(centre.0, centre.1).unwrap());
    let query = |r: f64| {
        format!(
            "from={}&near={},{}&radius_km={r}",
            at(base()),
            centre.0,
            centre.1
        )
    };
    assert_eq!(titles(&app, &query(exact)).await, ["edge"]);
    assert!(titles(&app, &query(exact - 1e-9)).await.is_empty());

    // Near a pole the place index gives way to the time index; the distance still counts.
    create(
        &app,
        &admin,
        &event("pole", &["x"], (89.95, 10.0), base() + Duration::hours(2)),
    )
    .await;
    let polar = format!("from={}&near=89.9,0&radius_km=25", at(base()));
    assert_eq!(titles(&app, &polar).await, ["pole"]);
}

#[tokio::test]
async fn pages_neither_repeat_nor_skip_events() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let mut expected = Vec::new();
    for i in 0..25i64 {
        // Pairs share a start time, so ties are broken by id.
        let starts = base() + Duration::minutes(i / 2 * 30);
        let topics = if i % 3 == 0 {
            vec!["rare", "common"]
        } else {
            vec!["common"]
        };
        let created = create(
            &app,
            &admin,
            &event(&format!("e{i:02}"), &topics, PARIS, starts),
        )
        .await;
        expected.push((
            starts,
            created["id"].as_str().unwrap().to_owned(),
            format!("e{i:02}"),
        ));
    }
    expected.sort();
    let all: Vec<String> = expected.iter().map(|e| e.2.clone()).collect();
    for limit in [1, 7, 25, 100] {
        let got = titles(&app, &format!("from={}&limit={limit}", at(base()))).await;
        assert_eq!(got, all, "limit {limit}");
    }
    // A filter the index does not answer (topic via the place index) still pages cleanly.
    let rare: Vec<String> = expected
        .iter()
        .filter(|e| e.2[1..].parse::<i64>().unwrap() % 3 == 0)
        .map(|e| e.2.clone())
        .collect();
    let got = titles(
        &app,
        &format!(
            "from={}&limit=2&topic=rare&near={},{}",
            at(base()),
            PARIS.0,
            PARIS.1
        ),
    )
    .await;
    assert_eq!(got, rare);
    assert_eq!(got.iter().collect::<HashSet<_>>().len(), got.len());
}

#[tokio::test]
async fn an_edit_moves_the_event_in_every_index() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let b = base();
    let created = create(
        &app,
        &admin,
        &event("moving", &["jazz"], PARIS, b + Duration::days(1)),
    )
    .await;
    let path = format!("/v1/events/{}", created["id"].as_str().unwrap());
    let changes = json!({
        "topics": ["blues"],
        "starts_at": (b + Duration::days(5)).to_rfc3339(),
        "ends_at": (b + Duration::days(5) + Duration::hours(1)).to_rfc3339(),
        "location": {"name": "London", "lat": LONDON.0, "lon": LONDON.1},
    });
    let response = app
        .client
        .patch(app.url(&path))
        .bearer_auth(&admin)
        .json(&changes)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let window = |d0: i64, d1: i64| {
        format!(
            "from={}&to={}",
            at(b + Duration::days(d0)),
            at(b + Duration::days(d1))
        )
    };
    assert!(
        titles(&app, &format!("{}&topic=jazz", window(0, 30)))
            .await
            .is_empty()
    );
    assert_eq!(
        titles(&app, &format!("{}&topic=blues", window(0, 30))).await,
        ["moving"]
    );
    assert!(titles(&app, &window(0, 2)).await.is_empty());
    assert_eq!(titles(&app, &window(4, 6)).await, ["moving"]);
    assert!(
        titles(
            &app,
            &format!("{}&near={},{}", window(0, 30), PARIS.0, PARIS.1)
        )
        .await
        .is_empty()
    );
    assert_eq!(
        titles(
            &app,
            &format!("{}&near={},{}", window(0, 30), LONDON.0, LONDON.1)
        )
        .await,
        ["moving"]
    );

    app.client
        .delete(app.url(&path))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert!(titles(&app, &window(0, 30)).await.is_empty());
    assert!(
        titles(&app, &format!("{}&topic=blues", window(0, 30)))
            .await
            .is_empty()
    );
    assert!(
        titles(
            &app,
            &format!("{}&near={},{}", window(0, 30), LONDON.0, LONDON.1)
        )
        .await
        .is_empty()
    );
}

#[tokio::test]
async fn bad_searches_and_bad_events_get_400_problem_json() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let b = at(base());
    for query in [
        format!("from={b}&to=2031-02-01T00:00:00Z"),
        "from=yesterday".to_owned(),
        format!("from={b}&to=2033-01-01T00:00:00Z"),
        "near=91,0".to_owned(),
        "near=0,181".to_owned(),
        "near=paris".to_owned(),
        "near=48,2&radius_km=0".to_owned(),
        "near=48,2&radius_km=501".to_owned(),
        "radius_km=5".to_owned(),
        "cursor=bogus".to_owned(),
        "limit=0".to_owned(),
        "limit=101".to_owned(),
    ] {
        let response = app.get(&format!("/v1/events?{query}")).await;
        assert_eq!(response.status(), 400, "{query}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    let good = event("ok", &["x"], PARIS, base());
    let mut bad_events = Vec::new();
    for (field, value) in [
        ("title", json!("")),
        ("title", json!("Evil\r\nBcc: victim@example.net")),
        ("location", json!({"name": "a\nb", "lat": 0.0, "lon": 0.0})),
        ("topics", json!([])),
        ("topics", json!(["no spaces"])),
        ("ends_at", json!("2031-02-01T00:00:00Z")),
        ("location", json!({"name": "x", "lat": -91.0, "lon": 0.0})),
        ("location", json!({"name": "x", "lat": 0.0, "lon": 180.5})),
        ("starts_at", json!("tomorrow")),
    ] {
        let mut body = good.clone();
        body[field] = value;
        bad_events.push(body);
    }
    for body in bad_events {
        let response = app
            .client
            .post(app.url("/v1/events"))
            .bearer_auth(&admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
    }
}
