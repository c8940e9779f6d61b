//! Live state and control (PlaceOS's system and module routes) and the driver routes that
//! need the engine: upload, reload, metadata.

use crate::auth::Authenticated;
use crate::endpoints::{Access, Body, Endpoint, Reply, Schemas, V2, any, schema};
use crate::{ApiError, AppState};
use actix_web::http::Method;
use actix_web::{HttpResponse, web};
use lintel_auth::{Action, Principal, Resource};
use lintel_model::{ControlSystem, DriverRecord, IdKind, Module, Role, Trigger};
use lintel_store::StoreExt;
use serde_json::{Map, Value, json};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::{ObjectBuilder, RefOr};

type Result<T> = std::result::Result<T, ApiError>;

/// The largest driver component accepted (as `lintel driver upload`).
pub const MAX_COMPONENT_BYTES: usize = 32 * 1024 * 1024;

const fn needs(r: Resource, a: Action) -> Access {
    Access::Signed(Some((r, a)))
}

fn ping_schema(_: &mut Schemas) -> RefOr<Schema> {
    RefOr::T(Schema::Object(
        ObjectBuilder::new()
            .property(
                "host",
                ObjectBuilder::new().schema_type(utoipa::openapi::Type::String),
            )
            .property(
                "pingable",
                ObjectBuilder::new().schema_type(utoipa::openapi::Type::Boolean),
            )
            .property(
                "warning",
                ObjectBuilder::new().schema_type(utoipa::openapi::Type::String),
            )
            .property(
                "exception",
                ObjectBuilder::new().schema_type(utoipa::openapi::Type::String),
            )
            .required("host")
            .required("pingable")
            .description(Some("PlaceOS's ping answer"))
            .build(),
    ))
}

