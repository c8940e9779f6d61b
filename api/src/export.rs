//! BI export (`docs/bi.md`): the tenant's live state and its inventory (zones, systems,
//! modules) as a JSON array, NDJSON or CSV, for Power BI, pandas and spreadsheets.
//!
//! Responses are streamed: state system by system, inventory one store page at a time, so
//! memory stays bounded by the largest system (or page), not by the tenant. Everything that
//! can be refused (format, filters, permissions) is checked before the first byte; a
//! failure after that aborts the transfer, so a client never takes a cut-short export for
//! a complete one.

use crate::auth::Authenticated;
use crate::endpoints::{Access as RouteAccess, Endpoint, Reply, V2};
use crate::{ApiError, AppState};
use actix_web::http::{Method, header};
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use lintel_auth::{Access, Action, Resource};
use lintel_engine::EngineError;
use lintel_model::{ControlSystem, DriverRecord, IdKind, Module, Record, Zone, now_unix};
use lintel_store::{ListOptions, StoreExt};
use serde::Serialize;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};

type Result<T> = std::result::Result<T, ApiError>;

/// The export routes, for [`crate::endpoints`]' table (`t.extend(export::endpoints())`).
/// State also needs `systems.read`, and each inventory table its own resource's read:
/// both are checked in the handlers (a scoped API key may have one without the other).
pub(crate) fn endpoints() -> Vec<Endpoint> {
    const TYPES: &[&str] = &["application/json", "application/x-ndjson", "text/csv"];
    const FORMAT: (&str, &str) = (
        "format",
        "json, ndjson or csv (else the `Accept` header decides; default json)",
    );
    let signed = |r: Resource| RouteAccess::Signed(Some((r, Action::Read)));
    vec![
        Endpoint::new(
            Method::GET,
            format!("{V2}/export/state"),
            signed(Resource::State),
            "export",
            "Live state of the running modules, one row per (system, module, status key), \
             streamed as JSON, NDJSON or CSV (also needs systems.read; see docs/bi.md)",
            || web::get().to(export_state),
        )
        .reply(Reply::Other(
            200,
            TYPES,
            "rows of system_id, system_name, module_id, module, driver_id, driver, key, \
             value (JSON-encoded in CSV), zone_ids, exported_at",
        ))
        .query(&[
            FORMAT,
            (
                "zone_id",
                "only systems in these zones (repeat, or comma-separate)",
            ),
            (
                "system_id",
                "only these systems (repeat, or comma-separate)",
            ),
            (
                "driver_id",
                "only modules of these drivers (repeat, or comma-separate)",
            ),
            (
                "key",
                "only these status keys (repeat; never split on commas)",
            ),
        ]),
        Endpoint::new(
            Method::GET,
            format!("{V2}/export/inventory"),
            signed(Resource::Systems),
            "export",
            "Zones, systems and modules, streamed as JSON, NDJSON or CSV (each table also \
             needs its own read permission; see docs/bi.md)",
            || web::get().to(export_inventory),
        )
        .reply(Reply::Other(
            200,
            TYPES,
            "one table's rows, or (JSON, NDJSON) every table's",
        ))
        .query(&[
            FORMAT,
            (
                "type",
                "systems, modules or zones (required with CSV; else every table)",
            ),
        ]),
    ]
}

/// Systems (or records) read from the store per page.
const PAGE: usize = 100;
/// Most values one filter parameter may list.
const MAX_FILTER_VALUES: usize = 100;
/// Longest status key (the engine's limit).
const MAX_KEY_BYTES: usize = 128;
/// Separator of list cells in CSV (`zone_ids`, `tags`, …).
const LIST_SEPARATOR: &str = ";";

// ---------------------------------------------------------------------------------------
// Formats

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Ndjson,
    Csv,
}

impl Format {
    fn from_param(s: &str) -> Option<Format> {
        match s.to_ascii_lowercase().as_str() {
            "json" => Some(Format::Json),
            "ndjson" | "jsonl" => Some(Format::Ndjson),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }

    fn from_media_type(m: &str) -> Option<Format> {
        match m {
            "application/json" => Some(Format::Json),
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" => {
                Some(Format::Ndjson)
            }
            "text/csv" => Some(Format::Csv),
            _ => None,
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8; header=present",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Ndjson => "ndjson",
            Format::Csv => "csv",
        }
    }
}

/// The response format: `?format=` if given (anything else than json, ndjson or csv is a
/// 400), else the best supported type in `Accept` (highest `q`, then the most specific),
/// else JSON. An `Accept` naming nothing supported also gets JSON.
fn negotiate(format: Option<&str>, accept: Option<&str>) -> Result<Format> {
    if let Some(f) = format {
        return Format::from_param(f).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "`format` must be json, ndjson or csv, got `{}`",
                shown(f)
            ))
        });
    }
    // (q, specificity, position): higher q wins, then the more specific range, then the first.
    let mut best: Option<(f32, u8, std::cmp::Reverse<usize>, Format)> = None;
    for (i, range) in accept.unwrap_or_default().split(',').enumerate() {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let mut q = 1.0_f32;
        let mut valid = true;
        for p in parts {
            if let Some((k, v)) = p.split_once('=')
                && k.trim().eq_ignore_ascii_case("q")
            {
                match v.trim().parse::<f32>() {
                    Ok(v) if (0.0..=1.0).contains(&v) => q = v,
                    _ => valid = false,
                }
            }
        }
        if !valid || q <= 0.0 {
            continue;
        }
        let (format, specificity) = match media.as_str() {
            "*/*" => (Format::Json, 0),
            "application/*" => (Format::Json, 1),
            "text/*" => (Format::Csv, 1),
            m => match Format::from_media_type(m) {
                Some(f) => (f, 2),
                None => continue,
            },
        };
        let rank = (q, specificity, std::cmp::Reverse(i), format);
        if best.is_none_or(|b| (rank.0, rank.1, rank.2) > (b.0, b.1, b.2)) {
            best = Some(rank);
        }
    }
    Ok(best.map_or(Format::Json, |b| b.3))
}

