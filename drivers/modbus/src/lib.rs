//! Modbus TCP sensors (temperature, humidity, CO2, occupancy) with a register map in
//! settings.
//!
//! Protocol: *MODBUS Application Protocol Specification V1.1b3* and *MODBUS Messaging on
//! TCP/IP Implementation Guide V1.0b*. Every request and reply is an ADU: the MBAP header
//! (transaction id, protocol id 0, length of what follows, unit id) and a PDU. The driver
//! reads with function codes 0x01 (coils), 0x02 (discrete inputs), 0x03 (holding
//! registers) and 0x04 (input registers), and writes with 0x05 (single coil), 0x06
//! (single register) and 0x10 (multiple registers, for 32-bit values).
//!
//! The engine hands the driver raw bytes (no framing key): the driver frames replies by
//! the MBAP length field itself (a frame split across reads, several frames in one read:
//! one pass over each read, which the engine may deliver up to 64 KiB at a time), keeps
//! at most one partial frame between reads (below [`MAX_ADU`] bytes), drops the buffer on
//! garbage (a protocol id other than 0, an impossible length) and reports it, and drops a
//! partial frame that is not completed within half the command timeout. Replies are
//! matched to requests by transaction id; each request is a `wait` command with the
//! settings' timeout and retries.
//!
//! Settings: `unit_id`, `poll_every_ms`, `timeout_ms`, `retries` and `points`, the
//! register map (see [`Point`]). Adjacent points of one table are read together (at most
//! 125 registers or 2000 bits per read).
//!
//! Statuses: one per point key (a number, scaled, or a bool), `last_error` (the latest
//! device-level problem, `null` once a full poll succeeds again), `last_read` (Unix ms of
//! the latest successful read) and `units` (point key → unit, for points that have one).
//!
//! Functions: `read(key)`, `write(key, value)` (points marked `writable`), `poll_now()`.

use lintel_driver_sdk::prelude::*;
use lintel_driver_sdk::serde_json;
use std::collections::BTreeMap;

/// The polling timer.
const POLL_TIMER: u32 = 1;
/// Drops a partial frame that is not completed in time.
const FRAME_TIMER: u32 = 2;

/// The largest Modbus TCP ADU: a 7-byte MBAP header and a PDU of at most 253 bytes.
/// Between reads the driver holds at most one partial frame, so its receive buffer stays
/// below this (during a read it also holds that read's bytes, up to 64 KiB).
pub const MAX_ADU: usize = 260;
/// The largest MBAP length field: the unit id and a 253-byte PDU.
const MAX_LENGTH_FIELD: usize = 254;
/// The most points a register map may hold.
pub const MAX_POINTS: usize = 32;
/// The most registers one read may ask for (0x03, 0x04), per the specification.
pub const MAX_READ_REGISTERS: u16 = 125;
/// The most bits one read may ask for (0x01, 0x02), per the specification.
pub const MAX_READ_BITS: u16 = 2000;
/// The longest point key.
const MAX_KEY: usize = 64;
/// Status keys a point may not take.
const RESERVED_KEYS: [&str; 6] = [
    "connected",
    "connection_error",
    "driver_error",
    "last_error",
    "last_read",
    "units",
];
/// Commands from functions go before polls.
const EXEC_PRIORITY: u8 = 80;

/// A Modbus data table.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(crate = "lintel_driver_sdk::serde", rename_all = "lowercase")]
pub enum Table {
    /// Input registers (16-bit, read-only; function 0x04).
    Input,
    /// Holding registers (16-bit, read 0x03, written with 0x06 or 0x10).
    Holding,
    /// Coils (single bits, read 0x01, written with 0x05).
    Coil,
    /// Discrete inputs (single bits, read-only; function 0x02).
    Discrete,
}

impl Table {
    fn read_function(self) -> u8 {
        match self {
            Table::Coil => 0x01,
            Table::Discrete => 0x02,
            Table::Holding => 0x03,
            Table::Input => 0x04,
        }
    }

    fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }

    fn name(self) -> &'static str {
        match self {
            Table::Input => "input registers",
            Table::Holding => "holding registers",
            Table::Coil => "coils",
            Table::Discrete => "discrete inputs",
        }
    }
}

/// How a point's value is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(crate = "lintel_driver_sdk::serde", rename_all = "lowercase")]
pub enum ValueType {
    /// Unsigned 16-bit (one register).
    U16,
    /// Signed 16-bit, two's complement (one register).
    I16,
    /// Unsigned 32-bit (two registers, see `word_order`).
    U32,
    /// Signed 32-bit (two registers, see `word_order`).
    I32,
    /// IEEE 754 single precision (two registers, see `word_order`).
    F32,
    /// One bit of a coil or discrete input.
    Bool,
}

impl ValueType {
    /// Registers (or bits) the value takes.
    fn width(self) -> u16 {
        match self {
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 2,
            _ => 1,
        }
    }
}

/// The order of the two registers of a 32-bit value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(crate = "lintel_driver_sdk::serde", rename_all = "lowercase")]
pub enum WordOrder {
    /// The high word first, at `address` (the Modbus convention for data over 16 bits).
    #[default]
    Big,
    /// The low word first, at `address` ("word swapped").
    Little,
}

fn one() -> f64 {
    1.0
}

