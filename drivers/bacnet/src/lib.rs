//! BACnet/IP sensors: the present-value (or any property) of configured objects, read
//! with ReadProperty or ReadPropertyMultiple and published as statuses.
//!
//! Protocol: ANSI/ASHRAE Standard 135 (BACnet), Annex J (BACnet/IP: the BVLL header
//! `0x81`, function, length; `Original-Unicast-NPDU` 0x0A on UDP port 47808), clause 6
//! (the NPDU: version 1, control octet), clause 20 (APDU encoding: Confirmed-Request,
//! Complex-ACK, Error, Reject, Abort; application and context tags) and clause 15.5
//! (ReadProperty, service choice 12) and 15.7 (ReadPropertyMultiple, 14: polls of two
//! points or more, up to [`MAX_RPM_POINTS`] per request, falling back to ReadProperty for
//! a device that refuses it).
//!
//! Every request is a Confirmed-Request with its own invoke id (0..=255,
//! wrapping, never two outstanding with the same one), sent as a `wait` command with the
//! settings' APDU timeout and retries (a retry resends the same invoke id, as clause 5.4
//! asks). Answers are matched by invoke id; an answer for any other id is logged and
//! ignored.
//!
//! The engine's UDP transport hands the driver raw bytes and joins datagrams that arrive
//! together (and cuts at 64 KiB): the driver frames by the BVLC length itself (several
//! messages in one read, a message split across reads), keeps at most one partial message
//! between reads (below [`MAX_BVLL`] bytes), drops the buffer on garbage (not `0x81`, an
//! impossible length) and reports it, and drops a partial message that is not completed
//! within half the APDU timeout.
//!
//! Settings: `points` (see [`Point`]), `poll_every_ms`, `timeout_ms`, `retries`,
//! `device_instance` (named in log lines), `read_multiple`.
//!
//! Statuses: one per point name (a number, scaled, or a bool for binary objects'
//! present-value and Boolean values), `last_error` (the latest device-level problem,
//! `null` once every point reads again) and `last_poll` (Unix ms of the latest successful
//! answer to a poll).
//!
//! Functions: `read(object, property?)` (any object and property: answers the decoded
//! value), `poll_now()`.

use lintel_driver_sdk::prelude::*;
use lintel_driver_sdk::serde_json;

/// The polling timer.
const POLL_TIMER: u32 = 1;
/// Drops a partial message that is not completed in time.
const FRAME_TIMER: u32 = 2;

/// The largest BVLL message accepted: an NPDU of at most 1497 octets (Annex J.2) in a
/// Forwarded-NPDU (a 10-octet header). Between reads the driver holds at most one partial
/// message, so its receive buffer stays below this.
pub const MAX_BVLL: usize = 1507;
/// The most points a module may have (each is one request per poll; the engine's queue
/// holds 64 commands).
pub const MAX_POINTS: usize = 32;
/// The longest point name.
const MAX_NAME: usize = 64;
/// The highest object instance (22 bits; 4194303 is "unconfigured").
const MAX_INSTANCE: u32 = 4_194_303;
/// The highest object type (10 bits).
const MAX_OBJECT_TYPE: u32 = 1023;
/// The highest property identifier (22 bits).
const MAX_PROPERTY: u32 = 4_194_303;
/// Status keys a point may not take.
const RESERVED_KEYS: [&str; 5] = [
    "connected",
    "connection_error",
    "driver_error",
    "last_error",
    "last_poll",
];
/// The most points one ReadPropertyMultiple asks for (its answer stays far below 480
/// octets, the smallest maximum APDU, for numbers and bools).
pub const MAX_RPM_POINTS: usize = 16;
/// Commands from functions go before polls.
const EXEC_PRIORITY: u8 = 80;
/// The `present-value` property.
pub const PRESENT_VALUE: u32 = 85;
/// The values of a character string (or octet string) kept in an answer, in bytes.
const MAX_STRING: usize = 1024;
/// The values of a list or array kept in an answer.
const MAX_VALUES: usize = 256;

/// Object types by number (ASHRAE 135, `BACnetObjectType`).
const OBJECT_TYPES: [(u32, &str); 63] = [
    (0, "analog-input"),
    (1, "analog-output"),
    (2, "analog-value"),
    (3, "binary-input"),
    (4, "binary-output"),
    (5, "binary-value"),
    (6, "calendar"),
    (7, "command"),
    (8, "device"),
    (9, "event-enrollment"),
    (10, "file"),
    (11, "group"),
    (12, "loop"),
    (13, "multi-state-input"),
    (14, "multi-state-output"),
    (15, "notification-class"),
    (16, "program"),
    (17, "schedule"),
    (18, "averaging"),
    (19, "multi-state-value"),
    (20, "trend-log"),
    (21, "life-safety-point"),
    (22, "life-safety-zone"),
    (23, "accumulator"),
    (24, "pulse-converter"),
    (25, "event-log"),
    (26, "global-group"),
    (27, "trend-log-multiple"),
    (28, "load-control"),
    (29, "structured-view"),
    (30, "access-door"),
    (31, "timer"),
    (32, "access-credential"),
    (33, "access-point"),
    (34, "access-rights"),
    (35, "access-user"),
    (36, "access-zone"),
    (37, "credential-data-input"),
    (38, "network-security"),
    (39, "bitstring-value"),
    (40, "characterstring-value"),
    (41, "date-pattern-value"),
    (42, "date-value"),
    (43, "datetime-pattern-value"),
    (44, "datetime-value"),
    (45, "integer-value"),
    (46, "large-analog-value"),
    (47, "octetstring-value"),
    (48, "positive-integer-value"),
    (49, "time-pattern-value"),
    (50, "time-value"),
    (51, "notification-forwarder"),
    (52, "alert-enrollment"),
    (53, "channel"),
    (54, "lighting-output"),
    (55, "binary-lighting-output"),
    (56, "network-port"),
    (57, "elevator-group"),
    (58, "escalator"),
    (59, "lift"),
    (60, "staging"),
    (61, "audit-log"),
    (62, "audit-reporter"),
];

/// Common property identifiers by number (ASHRAE 135, `BACnetPropertyIdentifier`); any
/// other is given by its number.
const PROPERTIES: [(u32, &str); 38] = [
    (4, "active-text"),
    (12, "application-software-version"),
    (22, "cov-increment"),
    (28, "description"),
    (31, "device-type"),
    (36, "event-state"),
    (44, "firmware-revision"),
    (45, "high-limit"),
    (46, "inactive-text"),
    (56, "local-date"),
    (57, "local-time"),
    (58, "location"),
    (59, "low-limit"),
    (62, "max-apdu-length-accepted"),
    (65, "max-pres-value"),
    (69, "min-pres-value"),
    (70, "model-name"),
    (74, "number-of-states"),
    (75, "object-identifier"),
    (76, "object-list"),
    (77, "object-name"),
    (79, "object-type"),
    (81, "out-of-service"),
    (84, "polarity"),
    (85, "present-value"),
    (87, "priority-array"),
    (98, "protocol-version"),
    (103, "reliability"),
    (104, "relinquish-default"),
    (106, "resolution"),
    (107, "segmentation-supported"),
    (110, "state-text"),
    (111, "status-flags"),
    (112, "system-status"),
    (117, "units"),
    (120, "vendor-identifier"),
    (121, "vendor-name"),
    (139, "protocol-revision"),
];

/// `BACnetErrorClass` names.
fn error_class_name(class: u32) -> &'static str {
    match class {
        0 => "device",
        1 => "object",
        2 => "property",
        3 => "resources",
        4 => "security",
        5 => "services",
        6 => "vt",
        7 => "communication",
        _ => "proprietary or unknown",
    }
}

/// `BACnetErrorCode` names (the common ones).
pub fn error_code_name(code: u32) -> &'static str {
    match code {
        0 => "other",
        2 => "configuration-in-progress",
        3 => "device-busy",
        5 => "file-access-denied",
        7 => "inconsistent-parameters",
        9 => "invalid-data-type",
        13 => "invalid-parameter-data-type",
        16 => "missing-required-parameter",
        25 => "operational-problem",
        26 => "password-failure",
        27 => "read-access-denied",
        29 => "service-request-denied",
        30 => "timeout",
        31 => "unknown-object",
        32 => "unknown-property",
        36 => "unsupported-object-type",
        37 => "value-out-of-range",
        41 => "character-set-not-supported",
        42 => "invalid-array-index",
        45 => "optional-functionality-not-supported",
        47 => "datatype-not-supported",
        50 => "property-is-not-an-array",
        _ => "unknown error code",
    }
}

