//! The OpenAPI document covers every route, parses as OpenAPI 3.1, passes an outside
//! validator (`openapi-spec-validator`), puts every parameter where the server reads it,
//! documents every status a route answers, and Swagger UI is served from the binary.

use crate::common::TestApp;
use reqwest::Method;
use serde_json::Value;

/// Every route the server has, as (method, path template).
const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/images"),
    ("get", "/v1/images/random"),
    ("get", "/v1/images/{id}"),
    ("patch", "/v1/images/{id}"),
    ("delete", "/v1/images/{id}"),
    ("get", "/v1/images/{id}/file"),
    ("post", "/v1/images/attach"),
    ("get", "/i/random"),
    ("get", "/i/{name}"),
    ("post", "/v1/users"),
    ("get", "/v1/users/me"),
    ("patch", "/v1/users/me"),
    ("delete", "/v1/users/me"),
    ("post", "/v1/users/me/emails"),
    ("delete", "/v1/users/me/emails/{email}"),
    ("get", "/v1/users/me/images"),
    ("post", "/v1/sessions"),
    ("delete", "/v1/sessions"),
    ("get", "/v1/admin/users"),
    ("post", "/v1/events"),
    ("get", "/v1/events"),
    ("get", "/v1/events/{id}"),
    ("patch", "/v1/events/{id}"),
    ("delete", "/v1/events/{id}"),
    ("post", "/v1/reminders"),
    ("get", "/v1/reminders"),
    ("get", "/v1/reminders/{id}"),
    ("patch", "/v1/reminders/{id}"),
    ("delete", "/v1/reminders/{id}"),
    ("get", "/v1/unsubscribe/{token}"),
    ("post", "/v1/unsubscribe/{token}"),
    ("get", "/v1/admin/mail/dead"),
    ("get", "/v1/ws"),
    ("get", "/metrics"),
    ("get", "/healthz"),
    ("get", "/readyz"),
];

async fn spec(app: &TestApp) -> Value {
    let response = app.get("/openapi.json").await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn the_document_parses_as_openapi_3_1_and_lists_every_route() {
    let app = TestApp::spawn().await;
    let text = app.get("/openapi.json").await.text().await.unwrap();
    let parsed = oas3::from_json(&text).expect("a valid OpenAPI 3.1 document");
    assert!(parsed.openapi.starts_with("3.1"), "{}", parsed.openapi);

    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert!(doc["components"]["schemas"]["Problem"].is_object());
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    let mut expected: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    documented.sort();
    expected.sort();
    assert_eq!(documented, expected);
}

#[tokio::test]
async fn an_outside_validator_accepts_the_document_and_parameters_are_where_they_are_read() {
    let app = TestApp::spawn().await;
    let text = app.get("/openapi.json").await.text().await.unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let mut in_query = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for param in op["parameters"].as_array().into_iter().flatten() {
                let name = param["name"].as_str().unwrap();
                match param["in"].as_str().unwrap() {
                    "path" => assert!(
                        path.contains(&format!("{{{name}}}")),
                        "{method} {path}: `{name}` is declared in the path but is not in it"
                    ),
                    "query" => {
                        assert_ne!(param["required"], true, "{method} {path}: `{name}`");
                        in_query.push(format!("{method} {path} {name}"));
                    }
                    "header" => {}
                    other => panic!("{method} {path}: `{name}` in {other}"),
                }
            }
        }
    }
    assert!(
        in_query.contains(&"get /v1/images/random count".to_owned()),
        "{in_query:?}"
    );
    assert!(
        in_query.contains(&"get /v1/events near".to_owned()),
        "{in_query:?}"
    );

    let Some(validator) = crate::common::tool(
        "openapi-spec-validator",
        "pip install openapi-spec-validator",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, &text).unwrap();
    let out = std::process::Command::new(validator)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fills a path template with values of the right shape.
fn concrete(path: &str) -> String {
    path.replace("{id}", "0190b6a0-0000-7000-8000-000000000000")
        .replace("{name}", &format!("{}.png", "0".repeat(40)))
        .replace("{email}", "nobody@example.com")
}

#[tokio::test]
async fn every_documented_operation_exists_and_answers_only_documented_statuses() {
    let app = TestApp::spawn().await;
    let doc = spec(&app).await;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let documented: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
            let method: Method = method.to_uppercase().parse().unwrap();
            // Anonymous, then signed in: the two faces of every route. DELETE /v1/users/me
            // and DELETE /v1/sessions are left to their own tests (they end the session).
            let destructive =
                method == Method::DELETE && (path == "/v1/users/me" || path == "/v1/sessions");
            let mut requests = vec![app.client.request(method.clone(), app.url(&concrete(path)))];
            if !destructive {
                requests.push(app.authed(method.clone(), &concrete(path)));
            }
            for request in requests {
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                let body = response.text().await.unwrap_or_default();
                assert_ne!(status, 405, "{method} {path} is documented but not routed");
                assert!(
                    !body.contains("no such route"),
                    "{method} {path} is documented but not routed"
                );
                assert!(status < 500, "{method} {path} answered {status}: {body}");
                assert!(
                    documented.iter().any(|d| *d == &status.to_string()),
                    "{method} {path} answered {status}, which is not documented ({documented:?}): {body}"
                );
            }
        }
    }
}

#[tokio::test]
async fn swagger_ui_is_served_from_the_binary() {
    let app = TestApp::spawn().await;
    let page = app.get("/docs/").await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    for asset in [
        "/docs/swagger-ui-bundle.js",
        "/docs/swagger-ui.css",
        "/docs/swagger-initializer.js",
    ] {
        let response = app.get(asset).await;
        assert_eq!(response.status(), 200, "{asset}");
        assert!(response.bytes().await.unwrap().len() > 100, "{asset}");
    }
    let config: Value = app.get("/docs/openapi.json").await.json().await.unwrap();
    assert_eq!(
        config["paths"].as_object().unwrap().len(),
        spec(&app).await["paths"].as_object().unwrap().len()
    );
}