fn is_one(v: &f64) -> bool {
    *v == 1.0
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// One value of the device: which table and address it lives at, how it is encoded, and
/// the status key it is published as.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(crate = "lintel_driver_sdk::serde", deny_unknown_fields)]
pub struct Point {
    /// The status key the value is published as (letters, digits, `_`, `-`, `.`; at most
    /// 64 bytes; unique).
    pub key: String,
    /// The table holding the value.
    pub table: Table,
    /// The (0-based, protocol) address of its first register or bit, 0..=65535.
    pub address: i64,
    /// How the value is encoded (default `u16` for registers, `bool` for coils and
    /// discrete inputs; `bool` only for those).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub value_type: Option<ValueType>,
    /// The register order of 32-bit values (default `big`: high word first).
    #[serde(default)]
    pub word_order: WordOrder,
    /// The published value is `raw * scale + offset` (default 1; not 0).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub scale: f64,
    /// Added after scaling (default 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: f64,
    /// The unit shown to operators (e.g. `°C`, `ppm`), published in the `units` status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Whether `write` may change it (holding registers and coils only; default false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub writable: bool,
}

impl Point {
    fn value_type(&self) -> ValueType {
        self.value_type.unwrap_or(if self.table.is_bits() {
            ValueType::Bool
        } else {
            ValueType::U16
        })
    }

    fn width(&self) -> u16 {
        self.value_type().width()
    }

    fn start(&self) -> u16 {
        // Checked in `validate`.
        self.address as u16
    }
}

/// The driver's settings.
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(crate = "lintel_driver_sdk::serde", default)]
pub struct Settings {
    /// The Modbus unit (slave) id addressed, 0..=255 (default 1; gateways route by it,
    /// most devices answer any).
    #[schemars(range(min = 0, max = 255))]
    pub unit_id: i64,
    /// How often to read every point while connected, in milliseconds (100..=3600000,
    /// default 5000).
    #[schemars(range(min = 100, max = 3_600_000))]
    pub poll_every_ms: u64,
    /// How long to wait for each reply before resending, in milliseconds (50..=60000,
    /// default 1000). A partial frame is dropped after half of it.
    #[schemars(range(min = 50, max = 60_000))]
    pub timeout_ms: u32,
    /// How many times a request is resent after a timeout or a malformed reply (0..=10,
    /// default 2).
    #[schemars(range(min = 0, max = 10))]
    pub retries: i64,
    /// The register map: 1..=32 points (default: a room sensor with temperature,
    /// humidity, CO2 and occupancy).
    #[schemars(with = "Vec<Point>")]
    pub points: Vec<Value>,
}

/// The default register map: a room sensor.
fn room_sensor() -> Vec<Point> {
    let point = |key: &str, table, address, value_type, scale, unit: Option<&str>| Point {
        key: key.into(),
        table,
        address,
        value_type: Some(value_type),
        word_order: WordOrder::Big,
        scale,
        offset: 0.0,
        unit: unit.map(String::from),
        writable: false,
    };
    vec![
        point(
            "temperature",
            Table::Input,
            0,
            ValueType::I16,
            0.1,
            Some("°C"),
        ),
        point("humidity", Table::Input, 1, ValueType::U16, 0.1, Some("%")),
        point("co2", Table::Input, 2, ValueType::U16, 1.0, Some("ppm")),
        point("occupancy", Table::Discrete, 0, ValueType::Bool, 1.0, None),
    ]
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            unit_id: 1,
            poll_every_ms: 5000,
            timeout_ms: 1000,
            retries: 2,
            points: room_sensor()
                .iter()
                .map(|p| serde_json::to_value(p).unwrap_or(Value::Null))
                .collect(),
        }
    }
}

/// Parse and check the register map; errors name the point.
pub fn parse_points(points: &[Value]) -> Result<Vec<Point>, String> {
    if points.is_empty() || points.len() > MAX_POINTS {
        return Err(format!(
            "points must hold 1..={MAX_POINTS} points, got {}",
            points.len()
        ));
    }
    let mut parsed: Vec<Point> = Vec::with_capacity(points.len());
    for (i, raw) in points.iter().enumerate() {
        let name = match raw.get("key").and_then(Value::as_str) {
            Some(key) => format!("point {i} (`{key}`)"),
            None => format!("point {i}"),
        };
        let p: Point = serde_json::from_value(raw.clone()).map_err(|e| format!("{name}: {e}"))?;
        validate(&p).map_err(|e| format!("{name}: {e}"))?;
        if parsed.iter().any(|q| q.key == p.key) {
            return Err(format!("{name}: the key `{}` is used twice", p.key));
        }
        parsed.push(p);
    }
    Ok(parsed)
}

fn validate(p: &Point) -> Result<(), String> {
    if p.key.is_empty() || p.key.len() > MAX_KEY {
        return Err(format!("key must be 1..={MAX_KEY} bytes"));
    }
    if !p
        .key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err("key may hold only letters, digits, `_`, `-` and `.`".into());
    }
    if RESERVED_KEYS.contains(&p.key.as_str()) {
        return Err(format!(
            "key `{}` is reserved for the driver's own status",
            p.key
        ));
    }
    if !(0..=65_535).contains(&p.address) {
        return Err(format!("address must be 0..=65535, got {}", p.address));
    }
    let t = p.value_type();
    match (p.table.is_bits(), t == ValueType::Bool) {
        (true, false) => {
            return Err(format!(
                "{} hold single bits: the type must be `bool`",
                p.table.name()
            ));
        }
        (false, true) => {
            return Err(format!(
                "{} hold 16-bit words: the type must be u16, i16, u32, i32 or f32, not `bool`",
                p.table.name()
            ));
        }
        _ => {}
    }
    if p.address + i64::from(t.width()) - 1 > 65_535 {
        return Err(format!(
            "a {} at address {} runs past address 65535",
            type_name(t),
            p.address
        ));
    }
    if !p.scale.is_finite() || p.scale == 0.0 {
        return Err(format!(
            "scale must be a finite, non-zero number, got {}",
            p.scale
        ));
    }
    if !p.offset.is_finite() {
        return Err(format!("offset must be a finite number, got {}", p.offset));
    }
    if p.table.is_bits() && (p.scale != 1.0 || p.offset != 0.0) {
        return Err("a bool point takes no scale or offset".into());
    }
    if p.unit.as_ref().is_some_and(|u| u.chars().count() > 16) {
        return Err("unit must be at most 16 characters".into());
    }
    if p.writable && !matches!(p.table, Table::Holding | Table::Coil) {
        return Err(format!(
            "{} are read-only: only holding registers and coils can be writable",
            p.table.name()
        ));
    }
    Ok(())
}