/// The system and module routes, most specific first.
pub(crate) fn endpoints() -> Vec<Endpoint> {
    use Action::{Read, Write};
    use Method as M;
    use Resource as R;
    let sys = format!("{V2}/systems/{{id}}");
    let module = format!("{V2}/modules/{{id}}");
    let mut out = vec![Endpoint {
        query: vec![
            (
                "bearer_token",
                "An access token (browsers cannot set headers on a WebSocket)",
            ),
            ("api-key", "An API key, as `@placeos/ts-client` sends it"),
            (
                "fixed_device",
                "PlaceOS's flag for a fixed panel; accepted and ignored",
            ),
        ],
        reply: Reply::Other(
            101,
            &[],
            "Switching Protocols: PlaceOS's control protocol follows (see docs/websocket.md). \
             Without an `Upgrade: websocket` request: 426.",
        ),
        ..Endpoint::new(
            M::GET,
            crate::ws::CONTROL_PATH,
            needs(R::State, Read),
            "control",
            "WebSocket: bind to status keys, call functions and follow module logs \
             (PlaceOS's control protocol)",
            || web::get().to(websocket_required),
        )
    }];
    for (path, summary) in [
        (
            "types",
            "Module names in the system with their counts (`{\"Display\": 2}`)",
        ),
        (
            "count",
            "The same as `types` (the path `@placeos/ts-client` 4.x calls)",
        ),
    ] {
        out.push(Endpoint {
            reply: Reply::Json(200, any),
            ..Endpoint::new(
                M::GET,
                format!("{sys}/{path}"),
                needs(R::Systems, Read),
                "control",
                summary,
                || web::get().to(types),
            )
        });
    }
    out.push(Endpoint::new(
        M::GET,
        format!("{sys}/functions/{{module}}"),
        needs(R::Systems, Read),
        "control",
        "A module's functions: `{name: {arity, params (JSON Schema per parameter), order}}`",
        || web::get().to(functions),
    ));
    out.push(
        Endpoint::new(
            M::GET,
            format!("{sys}/triggers"),
            needs(R::Triggers, Read),
            "control",
            "The system's triggers",
            || web::get().to(system_triggers),
        )
        .reply(Reply::List(schema::<Trigger>)),
    );
    for (verb, route) in [
        (
            "start",
            (|| web::post().to(start_system)) as fn() -> actix_web::Route,
        ),
        ("stop", || web::post().to(stop_system)),
    ] {
        out.push(
            Endpoint::new(
                M::POST,
                format!("{sys}/{verb}"),
                needs(R::Modules, Write),
                "control",
                format!("Mark every module of the system to {verb} (the engine follows)"),
                route,
            )
            .reply(Reply::Empty(200)),
        );
    }
    out.push(Endpoint::new(
        M::GET,
        format!("{sys}/{{module}}"),
        needs(R::State, Read),
        "control",
        "All state of a module in the system (`Display_1`; no suffix = index 1)",
        || web::get().to(system_module_state),
    ));
    out.push(Endpoint::new(
        M::GET,
        format!("{sys}/{{module}}/{{key}}"),
        needs(R::State, Read),
        "control",
        "One status key (`null` if the driver has not set it)",
        || web::get().to(system_module_key),
    ));
    out.push(
        Endpoint::new(
            M::POST,
            format!("{sys}/{{module}}/{{key}}"),
            needs(R::Control, Write),
            "control",
            "Execute function `key` with a JSON array of arguments; the answer is its result. \
             400 names a bad parameter, 404 an unknown module or function, 500 carries the \
             driver's error, 504 is a timeout",
            || web::post().to(system_exec),
        )
        .body(Body::Json(args_schema)),
    );
    out.push(Endpoint::new(
        M::GET,
        format!("{module}/state"),
        needs(R::State, Read),
        "control",
        "All state of a module; as PlaceOS, each value is JSON-encoded in a string",
        || web::get().to(module_state),
    ));
    out.push(Endpoint::new(
        M::GET,
        format!("{module}/state/{{key}}"),
        needs(R::State, Read),
        "control",
        "One status key, JSON-encoded in a string as PlaceOS answers (404 if unset)",
        || web::get().to(module_state_key),
    ));
    out.push(
        Endpoint::new(
            M::POST,
            format!("{module}/exec/{{method}}"),
            needs(R::Control, Write),
            "control",
            "Execute a function of the module with a JSON array of arguments",
            || web::post().to(module_exec),
        )
        .body(Body::Json(args_schema)),
    );
    for (verb, route) in [
        (
            "start",
            (|| web::post().to(start_module)) as fn() -> actix_web::Route,
        ),
        ("stop", || web::post().to(stop_module)),
    ] {
        out.push(
            Endpoint::new(
                M::POST,
                format!("{module}/{verb}"),
                needs(R::Modules, Write),
                "control",
                format!("Mark the module to {verb} (the engine follows)"),
                route,
            )
            .reply(Reply::Empty(200)),
        );
    }
    for (method, route) in [
        (
            M::POST,
            (|| web::post().to(ping)) as fn() -> actix_web::Route,
        ),
        (M::GET, || web::get().to(ping)),
    ] {
        out.push(
            Endpoint::new(
                method,
                format!("{module}/ping"),
                needs(R::Modules, Read),
                "control",
                "Whether the module's device answers a TCP connection within 2 s",
                route,
            )
            .reply(Reply::Json(200, ping_schema)),
        );
    }
    out.push(
        Endpoint::new(
            M::GET,
            format!("{module}/settings"),
            needs(R::Settings, Read),
            "control",
            "The settings that apply to the module, lowest precedence first (driver, zones, \
             system, module), redacted per role",
            || web::get().to(module_settings),
        )
        .reply(Reply::Json(200, crate::resources::settings_list_schema)),
    );
    out
}

fn args_schema(s: &mut Schemas) -> RefOr<Schema> {
    RefOr::T(Schema::Array(
        utoipa::openapi::schema::ArrayBuilder::new()
            .items(any(s))
            .description(Some("the function's arguments, in order"))
            .build(),
    ))
}