/// `BACnetRejectReason` names.
pub fn reject_reason_name(reason: u8) -> &'static str {
    match reason {
        0 => "other",
        1 => "buffer-overflow",
        2 => "inconsistent-parameters",
        3 => "invalid-parameter-datatype",
        4 => "invalid-tag",
        5 => "missing-required-parameter",
        6 => "parameter-out-of-range",
        7 => "too-many-arguments",
        8 => "undefined-enumeration",
        9 => "unrecognized-service",
        _ => "proprietary or unknown",
    }
}

/// `BACnetAbortReason` names.
pub fn abort_reason_name(reason: u8) -> &'static str {
    match reason {
        0 => "other",
        1 => "buffer-overflow",
        2 => "invalid-apdu-in-this-state",
        3 => "preempted-by-higher-priority-task",
        4 => "segmentation-not-supported",
        5 => "security-error",
        6 => "insufficient-security",
        7 => "window-size-out-of-range",
        8 => "application-exceeded-reply-time",
        9 => "out-of-resources",
        10 => "tsm-timeout",
        11 => "apdu-too-long",
        _ => "proprietary or unknown",
    }
}

/// A BACnet object: its type and instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectId {
    /// The object type, 0..=1023.
    pub kind: u32,
    /// The instance, 0..=4194303.
    pub instance: u32,
}

impl ObjectId {
    /// Parse `type,instance`: the type by name (`analog-input`) or number (`0`).
    pub fn parse(text: &str) -> Result<ObjectId, String> {
        let (kind, instance) = text.split_once(',').ok_or_else(|| {
            format!("object `{text}` must be `type,instance` (e.g. `analog-input,1`)")
        })?;
        let kind = kind.trim();
        let kind = match OBJECT_TYPES.iter().find(|(_, n)| *n == kind) {
            Some((k, _)) => *k,
            None => match kind.parse::<u32>() {
                Ok(k) if k <= MAX_OBJECT_TYPE => k,
                Ok(k) => return Err(format!("object type {k} is over {MAX_OBJECT_TYPE}")),
                Err(_) => {
                    return Err(format!(
                        "unknown object type `{kind}` (a name such as `analog-input`, `binary-input`, `multi-state-value`, or a number 0..={MAX_OBJECT_TYPE})"
                    ));
                }
            },
        };
        let instance = instance.trim();
        let instance = instance
            .parse::<u32>()
            .ok()
            .filter(|i| *i <= MAX_INSTANCE)
            .ok_or_else(|| {
                format!("object instance must be 0..={MAX_INSTANCE}, got `{instance}`")
            })?;
        Ok(ObjectId { kind, instance })
    }

    /// The encoded identifier: 10 bits of type, 22 of instance.
    pub fn encode(self) -> u32 {
        (self.kind << 22) | self.instance
    }

    fn decode(raw: u32) -> ObjectId {
        ObjectId {
            kind: raw >> 22,
            instance: raw & 0x3F_FFFF,
        }
    }

    /// Binary objects, whose present-value is `inactive` (0) or `active` (1).
    fn is_binary(self) -> bool {
        matches!(self.kind, 3..=5 | 55)
    }
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match OBJECT_TYPES.iter().find(|(k, _)| *k == self.kind) {
            Some((_, name)) => write!(f, "{name},{}", self.instance),
            None => write!(f, "{},{}", self.kind, self.instance),
        }
    }
}

/// Parse a property: by name (`present-value`) or number (`85`).
pub fn parse_property(text: &str) -> Result<u32, String> {
    let text = text.trim();
    if let Some((p, _)) = PROPERTIES.iter().find(|(_, n)| *n == text) {
        return Ok(*p);
    }
    match text.parse::<u32>() {
        Ok(p) if p <= MAX_PROPERTY => Ok(p),
        _ => Err(format!(
            "unknown property `{text}` (a name such as `present-value`, `object-name`, `units`, or a number 0..={MAX_PROPERTY})"
        )),
    }
}

/// A property's name, or its number.
pub fn property_name(p: u32) -> String {
    PROPERTIES
        .iter()
        .find(|(n, _)| *n == p)
        .map_or_else(|| p.to_string(), |(_, name)| (*name).to_string())
}

fn present_value() -> String {
    "present-value".into()
}

fn is_present_value(p: &String) -> bool {
    p == "present-value"
}

fn one() -> f64 {
    1.0
}

fn is_one(v: &f64) -> bool {
    *v == 1.0
}

/// One value of the device: which object and property to read, and the status it is
/// published as.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(crate = "lintel_driver_sdk::serde", deny_unknown_fields)]
pub struct Point {
    /// The status key the value is published as (letters, digits, `_`, `-`, `.`; at most
    /// 64 bytes; unique), e.g. `temperature`, `humidity`, `co2`, `occupancy`.
    pub name: String,
    /// The object: `type,instance`, the type by name (`analog-input,1`,
    /// `binary-input,3`, `multi-state-value,2`) or number (`0,1`).
    pub object: String,
    /// The property read (default `present-value`): a name (`present-value`,
    /// `object-name`, `units`, …) or a number.
    #[serde(default = "present_value", skip_serializing_if = "is_present_value")]
    pub property: String,
    /// Numbers are published multiplied by this (default 1; finite, not 0).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub scale: f64,
}

/// A point with its object and property parsed.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    name: String,
    object: ObjectId,
    property: u32,
    scale: f64,
}

/// The driver's settings.
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(crate = "lintel_driver_sdk::serde", default)]
pub struct Settings {
    /// The objects to read: 0..=32 points (default none: only `read` is available).
    #[schemars(with = "Vec<Point>")]
    pub points: Vec<Value>,
    /// How often to read every point, in milliseconds (100..=3600000, default 10000).
    #[schemars(range(min = 100, max = 3_600_000))]
    pub poll_every_ms: u64,
    /// The APDU timeout: how long to wait for each answer before resending, in
    /// milliseconds (50..=60000, default 3000). A partial message is dropped after half
    /// of it.
    #[schemars(range(min = 50, max = 60_000))]
    pub timeout_ms: u32,
    /// How many times a request is resent after a timeout or a malformed answer (0..=10,
    /// default 2).
    #[schemars(range(min = 0, max = 10))]
    pub retries: i64,
    /// The device's instance number (0..=4194303), named in log lines; optional.
    #[schemars(range(min = 0, max = 4_194_303))]
    pub device_instance: Option<i64>,
    /// Poll with ReadPropertyMultiple (up to 16 points per request) when there are two
    /// points or more (default true); the driver falls back to ReadProperty, one request
    /// per point, for a device that refuses it.
    pub read_multiple: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            points: Vec::new(),
            poll_every_ms: 10_000,
            timeout_ms: 3000,
            retries: 2,
            device_instance: None,
            read_multiple: true,
        }
    }
}

/// Parse and check the points; errors name the point.
fn parse_points(points: &[Value]) -> Result<Vec<Target>, String> {
    if points.len() > MAX_POINTS {
        return Err(format!(
            "points must hold at most {MAX_POINTS} points, got {}",
            points.len()
        ));
    }
    let mut parsed: Vec<Target> = Vec::with_capacity(points.len());
    for (i, raw) in points.iter().enumerate() {
        let label = match raw.get("name").and_then(Value::as_str) {
            Some(name) => format!("point {i} (`{name}`)"),
            None => format!("point {i}"),
        };
        let p: Point = serde_json::from_value(raw.clone()).map_err(|e| format!("{label}: {e}"))?;
        let t = validate(&p).map_err(|e| format!("{label}: {e}"))?;
        if parsed.iter().any(|q| q.name == t.name) {
            return Err(format!("{label}: the name `{}` is used twice", t.name));
        }
        parsed.push(t);
    }
    Ok(parsed)
}

