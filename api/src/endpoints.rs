//! The one table of the HTTP API: every route's method, path, permission, handler and
//! documentation. [`configure`] registers the routes from it, [`permission`] answers the
//! `Authenticated` extractor from it, and [`crate::openapi`] writes the OpenAPI document
//! from it, so a route cannot be served without being documented and permissioned.

use crate::{control, resources, routes, sso};
use actix_web::http::Method;
use actix_web::{Route, web};
use lintel_auth::{Action, Resource};
use lintel_model::{
    ApiKey, AuditEntry, Broker, ControlSystem, DriverRecord, IdentityProvider, Metadata, Module,
    Tenant, Trigger, User, Zone,
};
use std::collections::HashMap;
use std::sync::LazyLock;
use utoipa::ToSchema;
use utoipa::openapi::schema::{Schema, SchemaType};
use utoipa::openapi::{ObjectBuilder, Ref, RefOr};

/// The PlaceOS v2 base path.
pub const V2: &str = "/api/engine/v2";

/// What a route needs: a resource and action, or `None` for any authenticated caller.
pub(crate) type Permission = Option<(Resource, Action)>;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// No credential (sign-in, health, the API document).
    Public,
    /// Any authenticated caller, or one allowed this resource and action.
    Signed(Permission),
}

/// Component schemas collected while the document is written.
pub(crate) type Schemas = Vec<(String, RefOr<Schema>)>;
/// A body's schema: adds what it references to the components and returns a reference.
pub(crate) type SchemaFn = fn(&mut Schemas) -> RefOr<Schema>;

/// A request body.
#[derive(Clone, Copy)]
pub(crate) enum Body {
    None,
    Json(SchemaFn),
    /// `application/x-www-form-urlencoded` (OAuth2), or the same fields in the query.
    Form,
    /// A WebAssembly component (`application/wasm`).
    Wasm,
}

/// The success response.
#[derive(Clone, Copy)]
pub(crate) enum Reply {
    Json(u16, SchemaFn),
    /// A paged JSON array of the schema, with the list headers.
    List(SchemaFn),
    Empty(u16),
    /// Another media type (`text/html`, the export formats, a redirect).
    Other(u16, &'static [&'static str], &'static str),
}

pub(crate) struct Endpoint {
    pub method: Method,
    pub path: String,
    pub access: Access,
    pub tag: &'static str,
    pub summary: String,
    pub body: Body,
    pub reply: Reply,
    /// Query parameters beyond the list ones: `(name, description)`.
    pub query: Vec<(&'static str, &'static str)>,
    /// Largest body, when the route takes more than `[http] max_body_bytes`.
    pub body_limit: Option<usize>,
    pub route: fn() -> Route,
}

impl Endpoint {
    pub(crate) fn new(
        method: Method,
        path: impl Into<String>,
        access: Access,
        tag: &'static str,
        summary: impl Into<String>,
        route: fn() -> Route,
    ) -> Self {
        Endpoint {
            method,
            path: path.into(),
            access,
            tag,
            summary: summary.into(),
            body: Body::None,
            reply: Reply::Json(200, any),
            query: Vec::new(),
            body_limit: None,
            route,
        }
    }
    pub(crate) fn body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }
    pub(crate) fn reply(mut self, reply: Reply) -> Self {
        self.reply = reply;
        self
    }
    pub(crate) fn query(mut self, q: &[(&'static str, &'static str)]) -> Self {
        self.query.extend_from_slice(q);
        self
    }
}

/// `T`'s schema among the components, by reference.
pub(crate) fn schema<T: ToSchema>(out: &mut Schemas) -> RefOr<Schema> {
    T::schemas(out);
    let name = T::name().to_string();
    if !out.iter().any(|(n, _)| *n == name) {
        out.push((name.clone(), T::schema()));
    }
    RefOr::Ref(Ref::from_schema_name(name))
}

/// Any JSON value (a driver's status, a function's result).
pub(crate) fn any(_: &mut Schemas) -> RefOr<Schema> {
    RefOr::T(Schema::Object(
        ObjectBuilder::new()
            .schema_type(SchemaType::AnyValue)
            .build(),
    ))
}

/// The list parameters every list takes.
pub(crate) const LIST_QUERY: &[(&str, &str)] = &[
    ("q", "search text (names, emails, tags, …)"),
    ("limit", "page size, 1–10000 (default 100)"),
    ("offset", "records to skip"),
    (
        "after",
        "cursor from the previous page's `X-Next-Cursor` (stable under concurrent writes)",
    ),
];

