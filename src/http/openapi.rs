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

/// Adds the `default` error response to every operation.
pub fn finish(mut openapi: OpenApi) -> OpenApi {
    let problem = ResponseBuilder::new()
        .description(
            "Any other error (rate limited, overloaded, timed out, unexpected), as problem+json",
        )
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    "Problem",
                ))))
                .build(),
        )
        .build();
    for item in openapi.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.post,
            &mut item.patch,
            &mut item.delete,
            &mut item.put,
            &mut item.head,
        ]
        .into_iter()
        .flatten()
        {
            op.responses
                .responses
                .entry("default".into())
                .or_insert_with(|| RefOr::T(problem.clone()));
        }
    }
    openapi
}