fn validate(p: &Point) -> Result<Target, String> {
    if p.name.is_empty() || p.name.len() > MAX_NAME {
        return Err(format!("name must be 1..={MAX_NAME} bytes"));
    }
    if !p
        .name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err("name may hold only letters, digits, `_`, `-` and `.`".into());
    }
    if RESERVED_KEYS.contains(&p.name.as_str()) {
        return Err(format!(
            "name `{}` is reserved for the driver's own status",
            p.name
        ));
    }
    if !p.scale.is_finite() || p.scale == 0.0 {
        return Err(format!(
            "scale must be a finite, non-zero number, got {}",
            p.scale
        ));
    }
    Ok(Target {
        name: p.name.clone(),
        object: ObjectId::parse(&p.object)?,
        property: parse_property(&p.property)?,
        scale: p.scale,
    })
}

// ---------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------

/// A ReadProperty Confirmed-Request in an Original-Unicast-NPDU.
pub fn read_property_request(invoke: u8, object: ObjectId, property: u32) -> Vec<u8> {
    // APDU (clause 20.1.2): Confirmed-Request, not segmented, segmented answers not
    // accepted; max segments unspecified, max APDU 1476 octets (0x05); invoke id;
    // service choice 12 (readProperty).
    let mut apdu = vec![0x00, 0x05, invoke, 12];
    // [0] objectIdentifier: context tag 0, 4 octets.
    apdu.push(0x0C);
    apdu.extend_from_slice(&object.encode().to_be_bytes());
    // [1] propertyIdentifier: context tag 1, the fewest octets.
    let bytes = property.to_be_bytes();
    let skip = bytes.iter().take(3).take_while(|b| **b == 0).count();
    apdu.push(0x18 | (4 - skip) as u8);
    apdu.extend_from_slice(&bytes[skip..]);
    bvll(&apdu)
}

/// A ReadPropertyMultiple Confirmed-Request (service choice 14) in an
/// Original-Unicast-NPDU: one read access specification per (object, property).
pub fn read_property_multiple_request(invoke: u8, asked: &[(ObjectId, u32)]) -> Vec<u8> {
    let mut apdu = vec![0x00, 0x05, invoke, 14];
    for (object, property) in asked {
        // [0] objectIdentifier, [1] listOfPropertyReferences { [0] propertyIdentifier }.
        apdu.push(0x0C);
        apdu.extend_from_slice(&object.encode().to_be_bytes());
        apdu.push(0x1E);
        let bytes = property.to_be_bytes();
        let skip = bytes.iter().take(3).take_while(|b| **b == 0).count();
        apdu.push(0x08 | (4 - skip) as u8);
        apdu.extend_from_slice(&bytes[skip..]);
        apdu.push(0x1F);
    }
    bvll(&apdu)
}

/// An Original-Unicast-NPDU: BVLC header, NPDU (version 1, expecting reply), `apdu`.
fn bvll(apdu: &[u8]) -> Vec<u8> {
    let length = (4 + 2 + apdu.len()) as u16;
    let mut out = vec![0x81, 0x0A];
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x04]);
    out.extend_from_slice(apdu);
    out
}

// ---------------------------------------------------------------------------------------
// Framing and decoding
// ---------------------------------------------------------------------------------------

/// What the receive buffer starts with.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// More bytes are needed.
    Partial,
    /// A complete BVLL message of this many bytes.
    Complete(usize),
    /// Not BACnet/IP.
    Garbage(String),
}

/// Frame the start of `buf` by the BVLC header.
pub fn frame(buf: &[u8]) -> Frame {
    let Some(&kind) = buf.first() else {
        return Frame::Partial;
    };
    if kind != 0x81 {
        return Frame::Garbage(format!("BVLC type 0x{kind:02x} is not 0x81 (BACnet/IP)"));
    }
    if buf.len() < 4 {
        return Frame::Partial;
    }
    let length = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    if !(4..=MAX_BVLL).contains(&length) {
        return Frame::Garbage(format!("BVLC length {length} is outside 4..={MAX_BVLL}"));
    }
    if buf.len() < length {
        Frame::Partial
    } else {
        Frame::Complete(length)
    }
}

/// An APDU answering a confirmed request.
#[derive(Debug, PartialEq)]
pub enum Reply<'a> {
    /// Complex-ACK: the service's data.
    ComplexAck {
        invoke: u8,
        service: u8,
        data: &'a [u8],
    },
    /// A Complex-ACK that is one segment of a longer answer (not supported).
    Segmented {
        invoke: u8,
    },
    SimpleAck {
        invoke: u8,
        service: u8,
    },
    /// Error: the error class and code.
    Error {
        invoke: u8,
        service: u8,
        class: u32,
        code: u32,
    },
    Reject {
        invoke: u8,
        reason: u8,
    },
    Abort {
        invoke: u8,
        reason: u8,
    },
}

impl Reply<'_> {
    fn invoke(&self) -> u8 {
        match self {
            Reply::ComplexAck { invoke, .. }
            | Reply::Segmented { invoke }
            | Reply::SimpleAck { invoke, .. }
            | Reply::Error { invoke, .. }
            | Reply::Reject { invoke, .. }
            | Reply::Abort { invoke, .. } => *invoke,
        }
    }
}

/// Decode one complete BVLL message: `Ok(None)` for what answers no request (network
/// layer messages, unconfirmed requests such as I-Am, BVLC-Result, other BVLC functions),
/// `Err` for a malformed message.
pub fn decode_message(msg: &[u8]) -> Result<Option<Reply<'_>>, String> {
    let npdu = match msg[1] {
        0x0A | 0x0B => &msg[4..],
        // Forwarded-NPDU: the original source's B/IP address (6 octets) first.
        0x04 => msg
            .get(10..)
            .ok_or("a Forwarded-NPDU shorter than its 10-octet header")?,
        // BVLC-Result and the BBMD functions answer no request of ours.
        _ => return Ok(None),
    };
    if npdu.len() < 2 {
        return Err(format!("the NPDU is {} octets long", npdu.len()));
    }
    if npdu[0] != 0x01 {
        return Err(format!("NPDU version {} is not 1", npdu[0]));
    }
    let control = npdu[1];
    let mut at = 2;
    let short = || "the NPDU header is truncated".to_string();
    if control & 0x20 != 0 {
        // DNET (2), DLEN (1), DADR (DLEN).
        let dlen = *npdu.get(at + 2).ok_or_else(short)?;
        at += 3 + usize::from(dlen);
    }
    if control & 0x08 != 0 {
        // SNET (2), SLEN (1), SADR (SLEN).
        let slen = *npdu.get(at + 2).ok_or_else(short)?;
        at += 3 + usize::from(slen);
    }
    if control & 0x20 != 0 {
        at += 1; // hop count
    }
    if control & 0x80 != 0 {
        // A network layer message, not an APDU.
        return Ok(None);
    }
    let apdu = npdu.get(at..).ok_or_else(short)?;
    decode_apdu(apdu)
}

fn decode_apdu(apdu: &[u8]) -> Result<Option<Reply<'_>>, String> {
    let Some(&first) = apdu.first() else {
        return Err("the APDU is empty".into());
    };
    let need = |n: usize, what: &str| -> Result<(), String> {
        if apdu.len() < n {
            Err(format!(
                "a {what} of {} octets (at least {n} expected)",
                apdu.len()
            ))
        } else {
            Ok(())
        }
    };
    Ok(Some(match first >> 4 {
        // Confirmed and unconfirmed requests (Who-Is, I-Am, ...), Segment-ACK: not answers.
        0 | 1 | 4 => return Ok(None),
        2 => {
            need(3, "Simple-ACK")?;
            Reply::SimpleAck {
                invoke: apdu[1],
                service: apdu[2],
            }
        }
        3 => {
            if first & 0x08 != 0 {
                need(2, "segmented Complex-ACK")?;
                Reply::Segmented { invoke: apdu[1] }
            } else {
                need(3, "Complex-ACK")?;
                Reply::ComplexAck {
                    invoke: apdu[1],
                    service: apdu[2],
                    data: &apdu[3..],
                }
            }
        }
        5 => {
            need(3, "Error PDU")?;
            let invoke = apdu[1];
            let service = apdu[2];
            let mut at = 3;
            let mut enumerated = |what: &str| -> Result<u32, String> {
                let t =
                    read_tag(apdu, &mut at).map_err(|e| format!("the Error PDU's {what}: {e}"))?;
                match t {
                    Tag {
                        number: 9,
                        context: false,
                        body: Body::Content(c),
                    } if (1..=4).contains(&c.len()) => Ok(unsigned(c) as u32),
                    _ => Err(format!("the Error PDU's {what} is not an enumerated value")),
                }
            };
            let class = enumerated("error class")?;
            let code = enumerated("error code")?;
            Reply::Error {
                invoke,
                service,
                class,
                code,
            }
        }
        6 => {
            need(3, "Reject PDU")?;
            Reply::Reject {
                invoke: apdu[1],
                reason: apdu[2],
            }
        }
        7 => {
            need(3, "Abort PDU")?;
            Reply::Abort {
                invoke: apdu[1],
                reason: apdu[2],
            }
        }
        other => return Err(format!("unknown APDU type {other}")),
    }))
}

