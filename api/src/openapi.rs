//! The OpenAPI 3.1 document, written from the route table ([`crate::endpoints`]) with the
//! records' `utoipa` schemas, and a browsable reference page rendered from it on the
//! server (no script, nothing fetched from elsewhere: it works on an offline site).

use crate::endpoints::{Access, Body, ENDPOINTS, Endpoint, Reply, Schemas, any};
use actix_web::HttpResponse;
use actix_web::http::Method;
use serde_json::Value;
use std::sync::LazyLock;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::{ResponseBuilder, ResponsesBuilder};
use utoipa::openapi::schema::{ComponentsBuilder, Object, Schema, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    Components, HeaderBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Paths, Ref, RefOr, Required,
    SecurityRequirement, Tag,
};

/// The document, built once per process.
pub static DOCUMENT: LazyLock<Value> = LazyLock::new(|| {
    let doc = serde_json::to_value(build()).unwrap_or_else(|e| {
        tracing::error!(error = %e, "the OpenAPI document cannot be written");
        Value::Null
    });
    sorted(doc)
});

/// Keys in sorted order at every level, whether or not some crate of the build turns on
/// `serde_json/preserve_order`: the document's text must not depend on the build.
pub fn sorted(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// The document as pretty JSON (what `docs/openapi.json` holds).
pub fn document_text() -> String {
    let mut text = serde_json::to_string_pretty(&*DOCUMENT).unwrap_or_default();
    text.push('\n');
    text
}

fn http_method(m: &Method) -> HttpMethod {
    match *m {
        Method::POST => HttpMethod::Post,
        Method::PUT => HttpMethod::Put,
        Method::PATCH => HttpMethod::Patch,
        Method::DELETE => HttpMethod::Delete,
        _ => HttpMethod::Get,
    }
}

fn error_schema(s: &mut Schemas) -> RefOr<Schema> {
    if !s.iter().any(|(n, _)| n == "Error") {
        let object = utoipa::openapi::ObjectBuilder::new()
            .property(
                "error",
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some(
                        "a stable code: bad_request, unauthorized, forbidden, not_found, \
                         conflict, payload_too_large, driver_error, timeout, …",
                    )),
            )
            .property(
                "message",
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("what happened, for people")),
            )
            .required("error")
            .required("message")
            .build();
        s.push(("Error".into(), RefOr::T(Schema::Object(object))));
    }
    RefOr::Ref(Ref::from_schema_name("Error"))
}

fn json_content(schema: RefOr<Schema>) -> utoipa::openapi::Content {
    ContentBuilder::new().schema(Some(schema)).build()
}

fn string_schema() -> Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(Type::String)
        .build()
}