/// Driver routes beyond CRUD.
pub(crate) fn driver_endpoints() -> Vec<Endpoint> {
    use Action::{Read, Write};
    use Method as M;
    use Resource as R;
    let one = format!("{V2}/drivers/{{id}}");
    let mut out = vec![
        Endpoint {
            body_limit: Some(MAX_COMPONENT_BYTES),
            ..Endpoint::new(
                M::POST,
                format!("{V2}/drivers/upload"),
                needs(R::Drivers, Write),
                "drivers",
                "Upload a driver component (`application/wasm`, at most 32 MiB): validated, \
                 compiled and stored as a new driver",
                || web::post().to(upload_new),
            )
            .body(Body::Wasm)
            .reply(Reply::Json(201, any))
        },
        Endpoint {
            body_limit: Some(MAX_COMPONENT_BYTES),
            ..Endpoint::new(
                M::POST,
                format!("{one}/upload"),
                needs(R::Drivers, Write),
                "drivers",
                "Upload a new version of a driver: its running modules are hot-reloaded; one \
                 whose new version fails to load keeps the old one (the report says why)",
                || web::post().to(upload_version),
            )
            .body(Body::Wasm)
        },
    ];
    for verb in ["recompile", "reload"] {
        out.push(Endpoint::new(
            M::POST,
            format!("{one}/{verb}"),
            needs(R::Drivers, Write),
            "drivers",
            "Restart the driver's running modules from the stored component",
            || web::post().to(reload),
        ));
    }
    out.push(
        Endpoint::new(
            M::GET,
            format!("{one}/compiled"),
            needs(R::Drivers, Read),
            "drivers",
            "200 (empty) when the driver's component is stored and valid, else 404",
            || web::get().to(compiled),
        )
        .reply(Reply::Empty(200)),
    );
    out.push(Endpoint::new(
        M::GET,
        format!("{one}/metadata"),
        needs(R::Drivers, Read),
        "drivers",
        "What the component declared: functions with their parameters' JSON Schemas, \
         settings schema, default settings, secrets, transport, ABI",
        || web::get().to(metadata),
    ));
    out
}

/// A record of the caller's tenant, or 404 (also for another tenant's ids).
async fn load<R: lintel_model::Record>(state: &AppState, p: &Principal, id: &str) -> Result<R> {
    let missing = || ApiError::NotFound(format!("{} `{id}` not found", R::KIND));
    if !R::KIND.is_valid_id(id) {
        return Err(missing());
    }
    state
        .store
        .get::<R>(&p.tenant_id, id)
        .await?
        .ok_or_else(missing)
}

/// A JSON array of arguments; an empty body is no arguments.
fn arguments(body: &[u8]) -> Result<Vec<Value>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(a)) => Ok(a),
        Ok(other) => Err(ApiError::BadRequest(format!(
            "the body must be a JSON array of arguments, got {}",
            json_kind(&other)
        ))),
        Err(e) => Err(ApiError::BadRequest(format!(
            "the body must be a JSON array of arguments: {e}"
        ))),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

async fn system_module_state(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (sys, module) = path.into_inner();
    let id = state.engine.resolve(&p.tenant_id, &sys, &module).await?;
    Ok(HttpResponse::Ok().json(state.engine.state(&p.tenant_id, &id)?))
}

