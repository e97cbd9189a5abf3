//! The OpenAPI document: generated from the handlers' annotations, with the bearer scheme,
//! the answers any route can give (429 with the rate-limit headers, 503, and a `default`
//! problem+json for 500). Served at `/openapi.json`, with Swagger UI (vendored) at `/docs`.

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Object, OpenApi, RefOr, ResponseBuilder, Type};
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
    RefOr::T(problem_builder(description).build())
}

fn problem_builder(description: &str) -> ResponseBuilder {
    let schema = RefOr::Ref(utoipa::openapi::Ref::from_schema_name("Problem"));
    ResponseBuilder::new().description(description).content(
        "application/problem+json",
        ContentBuilder::new().schema(Some(schema)).build(),
    )
}

/// 429, with the headers that say which limit applied and when to come back.
fn rate_limited() -> RefOr<utoipa::openapi::Response> {
    let header = |ty, description: &str| {
        HeaderBuilder::new()
            .schema(Some(Object::with_type(ty)))
            .description(Some(description))
            .build()
    };
    RefOr::T(
        problem_builder("Rate limited: the detail names the limit (reads, writes, uploads or auth) and the wait")
            .header("Retry-After", header(Type::Integer, "Seconds to wait"))
            .header(
                "RateLimit-Policy",
                header(Type::String, "The limit that applied, e.g. `\"auth\";q=5;w=30` (burst, and seconds to refill it)"),
            )
            .header(
                "RateLimit",
                header(Type::String, "Its state, e.g. `\"auth\";r=0;t=30` (tokens left, seconds until full)"),
            )
            .build(),
    )
}

/// Routes the rate limits never apply to (probes and the metrics scraper).
const UNLIMITED: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Adds what every operation of a kind can answer: 413 and 415 wherever a JSON body is
/// read, 429 wherever a rate limit applies, and 503 and a `default` problem response
/// (500) everywhere.
pub fn finish(mut openapi: OpenApi) -> OpenApi {
    for (path, item) in openapi.paths.paths.iter_mut() {
        let limited = !UNLIMITED.contains(&path.as_str());
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
            if limited {
                responses.entry("429".into()).or_insert_with(rate_limited);
            }
            responses.entry("503".into()).or_insert_with(|| {
                problem("Overloaded, or the request took longer than its time limit; see Retry-After when given")
            });
            responses
                .entry("default".into())
                .or_insert_with(|| problem("An unexpected error"));
        }
    }
    openapi
}
