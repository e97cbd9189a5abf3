//! The OpenAPI document: generated from the handlers' annotations, with the bearer scheme
//! and a `default` problem+json response on every operation (429, 500 and 503 can come
//! from any route). Served at `/openapi.json`, with Swagger UI (vendored) at `/docs`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi as _};

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Corral", description = "Images, accounts and more, from one supervised server."),
    modifiers(&Security),
    components(schemas(super::error::ProblemDoc)),
    tags(
        (name = "images", description = "Uploads, files and the random sample"),
        (name = "accounts", description = "Sign-up, sessions and your account"),
        (name = "events", description = "The events catalogue"),
        (name = "reminders", description = "Mail reminders of events"),
        (name = "push", description = "Live updates over WebSocket"),
        (name = "admin", description = "Admin-only routes"),
        (name = "ops", description = "Metrics, health and readiness"),
    ),
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A token from POST /v1/sessions"))
                    .build(),
            ),
        );
    }
}

/// The base document the routers' paths are merged into.
pub fn base() -> OpenApi {
    ApiDoc::openapi()
}

fn problem(description: &str) -> RefOr<utoipa::openapi::Response> {
    let schema = RefOr::Ref(utoipa::openapi::Ref::from_schema_name("Problem"));
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/problem+json",
                ContentBuilder::new().schema(Some(schema)).build(),
            )
            .build(),
    )
}

/// Adds what every operation of a kind can answer: 413 and 415 wherever a JSON body is
/// read, and a `default` problem response (429, 5xx) everywhere.
pub fn finish(mut openapi: OpenApi) -> OpenApi {
    for item in openapi.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.post,
            &mut item.patch,
            &mut item.delete,
            &mut item.put,
            &mut item.head,
        ];
        for op in operations.into_iter().flatten() {
            let takes_json = matches!(
                &op.request_body,
                Some(RefOr::T(body)) if body.content.contains_key("application/json")
            );
            let responses = &mut op.responses.responses;
            if takes_json {
                responses
                    .entry("413".into())
                    .or_insert_with(|| problem("The JSON body is larger than http.max_json_bytes"));
                responses
                    .entry("415".into())
                    .or_insert_with(|| problem("The body is not JSON"));
            }
            responses.entry("default".into()).or_insert_with(|| {
                problem("Any other error (rate limited, overloaded, timed out, unexpected)")
            });
        }
    }
    openapi
}