fn operation(e: &Endpoint, schemas: &mut Schemas) -> utoipa::openapi::path::Operation {
    let mut op = OperationBuilder::new()
        .tag(e.tag)
        .summary(Some(e.summary.clone()))
        .operation_id(Some(operation_id(e)));
    // Path parameters, from the pattern.
    for name in e
        .path
        .split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
    {
        op = op.parameter(
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .schema(Some(string_schema())),
        );
    }
    let list = matches!(e.reply, Reply::List(_));
    let list_query: &[(&str, &str)] = if list {
        crate::endpoints::LIST_QUERY
    } else {
        &[]
    };
    for (name, description) in list_query.iter().chain(&e.query) {
        op = op.parameter(
            ParameterBuilder::new()
                .name(*name)
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some(*description))
                .schema(Some(string_schema())),
        );
    }
    match e.body {
        Body::None => {}
        Body::Json(f) => {
            op = op.request_body(Some(
                RequestBodyBuilder::new()
                    .content("application/json", json_content(f(schemas)))
                    .required(Some(Required::True))
                    .build(),
            ))
        }
        Body::Form => {
            op = op.request_body(Some(
                RequestBodyBuilder::new()
                    .content(
                        "application/x-www-form-urlencoded",
                        json_content(any(schemas)),
                    )
                    .description(Some(
                        "grant_type=password (username, password, authority) or \
                         grant_type=refresh_token (refresh_token); the same fields may come \
                         in the query string, as PlaceOS clients send them",
                    ))
                    .build(),
            ))
        }
        Body::Wasm => {
            op = op.request_body(Some(
                RequestBodyBuilder::new()
                    .content(
                        "application/wasm",
                        ContentBuilder::new()
                            .schema(Some(
                                utoipa::openapi::ObjectBuilder::new()
                                    .schema_type(Type::String)
                                    .content_media_type("application/wasm")
                                    .build(),
                            ))
                            .build(),
                    )
                    .required(Some(Required::True))
                    .build(),
            ))
        }
    }
    let mut responses = ResponsesBuilder::new();
    responses = match e.reply {
        Reply::Json(status, f) => responses.response(
            status.to_string(),
            ResponseBuilder::new()
                .description("success")
                .content("application/json", json_content(f(schemas))),
        ),
        Reply::List(f) => {
            let items = f(schemas);
            let array = utoipa::openapi::schema::ArrayBuilder::new()
                .items(items)
                .build();
            let header = |d: &str| {
                HeaderBuilder::new()
                    .schema(string_schema())
                    .description(Some(d))
                    .build()
            };
            responses.response(
                "200",
                ResponseBuilder::new()
                    .description("one page")
                    .content(
                        "application/json",
                        json_content(RefOr::T(Schema::Array(array))),
                    )
                    .header("X-Total-Count", header("records matching, all pages"))
                    .header(
                        "Content-Range",
                        header("`<kind> <offset>-<offset+count>/<total>`"),
                    )
                    .header(
                        "Link",
                        header("`<…?offset=…&limit=…>; rel=\"next\"` while more remain"),
                    )
                    .header(
                        "X-Next-Cursor",
                        header("cursor for `?after=` while more remain"),
                    ),
            )
        }
        Reply::Empty(status) => responses.response(
            status.to_string(),
            ResponseBuilder::new().description("done"),
        ),
        Reply::Other(status, types, description) => {
            let mut r = ResponseBuilder::new().description(description);
            for t in types {
                r = r.content(*t, ContentBuilder::new().build());
            }
            responses.response(status.to_string(), r)
        }
    };
    let error = |description: &str, schemas: &mut Schemas| {
        ResponseBuilder::new()
            .description(description)
            .content("application/json", json_content(error_schema(schemas)))
            .build()
    };
    responses = responses.response("400", error("bad input, named", schemas));
    if let Access::Signed(p) = e.access {
        responses = responses.response("401", error("no or bad credential", schemas));
        if p.is_some() {
            responses = responses.response(
                "403",
                error("the caller's role or scopes do not allow it", schemas),
            );
        }
        let permission = match p {
            Some((r, a)) => format!(
                "{}.{}",
                r.name(),
                if a == lintel_auth::Action::Read {
                    "read"
                } else {
                    "write"
                }
            ),
            None => "authenticated".into(),
        };
        op = op
            .security(SecurityRequirement::new("bearer", Vec::<String>::new()))
            .security(SecurityRequirement::new("api_key", Vec::<String>::new()))
            .extensions(Some(
                ExtensionsBuilder::new()
                    .add("x-lintel-permission", permission)
                    .build(),
            ));
    } else {
        op = op.extensions(Some(
            ExtensionsBuilder::new()
                .add("x-lintel-permission", "public")
                .build(),
        ));
    }
    if e.path.contains('{') {
        responses = responses.response(
            "404",
            error("not found (also another tenant's ids)", schemas),
        );
    }
    if matches!(e.method, Method::PATCH | Method::PUT | Method::DELETE) {
        responses = responses.response("409", error("stale `version`", schemas));
    }
    if !matches!(e.body, Body::None) {
        responses = responses.response("413", error("body over the limit", schemas));
    }
    op.responses(responses.build()).build()
}

/// `get_systems_id_functions_module`: unique, stable, readable.
fn operation_id(e: &Endpoint) -> String {
    let path: String = e
        .path
        .trim_start_matches(crate::endpoints::V2)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let mut id = format!("{}_{}", e.method.as_str().to_ascii_lowercase(), path);
    while id.contains("__") {
        id = id.replace("__", "_");
    }
    id.trim_end_matches('_').to_string()
}