const DELETED_QUERY: (&str, &str) = (
    "deleted",
    "`true`: list soft-deleted records instead (admins), to restore them",
);
const VERSION_QUERY: (&str, &str) = (
    "version",
    "the version the change was based on (optimistic locking: a stale one is a 409)",
);

const fn read(r: Resource) -> Access {
    Access::Signed(Some((r, Action::Read)))
}
const fn write(r: Resource) -> Access {
    Access::Signed(Some((r, Action::Write)))
}
const ANY: Access = Access::Signed(None);

/// The five CRUD routes of a record kind, plus restore.
fn crud<R: resources::ApiResource>(
    out: &mut Vec<Endpoint>,
    name: &'static str,
    resource: Resource,
    what: &str,
    doc: SchemaFn,
) {
    let tag = name;
    let base = format!("{V2}/{name}");
    let one = format!("{base}/{{id}}");
    let filters: Vec<(&'static str, &'static str)> = R::FILTERS
        .iter()
        .map(|(q, _)| (*q, "filter: only records with this value"))
        .collect();
    out.push(
        Endpoint::new(
            Method::GET,
            &base,
            read(resource),
            tag,
            format!("List {what}"),
            || web::get().to(resources::list::<R>),
        )
        .reply(Reply::List(doc))
        .query(&filters)
        .query(&[DELETED_QUERY]),
    );
    out.push(
        Endpoint::new(
            Method::POST,
            &base,
            write(resource),
            tag,
            format!("Create {what}"),
            || web::post().to(resources::create::<R>),
        )
        .body(Body::Json(doc))
        .reply(Reply::Json(201, doc)),
    );
    out.push(
        Endpoint::new(
            Method::POST,
            format!("{one}/restore"),
            write(resource),
            tag,
            format!("Restore soft-deleted {what} (admins)"),
            || web::post().to(resources::restore::<R>),
        )
        .reply(Reply::Json(200, doc)),
    );
    out.push(
        Endpoint::new(
            Method::GET,
            &one,
            read(resource),
            tag,
            format!("Show {what}"),
            || web::get().to(resources::show::<R>),
        )
        .reply(Reply::Json(200, doc)),
    );
    for (method, route) in [
        (
            Method::PATCH,
            (|| web::patch().to(resources::update::<R>)) as fn() -> Route,
        ),
        (Method::PUT, || web::put().to(resources::update::<R>)),
    ] {
        out.push(
            Endpoint::new(
                method,
                &one,
                write(resource),
                tag,
                format!("Update {what} (fields given replace the stored ones)"),
                route,
            )
            .body(Body::Json(doc))
            .reply(Reply::Json(200, doc))
            .query(&[VERSION_QUERY]),
        );
    }
    out.push(
        Endpoint::new(
            Method::DELETE,
            &one,
            write(resource),
            tag,
            format!("Delete {what} (soft: restorable until purged)"),
            || web::delete().to(resources::delete::<R>),
        )
        .reply(Reply::Empty(202))
        .query(&[VERSION_QUERY]),
    );
}