/// A tag's body.
#[derive(Debug, PartialEq)]
enum Body<'a> {
    /// Its content octets.
    Content(&'a [u8]),
    /// An application Boolean: its value is in the tag.
    Boolean(bool),
    Opening,
    Closing,
}

#[derive(Debug, PartialEq)]
struct Tag<'a> {
    number: u32,
    context: bool,
    body: Body<'a>,
}

/// Read one tag and its content at `*at` (clause 20.2.1).
fn read_tag<'a>(data: &'a [u8], at: &mut usize) -> Result<Tag<'a>, String> {
    let truncated = || "truncated".to_string();
    let first = *data.get(*at).ok_or_else(truncated)?;
    *at += 1;
    let mut number = u32::from(first >> 4);
    if number == 15 {
        number = u32::from(*data.get(*at).ok_or_else(truncated)?);
        *at += 1;
    }
    let context = first & 0x08 != 0;
    let lvt = first & 0x07;
    if context && lvt == 6 {
        return Ok(Tag {
            number,
            context,
            body: Body::Opening,
        });
    }
    if context && lvt == 7 {
        return Ok(Tag {
            number,
            context,
            body: Body::Closing,
        });
    }
    if !context && number == 1 {
        if lvt > 1 {
            return Err(format!("a Boolean of value {lvt}"));
        }
        return Ok(Tag {
            number,
            context,
            body: Body::Boolean(lvt == 1),
        });
    }
    let length = if lvt == 5 {
        let n = *data.get(*at).ok_or_else(truncated)?;
        *at += 1;
        match n {
            254 => {
                let b = data.get(*at..*at + 2).ok_or_else(truncated)?;
                *at += 2;
                usize::from(u16::from_be_bytes([b[0], b[1]]))
            }
            255 => {
                let b = data.get(*at..*at + 4).ok_or_else(truncated)?;
                *at += 4;
                u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
            }
            n => usize::from(n),
        }
    } else if lvt > 5 {
        return Err(format!("application tag {number} with length code {lvt}"));
    } else {
        usize::from(lvt)
    };
    let end = at
        .checked_add(length)
        .filter(|e| *e <= data.len())
        .ok_or_else(|| format!("a tag announces {length} octets, fewer remain"))?;
    let content = &data[*at..end];
    *at = end;
    Ok(Tag {
        number,
        context,
        body: Body::Content(content),
    })
}

fn unsigned(c: &[u8]) -> u64 {
    c.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b))
}

/// A decoded application-tagged value.
#[derive(Debug, Clone, PartialEq)]
pub enum BacValue {
    Null,
    Boolean(bool),
    Unsigned(u64),
    Signed(i64),
    Real(f32),
    Double(f64),
    OctetString(Vec<u8>),
    CharacterString(String),
    BitString(Vec<bool>),
    Enumerated(u32),
    Date(String),
    Time(String),
    ObjectIdentifier(ObjectId),
    /// Context-tagged (constructed) data, not decoded.
    Constructed,
}

impl BacValue {
    fn type_name(&self) -> &'static str {
        match self {
            BacValue::Null => "a Null",
            BacValue::Boolean(_) => "a Boolean",
            BacValue::Unsigned(_) => "an Unsigned",
            BacValue::Signed(_) => "a Signed",
            BacValue::Real(_) => "a Real",
            BacValue::Double(_) => "a Double",
            BacValue::OctetString(_) => "an OctetString",
            BacValue::CharacterString(_) => "a CharacterString",
            BacValue::BitString(_) => "a BitString",
            BacValue::Enumerated(_) => "an Enumerated",
            BacValue::Date(_) => "a Date",
            BacValue::Time(_) => "a Time",
            BacValue::ObjectIdentifier(_) => "a BACnetObjectIdentifier",
            BacValue::Constructed => "constructed data",
        }
    }
}

/// A Real as the decimal it was meant to be (22.3f32 is published as 22.3, not
/// 22.299999237060547).
fn real_to_f64(f: f32) -> f64 {
    f.to_string().parse().unwrap_or(f64::from(f))
}

fn decode_app(number: u32, c: &[u8]) -> Result<BacValue, String> {
    let len_is = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(format!("{what} of {} octets", c.len()))
        }
    };
    Ok(match number {
        0 => BacValue::Null,
        2 => {
            len_is((1..=8).contains(&c.len()), "an Unsigned")?;
            BacValue::Unsigned(unsigned(c))
        }
        3 => {
            len_is((1..=8).contains(&c.len()), "a Signed")?;
            let shift = 64 - 8 * c.len() as u32;
            BacValue::Signed(((unsigned(c) << shift) as i64) >> shift)
        }
        4 => {
            len_is(c.len() == 4, "a Real")?;
            BacValue::Real(f32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        }
        5 => {
            len_is(c.len() == 8, "a Double")?;
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            BacValue::Double(f64::from_be_bytes(b))
        }
        6 => BacValue::OctetString(c[..c.len().min(MAX_STRING)].to_vec()),
        7 => {
            len_is(!c.is_empty(), "a CharacterString")?;
            let body = &c[1..c.len().min(MAX_STRING + 1)];
            BacValue::CharacterString(match c[0] {
                // ANSI X3.4 / UTF-8.
                0 => String::from_utf8_lossy(body).into_owned(),
                // UCS-2, big-endian.
                4 => {
                    let units: Vec<u16> = body
                        .chunks_exact(2)
                        .map(|p| u16::from_be_bytes([p[0], p[1]]))
                        .collect();
                    String::from_utf16_lossy(&units)
                }
                // ISO 8859-1.
                5 => body.iter().map(|b| char::from(*b)).collect(),
                other => return Err(format!("character set {other} is not supported")),
            })
        }
        8 => {
            len_is(!c.is_empty(), "a BitString")?;
            let unused = usize::from(c[0]);
            let bits = (c.len() - 1) * 8;
            if unused > 7 || unused > bits {
                return Err(format!("a BitString with {unused} unused bits"));
            }
            BacValue::BitString(
                (0..(bits - unused).min(MAX_VALUES))
                    .map(|i| c[1 + i / 8] & (0x80 >> (i % 8)) != 0)
                    .collect(),
            )
        }
        9 => {
            len_is((1..=4).contains(&c.len()), "an Enumerated")?;
            BacValue::Enumerated(unsigned(c) as u32)
        }
        10 => {
            len_is(c.len() == 4, "a Date")?;
            let part = |v: u8, w: usize, add: u32| {
                if v == 255 {
                    "*".repeat(w.min(1))
                } else {
                    format!("{:0w$}", u32::from(v) + add)
                }
            };
            BacValue::Date(format!(
                "{}-{}-{}",
                part(c[0], 4, 1900),
                part(c[1], 2, 0),
                part(c[2], 2, 0)
            ))
        }
        11 => {
            len_is(c.len() == 4, "a Time")?;
            let part = |v: u8| {
                if v == 255 {
                    "*".to_string()
                } else {
                    format!("{v:02}")
                }
            };
            BacValue::Time(format!(
                "{}:{}:{}.{}",
                part(c[0]),
                part(c[1]),
                part(c[2]),
                part(c[3])
            ))
        }
        12 => {
            len_is(c.len() == 4, "an object identifier")?;
            BacValue::ObjectIdentifier(ObjectId::decode(unsigned(c) as u32))
        }
        other => return Err(format!("application tag {other} is reserved")),
    })
}