async fn system_module_key(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse> {
    let (sys, module, key) = path.into_inner();
    let id = state.engine.resolve(&p.tenant_id, &sys, &module).await?;
    // PlaceOS answers `null` for a key the driver has not set.
    let value = state
        .engine
        .state_key(&p.tenant_id, &id, &key)?
        .unwrap_or(Value::Null);
    Ok(HttpResponse::Ok().json(value))
}

/// `POST /systems/:id/Display_1/power` with a JSON array of arguments.
async fn system_exec(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    path: web::Path<(String, String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let (sys, module, function) = path.into_inner();
    let args = arguments(&body)?;
    let id = state.engine.resolve(&p.tenant_id, &sys, &module).await?;
    let result = state
        .engine
        .exec(&p.tenant_id, &id, &function, args)
        .await?;
    Ok(HttpResponse::Ok().json(result))
}

async fn module_exec(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let (id, function) = path.into_inner();
    let args = arguments(&body)?;
    let module: Module = load(&state, &p, &id).await?;
    let result = state
        .engine
        .exec(&p.tenant_id, &module.id, &function, args)
        .await?;
    Ok(HttpResponse::Ok().json(result))
}

/// The control endpoint called without the WebSocket upgrade (an upgrade never gets here:
/// `crate::ws` takes it).
async fn websocket_required(Authenticated(_): Authenticated) -> Result<HttpResponse> {
    Err(ApiError::UpgradeRequired(format!(
        "{} is a WebSocket endpoint: connect with an `Upgrade: websocket` request",
        crate::ws::CONTROL_PATH
    )))
}

/// PlaceOS keeps state as JSON text and answers it so: each value JSON-encoded.
fn encoded(v: &Value) -> Value {
    Value::String(v.to_string())
}

async fn module_state(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let module: Module = load(&state, &p, &id).await?;
    let all = state.engine.state(&p.tenant_id, &module.id)?;
    let out: Map<String, Value> = all.iter().map(|(k, v)| (k.clone(), encoded(v))).collect();
    Ok(HttpResponse::Ok().json(out))
}

async fn module_state_key(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (id, key) = path.into_inner();
    let module: Module = load(&state, &p, &id).await?;
    match state.engine.state_key(&p.tenant_id, &module.id, &key)? {
        Some(v) => Ok(HttpResponse::Ok().json(encoded(&v))),
        None => Err(ApiError::NotFound(format!(
            "module {} has no status `{key}`",
            module.id
        ))),
    }
}

/// `{"Display": 2, "Switcher": 1}`.
async fn types(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let (_, modules) = state.engine.system_modules(&p.tenant_id, &id).await?;
    let mut counts = Map::new();
    for m in modules {
        let n = counts.get(&m.module).and_then(Value::as_u64).unwrap_or(0);
        counts.insert(m.module, json!(n + 1));
    }
    Ok(HttpResponse::Ok().json(counts))
}

/// PlaceOS's function list: `{name: {arity, params: {param: schema}, order: [param]}}`,
/// plus Lintel's `description`, `required` and `returns`.
fn function_list(metadata: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    for f in metadata["functions"].as_array().into_iter().flatten() {
        let Some(name) = f["name"].as_str() else {
            continue;
        };
        let params: Vec<&Value> = f["parameters"].as_array().into_iter().flatten().collect();
        let schemas: Map<String, Value> = params
            .iter()
            .filter_map(|p| Some((p["name"].as_str()?.to_owned(), p["schema"].clone())))
            .collect();
        let order: Vec<&Value> = params.iter().map(|p| &p["name"]).collect();
        let required: Vec<&Value> = params
            .iter()
            .filter(|p| p["required"] == true)
            .map(|p| &p["name"])
            .collect();
        out.insert(
            name.to_owned(),
            json!({
                "arity": params.len(),
                "params": schemas,
                "order": order,
                "required": required,
                "description": f["description"],
                "returns": f["returns"],
            }),
        );
    }
    out
}

async fn functions(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (sys, slug) = path.into_inner();
    let id = state.engine.resolve(&p.tenant_id, &sys, &slug).await?;
    let module: Module = state.store.require(&p.tenant_id, &id).await?;
    let driver: DriverRecord = state.store.require(&p.tenant_id, &module.driver_id).await?;
    Ok(HttpResponse::Ok().json(function_list(&driver.metadata)))
}

async fn system_triggers(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    id: web::Path<String>,
    req: actix_web::HttpRequest,
    params: web::Query<std::collections::HashMap<String, String>>,
) -> Result<HttpResponse> {
    let system: ControlSystem = load(&state, &p, &id).await?;
    let mut opts = crate::routes::list_options(&params)?;
    opts.index = Some(("system".into(), system.id));
    let page = state
        .store
        .list::<Trigger>(&p.tenant_id, opts.clone())
        .await?;
    let items: Vec<Value> = page
        .items
        .iter()
        .map(lintel_model::Record::redacted)
        .collect();
    Ok(crate::routes::paged(
        &req,
        IdKind::Trigger,
        &opts,
        items.len(),
        page.total,
        page.next.as_deref(),
    )
    .json(items))
}

/// Set `running` on modules (the engine follows the change feed). Unchanged ones are not
/// written.
async fn set_running(state: &AppState, p: &Principal, ids: &[String], running: bool) -> Result<()> {
    for id in ids {
        let mut m: Module = match state.store.get(&p.tenant_id, id).await? {
            Some(m) => m,
            None => continue,
        };
        if m.running != running {
            m.running = running;
            state.store.update(&p.actor(), m).await?;
        }
    }
    Ok(())
}

async fn start_system(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let system: ControlSystem = load(&state, &p, &id).await?;
    set_running(&state, &p, &system.modules, true).await?;
    Ok(HttpResponse::Ok().finish())
}

async fn stop_system(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let system: ControlSystem = load(&state, &p, &id).await?;
    set_running(&state, &p, &system.modules, false).await?;
    Ok(HttpResponse::Ok().finish())
}

async fn start_module(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let module: Module = load(&state, &p, &id).await?;
    set_running(&state, &p, &[module.id], true).await?;
    Ok(HttpResponse::Ok().finish())
}

async fn stop_module(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let module: Module = load(&state, &p, &id).await?;
    set_running(&state, &p, &[module.id], false).await?;
    Ok(HttpResponse::Ok().finish())
}

async fn ping(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let module: Module = load(&state, &p, &id).await?;
    let ping = state.engine.ping(&p.tenant_id, &module.id).await?;
    Ok(HttpResponse::Ok().json(ping))
}

async fn module_settings(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let module: Module = load(&state, &p, &id).await?;
    let mut settings = state
        .engine
        .module_settings(&p.tenant_id, &module.id)
        .await?;
    // Lowest precedence first, as PlaceOS lists them.
    settings.reverse();
    let views = settings
        .iter()
        .map(|s| crate::resources::settings_view(&state, s, &p))
        .collect::<Result<Vec<_>>>()?;
    Ok(HttpResponse::Ok().json(views))
}

/// A component upload's bytes: `application/wasm` (or octet-stream) starting with the wasm
/// magic.
fn component(req: &actix_web::HttpRequest, body: web::Bytes) -> Result<Vec<u8>> {
    let ct = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !(ct.starts_with("application/wasm") || ct.starts_with("application/octet-stream")) {
        return Err(ApiError::BadRequest(
            "upload the component as `Content-Type: application/wasm`".into(),
        ));
    }
    if !body.starts_with(b"\0asm") {
        return Err(ApiError::BadRequest(
            "the body is not a WebAssembly component (build the driver with `cargo build --release --target wasm32-wasip2`)".into(),
        ));
    }
    Ok(body.to_vec())
}

async fn upload_new(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    req: actix_web::HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let bytes = component(&req, body)?;
    let report = state
        .engine
        .upload_driver(&p.actor(), &p.tenant_id, bytes, None)
        .await?;
    Ok(HttpResponse::Created().json(report.summary(&p.tenant_id, true)))
}

async fn upload_version(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    req: actix_web::HttpRequest,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let driver: DriverRecord = load(&state, &p, &id).await?;
    let bytes = component(&req, body)?;
    let report = state
        .engine
        .upload_driver(&p.actor(), &p.tenant_id, bytes, Some(&driver.id))
        .await?;
    Ok(HttpResponse::Ok().json(report.summary(&p.tenant_id, false)))
}

async fn reload(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let driver: DriverRecord = load(&state, &p, &id).await?;
    let modules = state.engine.reload_driver(&p.tenant_id, &driver.id).await?;
    Ok(HttpResponse::Ok().json(json!({
        "driver": driver.id,
        "modules": lintel_engine::module_outcomes(&modules),
    })))
}

async fn compiled(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let driver: DriverRecord = load(&state, &p, &id).await?;
    let stored = !driver.component_hash.is_empty()
        && state
            .store
            .get_blob(&p.tenant_id, &driver.component_hash)
            .await?
            .is_some();
    if stored {
        Ok(HttpResponse::Ok().finish())
    } else {
        Err(ApiError::NotFound(
            "Driver not compiled yet: upload its component".into(),
        ))
    }
}

async fn metadata(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let driver: DriverRecord = load(&state, &p, &id).await?;
    let mut m = match driver.metadata {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    m.insert("default_settings".into(), driver.default_settings);
    m.insert(
        "function_list".into(),
        Value::Object(function_list(&Value::Object(m.clone()))),
    );
    Ok(HttpResponse::Ok().json(m))
}

/// Restoring soft-deleted records and listing them is for admins.
pub(crate) fn require_admin(p: &Principal) -> Result<()> {
    if p.role().is_some_and(|r| r >= Role::Admin) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "only admins may see and restore deleted records".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_lists_keep_placeos_shape() {
        let meta = json!({"functions": [
            {"name": "power", "description": "on/off", "returns": {},
             "parameters": [{"name": "state", "schema": {"type": "boolean"}, "required": true}]},
            {"name": "input", "description": "", "returns": {},
             "parameters": [{"name": "to", "schema": {"type": "string"}, "required": true},
                            {"name": "delay", "schema": {"type": "integer"}, "required": false}]},
        ]});
        let l = function_list(&meta);
        assert_eq!(l["power"]["arity"], 1);
        assert_eq!(l["power"]["params"]["state"], json!({"type": "boolean"}));
        assert_eq!(l["input"]["order"], json!(["to", "delay"]));
        assert_eq!(l["input"]["required"], json!(["to"]));
    }

    #[test]
    fn arguments_must_be_an_array() {
        assert_eq!(arguments(b"  ").unwrap(), Vec::<Value>::new());
        assert_eq!(
            arguments(b"[1, true]").unwrap(),
            vec![json!(1), json!(true)]
        );
        let e = arguments(b"{\"a\":1}").unwrap_err().to_string();
        assert!(e.contains("an object"), "{e}");
        let e = arguments(b"[1,").unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }
}