fn build() -> OpenApi {
    let mut schemas: Schemas = Vec::new();
    let mut paths = Paths::new();
    let mut tags: Vec<&str> = Vec::new();
    for e in ENDPOINTS.iter() {
        let op = operation(e, &mut schemas);
        paths.add_path_operation(&e.path, vec![http_method(&e.method)], op);
        if !tags.contains(&e.tag) {
            tags.push(e.tag);
        }
    }
    schemas.sort_by(|a, b| a.0.cmp(&b.0));
    let mut components: Components = ComponentsBuilder::new().schemas_from_iter(schemas).build();
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some("an access token from /auth/oauth/token or single sign-on; `?bearer_token=` also works"))
                .build(),
        ),
    );
    components.add_security_scheme(
        "api_key",
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "X-API-Key",
            "an API key's secret (POST /api_keys)",
        ))),
    );
    let mut doc = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Lintel API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "PlaceOS v2-compatible REST API of Lintel. Every error is \
                     `{\"error\": code, \"message\": text}`; every response carries \
                     `X-Request-Id`.",
                ))
                .build(),
        )
        .paths(paths)
        .components(Some(components))
        .build();
    doc.tags = Some(tags.into_iter().map(Tag::new).collect());
    doc
}

/// `GET /api/engine/v2/openapi.json`.
pub(crate) async fn document() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header(("Cache-Control", "max-age=300"))
        .body(document_text())
}

static PAGE: LazyLock<String> = LazyLock::new(|| render(&DOCUMENT));

/// `GET /api/engine/v2/docs`: the reference page.
pub(crate) async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "max-age=300"))
        .insert_header((
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'",
        ))
        .body(PAGE.as_str())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The schema a `$ref` or inline schema names, for the page.
fn schema_name(v: &Value) -> String {
    if let Some(r) = v["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap_or(r);
        return format!("<a href=\"#schema-{0}\">{0}</a>", esc(name));
    }
    if v["type"] == "array" {
        return format!("array of {}", schema_name(&v["items"]));
    }
    match v["type"].as_str() {
        Some(t) => esc(t),
        None => "any JSON".into(),
    }
}