fn type_name(t: ValueType) -> &'static str {
    match t {
        ValueType::U16 => "u16",
        ValueType::I16 => "i16",
        ValueType::U32 => "u32",
        ValueType::I32 => "i32",
        ValueType::F32 => "f32",
        ValueType::Bool => "bool",
    }
}

/// One read: `count` registers or bits of `table` from `start`, and the points in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    /// The table read.
    pub table: Table,
    /// The first address.
    pub start: u16,
    /// How many registers or bits.
    pub count: u16,
    /// The points it holds.
    pub points: Vec<Point>,
}

impl Block {
    fn of(p: &Point) -> Block {
        Block {
            table: p.table,
            start: p.start(),
            count: p.width(),
            points: vec![p.clone()],
        }
    }

    fn end(&self) -> u32 {
        u32::from(self.start) + u32::from(self.count)
    }

    fn describe(&self) -> String {
        let keys: Vec<&str> = self.points.iter().map(|p| p.key.as_str()).collect();
        format!(
            "read {} {}..={} ({})",
            self.table.name(),
            self.start,
            self.end() - 1,
            keys.join(", ")
        )
    }
}

/// Group points into reads: points of one table whose registers touch or overlap share a
/// read, up to 125 registers (2000 bits) per read.
pub fn plan_reads(points: &[Point]) -> Vec<Block> {
    let mut sorted: Vec<&Point> = points.iter().collect();
    sorted.sort_by_key(|p| (p.table, p.address));
    let mut blocks: Vec<Block> = Vec::new();
    for p in sorted {
        let max = u32::from(if p.table.is_bits() {
            MAX_READ_BITS
        } else {
            MAX_READ_REGISTERS
        });
        let end = u32::from(p.start()) + u32::from(p.width());
        if let Some(b) = blocks.last_mut()
            && b.table == p.table
            && u32::from(p.start()) <= b.end()
            && end.max(b.end()) - u32::from(b.start) <= max
        {
            b.count = (end.max(b.end()) - u32::from(b.start)) as u16;
            b.points.push(p.clone());
            continue;
        }
        blocks.push(Block::of(p));
    }
    blocks
}

/// What the receive buffer starts with.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// More bytes are needed.
    Partial,
    /// A complete ADU of this many bytes.
    Complete(usize),
    /// Not Modbus TCP.
    Garbage(String),
}

/// Frame the start of `buf` by the MBAP header.
pub fn frame(buf: &[u8]) -> Frame {
    if buf.len() >= 4 {
        let protocol = u16::from_be_bytes([buf[2], buf[3]]);
        if protocol != 0 {
            return Frame::Garbage(format!("protocol id {protocol} is not 0 (Modbus)"));
        }
    }
    if buf.len() < 6 {
        return Frame::Partial;
    }
    let length = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
    if !(2..=MAX_LENGTH_FIELD).contains(&length) {
        return Frame::Garbage(format!(
            "MBAP length {length} is outside 2..={MAX_LENGTH_FIELD}"
        ));
    }
    if buf.len() < 6 + length {
        Frame::Partial
    } else {
        Frame::Complete(6 + length)
    }
}

/// An ADU: the MBAP header and `pdu`.
pub fn adu(transaction: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(7 + pdu.len());
    out.extend_from_slice(&transaction.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&((pdu.len() + 1) as u16).to_be_bytes());
    out.push(unit);
    out.extend_from_slice(pdu);
    out
}

/// The name of a Modbus exception code (Application Protocol V1.1b3, section 7).
pub fn exception_name(code: u8) -> &'static str {
    match code {
        0x01 => "illegal function",
        0x02 => "illegal data address",
        0x03 => "illegal data value",
        0x04 => "server device failure",
        0x05 => "acknowledge",
        0x06 => "server device busy",
        0x08 => "memory parity error",
        0x0A => "gateway path unavailable",
        0x0B => "gateway target device failed to respond",
        _ => "unknown exception",
    }
}

fn hex(bytes: &[u8]) -> String {
    let shown: Vec<String> = bytes.iter().take(16).map(|b| format!("{b:02x}")).collect();
    let more = if bytes.len() > 16 { " …" } else { "" };
    format!("{}{more}", shown.join(" "))
}

/// The raw value of `p` in a read of `block` (`data`: the reply's data bytes).
fn raw_value(p: &Point, block: &Block, data: &[u8]) -> Option<RawValue> {
    let offset = usize::from(p.start() - block.start);
    if block.table.is_bits() {
        let byte = data.get(offset / 8)?;
        return Some(RawValue::Bool(byte >> (offset % 8) & 1 == 1));
    }
    let reg = |i: usize| -> Option<u16> {
        let at = (offset + i) * 2;
        Some(u16::from_be_bytes([*data.get(at)?, *data.get(at + 1)?]))
    };
    let r0 = reg(0)?;
    let t = p.value_type();
    if t.width() == 1 {
        return Some(match t {
            ValueType::I16 => RawValue::Int(i64::from(r0 as i16)),
            _ => RawValue::Int(i64::from(r0)),
        });
    }
    let r1 = reg(1)?;
    let bits = match p.word_order {
        WordOrder::Big => (u32::from(r0) << 16) | u32::from(r1),
        WordOrder::Little => (u32::from(r1) << 16) | u32::from(r0),
    };
    Some(match t {
        ValueType::I32 => RawValue::Int(i64::from(bits as i32)),
        ValueType::F32 => RawValue::Float(f64::from(f32::from_bits(bits))),
        _ => RawValue::Int(i64::from(bits)),
    })
}

