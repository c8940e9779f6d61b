//! Configuration resources under `/api/engine/v2`: list, create, show, update (merge, with
//! `version` for optimistic locking) and delete, always inside the caller's tenant (another
//! tenant's ids answer 404, like missing ones). What each kind adds (sealing secrets,
//! hashing passwords, redacting what a role may not read) is in its [`ApiResource`] impl.

use crate::auth::Authenticated;
use crate::routes::{list_options, paged};
use crate::{ApiError, AppState};
use actix_web::{HttpRequest, HttpResponse, web};
use lintel_auth::policy::{self, may_read_setting};
use lintel_auth::{NewApiKey, Principal, SealContext};
use lintel_model::{
    ApiKey, Broker, ControlSystem, DriverRecord, EncryptionLevel, IdKind, IdentityProvider,
    Metadata, Module, REDACTED, Record, Role, SealedValue, Settings, SettingsBody, Tenant, Trigger,
    User, Zone, new_id,
};
use lintel_store::StoreExt;
use serde_json::{Map, Value};
use std::collections::HashMap;

type Result<T> = std::result::Result<T, ApiError>;

/// Fields the server owns: a request may repeat their current value, never change it.
const SERVER_FIELDS: [&str; 4] = ["id", "tenant_id", "created_at", "updated_at"];

/// A record kind served as a REST resource.
pub trait ApiResource: Record {
    /// `?filter=` query parameters → store index names.
    const FILTERS: &'static [(&'static str, &'static str)] = &[];

    /// The record as the caller may see it.
    fn view(&self, _state: &AppState, _p: &Principal) -> Result<Value> {
        Ok(self.redacted())
    }

    /// Turn a request body (merged over the current record's view for an update) into
    /// the record to store; `current` is `None` on create.
    fn from_input(
        input: Map<String, Value>,
        _current: Option<&Self>,
        _state: &AppState,
        _p: &Principal,
    ) -> Result<Self> {
        from_map(input)
    }
}

/// A record from a JSON object. A field of the wrong type is a 400 naming the field (its
/// path), and so is a field the record does not have: nothing is silently dropped.
fn from_map<R: serde::de::DeserializeOwned>(input: Map<String, Value>) -> Result<R> {
    let mut unknown = Vec::new();
    let mut note = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let de = serde_ignored::Deserializer::new(Value::Object(input), &mut note);
    let record = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        ApiError::BadRequest(format!("invalid field `{path}`: {}", e.into_inner()))
    })?;
    if !unknown.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "unknown field(s): {}",
            unknown
                .iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(record)
}

fn body_object(body: &web::Bytes) -> Result<Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::BadRequest(
            "the body must be a JSON object".into(),
        )),
        Err(e) => Err(ApiError::BadRequest(format!("malformed JSON: {e}"))),
    }
}

fn not_found<R: Record>(id: &str) -> ApiError {
    ApiError::NotFound(format!("{} `{id}` not found", R::KIND))
}

async fn load<R: ApiResource>(state: &AppState, p: &Principal, id: &str) -> Result<R> {
    if !R::KIND.is_valid_id(id) {
        return Err(not_found::<R>(id));
    }
    state
        .store
        .get::<R>(&p.tenant_id, id)
        .await?
        .ok_or_else(|| not_found::<R>(id))
}