/// Decode a ReadProperty-ACK's data for a read of `object`'s `property`: its values
/// (one, or several for a list or an array).
pub fn decode_read_property_ack(
    data: &[u8],
    object: ObjectId,
    property: u32,
) -> Result<Vec<BacValue>, String> {
    let mut at = 0;
    match read_tag(data, &mut at)? {
        Tag {
            number: 0,
            context: true,
            body: Body::Content(c),
        } if c.len() == 4 => {
            let got = ObjectId::decode(unsigned(c) as u32);
            if got != object {
                return Err(format!("it is about {got}, not {object}"));
            }
        }
        _ => return Err("no object identifier (context tag 0)".into()),
    }
    match read_tag(data, &mut at)? {
        Tag {
            number: 1,
            context: true,
            body: Body::Content(c),
        } if (1..=4).contains(&c.len()) => {
            let got = unsigned(c) as u32;
            if got != property {
                return Err(format!(
                    "it is about property {}, not {}",
                    property_name(got),
                    property_name(property)
                ));
            }
        }
        _ => return Err("no property identifier (context tag 1)".into()),
    }
    let mut tag = read_tag(data, &mut at)?;
    if tag.number == 2 && tag.context && matches!(tag.body, Body::Content(_)) {
        // An array index we did not ask for: accepted, the value follows.
        tag = read_tag(data, &mut at)?;
    }
    if !(tag.number == 3 && tag.context && tag.body == Body::Opening) {
        return Err("no property value (opening tag 3)".into());
    }
    let values = read_values(data, &mut at, 3)?;
    if at != data.len() {
        return Err(format!("{} octets after the value", data.len() - at));
    }
    Ok(values)
}

/// The values after an opening tag, up to the matching closing tag `closing`.
fn read_values(data: &[u8], at: &mut usize, closing: u32) -> Result<Vec<BacValue>, String> {
    let mut values = Vec::new();
    let mut depth = 0usize;
    loop {
        let t = read_tag(data, at).map_err(|e| format!("in the property value: {e}"))?;
        match (t.context, t.body) {
            (true, Body::Closing) if depth == 0 => {
                if t.number != closing {
                    return Err(format!("closing tag {} instead of {closing}", t.number));
                }
                return Ok(values);
            }
            (true, Body::Closing) => depth -= 1,
            (true, Body::Opening) => {
                if depth == 0 {
                    values.push(BacValue::Constructed);
                }
                depth += 1;
            }
            (true, _) => {
                if depth == 0 {
                    values.push(BacValue::Constructed);
                }
            }
            (false, body) if depth == 0 => {
                let v = match body {
                    Body::Boolean(b) => BacValue::Boolean(b),
                    Body::Content(c) => decode_app(t.number, c)?,
                    _ => unreachable!("application tags have content"),
                };
                if values.len() < MAX_VALUES {
                    values.push(v);
                }
            }
            (false, _) => {}
        }
    }
}

/// One result of a ReadPropertyMultiple-ACK: the values, or the error class and code.
pub type PropertyResult = Result<Vec<BacValue>, (u32, u32)>;

/// Decode a ReadPropertyMultiple-ACK's data (clause 15.7) for a request of `asked`
/// (object, property) pairs, one read access specification each: one result per pair, in
/// order.
pub fn decode_rpm_ack(
    data: &[u8],
    asked: &[(ObjectId, u32)],
) -> Result<Vec<PropertyResult>, String> {
    let mut at = 0;
    let mut results = Vec::with_capacity(asked.len());
    while at < data.len() {
        let object = match read_tag(data, &mut at)? {
            Tag {
                number: 0,
                context: true,
                body: Body::Content(c),
            } if c.len() == 4 => ObjectId::decode(unsigned(c) as u32),
            _ => return Err("no object identifier (context tag 0)".into()),
        };
        if !matches!(
            read_tag(data, &mut at)?,
            Tag {
                number: 1,
                context: true,
                body: Body::Opening
            }
        ) {
            return Err("no list of results (opening tag 1)".into());
        }
        loop {
            let property = match read_tag(data, &mut at)? {
                Tag {
                    number: 1,
                    context: true,
                    body: Body::Closing,
                } => break,
                Tag {
                    number: 2,
                    context: true,
                    body: Body::Content(c),
                } if (1..=4).contains(&c.len()) => unsigned(c) as u32,
                _ => return Err("no property identifier (context tag 2)".into()),
            };
            let mut tag = read_tag(data, &mut at)?;
            if tag.number == 3 && tag.context && matches!(tag.body, Body::Content(_)) {
                tag = read_tag(data, &mut at)?;
            }
            let result = match (tag.number, tag.context, tag.body) {
                (4, true, Body::Opening) => Ok(read_values(data, &mut at, 4)?),
                (5, true, Body::Opening) => {
                    let mut enumerated = |what: &str| -> Result<u32, String> {
                        match read_tag(data, &mut at)? {
                            Tag {
                                number: 9,
                                context: false,
                                body: Body::Content(c),
                            } if (1..=4).contains(&c.len()) => Ok(unsigned(c) as u32),
                            _ => Err(format!("a property access error without its {what}")),
                        }
                    };
                    let class = enumerated("error class")?;
                    let code = enumerated("error code")?;
                    if !matches!(
                        read_tag(data, &mut at)?,
                        Tag {
                            number: 5,
                            context: true,
                            body: Body::Closing
                        }
                    ) {
                        return Err("a property access error without closing tag 5".into());
                    }
                    Err((class, code))
                }
                _ => return Err("neither a value (tag 4) nor an error (tag 5)".into()),
            };
            let Some(&(want_object, want_property)) = asked.get(results.len()) else {
                return Err(format!("more results than the {} asked for", asked.len()));
            };
            if (object, property) != (want_object, want_property) {
                return Err(format!(
                    "result {} is about {object} {}, not {want_object} {}",
                    results.len() + 1,
                    property_name(property),
                    property_name(want_property)
                ));
            }
            results.push(result);
        }
    }
    if results.len() != asked.len() {
        return Err(format!(
            "{} results for the {} properties asked for",
            results.len(),
            asked.len()
        ));
    }
    Ok(results)
}

/// The JSON of one value: binary objects' present-value as a bool.
fn to_json(v: &BacValue, object: ObjectId, property: u32) -> Value {
    match v {
        BacValue::Null => Value::Null,
        BacValue::Boolean(b) => json!(b),
        BacValue::Unsigned(u) => json!(u),
        BacValue::Signed(i) => json!(i),
        BacValue::Real(f) if f.is_finite() => json!(real_to_f64(*f)),
        BacValue::Double(f) if f.is_finite() => json!(f),
        BacValue::Real(_) | BacValue::Double(_) => Value::Null,
        BacValue::OctetString(b) => json!(hex_string(b)),
        BacValue::CharacterString(s) => json!(s),
        BacValue::BitString(bits) => json!(bits),
        BacValue::Enumerated(e) if object.is_binary() && property == PRESENT_VALUE && *e <= 1 => {
            json!(*e == 1)
        }
        BacValue::Enumerated(e) => json!(e),
        BacValue::Date(s) | BacValue::Time(s) => json!(s),
        BacValue::ObjectIdentifier(o) => json!(o.to_string()),
        BacValue::Constructed => json!("(constructed data)"),
    }
}

/// The answer of `read`: one value, or an array for a list.
fn answer_json(values: &[BacValue], object: ObjectId, property: u32) -> Result<Value, String> {
    if values.contains(&BacValue::Constructed) {
        return Err(format!(
            "{object} {} holds constructed data, which this driver does not decode",
            property_name(property)
        ));
    }
    Ok(match values {
        [one] => to_json(one, object, property),
        many => Value::Array(many.iter().map(|v| to_json(v, object, property)).collect()),
    })
}