enum RawValue {
    Bool(bool),
    Int(i64),
    Float(f64),
}

/// The published value: `raw * scale + offset`; integers stay integers when unscaled.
fn scaled(p: &Point, raw: RawValue) -> Value {
    let v = match raw {
        RawValue::Bool(b) => return json!(b),
        RawValue::Int(i) if p.scale == 1.0 && p.offset == 0.0 => return json!(i),
        RawValue::Int(i) => i as f64 * p.scale + p.offset,
        RawValue::Float(f) => f * p.scale + p.offset,
    };
    if !v.is_finite() {
        return Value::Null;
    }
    // Drop binary noise (0.1 * 3 = 0.30000000000000004; f32 0.1 = 0.10000000149…).
    let v = if v.abs() < 1e12 {
        (v * 1e6).round() / 1e6
    } else {
        v
    };
    json!(v)
}

/// A value to write: a number for registers, a bool for coils.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, JsonSchema)]
#[serde(crate = "lintel_driver_sdk::serde", untagged)]
pub enum PointValue {
    /// For coils (0/1 numbers are accepted too).
    Bool(bool),
    /// For registers: the scaled value, as published (the driver undoes `scale` and
    /// `offset`).
    Number(f64),
}

/// The request PDU writing `value` to `p`; also the value as it will read back.
pub fn write_pdu(p: &Point, value: PointValue) -> Result<(Vec<u8>, Value), String> {
    let addr = p.start().to_be_bytes();
    if p.table == Table::Coil {
        let on = match value {
            PointValue::Bool(b) => b,
            PointValue::Number(n) if n == 0.0 || n == 1.0 => n == 1.0,
            PointValue::Number(n) => {
                return Err(format!(
                    "`{}` is a coil: write true or false, not {n}",
                    p.key
                ));
            }
        };
        let pdu = vec![0x05, addr[0], addr[1], if on { 0xFF } else { 0x00 }, 0x00];
        return Ok((pdu, json!(on)));
    }
    let PointValue::Number(v) = value else {
        return Err(format!("`{}` is a register: write a number", p.key));
    };
    if !v.is_finite() {
        return Err(format!("`{}`: {v} is not a finite number", p.key));
    }
    let unscaled = (v - p.offset) / p.scale;
    let t = p.value_type();
    let range_err = |lo: f64, hi: f64| {
        format!(
            "`{}`: {v} is out of range (a {} holds {lo}..={hi} before scale and offset, got {unscaled})",
            p.key,
            type_name(t)
        )
    };
    let int = |lo: f64, hi: f64| -> Result<i64, String> {
        let r = unscaled.round();
        if r < lo || r > hi {
            Err(range_err(lo, hi))
        } else {
            Ok(r as i64)
        }
    };
    let (words, raw): (Vec<u16>, RawValue) = match t {
        ValueType::U16 => {
            let r = int(0.0, 65_535.0)?;
            (vec![r as u16], RawValue::Int(r))
        }
        ValueType::I16 => {
            let r = int(-32_768.0, 32_767.0)?;
            (vec![r as i16 as u16], RawValue::Int(r))
        }
        ValueType::U32 | ValueType::I32 | ValueType::F32 => {
            let (bits, raw) = match t {
                ValueType::U32 => {
                    let r = int(0.0, 4_294_967_295.0)?;
                    (r as u32, RawValue::Int(r))
                }
                ValueType::I32 => {
                    let r = int(-2_147_483_648.0, 2_147_483_647.0)?;
                    (r as i32 as u32, RawValue::Int(r))
                }
                _ => {
                    let f = unscaled as f32;
                    if !f.is_finite() {
                        return Err(range_err(f64::from(f32::MIN), f64::from(f32::MAX)));
                    }
                    (f.to_bits(), RawValue::Float(f64::from(f)))
                }
            };
            let (hi, lo) = ((bits >> 16) as u16, bits as u16);
            let words = match p.word_order {
                WordOrder::Big => vec![hi, lo],
                WordOrder::Little => vec![lo, hi],
            };
            (words, raw)
        }
        ValueType::Bool => return Err(format!("`{}` is not a register", p.key)),
    };
    let pdu = if let [w] = words.as_slice() {
        let w = w.to_be_bytes();
        vec![0x06, addr[0], addr[1], w[0], w[1]]
    } else {
        let mut pdu = vec![
            0x10,
            addr[0],
            addr[1],
            0,
            words.len() as u8,
            (words.len() * 2) as u8,
        ];
        for w in &words {
            pdu.extend_from_slice(&w.to_be_bytes());
        }
        pdu
    };
    Ok((pdu, scaled(p, raw)))
}

/// What a complete frame is to the command waiting for an answer.
#[derive(Debug)]
enum Handled {
    /// It answers no waiting request (a late reply to a resent request, a duplicate, a
    /// stray frame): ignored, with its transaction id.
    Stale(u16),
    /// A good answer, applied.
    Done,
    /// An exception: the request failed, with the reason.
    Fail(String),
    /// Malformed, or the device is busy: ask again, with the reason.
    Retry(String),
}

/// Frames of one read that answered no waiting request, logged once per read.
#[derive(Default)]
struct StaleFrames {
    count: usize,
    /// The first few distinct transaction ids.
    transactions: Vec<u16>,
    /// The first such frame, shortened.
    first: String,
}

impl StaleFrames {
    /// Transaction ids listed in the log line.
    const SHOWN: usize = 4;