/// Every route (the order is the documentation's; [`match_order`] decides actix's).
fn table() -> Vec<Endpoint> {
    use Method as M;
    use Resource as R;
    let mut t = vec![
        // Sign-in and keys.
        Endpoint::new(
            M::GET,
            "/auth/authority",
            Access::Public,
            "auth",
            "The tenant (authority) a client signs in to",
            || web::get().to(routes::authority),
        ),
        Endpoint::new(
            M::POST,
            "/auth/oauth/token",
            Access::Public,
            "auth",
            "OAuth2 token endpoint (password and refresh_token grants)",
            || web::post().to(routes::token),
        )
        .body(Body::Form),
        Endpoint::new(
            M::POST,
            "/auth/token",
            Access::Public,
            "auth",
            "OAuth2 token endpoint (the PlaceOS client's default path)",
            || web::post().to(routes::token),
        )
        .body(Body::Form),
        Endpoint::new(
            M::POST,
            "/auth/logout",
            ANY,
            "auth",
            "End the caller's session",
            || web::post().to(routes::logout),
        )
        .reply(Reply::Empty(204)),
        Endpoint::new(
            M::GET,
            "/auth/oidc/{idp}/login",
            Access::Public,
            "auth",
            "Start single sign-on with an identity provider (redirect)",
            || web::get().to(sso::login),
        )
        .reply(Reply::Other(
            302,
            &[],
            "a redirect to the identity provider",
        )),
        Endpoint::new(
            M::GET,
            "/auth/oidc/callback",
            Access::Public,
            "auth",
            "Single sign-on callback (redirect back to the app with tokens)",
            || web::get().to(sso::callback),
        )
        .reply(Reply::Other(302, &[], "a redirect to the app")),
        Endpoint::new(
            M::GET,
            "/.well-known/jwks.json",
            Access::Public,
            "auth",
            "The tenant's token-signing public keys",
            || web::get().to(routes::jwks),
        ),
        // Operations.
        Endpoint::new(
            M::GET,
            "/metrics",
            Access::Public,
            "operations",
            "Prometheus metrics",
            || web::get().to(routes::metrics),
        )
        .reply(Reply::Other(200, &["text/plain"], "Prometheus text format")),
        Endpoint::new(
            M::GET,
            format!("{V2}/health"),
            Access::Public,
            "operations",
            "Liveness",
            || web::get().to(routes::health),
        ),
        Endpoint::new(
            M::GET,
            format!("{V2}/ready"),
            Access::Public,
            "operations",
            "Readiness: the store answers and the engine has started its modules",
            || web::get().to(routes::ready),
        ),
        Endpoint::new(
            M::GET,
            format!("{V2}/openapi.json"),
            Access::Public,
            "operations",
            "This API's OpenAPI 3.1 document",
            || web::get().to(crate::openapi::document),
        ),
        Endpoint::new(
            M::GET,
            format!("{V2}/docs"),
            Access::Public,
            "operations",
            "The API reference, as a web page",
            || web::get().to(crate::openapi::page),
        )
        .reply(Reply::Other(200, &["text/html"], "the API reference")),
        // Users, keys, tenants, audit.
        Endpoint::new(
            M::GET,
            format!("{V2}/users/current"),
            ANY,
            "users",
            "The caller",
            || web::get().to(resources::current_user),
        )
        .reply(Reply::Json(200, schema::<resources::UserView>)),
        Endpoint::new(
            M::POST,
            format!("{V2}/users"),
            write(R::Users),
            "users",
            "Create a user (`password` is write-only and hashed)",
            || web::post().to(resources::create_user),
        )
        .body(Body::Json(schema::<resources::UserView>))
        .reply(Reply::Json(201, schema::<resources::UserView>)),
    ];
    for method in [M::PATCH, M::PUT] {
        let route: fn() -> Route = if method == M::PATCH {
            || web::patch().to(resources::update_user)
        } else {
            || web::put().to(resources::update_user)
        };
        t.push(
            Endpoint::new(
                method,
                format!("{V2}/users/{{id}}"),
                write(R::Users),
                "users",
                "Update a user (`password` is write-only and hashed)",
                route,
            )
            .body(Body::Json(schema::<resources::UserView>))
            .reply(Reply::Json(200, schema::<resources::UserView>))
            .query(&[VERSION_QUERY]),
        );
    }
    t.extend([
        Endpoint::new(
            M::GET,
            format!("{V2}/api_keys"),
            read(R::ApiKeys),
            "api_keys",
            "List API keys (never their secrets)",
            || web::get().to(resources::list::<ApiKey>),
        )
        .reply(Reply::List(schema::<ApiKey>)),
        Endpoint::new(
            M::POST,
            format!("{V2}/api_keys"),
            write(R::ApiKeys),
            "api_keys",
            "Create an API key; its secret (`x_api_key`) is in this response only",
            || web::post().to(resources::create_api_key),
        )
        .body(Body::Json(schema::<resources::NewKeyBody>))
        .reply(Reply::Json(201, schema::<ApiKey>)),
        Endpoint::new(
            M::GET,
            format!("{V2}/api_keys/{{id}}"),
            read(R::ApiKeys),
            "api_keys",
            "Show an API key",
            || web::get().to(resources::show::<ApiKey>),
        )
        .reply(Reply::Json(200, schema::<ApiKey>)),
        Endpoint::new(
            M::PATCH,
            format!("{V2}/api_keys/{{id}}"),
            write(R::ApiKeys),
            "api_keys",
            "Update an API key's name, description, role or scopes",
            || web::patch().to(resources::update::<ApiKey>),
        )
        .body(Body::Json(schema::<ApiKey>))
        .reply(Reply::Json(200, schema::<ApiKey>))
        .query(&[VERSION_QUERY]),
        Endpoint::new(
            M::DELETE,
            format!("{V2}/api_keys/{{id}}"),
            write(R::ApiKeys),
            "api_keys",
            "Revoke an API key (it stops working at once)",
            || web::delete().to(resources::delete_api_key),
        )
        .reply(Reply::Empty(202)),
        Endpoint::new(
            M::GET,
            format!("{V2}/tenants"),
            read(R::Tenants),
            "tenants",
            "List tenants (sysadmins: all; others: their own)",
            || web::get().to(resources::list_tenants),
        )
        .reply(Reply::List(schema::<Tenant>)),
        Endpoint::new(
            M::POST,
            format!("{V2}/tenants"),
            write(R::Tenants),
            "tenants",
            "Create a tenant (sysadmins)",
            || web::post().to(resources::create_tenant),
        )
        .body(Body::Json(schema::<Tenant>))
        .reply(Reply::Json(201, schema::<Tenant>)),
        Endpoint::new(
            M::GET,
            format!("{V2}/tenants/{{id}}"),
            read(R::Tenants),
            "tenants",
            "Show a tenant",
            || web::get().to(resources::show_tenant),
        )
        .reply(Reply::Json(200, schema::<Tenant>)),
        Endpoint::new(
            M::GET,
            format!("{V2}/audit"),
            read(R::Audit),
            "audit",
            "The tenant's audit trail, oldest first",
            || web::get().to(resources::audit),
        )
        .reply(Reply::List(schema::<AuditEntry>))
        .query(&[("record_id", "only this record's entries")]),
    ]);
    // Live state and control (before the systems' generic `{id}` routes).
    t.extend(control::endpoints());
    t.extend(crate::export::endpoints());
    // Drivers: upload, reload, metadata (before the generic `{id}` routes).
    t.extend(control::driver_endpoints());
    crud::<Zone>(&mut t, "zones", R::Zones, "zones", schema::<Zone>);
    crud::<ControlSystem>(
        &mut t,
        "systems",
        R::Systems,
        "systems",
        schema::<ControlSystem>,
    );
    crud::<Module>(&mut t, "modules", R::Modules, "modules", schema::<Module>);
    crud::<DriverRecord>(
        &mut t,
        "drivers",
        R::Drivers,
        "drivers",
        schema::<DriverRecord>,
    );
    crud::<lintel_model::Settings>(
        &mut t,
        "settings",
        R::Settings,
        "settings",
        schema::<resources::SettingsView>,
    );
    crud::<Metadata>(
        &mut t,
        "metadata",
        R::Metadata,
        "metadata",
        schema::<Metadata>,
    );
    crud::<Trigger>(
        &mut t,
        "triggers",
        R::Triggers,
        "triggers",
        schema::<Trigger>,
    );
    crud::<User>(
        &mut t,
        "users",
        R::Users,
        "users",
        schema::<resources::UserView>,
    );
    crud::<IdentityProvider>(
        &mut t,
        "identity_providers",
        R::IdentityProviders,
        "identity providers",
        schema::<IdentityProvider>,
    );
    crud::<Broker>(
        &mut t,
        "brokers",
        R::Brokers,
        "MQTT brokers",
        schema::<Broker>,
    );
    // The custom user routes above take precedence over the generic ones.
    let mut seen = std::collections::HashSet::new();
    t.retain(|e| seen.insert((e.method.clone(), e.path.clone())));
    t
}