/// A point's published value: a number (scaled) or a bool.
fn point_value(t: &Target, values: &[BacValue]) -> Result<Value, String> {
    let number = |v: f64| -> Result<Value, String> {
        if !v.is_finite() {
            return Err(format!("the value {v} is not a finite number"));
        }
        let v = v * t.scale;
        // Drop binary noise from the scale (0.1 * 3 = 0.30000000000000004).
        let v = if t.scale != 1.0 && v.abs() < 1e12 {
            (v * 1e6).round() / 1e6
        } else {
            v
        };
        Ok(json!(v))
    };
    let unexpected = |v: &BacValue| {
        Err(format!(
            "the device answered {} ({}), expected a number or a boolean",
            v.type_name(),
            shorten(&to_json(v, t.object, t.property).to_string())
        ))
    };
    match values {
        [BacValue::Real(f)] => number(real_to_f64(*f)),
        [BacValue::Double(f)] => number(*f),
        [BacValue::Unsigned(u)] if t.scale == 1.0 => Ok(json!(u)),
        [BacValue::Signed(i)] if t.scale == 1.0 => Ok(json!(i)),
        [BacValue::Unsigned(u)] => number(*u as f64),
        [BacValue::Signed(i)] => number(*i as f64),
        [BacValue::Boolean(b)] => Ok(json!(b)),
        [BacValue::Enumerated(e)] => {
            if t.object.is_binary() && t.property == PRESENT_VALUE {
                if *e > 1 {
                    return Err(format!(
                        "the device answered {e} for a binary present-value (0 inactive or 1 active expected)"
                    ));
                }
                Ok(json!(*e == 1))
            } else {
                Ok(json!(e))
            }
        }
        [v] => unexpected(v),
        [] => Err("the device answered no value".into()),
        many => Err(format!(
            "the device answered {} values, expected one",
            many.len()
        )),
    }
}

fn shorten(s: &str) -> String {
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s.to_string()
    }
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex(bytes: &[u8]) -> String {
    let shown: Vec<String> = bytes.iter().take(24).map(|b| format!("{b:02x}")).collect();
    let more = if bytes.len() > 24 { " …" } else { "" };
    format!("{}{more}", shown.join(" "))
}

// ---------------------------------------------------------------------------------------
// The driver
// ---------------------------------------------------------------------------------------

/// What a frame is to the command waiting for an answer.
#[derive(Debug)]
enum Handled {
    /// Not an answer to the waiting request (another invoke id, an I-Am, a network
    /// message): ignored, with why.
    Stale(String),
    /// A good answer, applied.
    Done,
    /// The request failed, with the reason (already reported).
    Fail(String),
    /// Malformed: ask again, with the reason.
    Retry(String),
    /// The device refused a ReadPropertyMultiple as a whole: poll with ReadProperty.
    Fallback(String),
}

/// What a request is for.
#[derive(Debug)]
enum Op {
    /// A poll of point `index` (a ReadPropertyMultiple: of chunk `index`) of the settings
    /// of generation `generation`.
    Poll { index: usize, generation: u64 },
    /// `read(object, property)` for an exec call.
    Read { call: CallId },
}

/// A request sent as a `wait` command.
#[derive(Debug)]
struct Request {
    command: CommandId,
    invoke: u8,
    object: ObjectId,
    property: u32,
    /// A ReadPropertyMultiple poll: the indices of its points (empty for ReadProperty).
    many: Vec<usize>,
    op: Op,
    /// The answer to give the call once the command is done.
    answer: Option<Value>,
    /// The last problem with an answer to it (a malformed answer before a retry).
    problem: Option<String>,
    /// Whether a failure was already reported (an Error, Reject or Abort PDU).
    reported: bool,
}

impl Request {
    fn describe(&self, points: &[Target], generation: u64) -> String {
        if !self.many.is_empty() {
            let names: Vec<String> = match self.op {
                Op::Poll { generation: g, .. } if g == generation => self
                    .many
                    .iter()
                    .filter_map(|i| points.get(*i).map(|t| format!("`{}`", t.name)))
                    .collect(),
                _ => Vec::new(),
            };
            return format!(
                "read {} points with ReadPropertyMultiple ({})",
                self.many.len(),
                names.join(", ")
            );
        }
        let mut s = format!("read {} {}", self.object, property_name(self.property));
        if let Op::Poll {
            index,
            generation: g,
        } = self.op
            && g == generation
            && let Some(t) = points.get(index)
        {
            s.push_str(&format!(" (`{}`)", t.name));
        }
        s
    }
}