    fn add(&mut self, transaction: u16, adu: &[u8]) {
        if self.count == 0 {
            self.first = hex(adu);
        }
        self.count += 1;
        if self.transactions.len() < Self::SHOWN && !self.transactions.contains(&transaction) {
            self.transactions.push(transaction);
        }
    }

    /// One log line for all of them; `expected`: what the waiting command was.
    fn report(&self, expected: &str) {
        if self.count == 1 {
            host::warn(&format!(
                "ignored a reply with transaction id {} (waiting for: {expected}): {}",
                self.transactions[0], self.first
            ));
        } else if self.count > 1 {
            let mut ids: Vec<String> = self.transactions.iter().map(u16::to_string).collect();
            if self.count > self.transactions.len() {
                ids.push("…".into());
            }
            host::warn(&format!(
                "ignored {} replies that answer no waiting request (transaction ids {}; waiting for: {expected}); the first: {}",
                self.count,
                ids.join(", "),
                self.first
            ));
        }
    }
}

/// What a request is for.
#[derive(Debug)]
enum Op {
    /// A poll of block `index` of the map of generation `generation`.
    Poll { index: usize, generation: u64 },
    /// `read(key)` for an exec call.
    Read { call: CallId },
    /// `write(key, value)` for an exec call, publishing `value` when confirmed.
    Write { call: CallId, value: Value },
}

/// A request sent as a `wait` command.
#[derive(Debug)]
struct Request {
    command: CommandId,
    transaction: u16,
    /// The request PDU (a write's reply echoes it).
    pdu: Vec<u8>,
    /// The block a read covers (a write: its point).
    block: Block,
    op: Op,
    /// The answer to give the call once the command is done.
    answer: Option<Value>,
    /// The last problem with a reply to it (a malformed reply before a retry).
    problem: Option<String>,
    /// Whether a failure was already reported (an exception).
    reported: bool,
}

impl Request {
    fn describe(&self) -> String {
        match self.op {
            Op::Write { .. } => format!(
                "write {} {} (`{}`)",
                self.block.table.name(),
                self.block.start,
                self.block.points.first().map_or("", |p| p.key.as_str())
            ),
            _ => self.block.describe(),
        }
    }
}