// ---------------------------------------------------------------------------------------
// Query parameters

/// A value as an error message shows it: at most 40 characters.
fn shown(v: &str) -> String {
    v.chars().take(40).collect()
}

fn query_pairs(req: &HttpRequest) -> Result<Vec<(String, String)>> {
    serde_urlencoded::from_str(req.query_string())
        .map_err(|e| ApiError::BadRequest(format!("bad query string: {e}")))
}

fn unknown_param(name: &str, known: &[&str]) -> ApiError {
    ApiError::BadRequest(format!(
        "unknown parameter `{}` (this export takes {})",
        shown(name),
        known
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

fn set_once(slot: &mut Option<String>, name: &str, value: &str) -> Result<()> {
    if slot.is_some() {
        return Err(ApiError::BadRequest(format!(
            "`{name}` may be given only once"
        )));
    }
    *slot = Some(value.to_owned());
    Ok(())
}

fn push_value(list: &mut Vec<String>, name: &str, value: &str) -> Result<()> {
    if !list.iter().any(|v| v == value) {
        if list.len() == MAX_FILTER_VALUES {
            return Err(ApiError::BadRequest(format!(
                "`{name}` lists more than {MAX_FILTER_VALUES} values"
            )));
        }
        list.push(value.to_owned());
    }
    Ok(())
}

/// `zone_id=zone-a&zone_id=zone-b` or `zone_id=zone-a,zone-b` (ids never hold a comma).
fn push_ids(list: &mut Vec<String>, name: &str, value: &str, kind: IdKind) -> Result<()> {
    for id in value.split(',').map(str::trim) {
        if !kind.is_valid_id(id) {
            return Err(ApiError::BadRequest(format!(
                "`{name}` must list {} ids (`{}-…`), got `{}`",
                kind.name(),
                kind.prefix(),
                shown(id)
            )));
        }
        push_value(list, name, id)?;
    }
    Ok(())
}

/// `key=power&key=volume`: repeated only, never split (a status key may hold a comma).
fn push_key(list: &mut Vec<String>, value: &str) -> Result<()> {
    if value.is_empty() || value.len() > MAX_KEY_BYTES || value.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!(
            "`key` must be a status key (1–{MAX_KEY_BYTES} bytes, no control characters), got `{}`",
            shown(value)
        )));
    }
    push_value(list, "key", value)
}

/// `GET /export/state`'s parameters. Values of one filter are alternatives (any of them);
/// different filters must all hold.
#[derive(Debug, Default, PartialEq)]
struct StateQuery {
    format: Option<String>,
    zones: Vec<String>,
    systems: Vec<String>,
    drivers: Vec<String>,
    keys: Vec<String>,
}

const STATE_PARAMS: &[&str] = &["format", "zone_id", "system_id", "driver_id", "key"];

fn parse_state_query(pairs: &[(String, String)]) -> Result<StateQuery> {
    let mut q = StateQuery::default();
    for (name, value) in pairs {
        match name.as_str() {
            "format" => set_once(&mut q.format, name, value)?,
            "zone_id" => push_ids(&mut q.zones, name, value, IdKind::Zone)?,
            "system_id" => push_ids(&mut q.systems, name, value, IdKind::System)?,
            "driver_id" => push_ids(&mut q.drivers, name, value, IdKind::Driver)?,
            "key" => push_key(&mut q.keys, value)?,
            // Read by the `Authenticated` extractor (downloads from a browser).
            "bearer_token" => {}
            other => return Err(unknown_param(other, STATE_PARAMS)),
        }
    }
    Ok(q)
}

/// An inventory table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    Zones,
    Systems,
    Modules,
}

impl Table {
    const ALL: [Table; 3] = [Table::Zones, Table::Systems, Table::Modules];

    fn name(self) -> &'static str {
        match self {
            Table::Zones => "zones",
            Table::Systems => "systems",
            Table::Modules => "modules",
        }
    }

    /// The `type` of an NDJSON line when several tables share the stream.
    fn row_type(self) -> &'static str {
        match self {
            Table::Zones => "zone",
            Table::Systems => "system",
            Table::Modules => "module",
        }
    }

    fn resource(self) -> Resource {
        match self {
            Table::Zones => Resource::Zones,
            Table::Systems => Resource::Systems,
            Table::Modules => Resource::Modules,
        }
    }

    fn columns(self) -> &'static [&'static str] {
        match self {
            Table::Zones => ZoneRow::COLUMNS,
            Table::Systems => SystemRow::COLUMNS,
            Table::Modules => ModuleRow::COLUMNS,
        }
    }
}

#[derive(Debug, Default, PartialEq)]
struct InventoryQuery {
    format: Option<String>,
    table: Option<Table>,
}

const INVENTORY_PARAMS: &[&str] = &["format", "type"];

fn parse_inventory_query(pairs: &[(String, String)]) -> Result<InventoryQuery> {
    let mut q = InventoryQuery::default();
    let mut table = None;
    for (name, value) in pairs {
        match name.as_str() {
            "format" => set_once(&mut q.format, name, value)?,
            "type" => set_once(&mut table, name, value)?,
            "bearer_token" => {}
            other => return Err(unknown_param(other, INVENTORY_PARAMS)),
        }
    }
    if let Some(t) = table {
        let found = Table::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(&t));
        q.table = Some(found.ok_or_else(|| {
            ApiError::BadRequest(format!(
                "`type` must be systems, modules or zones, got `{}`",
                shown(&t)
            ))
        })?);
    }
    Ok(q)
}

// ---------------------------------------------------------------------------------------
// Encoding