/// A BACnet/IP device: one per module.
#[derive(Default)]
pub struct Bacnet {
    poll_ms: u64,
    timeout_ms: u32,
    retries: u8,
    device: Option<u32>,
    points: Vec<Target>,
    /// Which points' latest poll succeeded since the last error.
    point_ok: Vec<bool>,
    generation: u64,
    connected: bool,
    next_invoke: u8,
    requests: Vec<Request>,
    /// Between reads, at most one partial message (below [`MAX_BVLL`] bytes).
    buffer: Vec<u8>,
    /// Whether `last_error` holds an error.
    in_error: bool,
    /// Whether polls use ReadPropertyMultiple.
    multiple: bool,
    /// The points of each ReadPropertyMultiple poll.
    chunks: Vec<Vec<usize>>,
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Bacnet {
    /// A device-level problem: `last_error` and a warning.
    fn problem(&mut self, message: &str) {
        match self.device {
            Some(d) => host::warn(&format!("device {d}: {message}")),
            None => host::warn(message),
        }
        let _ = host::set_status("last_error", message);
        self.in_error = true;
        self.point_ok.iter_mut().for_each(|ok| *ok = false);
    }

    fn note_problem(&mut self, command: Option<CommandId>, message: &str) {
        if let Some(r) = self
            .requests
            .iter_mut()
            .find(|r| Some(r.command) == command)
        {
            r.problem = Some(message.to_string());
        }
    }

    /// The next invoke id not held by a queued request.
    fn invoke_id(&mut self) -> Result<u8, String> {
        for _ in 0..=255u16 {
            let id = self.next_invoke;
            self.next_invoke = self.next_invoke.wrapping_add(1);
            if !self.requests.iter().any(|r| r.invoke == id) {
                return Ok(id);
            }
        }
        Err("every invoke id is in use".into())
    }

    /// Queue a ReadProperty.
    fn send(
        &mut self,
        object: ObjectId,
        property: u32,
        op: Op,
        priority: u8,
    ) -> Result<(), String> {
        let invoke = self.invoke_id()?;
        let bytes = read_property_request(invoke, object, property);
        let command = host::send_with(
            &bytes,
            SendOptions::default()
                .wait()
                .priority(priority)
                .timeout_ms(self.timeout_ms)
                .retries(self.retries),
        )?;
        self.requests.push(Request {
            command,
            invoke,
            object,
            property,
            many: Vec::new(),
            op,
            answer: None,
            problem: None,
            reported: false,
        });
        Ok(())
    }

    /// Queue a ReadPropertyMultiple poll of chunk `index`.
    fn send_many(&mut self, index: usize) -> Result<(), String> {
        let many = self.chunks[index].clone();
        let asked: Vec<(ObjectId, u32)> = many
            .iter()
            .map(|i| (self.points[*i].object, self.points[*i].property))
            .collect();
        let invoke = self.invoke_id()?;
        let bytes = read_property_multiple_request(invoke, &asked);
        let command = host::send_with(
            &bytes,
            SendOptions::default()
                .wait()
                .priority(50)
                .timeout_ms(self.timeout_ms)
                .retries(self.retries),
        )?;
        self.requests.push(Request {
            command,
            invoke,
            object: asked[0].0,
            property: asked[0].1,
            many,
            op: Op::Poll {
                index,
                generation: self.generation,
            },
            answer: None,
            problem: None,
            reported: false,
        });
        Ok(())
    }

    /// Poll with ReadProperty from now on (the device refused ReadPropertyMultiple).
    fn fall_back(&mut self, why: &str) {
        host::info(&format!(
            "the device does not take ReadPropertyMultiple ({why}); reading points one by one with ReadProperty"
        ));
        self.multiple = false;
        // Outstanding polls of the old kind are left to finish unheard.
        self.generation += 1;
        self.point_ok = vec![false; self.points.len()];
        if self.connected
            && let Err(e) = self.poll()
        {
            host::warn(&format!("poll not sent: {e}"));
        }
    }

    /// Read every point not already being read; returns how many reads were queued.
    fn poll(&mut self) -> Result<usize, String> {
        let mut queued = 0;
        if self.multiple {
            for index in 0..self.chunks.len() {
                let busy = self.requests.iter().any(|r| {
                    matches!(r.op, Op::Poll { index: i, generation } if i == index && generation == self.generation)
                });
                if busy {
                    host::debug(&format!(
                        "poll of chunk {index} skipped: the previous one is still waiting"
                    ));
                    continue;
                }
                self.send_many(index)?;
                queued += 1;
            }
            return Ok(queued);
        }
        for index in 0..self.points.len() {
            let busy = self.requests.iter().any(|r| {
                matches!(r.op, Op::Poll { index: i, generation } if i == index && generation == self.generation)
            });
            let t = &self.points[index];
            if busy {
                host::debug(&format!(
                    "poll of `{}` skipped: the previous one is still waiting",
                    t.name
                ));
                continue;
            }
            let (object, property) = (t.object, t.property);
            let op = Op::Poll {
                index,
                generation: self.generation,
            };
            self.send(object, property, op, 50)?;
            queued += 1;
        }
        Ok(queued)
    }

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

    /// Handle one complete BVLL message for the command `waiting` for an answer.
    fn on_message(&mut self, msg: &[u8], waiting: Option<CommandId>) -> Handled {
        let answer = match decode_message(msg) {
            Ok(Some(a)) => a,
            Ok(None) => return Handled::Stale("not an answer to a request".into()),
            Err(why) => {
                return Handled::Retry(format!(
                    "malformed message from the device: {why} ({})",
                    hex(msg)
                ));
            }
        };
        let invoke = answer.invoke();
        let Some(at) = self
            .requests
            .iter()
            .position(|r| Some(r.command) == waiting && r.invoke == invoke)
        else {
            return Handled::Stale(format!("an answer for invoke id {invoke}"));
        };
        let what = self.requests[at].describe(&self.points, self.generation);
        let fail = |this: &mut Self, message: String| {
            this.requests[at].reported = true;
            Handled::Fail(message)
        };
        if !self.requests[at].many.is_empty() {
            return self.on_rpm_answer(at, answer, &what, msg);
        }
        match answer {
            Reply::Error { class, code, .. } => fail(
                self,
                format!(
                    "the device refused to {what}: {} (error class {}, code {code})",
                    error_code_name(code),
                    error_class_name(class)
                ),
            ),
            Reply::Reject { reason, .. } => fail(
                self,
                format!(
                    "the device rejected the request to {what}: {} (reason {reason})",
                    reject_reason_name(reason)
                ),
            ),
            Reply::Abort { reason, .. } => fail(
                self,
                format!(
                    "the device aborted the request to {what}: {} (reason {reason})",
                    abort_reason_name(reason)
                ),
            ),
            Reply::Segmented { .. } => fail(
                self,
                format!(
                    "the device answered {what} in segments, which this driver does not accept (the value is over one APDU)"
                ),
            ),
            Reply::SimpleAck { service, .. } | Reply::ComplexAck { service, .. }
                if service != 12 =>
            {
                Handled::Retry(format!(
                    "malformed answer to {what}: service {service}, not readProperty (12) ({})",
                    hex(msg)
                ))
            }
            Reply::SimpleAck { .. } => Handled::Retry(format!(
                "malformed answer to {what}: a Simple-ACK carries no value ({})",
                hex(msg)
            )),
            Reply::ComplexAck { data, .. } => {
                let r = &self.requests[at];
                let values = match decode_read_property_ack(data, r.object, r.property) {
                    Ok(v) => v,
                    Err(why) => {
                        return Handled::Retry(format!(
                            "malformed answer to {what}: {why} ({})",
                            hex(msg)
                        ));
                    }
                };
                match self.apply(at, &values) {
                    Ok(()) => Handled::Done,
                    Err(why) => fail(self, format!("{what}: {why}")),
                }
            }
        }
    }

    /// An answer to the ReadPropertyMultiple poll `at`.
    fn on_rpm_answer(&mut self, at: usize, answer: Reply<'_>, what: &str, msg: &[u8]) -> Handled {
        let refused = match answer {
            Reply::ComplexAck {
                service: 14, data, ..
            } => {
                let asked: Vec<(ObjectId, u32)> = self.requests[at]
                    .many
                    .iter()
                    .filter_map(|i| self.points.get(*i).map(|t| (t.object, t.property)))
                    .collect();
                let results = match decode_rpm_ack(data, &asked) {
                    Ok(r) => r,
                    Err(why) => {
                        return Handled::Retry(format!(
                            "malformed answer to {what}: {why} ({})",
                            hex(msg)
                        ));
                    }
                };
                let Op::Poll { generation, .. } = self.requests[at].op else {
                    return Handled::Done;
                };
                if generation != self.generation {
                    return Handled::Done;
                }
                let many = self.requests[at].many.clone();
                for (index, result) in many.into_iter().zip(results) {
                    let t = &self.points[index];
                    let read = format!(
                        "read {} {} (`{}`)",
                        t.object,
                        property_name(t.property),
                        t.name
                    );
                    let outcome = match result {
                        Ok(values) => self.publish(index, &values),
                        Err((class, code)) => Err(format!(
                            "the device refused to {read}: {} (error class {}, code {code})",
                            error_code_name(code),
                            error_class_name(class)
                        )),
                    };
                    if let Err(message) = outcome {
                        let message = if message.starts_with("the device refused") {
                            message
                        } else {
                            format!("{read}: {message}")
                        };
                        self.problem(&message);
                        if let Some(ok) = self.point_ok.get_mut(index) {
                            *ok = false;
                        }
                    }
                }
                return Handled::Done;
            }
            Reply::ComplexAck { service, .. } | Reply::SimpleAck { service, .. } => {
                return Handled::Retry(format!(
                    "malformed answer to {what}: service {service}, not readPropertyMultiple (14) ({})",
                    hex(msg)
                ));
            }
            Reply::Error { class, code, .. } => format!(
                "{} (error class {}, code {code})",
                error_code_name(code),
                error_class_name(class)
            ),
            Reply::Reject { reason, .. } => {
                format!("rejected: {} (reason {reason})", reject_reason_name(reason))
            }
            Reply::Abort { reason, .. } => {
                format!("aborted: {} (reason {reason})", abort_reason_name(reason))
            }
            Reply::Segmented { .. } => "a segmented answer".to_string(),
        };
        Handled::Fallback(refused)
    }

    /// Publish point `index`'s values (a poll's answer).
    fn publish(&mut self, index: usize, values: &[BacValue]) -> Result<(), String> {
        let Some(t) = self.points.get(index) else {
            return Ok(());
        };
        let v = point_value(t, values)?;
        if let Err(e) = host::set_status(&t.name, &v) {
            host::warn(&format!("status `{}` not set: {e}", t.name));
        }
        let _ = host::set_status("last_poll", &now_unix_ms());
        if let Some(ok) = self.point_ok.get_mut(index) {
            *ok = true;
        }
        if self.in_error && self.point_ok.iter().all(|ok| *ok) {
            self.in_error = false;
            let _ = host::set_status("last_error", &Value::Null);
            host::info("every point reads again");
        }
        Ok(())
    }

    /// Publish (a poll) or keep for the call (a read) the values answering request `at`.
    fn apply(&mut self, at: usize, values: &[BacValue]) -> Result<(), String> {
        let r = &self.requests[at];
        match r.op {
            Op::Read { .. } => {
                let v = answer_json(values, r.object, r.property)?;
                self.requests[at].answer = Some(v);
            }
            Op::Poll { index, generation } => {
                if generation != self.generation {
                    return Ok(());
                }
                self.publish(index, values)?;
            }
        }
        Ok(())
    }
}

impl Driver for Bacnet {
    type Settings = Settings;

    fn on_load(&mut self, settings: Settings) -> Result<(), String> {
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
        let device = match settings.device_instance {
            None => None,
            Some(d) => Some(
                u32::try_from(d)
                    .ok()
                    .filter(|d| *d <= MAX_INSTANCE)
                    .ok_or_else(|| {
                        format!("device_instance must be 0..={MAX_INSTANCE}, got {d}")
                    })?,
            ),
        };
        let points = parse_points(&settings.points)?;
        self.poll_ms = poll;
        self.timeout_ms = timeout;
        self.retries = retries;
        self.device = device;
        self.point_ok = vec![false; points.len()];
        self.multiple = settings.read_multiple && points.len() >= 2;
        self.chunks = (0..points.len())
            .collect::<Vec<_>>()
            .chunks(MAX_RPM_POINTS)
            .map(<[usize]>::to_vec)
            .collect();
        self.points = points;
        self.generation += 1;
        if !self.in_error {
            let _ = host::set_status("last_error", &Value::Null);
        }
        Ok(())
    }