/// A Modbus TCP sensor: one per module.
#[derive(Default)]
pub struct Modbus {
    unit: u8,
    poll_ms: u64,
    timeout_ms: u32,
    retries: u8,
    points: Vec<Point>,
    blocks: Vec<Block>,
    /// Which blocks' latest poll succeeded since the last error.
    block_ok: Vec<bool>,
    generation: u64,
    connected: bool,
    next_transaction: u16,
    requests: Vec<Request>,
    /// Between reads, at most one partial frame (below [`MAX_ADU`] bytes).
    buffer: Vec<u8>,
    /// Whether `last_error` holds an error.
    in_error: bool,
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Modbus {
    /// A device-level problem: `last_error` and a warning.
    fn problem(&mut self, message: &str) {
        host::warn(message);
        let _ = host::set_status("last_error", message);
        self.in_error = true;
        self.block_ok.iter_mut().for_each(|ok| *ok = false);
    }

    /// Remember `message` as the last problem of the request of `command`, for its
    /// failure message should its retries run out.
    fn note_problem(&mut self, command: Option<CommandId>, message: &str) {
        if let Some(r) = self
            .requests
            .iter_mut()
            .find(|r| Some(r.command) == command)
        {
            r.problem = Some(message.to_string());
        }
    }

    fn transaction(&mut self) -> u16 {
        self.next_transaction = self.next_transaction.wrapping_add(1);
        self.next_transaction
    }

    fn options(&self, priority: u8) -> SendOptions {
        SendOptions::default()
            .wait()
            .priority(priority)
            .timeout_ms(self.timeout_ms)
            .retries(self.retries)
    }

    /// Queue a request for `block`.
    fn send(&mut self, pdu: Vec<u8>, block: Block, op: Op, priority: u8) -> Result<(), String> {
        let transaction = self.transaction();
        let bytes = adu(transaction, self.unit, &pdu);
        let command = host::send_with(&bytes, self.options(priority))?;
        self.requests.push(Request {
            command,
            transaction,
            pdu,
            block,
            op,
            answer: None,
            problem: None,
            reported: false,
        });
        Ok(())
    }

    fn read_pdu(block: &Block) -> Vec<u8> {
        let [a0, a1] = block.start.to_be_bytes();
        let [c0, c1] = block.count.to_be_bytes();
        vec![block.table.read_function(), a0, a1, c0, c1]
    }

    /// Read every block not already being read; returns how many reads were queued.
    fn poll(&mut self) -> Result<usize, String> {
        let mut queued = 0;
        for index in 0..self.blocks.len() {
            let busy = self.requests.iter().any(|r| {
                matches!(r.op, Op::Poll { index: i, generation } if i == index && generation == self.generation)
            });
            if busy {
                host::debug(&format!(
                    "poll of {} skipped: the previous one is still waiting",
                    self.blocks[index].describe()
                ));
                continue;
            }
            let block = self.blocks[index].clone();
            let op = Op::Poll {
                index,
                generation: self.generation,
            };
            self.send(Self::read_pdu(&block), block, op, 50)?;
            queued += 1;
        }
        Ok(queued)
    }

    /// Handle one complete ADU for the command `waiting` for an answer. Makes no host
    /// call unless the frame answers it (a burst of stale frames stays cheap); reporting
    /// is left to [`Modbus::received`].
    fn on_frame(&mut self, adu: &[u8], waiting: Option<CommandId>) -> Handled {
        let transaction = u16::from_be_bytes([adu[0], adu[1]]);
        let unit = adu[6];
        let pdu = &adu[7..];
        let Some(at) = self
            .requests
            .iter()
            .position(|r| Some(r.command) == waiting && r.transaction == transaction)
        else {
            return Handled::Stale(transaction);
        };
        let function = self.requests[at].pdu[0];
        if pdu[0] == function | 0x80 {
            let code = pdu.get(1).copied().unwrap_or(0);
            let what = self.requests[at].describe();
            let name = exception_name(code);
            // Acknowledge (the request is accepted but takes long) and busy: ask again.
            if matches!(code, 0x05 | 0x06) {
                return Handled::Retry(format!(
                    "unit {} could not {what} yet: exception {code} ({name}); asking again",
                    self.unit
                ));
            }
            self.requests[at].reported = true;
            return Handled::Fail(format!(
                "unit {} refused to {what}: exception {code} ({name})",
                self.unit
            ));
        }
        let outcome = if pdu[0] != function {
            Err(format!(
                "the reply's function 0x{:02x} is not the request's 0x{function:02x}",
                pdu[0]
            ))
        } else {
            self.decode(at, pdu)
        };
        match outcome {
            Ok(()) => {
                if unit != self.unit {
                    host::debug(&format!(
                        "reply from unit {unit} to a request for unit {}",
                        self.unit
                    ));
                }
                Handled::Done
            }
            Err(why) => Handled::Retry(format!(
                "malformed reply to {}: {why} ({})",
                self.requests[at].describe(),
                hex(adu)
            )),
        }
    }

    /// Check and apply a reply PDU (not an exception) to request `at`.
    fn decode(&mut self, at: usize, pdu: &[u8]) -> Result<(), String> {
        let r = &self.requests[at];
        if let Op::Write { value, .. } = &r.op {
            let echo_len = if r.pdu[0] == 0x10 { 5 } else { r.pdu.len() };
            if pdu.len() != echo_len || pdu[..echo_len] != r.pdu[..echo_len] {
                return Err(format!(
                    "it does not echo the request ({} instead of {})",
                    hex(pdu),
                    hex(&r.pdu[..echo_len])
                ));
            }
            let value = value.clone();
            let key = r.block.points[0].key.clone();
            let _ = host::set_status(&key, &value);
            self.requests[at].answer = Some(value);
            return Ok(());
        }
        let block = &r.block;
        let want = if block.table.is_bits() {
            usize::from(block.count).div_ceil(8)
        } else {
            usize::from(block.count) * 2
        };
        let got = pdu.get(1).copied().map(usize::from);
        if got != Some(want) || pdu.len() != 2 + want {
            return Err(format!(
                "{} data bytes for {} {} (byte count {}), expected {want}",
                pdu.len().saturating_sub(2),
                block.count,
                if block.table.is_bits() {
                    "bits"
                } else {
                    "registers"
                },
                got.map_or("missing".into(), |g| g.to_string())
            ));
        }
        let data = &pdu[2..];
        let mut values = Vec::with_capacity(block.points.len());
        for p in &block.points {
            let raw = raw_value(p, block, data).ok_or("short data")?;
            values.push((p.key.clone(), scaled(p, raw)));
        }
        for (key, value) in &values {
            if let Err(e) = host::set_status(key, value) {
                host::warn(&format!("status `{key}` not set: {e}"));
            }
        }
        let _ = host::set_status("last_read", &now_unix_ms());
        let r = &mut self.requests[at];
        match r.op {
            Op::Read { .. } => r.answer = values.into_iter().next().map(|(_, v)| v),
            Op::Poll { index, generation } if generation == self.generation => {
                if let Some(ok) = self.block_ok.get_mut(index) {
                    *ok = true;
                }
                if self.in_error && self.block_ok.iter().all(|ok| *ok) {
                    self.in_error = false;
                    let _ = host::set_status("last_error", &Value::Null);
                    host::info("every point reads again");
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Read every point now and every `poll_ms` from now on.
    fn start_polling(&mut self) {
        if let Err(e) = self.poll() {
            host::warn(&format!("poll not sent: {e}"));
        }
        if let Err(e) = host::schedule_every(POLL_TIMER, self.poll_ms) {
            host::warn(&format!("polling not scheduled: {e}"));
        }
    }

    fn reset_receive(&mut self) {
        self.buffer.clear();
        host::cancel_schedule(FRAME_TIMER);
    }
}

impl Driver for Modbus {
    type Settings = Settings;

    fn on_load(&mut self, settings: Settings) -> Result<(), String> {
        let unit = u8::try_from(settings.unit_id)
            .map_err(|_| format!("unit_id must be 0..=255, got {}", settings.unit_id))?;
        let poll = settings.poll_every_ms;
        if !(100..=3_600_000).contains(&poll) {
            return Err(format!("poll_every_ms must be 100..=3600000, got {poll}"));
        }
        let timeout = settings.timeout_ms;
        if !(50..=60_000).contains(&timeout) {
            return Err(format!("timeout_ms must be 50..=60000, got {timeout}"));
        }
        let retries = u8::try_from(settings.retries)
            .ok()
            .filter(|r| *r <= 10)
            .ok_or_else(|| format!("retries must be 0..=10, got {}", settings.retries))?;
        let points = parse_points(&settings.points)?;
        self.unit = unit;
        self.poll_ms = poll;
        self.timeout_ms = timeout;
        self.retries = retries;
        self.blocks = plan_reads(&points);
        self.block_ok = vec![false; self.blocks.len()];
        self.points = points;
        self.generation += 1;
        let units: BTreeMap<&str, &str> = self
            .points
            .iter()
            .filter_map(|p| Some((p.key.as_str(), p.unit.as_deref()?)))
            .collect();
        let _ = host::set_status("units", &units);
        if !self.in_error {
            let _ = host::set_status("last_error", &Value::Null);
        }
        Ok(())
    }

    fn on_update(&mut self, settings: Settings) -> Result<(), String> {
        self.on_load(settings)?;
        // The connection stays: keep the receive buffer (a reply may be half received)
        // and only read the new map and reschedule with the new period.
        if self.connected {
            self.start_polling();
        }
        Ok(())
    }

    fn connected(&mut self) {
        self.connected = true;
        self.reset_receive();
        self.start_polling();
    }

    fn disconnected(&mut self) {
        self.connected = false;
        host::cancel_schedule(POLL_TIMER);
        self.reset_receive();
        // The engine fails the queued commands; answer their calls now.
        for r in self.requests.drain(..) {
            if let Op::Read { call } | Op::Write { call, .. } = r.op {
                let _ = host::reply(call, Err("the device disconnected".into()));
            }
        }
    }

    fn received(&mut self, data: &[u8], waiting: Option<CommandId>) -> Verdict {
        // One pass over the buffer with a read position, one drain at the end: a 64 KiB
        // read of thousands of small frames costs no more than its bytes.
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.extend_from_slice(data);
        let expected = waiting
            .and_then(|w| self.requests.iter().find(|r| r.command == w))
            .map_or("none".to_string(), |r| r.transaction.to_string());
        // The command still open to an answer: none once it is done or failed (later
        // frames of this read cannot answer it: the engine takes one verdict per read).
        let mut open = waiting;
        let mut verdict = Verdict::Ignore;
        let mut stale = StaleFrames::default();
        // Refused replies (malformed, busy) to the open command: the first is reported,
        // the rest of a burst counted.
        let mut refused = 0usize;
        let mut latest_refusal = String::new();
        let mut at = 0;
        loop {
            match frame(&buffer[at..]) {
                Frame::Partial => break,
                Frame::Complete(n) => {
                    let adu = &buffer[at..at + n];
                    at += n;
                    match self.on_frame(adu, open) {
                        Handled::Stale(transaction) => stale.add(transaction, adu),
                        Handled::Done => {
                            verdict = Verdict::Done;
                            open = None;
                        }
                        Handled::Fail(message) => {
                            self.problem(&message);
                            verdict = Verdict::Fail(message);
                            open = None;
                        }
                        Handled::Retry(message) => {
                            if refused == 0 {
                                self.problem(&message);
                                self.note_problem(open, &message);
                            }
                            refused += 1;
                            latest_refusal = message;
                            verdict = Verdict::Retry;
                        }
                    }
                }
                Frame::Garbage(why) => {
                    let dropped = &buffer[at..];
                    host::debug(&format!("garbage: {}", hex(dropped)));
                    let message = format!(
                        "garbage from the device: {why}; dropped {} bytes",
                        dropped.len()
                    );
                    at = buffer.len();
                    self.problem(&message);
                    self.note_problem(open, &message);
                    // Ask again at once rather than waiting for the timeout.
                    if open.is_some() && verdict == Verdict::Ignore {
                        verdict = Verdict::Retry;
                    }
                    break;
                }
            }
        }
        buffer.drain(..at);
        // Between reads the buffer holds at most one partial frame (below MAX_ADU bytes):
        // give back what a large read took.
        if buffer.capacity() > 4 * MAX_ADU {
            buffer.shrink_to(MAX_ADU);
        }
        self.buffer = buffer;
        stale.report(&expected);
        if refused > 1 {
            host::warn(&format!(
                "{} more refused replies to the same request in one read; the latest: {latest_refusal}",
                refused - 1
            ));
            self.note_problem(waiting, &latest_refusal);
        }
        if self.buffer.is_empty() {
            host::cancel_schedule(FRAME_TIMER);
        } else if let Err(e) = host::schedule_in(FRAME_TIMER, u64::from(self.timeout_ms / 2)) {
            host::warn(&format!("partial frame timer not set: {e}"));
        }
        verdict
    }

    fn on_timer(&mut self, id: u32) {
        match id {
            POLL_TIMER => {
                if let Err(e) = self.poll() {
                    host::debug(&format!("poll skipped: {e}"));
                }
            }
            FRAME_TIMER if !self.buffer.is_empty() => {
                let partial = std::mem::take(&mut self.buffer);
                self.problem(&format!(
                    "incomplete frame from the device: {} bytes ({}) not completed within {} ms; dropped",
                    partial.len(),
                    hex(&partial),
                    self.timeout_ms / 2
                ));
            }
            _ => {}
        }
    }

    fn on_event(&mut self, event: HostEvent) {
        let HostEvent::CommandDone { id, result } = event else {
            return;
        };
        let Some(at) = self.requests.iter().position(|r| r.command == id) else {
            return;
        };
        let r = self.requests.remove(at);
        let outcome = match result {
            Ok(()) => Ok(r.answer.clone().unwrap_or(Value::Null)),
            Err(why) => {
                let message = if r.reported {
                    why
                } else {
                    let mut m = format!("{} failed: {why}", r.describe());
                    if let Some(p) = &r.problem {
                        m.push_str(&format!(" (last problem: {p})"));
                    }
                    if self.connected {
                        self.problem(&m);
                    }
                    m
                };
                if let Op::Poll { index, generation } = r.op
                    && generation == self.generation
                    && let Some(ok) = self.block_ok.get_mut(index)
                {
                    *ok = false;
                }
                Err(message)
            }
        };
        if let Op::Read { call } | Op::Write { call, .. } = r.op {
            let _ = host::reply(call, outcome);
        }
    }
}

#[driver(
    name = "Modbus TCP Sensor",
    module_name = "Modbus",
    description = "Modbus TCP sensors and controllers: a register map in settings becomes statuses (temperature, humidity, CO2, occupancy, ...)",
    transport = "tcp"
)]
impl Modbus {
    /// Read one point of the register map now and answer its value (also published as
    /// its status).
    #[function]
    fn read(&mut self, call: CallId, key: String) -> Result<Answer<Value>, String> {
        let p = self
            .points
            .iter()
            .find(|p| p.key == key)
            .ok_or_else(|| format!("no point `{key}` in the register map"))?
            .clone();
        let block = Block::of(&p);
        self.send(
            Self::read_pdu(&block),
            block,
            Op::Read { call },
            EXEC_PRIORITY,
        )?;
        Ok(Answer::Later)
    }

    /// Write a point marked `writable` (a number for holding registers, as published:
    /// scale and offset are undone; true/false for coils). Answers the value once the
    /// device confirms it.
    #[function]
    fn write(
        &mut self,
        call: CallId,
        key: String,
        value: PointValue,
    ) -> Result<Answer<Value>, String> {
        let p = self
            .points
            .iter()
            .find(|p| p.key == key)
            .ok_or_else(|| format!("no point `{key}` in the register map"))?
            .clone();
        if !p.writable {
            return Err(format!("point `{key}` is not writable"));
        }
        let (pdu, value) = write_pdu(&p, value)?;
        let block = Block::of(&p);
        self.send(pdu, block, Op::Write { call, value }, EXEC_PRIORITY)?;
        Ok(Answer::Later)
    }

    /// Read every point now (as a poll does); answers how many reads were queued.
    #[function]
    fn poll_now(&mut self) -> Result<usize, String> {
        self.poll()
    }
}

export_driver!(Modbus);

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(key: &str, table: Table, address: i64, t: ValueType) -> Point {
        Point {
            key: key.into(),
            table,
            address,
            value_type: Some(t),
            word_order: WordOrder::Big,
            scale: 1.0,
            offset: 0.0,
            unit: None,
            writable: false,
        }
    }

    #[test]
    fn frames_by_the_mbap_length() {
        let a = adu(7, 1, &[0x04, 0x02, 0x00, 0xD7]);
        assert_eq!(a, [0, 7, 0, 0, 0, 5, 1, 4, 2, 0, 0xD7]);
        assert_eq!(frame(&a), Frame::Complete(11));
        assert_eq!(frame(&a[..3]), Frame::Partial);
        assert_eq!(frame(&a[..10]), Frame::Partial);
        let mut two = a.clone();
        two.extend_from_slice(&a);
        assert_eq!(frame(&two), Frame::Complete(11));
        assert!(matches!(frame(b"HTTP/1.1"), Frame::Garbage(_)));
        assert!(matches!(frame(&[0, 1, 0, 0, 0, 1, 1]), Frame::Garbage(_)));
        assert!(matches!(frame(&[0, 1, 0, 0, 0, 255, 1]), Frame::Garbage(_)));
        assert_eq!(frame(&[0, 1, 0, 0, 0, 254]), Frame::Partial);
    }

    #[test]
    fn groups_adjacent_points() {
        let points = vec![
            pt("b", Table::Input, 2, ValueType::U32),
            pt("a", Table::Input, 0, ValueType::I16),
            pt("c", Table::Input, 1, ValueType::U16),
            pt("far", Table::Input, 10, ValueType::U16),
            pt("h", Table::Holding, 4, ValueType::U16),
            pt("d", Table::Discrete, 0, ValueType::Bool),
            pt("e", Table::Discrete, 1, ValueType::Bool),
        ];
        let blocks = plan_reads(&points);
        let shape: Vec<_> = blocks
            .iter()
            .map(|b| (b.table, b.start, b.count, b.points.len()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (Table::Input, 0, 4, 3),
                (Table::Input, 10, 1, 1),
                (Table::Holding, 4, 1, 1),
                (Table::Discrete, 0, 2, 2),
            ]
        );
        // At most 125 registers per read.
        let many: Vec<Point> = (0..32)
            .map(|i| pt(&format!("p{i}"), Table::Holding, i * 5, ValueType::U32))
            .collect();
        let blocks = plan_reads(&many);
        assert!(blocks.iter().all(|b| b.count <= MAX_READ_REGISTERS));
        assert_eq!(blocks.len(), 32, "5 apart: none touch");
    }

    #[test]
    fn write_encoding() {
        let mut p = pt("sp", Table::Holding, 10, ValueType::I16);
        p.scale = 0.1;
        assert_eq!(
            write_pdu(&p, PointValue::Number(-1.5)).unwrap(),
            (vec![0x06, 0, 10, 0xFF, 0xF1], json!(-1.5))
        );
        let e = write_pdu(&p, PointValue::Number(4000.0)).unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        let mut f = pt("f", Table::Holding, 0, ValueType::F32);
        f.word_order = WordOrder::Little;
        let (pdu, v) = write_pdu(&f, PointValue::Number(21.5)).unwrap();
        // 21.5f32 = 0x41AC0000, low word first.
        assert_eq!(pdu, vec![0x10, 0, 0, 0, 2, 4, 0x00, 0x00, 0x41, 0xAC]);
        assert_eq!(v, json!(21.5));
        let c = pt("c", Table::Coil, 3, ValueType::Bool);
        assert_eq!(
            write_pdu(&c, PointValue::Bool(true)).unwrap().0,
            vec![0x05, 0, 3, 0xFF, 0]
        );
        assert!(write_pdu(&c, PointValue::Number(2.0)).is_err());
    }

    #[test]
    fn default_settings_parse() {
        let s = Settings::default();
        let points = parse_points(&s.points).unwrap();
        assert_eq!(points, room_sensor());
        assert_eq!(plan_reads(&points).len(), 2);
    }
}