/// Spreadsheet formula-injection guard (OWASP "CSV injection"): a cell starting with `=`,
/// `+`, `-`, `@`, a tab or a carriage return gets a leading `'`, so Excel, LibreOffice and
/// Google Sheets show it as text instead of evaluating it. A plain number (`-3.5`, `+2e3`)
/// is left as it is: it cannot be a formula, and guarding it would turn readings into text.
fn guard_cell(cell: &str) -> Cow<'_, str> {
    match cell.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') if !is_plain_number(cell) => {
            Cow::Owned(format!("'{cell}"))
        }
        _ => Cow::Borrowed(cell),
    }
}

/// `[+-]digits[.digits][(e|E)[+-]digits]`, nothing else.
fn is_plain_number(s: &str) -> bool {
    fn digits(b: &[u8], i: &mut usize) -> bool {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > start
    }
    let b = s.as_bytes();
    let mut i = 0;
    if matches!(b.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    if !digits(b, &mut i) {
        return false;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if !digits(b, &mut i) {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(b, &mut i) {
            return false;
        }
    }
    i == b.len()
}

/// One exported row: JSON (and NDJSON) through `Serialize`, CSV through [`Self::cells`].
trait ExportRow: Serialize {
    const COLUMNS: &'static [&'static str];
    /// The CSV cells, in [`Self::COLUMNS`] order, before the formula guard.
    fn cells(&self) -> Vec<String>;
}

fn csv_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(format!("CSV encoding: {e}"))
}

fn json_error(e: serde_json::Error) -> ApiError {
    ApiError::Internal(format!("JSON encoding: {e}"))
}

/// CSV records, RFC 4180: CRLF line ends, fields quoted when they hold a comma, quote or
/// line break (quotes doubled), every cell through [`guard_cell`].
fn write_csv<I, S>(out: &mut Vec<u8>, records: I) -> Result<()>
where
    I: IntoIterator<Item = Vec<S>>,
    S: AsRef<str>,
{
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .quote_style(csv::QuoteStyle::Necessary)
        .from_writer(out);
    for record in records {
        w.write_record(record.iter().map(|c| guard_cell(c.as_ref()).into_owned()))
            .map_err(csv_error)?;
    }
    w.flush().map_err(csv_error)
}

/// Encodes rows into response chunks: a JSON array's brackets and commas, NDJSON lines,
/// or CSV records after one header.
struct Encoder {
    format: Format,
    /// Rows written into the current JSON array (for the commas).
    in_array: u64,
    /// NDJSON lines carry `"type": …` when several tables share the stream.
    row_type: Option<&'static str>,
}

impl Encoder {
    fn new(format: Format) -> Self {
        Encoder {
            format,
            in_array: 0,
            row_type: None,
        }
    }

    /// What precedes a one-table stream's rows: `[`, the CSV header, or nothing.
    fn open(&mut self, out: &mut Vec<u8>, columns: &[&str]) -> Result<()> {
        self.in_array = 0;
        match self.format {
            Format::Json => out.push(b'['),
            Format::Csv => write_csv(out, [columns.to_vec()])?,
            Format::Ndjson => {}
        }
        Ok(())
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if self.format == Format::Json {
            out.push(b']');
        }
    }

    fn rows<R: ExportRow>(&mut self, out: &mut Vec<u8>, rows: &[R]) -> Result<()> {
        match self.format {
            Format::Csv => write_csv(out, rows.iter().map(ExportRow::cells))?,
            Format::Json => {
                for r in rows {
                    if self.in_array > 0 {
                        out.push(b',');
                    }
                    self.in_array += 1;
                    serde_json::to_writer(&mut *out, r).map_err(json_error)?;
                }
            }
            Format::Ndjson => {
                for r in rows {
                    let line = serde_json::to_vec(r).map_err(json_error)?;
                    match self.row_type {
                        // `{"type":"zone",` + the row's fields (rows are non-empty objects).
                        Some(t) if line.len() > 2 => {
                            out.extend_from_slice(b"{\"type\":");
                            serde_json::to_writer(&mut *out, t).map_err(json_error)?;
                            out.push(b',');
                            out.extend_from_slice(&line[1..]);
                        }
                        _ => out.extend_from_slice(&line),
                    }
                    out.push(b'\n');
                }
            }
        }
        Ok(())
    }
}

fn cell_opt(v: &Option<String>) -> String {
    v.clone().unwrap_or_default()
}

fn cell_list(v: &[String]) -> String {
    v.join(LIST_SEPARATOR)
}

/// Seconds since the epoch as RFC 3339 UTC (`2026-03-01T09:30:00Z`).
fn rfc3339(secs: i64) -> String {
    // Howard Hinnant's days-to-civil algorithm.
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A chunk stream (ends after an error, which aborts the transfer).
type Chunks = futures_util::stream::LocalBoxStream<'static, Result<Bytes>>;

/// A streamed response of the format's type: never cached, never sniffed; CSV as a download.
fn stream_response(format: Format, name: &str, chunks: Chunks) -> HttpResponse {
    let mut res = HttpResponse::Ok();
    res.content_type(format.content_type())
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
    if format == Format::Csv {
        res.insert_header((
            header::CONTENT_DISPOSITION,
            format!(
                "attachment; filename=\"lintel-{name}.{}\"",
                format.extension()
            ),
        ));
    }
    res.streaming(chunks)
}

/// The stream of an exporter's chunks; after an error it ends (the transfer is aborted).
macro_rules! chunk_stream {
    ($export:expr) => {
        Box::pin(futures_util::stream::unfold(Some($export), |ex| async move {
            let mut ex = ex?;
            match ex.next_chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(ex))),
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(tenant = %ex.tenant, error = %e, "export aborted");
                    Some((Err(e), None))
                }
            }
        }))
    };
}

// ---------------------------------------------------------------------------------------
// State

/// One status key of one module in one system.
#[derive(Debug, Serialize)]
struct StateRow {
    system_id: String,
    system_name: String,
    module_id: String,
    /// As the system addresses it: `Display_1`.
    module: String,
    driver_id: String,
    /// The driver's name.
    driver: String,
    key: String,
    value: Value,
    zone_ids: Vec<String>,
    exported_at: String,
}