    fn on_update(&mut self, settings: Settings) -> Result<(), String> {
        self.on_load(settings)?;
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
        for r in self.requests.drain(..) {
            if let Op::Read { call } = r.op {
                let _ = host::reply(call, Err("the device disconnected".into()));
            }
        }
    }

    fn received(&mut self, data: &[u8], waiting: Option<CommandId>) -> Verdict {
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.extend_from_slice(data);
        let expected = waiting
            .and_then(|w| self.requests.iter().find(|r| r.command == w))
            .map_or("none".to_string(), |r| format!("invoke id {}", r.invoke));
        // The command still open to an answer (the engine takes one verdict per read).
        let mut open = waiting;
        let mut verdict = Verdict::Ignore;
        let mut stale: Vec<String> = Vec::new();
        let mut stale_count = 0usize;
        let mut fallback = None;
        let mut malformed = 0usize;
        let mut latest_malformed = String::new();
        let mut at = 0;
        loop {
            match frame(&buffer[at..]) {
                Frame::Partial => break,
                Frame::Complete(n) => {
                    let msg = &buffer[at..at + n];
                    at += n;
                    match self.on_message(msg, open) {
                        Handled::Stale(why) => {
                            stale_count += 1;
                            if stale.len() < 4 {
                                stale.push(format!("{why}: {}", hex(msg)));
                            }
                        }
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
                            // The first of a burst is reported, the rest counted.
                            if malformed == 0 {
                                self.problem(&message);
                                self.note_problem(open, &message);
                            }
                            malformed += 1;
                            latest_malformed = message;
                            if open.is_some() {
                                verdict = Verdict::Retry;
                            }
                        }
                        Handled::Fallback(why) => {
                            verdict = Verdict::Done;
                            open = None;
                            fallback = Some(why);
                        }
                    }
                }
                Frame::Garbage(why) => {
                    let dropped = &buffer[at..];
                    let message = format!(
                        "garbage from the device: {why}; dropped {} bytes ({})",
                        dropped.len(),
                        hex(dropped)
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
        if buffer.capacity() > 4 * MAX_BVLL {
            buffer.shrink_to(MAX_BVLL);
        }
        self.buffer = buffer;
        if stale_count > 0 {
            host::warn(&format!(
                "ignored {stale_count} message(s) that answer no waiting request (waiting for: {expected}): {}",
                stale.join("; ")
            ));
        }
        if malformed > 1 {
            host::warn(&format!(
                "{} more malformed messages in the same read; the latest: {latest_malformed}",
                malformed - 1
            ));
            self.note_problem(open, &latest_malformed);
        }
        if let Some(why) = fallback {
            self.fall_back(&why);
        }
        if self.buffer.is_empty() {
            host::cancel_schedule(FRAME_TIMER);
        } else if let Err(e) = host::schedule_in(FRAME_TIMER, u64::from(self.timeout_ms / 2)) {
            host::warn(&format!("partial message timer not set: {e}"));
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
                    "truncated message from the device: {} bytes ({}) shorter than their BVLC length and not completed within {} ms; dropped",
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
                    let mut m = format!(
                        "{} failed: {why}",
                        r.describe(&self.points, self.generation)
                    );
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
                    && let Some(ok) = self.point_ok.get_mut(index)
                {
                    *ok = false;
                }
                Err(message)
            }
        };
        if let Op::Read { call } = r.op {
            let _ = host::reply(call, outcome);
        }
    }
}

#[driver(
    name = "BACnet/IP Sensor",
    module_name = "Bacnet",
    description = "BACnet/IP sensors and controllers: present-values of configured objects become statuses (temperature, humidity, CO2, occupancy, ...)",
    transport = "udp"
)]
impl Bacnet {
    /// Read any property of any object of the device now (ReadProperty) and answer its
    /// decoded value: a number, a bool (binary objects' present-value, Booleans), a
    /// string (character strings, dates, times, object identifiers) or an array (lists).
    /// `object` is `type,instance` (`analog-input,1` or `0,1`); `property` defaults to
    /// `present-value` (a name or a number).
    #[function]
    fn read(
        &mut self,
        call: CallId,
        object: String,
        property: Option<String>,
    ) -> Result<Answer<Value>, String> {
        let object = ObjectId::parse(&object)?;
        let property = parse_property(property.as_deref().unwrap_or("present-value"))?;
        self.send(object, property, Op::Read { call }, EXEC_PRIORITY)?;
        Ok(Answer::Later)
    }

    /// Read every point now (as a poll does); answers how many reads were queued.
    #[function]
    fn poll_now(&mut self) -> Result<usize, String> {
        self.poll()
    }
}

export_driver!(Bacnet);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_objects_and_properties() {
        let ai = ObjectId::parse("analog-input,1").unwrap();
        assert_eq!(
            ai,
            ObjectId {
                kind: 0,
                instance: 1
            }
        );
        assert_eq!(
            ObjectId::parse("19, 7").unwrap().to_string(),
            "multi-state-value,7"
        );
        assert_eq!(ObjectId::parse("600,7").unwrap().to_string(), "600,7");
        assert!(ObjectId::parse("analog-input").is_err());
        assert!(ObjectId::parse("analog-inptu,1").is_err());
        assert!(ObjectId::parse("analog-input,4194304").is_err());
        assert!(ObjectId::parse("1024,1").is_err());
        assert_eq!(parse_property("present-value"), Ok(85));
        assert_eq!(parse_property("512"), Ok(512));
        assert!(parse_property("presentValue").is_err());
        assert_eq!(property_name(77), "object-name");
        assert_eq!(property_name(512), "512");
    }

    #[test]
    fn encodes_read_property() {
        let ai = ObjectId::parse("analog-input,1").unwrap();
        assert_eq!(
            read_property_request(5, ai, 85),
            [
                0x81, 0x0A, 0, 17, 0x01, 0x04, 0x00, 0x05, 5, 0x0C, 0x0C, 0, 0, 0, 1, 0x19, 85
            ]
        );
        let r = read_property_request(0, ai, 512);
        assert_eq!(&r[r.len() - 3..], [0x1A, 0x02, 0x00]);
    }

    #[test]
    fn frames_by_the_bvlc_length() {
        let r = read_property_request(
            1,
            ObjectId {
                kind: 0,
                instance: 1,
            },
            85,
        );
        assert_eq!(frame(&r), Frame::Complete(17));
        assert_eq!(frame(&r[..3]), Frame::Partial);
        assert_eq!(frame(&r[..16]), Frame::Partial);
        assert!(matches!(frame(b"HELLO"), Frame::Garbage(_)));
        assert!(matches!(frame(&[0x81, 0x0A, 0, 3]), Frame::Garbage(_)));
        assert!(matches!(frame(&[0x81, 0x0A, 0x10, 0]), Frame::Garbage(_)));
    }

    #[test]
    fn decodes_application_values() {
        assert_eq!(
            decode_app(3, &[0xFF, 0x38]).unwrap(),
            BacValue::Signed(-200)
        );
        assert_eq!(decode_app(2, &[1, 0]).unwrap(), BacValue::Unsigned(256));
        assert_eq!(
            decode_app(7, &[0, b'R', 0xC3, 0xA4]).unwrap(),
            BacValue::CharacterString("Rä".into())
        );
        assert_eq!(
            decode_app(7, &[5, b'R', 0xE4]).unwrap(),
            BacValue::CharacterString("Rä".into())
        );
        assert_eq!(
            decode_app(8, &[4, 0b1010_0000]).unwrap(),
            BacValue::BitString(vec![true, false, true, false])
        );
        assert_eq!(
            decode_app(10, &[126, 1, 31, 6]).unwrap(),
            BacValue::Date("2026-01-31".into())
        );
        assert!(decode_app(4, &[0, 0]).is_err());
        assert_eq!(real_to_f64(22.3), 22.3);
    }
}