/// The table, built once.
pub(crate) static ENDPOINTS: LazyLock<Vec<Endpoint>> = LazyLock::new(table);

static PERMISSIONS: LazyLock<HashMap<(Method, &'static str), Access>> = LazyLock::new(|| {
    ENDPOINTS
        .iter()
        .map(|e| ((e.method.clone(), e.path.as_str()), e.access))
        .collect()
});

/// The permission of a route, `None` if the route has no entry or is public (refused:
/// public routes do not authenticate).
pub(crate) fn permission(method: &Method, pattern: Option<&str>) -> Option<Permission> {
    match PERMISSIONS.get(&(method.clone(), pattern?))? {
        Access::Signed(p) => Some(*p),
        Access::Public => None,
    }
}

/// The paths in the order actix must try them: it takes the first resource whose pattern
/// matches (answering 405 if that one lacks the method), so a literal segment comes before
/// a parameter in the same place (`/systems/{id}/types` before `/systems/{id}/{module}`).
pub(crate) fn match_order() -> Vec<&'static str> {
    let mut paths: Vec<&'static str> = Vec::new();
    for e in ENDPOINTS.iter() {
        if !paths.contains(&e.path.as_str()) {
            paths.push(&e.path);
        }
    }
    let shape = |p: &str| -> Vec<bool> { p.split('/').map(|s| s.starts_with('{')).collect() };
    paths.sort_by_key(|p| shape(p));
    paths
}