impl ExportRow for StateRow {
    const COLUMNS: &'static [&'static str] = &[
        "system_id",
        "system_name",
        "module_id",
        "module",
        "driver_id",
        "driver",
        "key",
        "value",
        "zone_ids",
        "exported_at",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.system_id.clone(),
            self.system_name.clone(),
            self.module_id.clone(),
            self.module.clone(),
            self.driver_id.clone(),
            self.driver.clone(),
            self.key.clone(),
            // JSON-encoded: `"on"`, `21.5`, `true`, `{"a":1}`, `null`.
            self.value.to_string(),
            cell_list(&self.zone_ids),
            self.exported_at.clone(),
        ]
    }
}

/// The systems a state export walks, one at a time.
enum Systems {
    /// `system_id` was given: those systems, in the order given.
    Ids(VecDeque<String>),
    /// Every system of the tenant, or of each `zone_id` in turn, a store page at a time
    /// (cursor paging: stable while systems are added).
    Listing {
        zones: Vec<String>,
        zone: usize,
        after: Option<String>,
        page: VecDeque<ControlSystem>,
        /// The index in `zones` of the zone `page` was listed for.
        page_zone: usize,
        exhausted: bool,
    },
}

impl Systems {
    fn new(q: &StateQuery) -> Self {
        if q.systems.is_empty() {
            Systems::Listing {
                zones: q.zones.clone(),
                zone: 0,
                after: None,
                page: VecDeque::new(),
                page_zone: 0,
                exhausted: false,
            }
        } else {
            Systems::Ids(q.systems.iter().cloned().collect())
        }
    }