/// The page: operations by tag, then schemas.
fn render(doc: &Value) -> String {
    let mut html = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Lintel API reference</title><style>\
         body{font:15px/1.45 system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}\
         code,pre{font-family:ui-monospace,monospace;font-size:13px}\
         .op{border:1px solid #ddd;border-radius:6px;margin:.5rem 0;padding:.5rem .8rem}\
         .m{display:inline-block;min-width:4.5rem;font-weight:700}\
         .GET{color:#1565c0}.POST{color:#2e7d32}.PUT,.PATCH{color:#ef6c00}.DELETE{color:#c62828}\
         .perm{color:#666;font-size:12px}pre{background:#f6f6f6;padding:.6rem;overflow:auto}\
         </style></head><body>",
    );
    html.push_str(&format!(
        "<h1>{} <small>{}</small></h1><p>{}</p><p>The machine-readable document: \
         <a href=\"openapi.json\">openapi.json</a> (OpenAPI {}).</p>",
        esc(doc["info"]["title"].as_str().unwrap_or("")),
        esc(doc["info"]["version"].as_str().unwrap_or("")),
        esc(doc["info"]["description"].as_str().unwrap_or("")),
        esc(doc["openapi"].as_str().unwrap_or("")),
    ));
    let empty = serde_json::Map::new();
    let paths = doc["paths"].as_object().unwrap_or(&empty);
    let tags: Vec<&str> = doc["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str())
        .collect();
    html.push_str("<nav><ul>");
    for t in &tags {
        html.push_str(&format!("<li><a href=\"#tag-{0}\">{0}</a></li>", esc(t)));
    }
    html.push_str("<li><a href=\"#schemas\">schemas</a></li></ul></nav>");
    for tag in &tags {
        html.push_str(&format!("<h2 id=\"tag-{0}\">{0}</h2>", esc(tag)));
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap_or(&empty) {
                if !op["tags"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|x| x == tag))
                {
                    continue;
                }
                let m = method.to_ascii_uppercase();
                html.push_str(&format!(
                    "<div class=\"op\" id=\"{}\"><span class=\"m {m}\">{m}</span> <code>{}</code> \
                     <span class=\"perm\">{}</span><div>{}</div>",
                    esc(op["operationId"].as_str().unwrap_or("")),
                    esc(path),
                    esc(op["x-lintel-permission"].as_str().unwrap_or("")),
                    esc(op["summary"].as_str().unwrap_or("")),
                ));
                let params: Vec<String> = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        format!(
                            "<code>{}</code> ({}){}",
                            esc(p["name"].as_str().unwrap_or("")),
                            esc(p["in"].as_str().unwrap_or("")),
                            p["description"]
                                .as_str()
                                .map(|d| format!(": {}", esc(d)))
                                .unwrap_or_default()
                        )
                    })
                    .collect();
                if !params.is_empty() {
                    html.push_str(&format!("<div>Parameters: {}</div>", params.join("; ")));
                }
                if let Some(content) = op["requestBody"]["content"].as_object() {
                    for (ct, c) in content {
                        html.push_str(&format!(
                            "<div>Body <code>{}</code>: {}</div>",
                            esc(ct),
                            schema_name(&c["schema"])
                        ));
                    }
                }
                let mut replies = Vec::new();
                for (status, r) in op["responses"].as_object().unwrap_or(&empty) {
                    let schema = r["content"]["application/json"]["schema"].clone();
                    let what = if schema.is_null() {
                        esc(r["description"].as_str().unwrap_or(""))
                    } else {
                        schema_name(&schema)
                    };
                    replies.push(format!("<b>{}</b> {what}", esc(status)));
                }
                html.push_str(&format!(
                    "<div>Responses: {}</div></div>",
                    replies.join(" · ")
                ));
            }
        }
    }
    html.push_str("<h2 id=\"schemas\">Schemas</h2>");
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap_or(&empty) {
        html.push_str(&format!(
            "<h3 id=\"schema-{0}\">{0}</h3><pre>{1}</pre>",
            esc(name),
            esc(&serde_json::to_string_pretty(schema).unwrap_or_default())
        ));
    }
    html.push_str("</body></html>");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/openapi.json` is the document: a change to the API shows in review. Run with
    /// `LINTEL_UPDATE_SNAPSHOTS=1` to accept a change.
    #[test]
    fn the_document_matches_its_snapshot() {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
        let now = document_text();
        if std::env::var_os("LINTEL_UPDATE_SNAPSHOTS").is_some() {
            std::fs::write(&file, &now).unwrap();
        }
        let stored = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(
            stored == now,
            "the OpenAPI document changed: review it and run \
             `LINTEL_UPDATE_SNAPSHOTS=1 cargo test -p lintel-api openapi` to update docs/openapi.json"
        );
    }

    #[test]
    fn every_route_is_documented_with_its_permission() {
        let doc = &*DOCUMENT;
        assert_eq!(doc["openapi"], "3.1.0");
        for e in ENDPOINTS.iter() {
            let op = &doc["paths"][&e.path][e.method.as_str().to_ascii_lowercase()];
            assert!(op.is_object(), "{} {} undocumented", e.method, e.path);
            assert!(
                op["x-lintel-permission"].is_string(),
                "{} {}",
                e.method,
                e.path
            );
            assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()));
        }
        // Every `$ref` resolves.
        let text = doc.to_string();
        for r in text.split("\"$ref\":\"").skip(1) {
            let name = r.split('"').next().unwrap().rsplit('/').next().unwrap();
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "dangling $ref {name}"
            );
        }
        // Write-only and server-only fields stay out of the records' schemas.
        let user = doc["components"]["schemas"]["UserView"].to_string();
        assert!(!user.contains("password_hash"), "{user}");
        assert!(user.contains("has_password"), "{user}");
        let key = doc["components"]["schemas"]["ApiKey"].to_string();
        assert!(!key.contains("secret_hash"), "{key}");
    }

    #[test]
    fn the_page_lists_every_operation_and_escapes_text() {
        let page = render(&DOCUMENT);
        for e in ENDPOINTS.iter() {
            assert!(
                page.contains(&format!("<code>{}</code>", esc(&e.path))),
                "{}",
                e.path
            );
        }
        assert!(!page.contains("<script"));
        assert_eq!(esc("<a href=\"x\">&"), "&lt;a href=&quot;x&quot;&gt;&amp;");
    }
}