/// The scope a path is served under: `/api/engine/v2/<first segment>` (a literal) for the
/// API, else the path itself. Actix then matches a request against one scope's patterns,
/// not all of them (its router tries each pattern's regex in turn).
fn scope_of(path: &str) -> &str {
    let Some(rest) = path.strip_prefix(V2).and_then(|r| r.strip_prefix('/')) else {
        return path;
    };
    let first = rest.split('/').next().unwrap_or_default();
    if first.starts_with('{') {
        return path;
    }
    &path[..V2.len() + 1 + first.len()]
}

/// Register every route of the table: one actix resource per path, grouped in scopes.
pub fn configure(cfg: &mut web::ServiceConfig, max_body: usize) {
    let order = match_order();
    let mut scopes: Vec<&str> = Vec::new();
    for p in &order {
        if !scopes.contains(&scope_of(p)) {
            scopes.push(scope_of(p));
        }
    }
    for prefix in scopes {
        let mut scope = web::scope(prefix);
        for path in order.iter().filter(|p| scope_of(p) == prefix) {
            let mut resource = web::resource(&path[prefix.len()..]);
            let limit = ENDPOINTS
                .iter()
                .filter(|e| e.path == *path)
                .filter_map(|e| e.body_limit)
                .max();
            if let Some(limit) = limit {
                resource = resource.app_data(web::PayloadConfig::new(limit.max(max_body)));
            }
            for e in ENDPOINTS.iter().filter(|e| e.path == *path) {
                resource = resource.route((e.route)().method(e.method.clone()));
            }
            scope = scope.service(resource);
        }
        cfg.service(scope);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_signed_route_has_a_permission_and_unknown_ones_none() {
        for e in ENDPOINTS.iter() {
            let p = permission(&e.method, Some(&e.path));
            match e.access {
                Access::Signed(want) => assert_eq!(p, Some(want), "{} {}", e.method, e.path),
                Access::Public => assert_eq!(p, None, "{} {}", e.method, e.path),
            }
        }
        let m = |s: &str| Method::from_bytes(s.as_bytes()).unwrap();
        // Fail closed: anything not listed has no permission (the extractor refuses it).
        assert_eq!(permission(&m("GET"), Some("/api/engine/v2/secrets")), None);
        assert_eq!(permission(&m("DELETE"), Some("/api/engine/v2/zones")), None);
        assert_eq!(
            permission(&m("POST"), Some("/api/engine/v2/tenants/{id}")),
            None
        );
        assert_eq!(permission(&m("GET"), None), None);
        assert_eq!(
            permission(&m("DELETE"), Some("/api/engine/v2/systems/{id}")),
            Some(Some((Resource::Systems, Action::Write)))
        );
    }

    #[test]
    fn no_route_is_listed_twice_and_specific_paths_come_first() {
        let mut seen = std::collections::HashSet::new();
        for e in ENDPOINTS.iter() {
            assert!(
                seen.insert((e.method.clone(), e.path.clone())),
                "{}",
                e.path
            );
        }
        let order = match_order();
        let at = |p: &str| order.iter().position(|e| *e == p).unwrap();
        let before = |a: &str, b: &str| {
            let (a, b) = (format!("{V2}{a}"), format!("{V2}{b}"));
            assert!(at(&a) < at(&b), "{a} must be tried before {b}");
        };
        before("/systems/{id}/types", "/systems/{id}/{module}");
        before("/systems/{id}/restore", "/systems/{id}/{module}");
        before(
            "/systems/{id}/functions/{module}",
            "/systems/{id}/{module}/{key}",
        );
        before("/users/current", "/users/{id}");
        before("/drivers/upload", "/drivers/{id}");
        assert_eq!(
            scope_of(&format!("{V2}/systems/{{id}}/types")),
            format!("{V2}/systems")
        );
        assert_eq!(scope_of(&format!("{V2}/zones")), format!("{V2}/zones"));
        assert_eq!(scope_of("/auth/oauth/token"), "/auth/oauth/token");
    }
}