    async fn next(&mut self, app: &AppState, tenant: &str) -> Result<Option<String>> {
        match self {
            Systems::Ids(ids) => Ok(ids.pop_front()),
            Systems::Listing {
                zones,
                zone,
                after,
                page,
                page_zone,
                exhausted,
            } => loop {
                if let Some(system) = page.pop_front() {
                    // A system in several of the zones asked for goes out once, with the
                    // first of them.
                    if zones[..*page_zone].iter().any(|z| system.zones.contains(z)) {
                        continue;
                    }
                    return Ok(Some(system.id));
                }
                if *exhausted {
                    return Ok(None);
                }
                let opts = ListOptions {
                    index: zones.get(*zone).map(|z| ("zone".to_owned(), z.clone())),
                    after: after.take(),
                    limit: PAGE,
                    ..Default::default()
                };
                let listed = app.store.list::<ControlSystem>(tenant, opts).await?;
                page.extend(listed.items);
                *page_zone = *zone;
                match listed.next {
                    Some(next) => *after = Some(next),
                    None => {
                        *zone += 1;
                        *exhausted = *zone >= zones.len();
                    }
                }
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Rows,
    Done,
}

struct StateExport {
    app: web::Data<AppState>,
    tenant: String,
    q: StateQuery,
    systems: Systems,
    enc: Encoder,
    exported_at: String,
    phase: Phase,
}

impl StateExport {
    fn into_stream(self) -> Chunks {
        chunk_stream!(self)
    }

    /// The next non-empty chunk: the opening, one system's rows, or the closing.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        let mut out = Vec::new();
        loop {
            match self.phase {
                Phase::Start => {
                    self.phase = Phase::Rows;
                    self.enc.open(&mut out, StateRow::COLUMNS)?;
                }
                Phase::Rows => match self.systems.next(&self.app, &self.tenant).await? {
                    Some(id) => {
                        let rows = self.system_rows(&id).await?;
                        self.enc.rows(&mut out, &rows)?;
                    }
                    None => {
                        self.phase = Phase::Done;
                        self.enc.close(&mut out);
                    }
                },
                Phase::Done if out.is_empty() => return Ok(None),
                Phase::Done => {}
            }
            if !out.is_empty() {
                return Ok(Some(out.into()));
            }
        }
    }

    /// The module's driver id, `None` if the module is gone.
    async fn driver_of(&self, module_id: &str) -> Result<Option<String>> {
        let module: Option<Module> = self.app.store.get(&self.tenant, module_id).await?;
        Ok(module.map(|m| m.driver_id))
    }

    /// One system's rows: each running module's status keys, filtered.
    async fn system_rows(&self, system_id: &str) -> Result<Vec<StateRow>> {
        let (system, modules) = match self
            .app
            .engine
            .system_modules(&self.tenant, system_id)
            .await
        {
            Ok(found) => found,
            // Deleted since it was listed.
            Err(EngineError::SystemNotFound(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let q = &self.q;
        if !q.zones.is_empty() && !system.zones.iter().any(|z| q.zones.contains(z)) {
            return Ok(Vec::new());
        }
        let mut rows = Vec::new();
        for m in modules {
            if !m.running {
                continue;
            }
            let mut driver_id = None;
            if !q.drivers.is_empty() {
                match self.driver_of(&m.id).await? {
                    Some(d) if q.drivers.contains(&d) => driver_id = Some(d),
                    _ => continue,
                }
            }
            let state = match self.app.engine.state(&self.tenant, &m.id) {
                Ok(s) => s,
                // Stopped since the system was read.
                Err(EngineError::ModuleNotRunning(_) | EngineError::ModuleNotFound(_)) => {
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let entries: Vec<(String, Value)> = state
                .into_iter()
                .filter(|(k, _)| q.keys.is_empty() || q.keys.contains(k))
                .collect();
            if entries.is_empty() {
                continue;
            }
            let driver_id = match driver_id {
                Some(d) => d,
                None => match self.driver_of(&m.id).await? {
                    Some(d) => d,
                    None => continue,
                },
            };
            let slug = format!("{}_{}", m.module, m.index);
            for (key, value) in entries {
                rows.push(StateRow {
                    system_id: system.id.clone(),
                    system_name: system.name.clone(),
                    module_id: m.id.clone(),
                    module: slug.clone(),
                    driver_id: driver_id.clone(),
                    driver: m.driver.clone(),
                    key,
                    value,
                    zone_ids: system.zones.clone(),
                    exported_at: self.exported_at.clone(),
                });
            }
        }
        Ok(rows)
    }
}

/// Filter ids must name records of the caller's tenant (another tenant's ids are refused
/// like missing ones).
async fn check_exist<R: Record>(
    app: &AppState,
    tenant: &str,
    param: &str,
    ids: &[String],
) -> Result<()> {
    for id in ids {
        if app.store.get::<R>(tenant, id).await?.is_none() {
            return Err(ApiError::BadRequest(format!(
                "`{param}`: no {} `{id}` in this tenant",
                R::KIND.name()
            )));
        }
    }
    Ok(())
}

fn accept(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
}

/// `GET /export/state`: one row per (system, module, status key) of the running modules,
/// filtered by `zone_id`, `system_id`, `driver_id` and `key`.
async fn export_state(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    req: HttpRequest,
) -> Result<HttpResponse> {
    let q = parse_state_query(&query_pairs(&req)?)?;
    let format = negotiate(q.format.as_deref(), accept(&req))?;
    // The rows name systems and zones: a key scoped to `state.read` alone sees none.
    p.check(Resource::Systems, Action::Read)?;
    let tenant = p.tenant_id.clone();
    check_exist::<Zone>(&state, &tenant, "zone_id", &q.zones).await?;
    check_exist::<ControlSystem>(&state, &tenant, "system_id", &q.systems).await?;
    check_exist::<DriverRecord>(&state, &tenant, "driver_id", &q.drivers).await?;
    let export = StateExport {
        app: state.clone(),
        systems: Systems::new(&q),
        q,
        enc: Encoder::new(format),
        exported_at: rfc3339(now_unix()),
        phase: Phase::Start,
        tenant,
    };
    Ok(stream_response(format, "state", export.into_stream()))
}

// ---------------------------------------------------------------------------------------
// Inventory

#[derive(Debug, Serialize)]
struct ZoneRow {
    zone_id: String,
    name: String,
    display_name: Option<String>,
    description: String,
    tags: Vec<String>,
    parent_id: Option<String>,
    code: Option<String>,
    location: Option<String>,
    timezone: Option<String>,
    capacity: u32,
    exported_at: String,
}

impl ExportRow for ZoneRow {
    const COLUMNS: &'static [&'static str] = &[
        "zone_id",
        "name",
        "display_name",
        "description",
        "tags",
        "parent_id",
        "code",
        "location",
        "timezone",
        "capacity",
        "exported_at",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.zone_id.clone(),
            self.name.clone(),
            cell_opt(&self.display_name),
            self.description.clone(),
            cell_list(&self.tags),
            cell_opt(&self.parent_id),
            cell_opt(&self.code),
            cell_opt(&self.location),
            cell_opt(&self.timezone),
            self.capacity.to_string(),
            self.exported_at.clone(),
        ]
    }
}

#[derive(Debug, Serialize)]
struct SystemRow {
    system_id: String,
    name: String,
    display_name: Option<String>,
    description: String,
    email: Option<String>,
    capacity: u32,
    bookable: bool,
    features: Vec<String>,
    timezone: Option<String>,
    support_url: Option<String>,
    zone_ids: Vec<String>,
    module_ids: Vec<String>,
    exported_at: String,
}

impl ExportRow for SystemRow {
    const COLUMNS: &'static [&'static str] = &[
        "system_id",
        "name",
        "display_name",
        "description",
        "email",
        "capacity",
        "bookable",
        "features",
        "timezone",
        "support_url",
        "zone_ids",
        "module_ids",
        "exported_at",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.system_id.clone(),
            self.name.clone(),
            cell_opt(&self.display_name),
            self.description.clone(),
            cell_opt(&self.email),
            self.capacity.to_string(),
            self.bookable.to_string(),
            cell_list(&self.features),
            cell_opt(&self.timezone),
            cell_opt(&self.support_url),
            cell_list(&self.zone_ids),
            cell_list(&self.module_ids),
            self.exported_at.clone(),
        ]
    }
}

#[derive(Debug, Serialize)]
struct ModuleRow {
    module_id: String,
    /// The name it takes in systems (`Display`): its custom name or its driver's.
    name: String,
    driver_id: String,
    /// The driver's name (empty if the driver is gone).
    driver: String,
    control_system_id: Option<String>,
    /// Configured to run.
    enabled: bool,
    /// Running in this engine now.
    running: bool,
    exported_at: String,
}

impl ExportRow for ModuleRow {
    const COLUMNS: &'static [&'static str] = &[
        "module_id",
        "name",
        "driver_id",
        "driver",
        "control_system_id",
        "enabled",
        "running",
        "exported_at",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.module_id.clone(),
            self.name.clone(),
            self.driver_id.clone(),
            self.driver.clone(),
            cell_opt(&self.control_system_id),
            self.enabled.to_string(),
            self.running.to_string(),
            self.exported_at.clone(),
        ]
    }
}

struct InventoryExport {
    app: web::Data<AppState>,
    tenant: String,
    /// Tables still to export, the current one first.
    tables: VecDeque<Table>,
    /// Several tables: a JSON object of arrays, NDJSON lines with `type`.
    combined: bool,
    /// The current table's store cursor; `None` before its first page.
    after: Option<String>,
    /// The current table's arrays/header are open.
    table_open: bool,
    /// Driver id → (name, module name); `None` for a driver that is gone.
    drivers: HashMap<String, Option<(String, String)>>,
    enc: Encoder,
    exported_at: String,
    phase: Phase,
}

impl InventoryExport {
    fn into_stream(self) -> Chunks {
        chunk_stream!(self)
    }

    fn opts(&mut self) -> ListOptions {
        ListOptions {
            after: self.after.take(),
            limit: PAGE,
            ..Default::default()
        }
    }