pub async fn list<R: ApiResource>(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    req: HttpRequest,
    params: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse> {
    let mut opts = list_options(&params)?;
    let mut filters = R::FILTERS.iter().filter(|(q, _)| params.contains_key(*q));
    if let Some((param, index)) = filters.next() {
        opts.index = Some((index.to_string(), params[*param].clone()));
    }
    if let Some((second, _)) = filters.next() {
        return Err(ApiError::BadRequest(format!(
            "filter by one of {} at a time (`{second}` too)",
            R::FILTERS
                .iter()
                .map(|(q, _)| format!("`{q}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    match params.get("deleted").map(String::as_str) {
        None | Some("false") => {}
        Some("true") => {
            crate::control::require_admin(&p)?;
            opts.deleted = true;
        }
        Some(_) => {
            return Err(ApiError::BadRequest(
                "`deleted` must be true or false".into(),
            ));
        }
    }
    let page = state.store.list::<R>(&p.tenant_id, opts.clone()).await?;
    let items = page
        .items
        .iter()
        .map(|r| r.view(&state, &p))
        .collect::<Result<Vec<_>>>()?;
    Ok(paged(
        &req,
        R::KIND,
        &opts,
        items.len(),
        page.total,
        page.next.as_deref(),
    )
    .json(items))
}

/// `POST /…/:id/restore` (admins): bring back a soft-deleted record until it is purged.
pub async fn restore<R: ApiResource>(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    crate::control::require_admin(&p)?;
    if !R::KIND.is_valid_id(&id) {
        return Err(not_found::<R>(&id));
    }
    let record = state
        .store
        .restore::<R>(&p.actor(), &p.tenant_id, &id)
        .await?;
    Ok(HttpResponse::Ok().json(record.view(&state, &p)?))
}

/// `?version=N`, as PlaceOS clients send it with every update (`0` = not known: the
/// `@placeos/ts-client` sends it for a record it has no version of).
fn version_param(params: &HashMap<String, String>) -> Result<Option<u64>> {
    match params.get("version") {
        None => Ok(None),
        Some(v) => match v.parse::<u64>() {
            Ok(0) => Ok(None),
            Ok(n) => Ok(Some(n)),
            Err(_) => Err(ApiError::BadRequest(format!(
                "`version` must be a whole number, got `{}`",
                v.chars().take(40).collect::<String>()
            ))),
        },
    }
}

/// A stale `?version=` is a 409 before anything is changed.
fn check_version<R: Record>(current: &R, wanted: Option<u64>) -> Result<()> {
    match wanted {
        Some(v) if v != current.version() => Err(ApiError::Conflict(format!(
            "version {v} is stale: the record is at version {}",
            current.version()
        ))),
        _ => Ok(()),
    }
}

pub async fn show<R: ApiResource>(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let record: R = load(&state, &p, &id).await?;
    Ok(HttpResponse::Ok().json(record.view(&state, &p)?))
}

pub async fn create<R: ApiResource>(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let input = new_input::<R>(&body, &p)?;
    let record = R::from_input(input, None, &state, &p)?;
    let created = state.store.create(&p.actor(), record).await?;
    Ok(HttpResponse::Created().json(created.view(&state, &p)?))
}

/// The current record with a PATCH body applied: `version`, if given, must be current
/// (else 409); server-owned fields may not change.
fn merge<R: Record>(current: &R, changes: Map<String, Value>) -> Result<Map<String, Value>> {
    let mut merged = match serde_json::to_value(current) {
        Ok(Value::Object(m)) => m,
        _ => return Err(ApiError::Internal("record is not an object".into())),
    };
    for (k, v) in changes {
        if k == "version" {
            match v.as_u64() {
                Some(v) if v == current.version() => {}
                Some(v) => {
                    return Err(ApiError::Conflict(format!(
                        "version {v} is stale: the record is at version {}",
                        current.version()
                    )));
                }
                None => return Err(ApiError::BadRequest("`version` must be a number".into())),
            }
            continue;
        }
        if SERVER_FIELDS.contains(&k.as_str()) {
            if merged.get(&k) != Some(&v) {
                return Err(ApiError::BadRequest(format!("`{k}` cannot be changed")));
            }
            continue;
        }
        merged.insert(k, v);
    }
    Ok(merged)
}

/// A create body with the server's fields filled in (and refused if the caller set them).
fn new_input<R: Record>(body: &web::Bytes, p: &Principal) -> Result<Map<String, Value>> {
    let mut input = body_object(body)?;
    for f in SERVER_FIELDS.iter().chain(&["version"]) {
        if input.remove(*f).is_some_and(|v| !v.is_null()) {
            return Err(ApiError::BadRequest(format!("`{f}` is set by the server")));
        }
    }
    input.insert("id".into(), Value::String(new_id(R::KIND)));
    input.insert("tenant_id".into(), Value::String(p.tenant_id.clone()));
    Ok(input)
}

pub async fn update<R: ApiResource>(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    id: web::Path<String>,
    params: web::Query<HashMap<String, String>>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let current: R = load(&state, &p, &id).await?;
    check_version(&current, version_param(&params)?)?;
    let merged = merge(&current, body_object(&body)?)?;
    let record = R::from_input(merged, Some(&current), &state, &p)?;
    let updated = state.store.update(&p.actor(), record).await?;
    Ok(HttpResponse::Ok().json(updated.view(&state, &p)?))
}

pub async fn delete<R: ApiResource>(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    id: web::Path<String>,
    params: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse> {
    let record: R = load(&state, &p, &id).await?;
    let version = version_param(&params)?;
    check_version(&record, version)?;
    state
        .store
        .delete::<R>(&p.actor(), &p.tenant_id, record.id(), version)
        .await?;
    Ok(HttpResponse::Accepted().finish())
}

impl ApiResource for Zone {
    const FILTERS: &'static [(&'static str, &'static str)] =
        &[("parent_id", "parent"), ("tags", "tag")];
}
impl ApiResource for ControlSystem {
    const FILTERS: &'static [(&'static str, &'static str)] =
        &[("zone_id", "zone"), ("module_id", "module")];
}
impl ApiResource for Module {
    const FILTERS: &'static [(&'static str, &'static str)] =
        &[("control_system_id", "system"), ("driver_id", "driver")];
}
impl ApiResource for DriverRecord {}
impl ApiResource for Metadata {
    const FILTERS: &'static [(&'static str, &'static str)] = &[("parent_id", "parent")];
}
impl ApiResource for Trigger {
    const FILTERS: &'static [(&'static str, &'static str)] = &[("control_system_id", "system")];
}

/// A settings record as the API shows it: `value` is the settings object, or
/// `"<redacted>"` when the caller's role may not read its encryption level back.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct SettingsView {
    id: String,
    tenant_id: String,
    /// The module, system, zone or driver the settings apply to.
    parent_id: String,
    encryption_level: EncryptionLevel,
    /// The settings object (write it as an object), or `"<redacted>"`.
    value: Value,
    created_at: i64,
    updated_at: i64,
    version: u64,
}

pub(crate) fn settings_view(state: &AppState, s: &Settings, p: &Principal) -> Result<Value> {
    let role = p.role().unwrap_or(Role::Staff);
    let view = SettingsView {
        id: s.id.clone(),
        tenant_id: s.tenant_id.clone(),
        parent_id: s.parent_id.clone(),
        encryption_level: s.encryption_level,
        value: setting_value(state, s, role)?,
        created_at: s.created_at,
        updated_at: s.updated_at,
        version: s.version,
    };
    serde_json::to_value(view).map_err(|e| ApiError::Internal(e.to_string()))
}

/// A JSON array of [`SettingsView`].
pub(crate) fn settings_list_schema(
    s: &mut crate::endpoints::Schemas,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    let item = crate::endpoints::schema::<SettingsView>(s);
    utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Array(
        utoipa::openapi::schema::ArrayBuilder::new()
            .items(item)
            .build(),
    ))
}

/// A user as the API shows it: the record without its password hash, and whether it has
/// a password. `password` may be written (create, update), never read.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // the schema of `User::view`
pub(crate) struct UserView {
    #[schema(inline)]
    #[serde(flatten)]
    user: User,
    has_password: bool,
    /// Write only: a new password (12 characters or more), hashed with scrypt.
    password: Option<String>,
}

/// The settings value a role may see: plain, opened, or `"<redacted>"`.
fn setting_value(state: &AppState, s: &Settings, role: Role) -> Result<Value> {
    match &s.body {
        SettingsBody::Plain(v) => Ok(v.clone()),
        SettingsBody::Sealed(_) if !may_read_setting(role, s.encryption_level) => {
            Ok(Value::String(REDACTED.into()))
        }
        SettingsBody::Sealed(_) => Ok(state.keyring.current().open_settings(s)?),
    }
}

impl ApiResource for Settings {
    const FILTERS: &'static [(&'static str, &'static str)] = &[("parent_id", "parent")];

    fn view(&self, state: &AppState, p: &Principal) -> Result<Value> {
        settings_view(state, self, p)
    }

    /// `{parent_id, encryption_level, value}`: the value is sealed unless the level is
    /// `none`. An update that leaves `value` as `"<redacted>"` keeps the stored value.
    fn from_input(
        mut input: Map<String, Value>,
        current: Option<&Self>,
        state: &AppState,
        p: &Principal,
    ) -> Result<Self> {
        let level: EncryptionLevel = match input.remove("encryption_level") {
            None | Some(Value::Null) => current.map(|c| c.encryption_level).unwrap_or_default(),
            Some(v) => serde_json::from_value(v).map_err(|_| {
                ApiError::BadRequest(
                    "`encryption_level` must be none, support, admin or never_display".into(),
                )
            })?,
        };
        let role = p.role().unwrap_or(Role::Staff);
        // Nobody may write a level they could not read back (never_display: admins).
        let may_write = match level {
            EncryptionLevel::NeverDisplay => role >= Role::Admin,
            l => may_read_setting(role, l),
        };
        if !may_write {
            return Err(ApiError::Forbidden(format!(
                "your role may not write settings at level `{}`",
                serde_json::to_value(level)
                    .unwrap_or_default()
                    .as_str()
                    .unwrap_or("?")
            )));
        }
        let value = input.remove("value");
        let id = input
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let tenant_id = p.tenant_id.clone();
        let body = match (value, current) {
            (Some(Value::String(s)), Some(c)) if s == REDACTED => {
                if c.encryption_level != level {
                    return Err(ApiError::BadRequest(
                        "changing `encryption_level` needs the `value` too".into(),
                    ));
                }
                c.body.clone()
            }
            (None, Some(c)) if c.encryption_level == level => c.body.clone(),
            (None, Some(_)) => {
                return Err(ApiError::BadRequest(
                    "changing `encryption_level` needs the `value` too".into(),
                ));
            }
            (None, None) => return Err(ApiError::BadRequest("`value` is required".into())),
            (Some(v), _) if !v.is_object() => {
                return Err(ApiError::BadRequest("`value` must be a JSON object".into()));
            }
            (Some(v), _) if level == EncryptionLevel::None => SettingsBody::Plain(v),
            (Some(v), _) => {
                SettingsBody::Sealed(state.keyring.current().seal_settings(&tenant_id, &id, &v)?)
            }
        };
        input.insert(
            "encryption_level".into(),
            serde_json::to_value(level).unwrap_or_default(),
        );
        input.insert(
            "body".into(),
            serde_json::to_value(&body).map_err(|e| ApiError::Internal(e.to_string()))?,
        );
        from_map(input)
    }
}

/// Roles a caller may hand out: never above their own.
fn check_grantable(p: &Principal, roles: &[Role]) -> Result<()> {
    let mine = p.role().unwrap_or(Role::Staff);
    match roles.iter().find(|r| **r > mine) {
        Some(r) => Err(ApiError::Forbidden(format!(
            "you may not grant the role `{}`",
            serde_json::to_value(r)
                .unwrap_or_default()
                .as_str()
                .unwrap_or("?")
        ))),
        None => Ok(()),
    }
}

impl ApiResource for User {
    const FILTERS: &'static [(&'static str, &'static str)] = &[("email", "email")];

    fn view(&self, _state: &AppState, _p: &Principal) -> Result<Value> {
        let mut v = self.redacted();
        if let Some(m) = v.as_object_mut() {
            m.remove("password_hash");
            m.insert(
                "has_password".into(),
                Value::Bool(self.password_hash.is_some()),
            );
        }
        Ok(v)
    }

    /// `password` (write only) is hashed; roles above the caller's are refused.
    fn from_input(
        mut input: Map<String, Value>,
        current: Option<&Self>,
        _state: &AppState,
        p: &Principal,
    ) -> Result<Self> {
        input.remove("has_password");
        // Hashes are never written directly: `password` is hashed by the handler.
        input.remove("password_hash");
        let mut user: User = from_map(input)?;
        user.password_hash = current.and_then(|c| c.password_hash.clone());
        if current.is_none_or(|c| c.roles != user.roles) {
            check_grantable(p, &user.roles)?;
            if let Some(c) = current {
                check_grantable(p, &c.roles)?;
            }
        }
        Ok(user)
    }
}

/// `POST /users` and `PATCH /users/:id` accept `password` (write only), hashed here with
/// scrypt (bounded concurrency).
async fn take_password(state: &AppState, input: &mut Map<String, Value>) -> Result<Option<String>> {
    match input.remove("password") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(pw)) => {
            if pw.chars().count() < 12 || pw.len() > lintel_auth::MAX_PASSWORD_BYTES {
                return Err(ApiError::BadRequest(format!(
                    "`password` must be 12 characters to {} bytes",
                    lintel_auth::MAX_PASSWORD_BYTES
                )));
            }
            Ok(Some(state.passwords.hash(&pw).await?))
        }
        Some(_) => Err(ApiError::BadRequest("`password` must be a string".into())),
    }
}

/// Email addresses are unique within a tenant (case-insensitively): sign-in and
/// single-sign-on linking find users by them.
async fn check_email_free(state: &AppState, p: &Principal, user: &User) -> Result<()> {
    let same = lintel_auth::users_by_email(state.store.as_ref(), &p.tenant_id, &user.email).await?;
    if same.iter().any(|u| u.id != user.id) {
        return Err(ApiError::Conflict(format!(
            "another user already has the email `{}`",
            user.email
        )));
    }
    Ok(())
}

pub async fn create_user(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let mut input = new_input::<User>(&body, &p)?;
    let hash = take_password(&state, &mut input).await?;
    let mut user = User::from_input(input, None, &state, &p)?;
    user.password_hash = hash;
    check_email_free(&state, &p, &user).await?;
    let created = state.store.create(&p.actor(), user).await?;
    Ok(HttpResponse::Created().json(created.view(&state, &p)?))
}

/// Changing a password or disabling a user ends their sessions.
pub async fn update_user(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    id: web::Path<String>,
    params: web::Query<HashMap<String, String>>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let current: User = load(&state, &p, &id).await?;
    check_version(&current, version_param(&params)?)?;
    check_grantable(&p, &current.roles)?;
    let mut changes = body_object(&body)?;
    let hash = take_password(&state, &mut changes).await?;
    let merged = merge(&current, changes)?;
    let mut user = User::from_input(merged, Some(&current), &state, &p)?;
    let password_changed = hash.is_some();
    if hash.is_some() {
        user.password_hash = hash;
    }
    if !user.email.eq_ignore_ascii_case(&current.email) {
        check_email_free(&state, &p, &user).await?;
    }
    let disabled = user.disabled && !current.disabled;
    let updated = state.store.update(&p.actor(), user).await?;
    if password_changed || disabled {
        state
            .sessions
            .revoke_all(
                &p.tenant_id,
                &updated.id,
                "password changed or account disabled",
            )
            .await?;
    }
    Ok(HttpResponse::Ok().json(updated.view(&state, &p)?))
}

pub async fn current_user(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
) -> Result<HttpResponse> {
    if !IdKind::User.is_valid_id(&p.user_id) {
        return Err(ApiError::NotFound("this API key acts for no user".into()));
    }
    let user: User = state
        .store
        .get(&p.tenant_id, &p.user_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("user not found".into()))?;
    Ok(HttpResponse::Ok().json(user.view(&state, &p)?))
}

impl ApiResource for ApiKey {
    const FILTERS: &'static [(&'static str, &'static str)] = &[("user_id", "user")];

    fn view(&self, _state: &AppState, _p: &Principal) -> Result<Value> {
        let mut v = self.redacted();
        if let Some(m) = v.as_object_mut() {
            m.remove("secret_hash");
        }
        Ok(v)
    }

    /// Name, description and scopes may change; the role only downwards to a grantable
    /// one; the secret never.
    fn from_input(
        mut input: Map<String, Value>,
        current: Option<&Self>,
        _state: &AppState,
        p: &Principal,
    ) -> Result<Self> {
        let Some(current) = current else {
            return Err(ApiError::Internal(
                "API keys are created by create_api_key".into(),
            ));
        };
        input.insert(
            "secret_hash".into(),
            Value::String(current.secret_hash.clone()),
        );
        let key: ApiKey = from_map(input)?;
        if key.revoked_at != current.revoked_at || key.last_used_at != current.last_used_at {
            return Err(ApiError::BadRequest(
                "`revoked_at` and `last_used_at` are set by the server (DELETE revokes)".into(),
            ));
        }
        check_grantable(p, &[key.role])?;
        check_scopes(&key.scopes)?;
        Ok(key)
    }
}

fn check_scopes(scopes: &[String]) -> Result<()> {
    match scopes.iter().find(|s| !policy::is_known_scope(s)) {
        Some(s) => Err(ApiError::BadRequest(format!(
            "unknown scope `{s}` (use `<resource>` or `<resource>.read|write`)"
        ))),
        None => Ok(()),
    }
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewKeyBody {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    role: Option<Role>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    expires_at: Option<i64>,
    /// Act for this user (audit actor; the key never outranks them). Default: the caller.
    #[serde(default)]
    user_id: Option<String>,
}

/// `POST /api_keys`: the secret is in this response only (`x_api_key`).
pub async fn create_api_key(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let b: NewKeyBody = body_object(&body).and_then(from_map)?;
    let role = b.role.unwrap_or(Role::Staff);
    check_grantable(&p, &[role])?;
    check_scopes(&b.scopes)?;
    let user_id = match b.user_id {
        Some(u) => {
            load::<User>(&state, &p, &u).await?;
            Some(u)
        }
        None => IdKind::User
            .is_valid_id(&p.user_id)
            .then(|| p.user_id.clone()),
    };
    let (key, secret) = state
        .api_keys
        .create(
            &p.actor(),
            &p.tenant_id,
            NewApiKey {
                name: b.name,
                description: b.description,
                user_id,
                role,
                scopes: b.scopes,
                expires_at: b.expires_at,
            },
        )
        .await?;
    let mut v = key.view(&state, &p)?;
    v["x_api_key"] = Value::String(secret);
    Ok(HttpResponse::Created()
        .insert_header(("Cache-Control", "no-store"))
        .json(v))
}

/// `DELETE /api_keys/:id`: revoke (it stops working at once), then remove.
pub async fn delete_api_key(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let key: ApiKey = load(&state, &p, &id).await?;
    state
        .api_keys
        .revoke(&p.actor(), &p.tenant_id, &key.id)
        .await?;
    state
        .store
        .delete::<ApiKey>(&p.actor(), &p.tenant_id, &key.id, None)
        .await?;
    Ok(HttpResponse::Accepted().finish())
}

/// A write-only sealed field of a request body (`given`, taken out of it): a string is
/// sealed by `seal` (1–`max` bytes), `true` or absent keeps the stored value, `null` or
/// `false` clears it. An update's body is merged over the stored record, so the stored
/// sealed value itself also keeps it; any other value is refused, naming the field.
fn sealed_input(
    field: &str,
    given: Option<Value>,
    current: Option<&SealedValue>,
    max: usize,
    seal: impl FnOnce(&str) -> Result<SealedValue>,
) -> Result<Option<SealedValue>> {
    match given {
        Some(Value::String(s)) => {
            if s.is_empty() || s.len() > max {
                return Err(ApiError::BadRequest(format!(
                    "`{field}` must be 1–{max} bytes"
                )));
            }
            seal(&s).map(Some)
        }
        None | Some(Value::Bool(true)) => Ok(current.cloned()),
        Some(Value::Null) | Some(Value::Bool(false)) => Ok(None),
        Some(v) if current.is_some_and(|c| serde_json::to_value(c).is_ok_and(|c| c == v)) => {
            Ok(current.cloned())
        }
        Some(_) => Err(ApiError::BadRequest(format!(
            "`{field}` must be a string (to set), true (to keep) or null (to clear)"
        ))),
    }
}

impl ApiResource for IdentityProvider {
    fn view(&self, _state: &AppState, _p: &Principal) -> Result<Value> {
        let mut v = self.redacted();
        v["client_secret"] = Value::Bool(self.client_secret.is_some());
        Ok(v)
    }

    /// `client_secret`: a string to seal, `true`/absent to keep, `null`/`false` to clear.
    fn from_input(
        mut input: Map<String, Value>,
        current: Option<&Self>,
        state: &AppState,
        _p: &Principal,
    ) -> Result<Self> {
        let given = input.remove("client_secret");
        let mut idp: IdentityProvider = from_map(input)?;
        let stored = current.and_then(|c| c.client_secret.as_ref());
        let secret = sealed_input("client_secret", given, stored, 4096, |s| {
            Ok(state.oidc.seal_client_secret(&idp, s)?)
        })?;
        idp.client_secret = secret;
        Ok(idp)
    }
}

impl ApiResource for Broker {
    /// With the live connection `state` (`null` when disabled or MQTT is off): read-only,
    /// and ignored when a client sends the record back.
    fn view(&self, state: &AppState, _p: &Principal) -> Result<Value> {
        let mut v = self.redacted();
        v["password"] = Value::Bool(self.password.is_some());
        v["state"] = state
            .mqtt
            .as_ref()
            .and_then(|m| m.broker_state(&self.tenant_id, &self.id))
            .map_or(Value::Null, |s| {
                serde_json::to_value(s).unwrap_or(Value::Null)
            });
        Ok(v)
    }

    /// `password`: a string to seal, `true`/absent to keep, `null`/`false` to clear.
    fn from_input(
        mut input: Map<String, Value>,
        current: Option<&Self>,
        state: &AppState,
        _p: &Principal,
    ) -> Result<Self> {
        let given = input.remove("password");
        input.remove("state");
        let mut broker: Broker = from_map(input)?;
        let stored = current.and_then(|c| c.password.as_ref());
        let password = sealed_input("password", given, stored, 1024, |s| {
            let ctx = SealContext::broker_password(&broker.tenant_id, &broker.id);
            Ok(state.keyring.current().seal(&ctx, s.as_bytes())?)
        })?;
        broker.password = password;
        Ok(broker)
    }
}

/// `GET /tenants`: sysadmins see every tenant; others their own.
pub async fn list_tenants(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    req: HttpRequest,
    params: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse> {
    let opts = list_options(&params)?;
    if p.role() == Some(Role::Sysadmin) {
        let page = state
            .store
            .list_scoped::<Tenant>(None, opts.clone())
            .await?;
        return Ok(paged(
            &req,
            IdKind::Tenant,
            &opts,
            page.items.len(),
            page.total,
            page.next.as_deref(),
        )
        .json(page.items));
    }
    let own: Tenant = state.store.require(&p.tenant_id, &p.tenant_id).await?;
    Ok(paged(&req, IdKind::Tenant, &opts, 1, 1, None).json([own]))
}

/// `GET /tenants/:id`: a tenant other than the caller's is a 404 unless they are sysadmin.
pub async fn show_tenant(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    if *id != p.tenant_id && p.role() != Some(Role::Sysadmin) || !IdKind::Tenant.is_valid_id(&id) {
        return Err(not_found::<Tenant>(&id));
    }
    let t: Tenant = state
        .store
        .get(&id, &id)
        .await?
        .ok_or_else(|| not_found::<Tenant>(&id))?;
    Ok(HttpResponse::Ok().json(t))
}

/// `POST /tenants` (sysadmin): a new tenant, owning itself.
pub async fn create_tenant(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let mut input = body_object(&body)?;
    let id = new_id(IdKind::Tenant);
    input.insert("id".into(), Value::String(id));
    let tenant: Tenant = from_map(input)?;
    if crate::auth::tenant_by_domain(&state, &tenant.domain)
        .await?
        .is_some()
    {
        return Err(ApiError::Conflict(format!(
            "domain `{}` belongs to another tenant",
            tenant.domain
        )));
    }
    let created = state.store.create(&p.actor(), tenant).await?;
    Ok(HttpResponse::Created().json(created))
}

/// `GET /audit` (`?record_id=`): the tenant's audit trail, oldest first.
pub async fn audit(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    req: HttpRequest,
    params: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse> {
    let mut opts = list_options(&params)?;
    // As `StoreExt::audit_log`, with `offset` honoured too (the `Link` header uses it).
    if let Some(record) = params.get("record_id") {
        opts.index = Some(("record".into(), record.clone()));
    }
    let page = state
        .store
        .list::<lintel_model::AuditEntry>(&p.tenant_id, opts.clone())
        .await?;
    Ok(paged(
        &req,
        IdKind::Audit,
        &opts,
        page.items.len(),
        page.total,
        page.next.as_deref(),
    )
    .json(page.items))
}