    /// The next non-empty chunk: an opening, one page of a table, or a closing.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        let mut out = Vec::new();
        loop {
            match self.phase {
                Phase::Start => {
                    self.phase = Phase::Rows;
                    if self.combined && self.enc.format == Format::Json {
                        out.extend_from_slice(b"{\"exported_at\":");
                        serde_json::to_writer(&mut out, &self.exported_at).map_err(json_error)?;
                    }
                }
                Phase::Rows => match self.tables.front().copied() {
                    Some(table) => {
                        if !self.table_open {
                            self.table_open = true;
                            if self.combined && self.enc.format == Format::Json {
                                out.extend_from_slice(format!(",\"{}\":", table.name()).as_bytes());
                            }
                            self.enc.row_type = self.combined.then(|| table.row_type());
                            self.enc.open(&mut out, table.columns())?;
                        }
                        let more = self.page(table, &mut out).await?;
                        if !more {
                            self.enc.close(&mut out);
                            self.tables.pop_front();
                            self.table_open = false;
                        }
                    }
                    None => {
                        self.phase = Phase::Done;
                        if self.combined && self.enc.format == Format::Json {
                            out.push(b'}');
                        }
                    }
                },
                Phase::Done if out.is_empty() => return Ok(None),
                Phase::Done => {}
            }
            if !out.is_empty() {
                return Ok(Some(out.into()));
            }
        }
    }

    /// One page of `table` into `out`; whether more pages remain.
    async fn page(&mut self, table: Table, out: &mut Vec<u8>) -> Result<bool> {
        let opts = self.opts();
        let (app, tenant, at) = (&self.app, self.tenant.as_str(), &self.exported_at);
        let next = match table {
            Table::Zones => {
                let page = app.store.list::<Zone>(tenant, opts).await?;
                let rows: Vec<ZoneRow> = page
                    .items
                    .into_iter()
                    .map(|z| ZoneRow {
                        zone_id: z.id,
                        name: z.name,
                        display_name: z.display_name,
                        description: z.description,
                        tags: z.tags,
                        parent_id: z.parent_id,
                        code: z.code,
                        location: z.location,
                        timezone: z.timezone,
                        capacity: z.capacity,
                        exported_at: at.clone(),
                    })
                    .collect();
                self.enc.rows(out, &rows)?;
                page.next
            }
            Table::Systems => {
                let page = app.store.list::<ControlSystem>(tenant, opts).await?;
                let rows: Vec<SystemRow> = page
                    .items
                    .into_iter()
                    .map(|s| SystemRow {
                        system_id: s.id,
                        name: s.name,
                        display_name: s.display_name,
                        description: s.description,
                        email: s.email,
                        capacity: s.capacity,
                        bookable: s.bookable,
                        features: s.features,
                        timezone: s.timezone,
                        support_url: s.support_url,
                        zone_ids: s.zones,
                        module_ids: s.modules,
                        exported_at: at.clone(),
                    })
                    .collect();
                self.enc.rows(out, &rows)?;
                page.next
            }
            Table::Modules => {
                let page = app.store.list::<Module>(tenant, opts).await?;
                let mut rows = Vec::with_capacity(page.items.len());
                for m in page.items {
                    if !self.drivers.contains_key(&m.driver_id) {
                        let d: Option<DriverRecord> = app.store.get(tenant, &m.driver_id).await?;
                        self.drivers
                            .insert(m.driver_id.clone(), d.map(|d| (d.name, d.module_name)));
                    }
                    let (driver, module_name) =
                        self.drivers[&m.driver_id].clone().unwrap_or_default();
                    rows.push(ModuleRow {
                        running: app.engine.driver_info(tenant, &m.id).is_ok(),
                        module_id: m.id,
                        name: m.custom_name.unwrap_or(module_name),
                        driver_id: m.driver_id,
                        driver,
                        control_system_id: m.control_system_id,
                        enabled: m.running,
                        exported_at: at.clone(),
                    });
                }
                self.enc.rows(out, &rows)?;
                page.next
            }
        };
        let more = next.is_some();
        self.after = next;
        Ok(more)
    }
}

/// `GET /export/inventory`: zones, systems and modules (`?type=` for one table; CSV needs
/// it). Each table also needs its own resource's read permission; without `type`, the
/// tables the caller may read.
async fn export_inventory(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    req: HttpRequest,
) -> Result<HttpResponse> {
    let q = parse_inventory_query(&query_pairs(&req)?)?;
    let format = negotiate(q.format.as_deref(), accept(&req))?;
    let tables: VecDeque<Table> = match q.table {
        Some(t) => {
            p.check(t.resource(), Action::Read)?;
            VecDeque::from([t])
        }
        None if format == Format::Csv => {
            return Err(ApiError::BadRequest(
                "`type` is required with CSV: systems, modules or zones".into(),
            ));
        }
        // Every table the caller may read (systems, at least: the route needs it).
        None => Table::ALL
            .into_iter()
            .filter(|t| p.check(t.resource(), Action::Read).is_ok())
            .collect(),
    };
    let name = match q.table {
        Some(t) => format!("inventory-{}", t.name()),
        None => "inventory".to_owned(),
    };
    let export = InventoryExport {
        app: state.clone(),
        tenant: p.tenant_id.clone(),
        tables,
        combined: q.table.is_none(),
        after: None,
        table_open: false,
        drivers: HashMap::new(),
        enc: Encoder::new(format),
        exported_at: rfc3339(now_unix()),
        phase: Phase::Start,
    };
    Ok(stream_response(format, &name, export.into_stream()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &str) -> Vec<(String, String)> {
        serde_urlencoded::from_str(q).unwrap()
    }

    fn bad_request(r: Result<impl std::fmt::Debug>) -> String {
        match r {
            Err(ApiError::BadRequest(m)) => m,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn format_param_wins_over_accept() {
        assert_eq!(
            negotiate(Some("csv"), Some("application/json")).unwrap(),
            Format::Csv
        );
        assert_eq!(negotiate(Some("NDJSON"), None).unwrap(), Format::Ndjson);
        assert_eq!(negotiate(Some("jsonl"), None).unwrap(), Format::Ndjson);
        assert_eq!(
            negotiate(Some("json"), Some("text/csv")).unwrap(),
            Format::Json
        );
        let m = bad_request(negotiate(Some("xlsx"), None));
        assert!(m.contains("`format`") && m.contains("xlsx"), "{m}");
    }

    #[test]
    fn accept_picks_the_best_supported_type() {
        let n = |a: &str| negotiate(None, Some(a)).unwrap();
        assert_eq!(negotiate(None, None).unwrap(), Format::Json);
        assert_eq!(n("text/csv"), Format::Csv);
        assert_eq!(n("application/x-ndjson"), Format::Ndjson);
        assert_eq!(n("Application/JSON; charset=utf-8"), Format::Json);
        assert_eq!(n("text/csv;q=0.5, application/x-ndjson"), Format::Ndjson);
        assert_eq!(n("application/json;q=0.2, text/csv;q=0.9"), Format::Csv);
        // Specific beats a wildcard of the same q; the first of equals wins.
        assert_eq!(n("*/*, text/csv"), Format::Csv);
        assert_eq!(n("text/csv, application/json"), Format::Csv);
        assert_eq!(n("text/*"), Format::Csv);
        // q=0 means "not this"; unsupported types and browsers' lists fall back to JSON.
        assert_eq!(n("text/csv;q=0, */*;q=0.1"), Format::Json);
        assert_eq!(n("text/html,application/xhtml+xml,*/*;q=0.8"), Format::Json);
        assert_eq!(n("image/png"), Format::Json);
        assert_eq!(
            n("text/csv;q=nope, application/x-ndjson;q=0.1"),
            Format::Ndjson
        );
        assert_eq!(n(""), Format::Json);
    }

    #[test]
    fn filters_are_repeatable_and_ids_comma_separated() {
        let q = parse_state_query(&pairs(
            "zone_id=zone-a,zone-b&zone_id=zone-c&system_id=sys-1&driver_id=driver-x\
             &key=power&key=a%2Cb&key=power&format=csv&bearer_token=t",
        ))
        .unwrap();
        assert_eq!(q.zones, ["zone-a", "zone-b", "zone-c"]);
        assert_eq!(q.systems, ["sys-1"]);
        assert_eq!(q.drivers, ["driver-x"]);
        // Keys are never split (a key may hold a comma); duplicates collapse.
        assert_eq!(q.keys, ["power", "a,b"]);
        assert_eq!(q.format.as_deref(), Some("csv"));
        assert_eq!(parse_state_query(&[]).unwrap(), StateQuery::default());
    }

    #[test]
    fn bad_filters_name_their_parameter() {
        let err = |q: &str| bad_request(parse_state_query(&pairs(q)));
        let m = err("zone_id=sys-1");
        assert!(m.starts_with("`zone_id`") && m.contains("sys-1"), "{m}");
        assert!(err("system_id=sys-a,,sys-b").starts_with("`system_id`"));
        assert!(err("driver_id=").starts_with("`driver_id`"));
        assert!(err("system_id=sys-a%20b").starts_with("`system_id`"));
        assert!(err("key=").starts_with("`key`"));
        assert!(err("key=a%0Ab").starts_with("`key`"));
        assert!(err(&format!("key={}", "k".repeat(129))).starts_with("`key`"));
        assert!(err("format=csv&format=json").starts_with("`format`"));
        let m = err("zone=zone-a");
        assert!(m.contains("`zone`") && m.contains("`zone_id`"), "{m}");
        let many: Vec<String> = (0..=MAX_FILTER_VALUES)
            .map(|i| format!("sys-{i}"))
            .collect();
        assert!(err(&format!("system_id={}", many.join(","))).starts_with("`system_id`"));
    }

    #[test]
    fn inventory_type_is_one_of_three_tables() {
        let q = parse_inventory_query(&pairs("type=Modules&format=csv")).unwrap();
        assert_eq!(q.table, Some(Table::Modules));
        assert_eq!(
            parse_inventory_query(&[]).unwrap(),
            InventoryQuery::default()
        );
        let m = bad_request(parse_inventory_query(&pairs("type=users")));
        assert!(m.starts_with("`type`"), "{m}");
        assert!(bad_request(parse_inventory_query(&pairs("zone_id=zone-a"))).contains("`zone_id`"));
    }

    #[test]
    fn formula_cells_are_guarded_and_numbers_left_alone() {
        for (cell, want) in [
            ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"),
            ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
            ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
            ("@SUM(A1:A2)", "'@SUM(A1:A2)"),
            ("\t=1", "'\t=1"),
            ("\r=1", "'\r=1"),
            ("-", "'-"),
            ("-3.5", "-3.5"),
            ("+2e3", "+2e3"),
            ("-1E-7", "-1E-7"),
            ("Room 1 = big", "Room 1 = big"),
            ("\"=quoted\"", "\"=quoted\""),
            ("", ""),
        ] {
            assert_eq!(guard_cell(cell), want, "{cell:?}");
        }
        for not_number in ["-", "-.5", "-5.", "1e", "-1e+", "- 1", "-1-1", "-0x1"] {
            assert!(!is_plain_number(not_number), "{not_number}");
        }
    }

    fn state_row(name: &str, key: &str, value: Value) -> StateRow {
        StateRow {
            system_id: "sys-1".into(),
            system_name: name.into(),
            module_id: "mod-1".into(),
            module: "Display_1".into(),
            driver_id: "driver-1".into(),
            driver: "Demo display".into(),
            key: key.into(),
            value,
            zone_ids: vec!["zone-a".into(), "zone-b".into()],
            exported_at: rfc3339(0),
        }
    }

    fn encode(format: Format, chunks: &[Vec<StateRow>]) -> String {
        let mut enc = Encoder::new(format);
        let mut out = Vec::new();
        enc.open(&mut out, StateRow::COLUMNS).unwrap();
        for rows in chunks {
            enc.rows(&mut out, rows).unwrap();
        }
        enc.close(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn csv_is_rfc_4180_with_json_values_and_guarded_cells() {
        let rows = vec![
            state_row("Boardroom, \"big\"", "power", Value::Bool(true)),
            state_row("=cmd", "input", Value::String("HDMI, 1".into())),
            state_row("Line\nbreak", "temp", serde_json::json!(-3.5)),
        ];
        let text = encode(Format::Csv, &[rows, vec![]]);
        assert!(text.starts_with(
            "system_id,system_name,module_id,module,driver_id,driver,key,value,zone_ids,exported_at\r\n"
        ));
        assert!(
            text.contains(
                "sys-1,\"Boardroom, \"\"big\"\"\",mod-1,Display_1,driver-1,Demo display,power,true,\
             zone-a;zone-b,1970-01-01T00:00:00Z\r\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("\r\n"));
        // A CSV reader gets the cells back: guarded, JSON-encoded values, the line break kept.
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let records: Vec<csv::StringRecord> = r.records().map(|r| r.unwrap()).collect();
        assert_eq!(records.len(), 3);
        assert_eq!(&records[1][1], "'=cmd");
        assert_eq!(&records[1][7], "\"HDMI, 1\"");
        assert_eq!(&records[2][1], "Line\nbreak");
        assert_eq!(&records[2][7], "-3.5");
        assert_eq!(&records[0][8], "zone-a;zone-b");
    }

    #[test]
    fn json_is_one_array_across_chunks_and_ndjson_one_line_per_row() {
        let chunks = || {
            vec![
                vec![state_row("A", "power", Value::Bool(true))],
                vec![],
                vec![
                    state_row("B", "=x", serde_json::json!({"a": [1]})),
                    state_row("B", "n", Value::Null),
                ],
            ]
        };
        let json: Value = serde_json::from_str(&encode(Format::Json, &chunks())).unwrap();
        let rows = json.as_array().unwrap();
        assert_eq!(rows.len(), 3);
        // JSON is never guarded: values keep their types.
        assert_eq!(rows[1]["key"], "=x");
        assert_eq!(rows[1]["value"], serde_json::json!({"a": [1]}));
        assert_eq!(rows[0]["zone_ids"], serde_json::json!(["zone-a", "zone-b"]));
        assert_eq!(encode(Format::Json, &[]), "[]");
        let nd = encode(Format::Ndjson, &chunks());
        let lines: Vec<Value> = nd
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2]["value"], Value::Null);
        assert_eq!(encode(Format::Ndjson, &[]), "");
    }

    #[test]
    fn combined_ndjson_lines_carry_their_table() {
        let mut enc = Encoder::new(Format::Ndjson);
        enc.row_type = Some(Table::Zones.row_type());
        let mut out = Vec::new();
        let row = ZoneRow {
            zone_id: "zone-a".into(),
            name: "Level 1".into(),
            display_name: None,
            description: String::new(),
            tags: vec!["level".into()],
            parent_id: None,
            code: None,
            location: None,
            timezone: None,
            capacity: 0,
            exported_at: rfc3339(0),
        };
        enc.rows(&mut out, &[row]).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "zone");
        assert_eq!(v["zone_id"], "zone-a");
        assert_eq!(v["display_name"], Value::Null);
    }

    #[test]
    fn columns_match_cells() {
        let z = ZoneRow {
            zone_id: String::new(),
            name: String::new(),
            display_name: None,
            description: String::new(),
            tags: vec![],
            parent_id: None,
            code: None,
            location: None,
            timezone: None,
            capacity: 0,
            exported_at: String::new(),
        };
        assert_eq!(z.cells().len(), ZoneRow::COLUMNS.len());
        let s = SystemRow {
            system_id: String::new(),
            name: String::new(),
            display_name: None,
            description: String::new(),
            email: None,
            capacity: 0,
            bookable: false,
            features: vec![],
            timezone: None,
            support_url: None,
            zone_ids: vec![],
            module_ids: vec![],
            exported_at: String::new(),
        };
        assert_eq!(s.cells().len(), SystemRow::COLUMNS.len());
        let m = ModuleRow {
            module_id: String::new(),
            name: String::new(),
            driver_id: String::new(),
            driver: String::new(),
            control_system_id: None,
            enabled: true,
            running: false,
            exported_at: String::new(),
        };
        assert_eq!(m.cells().len(), ModuleRow::COLUMNS.len());
        assert_eq!(
            state_row("a", "b", Value::Null).cells().len(),
            StateRow::COLUMNS.len()
        );
        // JSON rows have the CSV columns as their fields, in the same order.
        for (row, cols) in [
            (serde_json::to_value(&z).unwrap(), ZoneRow::COLUMNS),
            (serde_json::to_value(&s).unwrap(), SystemRow::COLUMNS),
            (serde_json::to_value(&m).unwrap(), ModuleRow::COLUMNS),
        ] {
            let mut keys: Vec<&str> = row
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            let mut cols = cols.to_vec();
            keys.sort_unstable();
            cols.sort_unstable();
            assert_eq!(keys, cols);
        }
    }

    #[test]
    fn timestamps_are_rfc_3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn routes_need_state_or_systems_read() {
        let routes: Vec<(String, RouteAccess)> = endpoints()
            .into_iter()
            .map(|e| (e.path, e.access))
            .collect();
        let read = |r| RouteAccess::Signed(Some((r, Action::Read)));
        assert_eq!(
            routes,
            [
                (format!("{V2}/export/state"), read(Resource::State)),
                (format!("{V2}/export/inventory"), read(Resource::Systems)),
            ]
        );
    }
}
