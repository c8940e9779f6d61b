//! PlaceOS's WebSocket control protocol: the request frame, the answers, and how each is
//! written (field names and order as PlaceOS's `rest-api` sends them, so
//! `@placeos/ts-client` and anything else written against PlaceOS reads them unchanged).
//!
//! Requests: `{"id": 1, "cmd": "bind", "sys": "sys-…", "mod": "Display", "index": 1,
//! "name": "power", "args": […]}`. Answers:
//! - `{"id":1,"type":"success","meta":{…}}` (bind), `{"id":2,"type":"success"}` (unbind,
//!   debug, ignore), `{"id":3,"type":"success","value":…,"meta":{…},"code":200}` (exec);
//! - `{"id":1,"type":"notify","value":…,"meta":{"sys":…,"mod":…,"index":…,"name":…}}`, the
//!   `id` being the bind's;
//! - `{"id":4,"type":"debug","msg":…,"meta":{…},"mod":"mod-…","level":"info"}`;
//! - `{"id":5,"type":"error","msg":…,"error_code":3,"code":500}` with PlaceOS's error codes
//!   in `error_code` and an HTTP-like status in `code`.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest `sys`, `mod` or `name` accepted.
pub(crate) const MAX_NAME: usize = 256;

/// PlaceOS's error codes (the `error_code` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    ParseError = 0,
    BadRequest = 1,
    AccessDenied = 2,
    RequestFailed = 3,
    UnknownCommand = 4,
    SystemNotFound = 5,
    ModuleNotFound = 6,
    UnexpectedFailure = 7,
}

/// An error answer: PlaceOS's code, an HTTP-like status and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsError {
    pub code: ErrorCode,
    pub status: u16,
    pub message: String,
}

impl WsError {
    pub fn new(code: ErrorCode, status: u16, message: impl Into<String>) -> Self {
        WsError {
            code,
            status,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, 400, message)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    Bind,
    Unbind,
    Exec,
    Debug,
    Ignore,
}

impl Command {
    fn parse(s: &str) -> Option<Self> {
        // PlaceOS parses the command case-insensitively.
        Some(match s.to_ascii_lowercase().as_str() {
            "bind" => Command::Bind,
            "unbind" => Command::Unbind,
            "exec" => Command::Exec,
            "debug" => Command::Debug,
            "ignore" => Command::Ignore,
            _ => return None,
        })
    }
}

/// One client request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Request {
    pub id: i64,
    pub cmd: Command,
    pub sys: String,
    /// The module name (`Display`), or for `debug`/`ignore` also a module id.
    pub module: String,
    /// 1-based index among the system's modules of that name.
    pub index: u32,
    /// The status key (bind) or function (exec).
    pub name: String,
    pub args: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    id: i64,
    cmd: String,
    sys: String,
    #[serde(rename = "mod")]
    module: String,
    #[serde(default = "one")]
    index: u32,
    name: String,
    #[serde(default)]
    args: Option<Vec<Value>>,
}

fn one() -> u32 {
    1
}

/// Parse a request. On failure: the request's `id` when it could be read (else 0), and
/// the error to answer — code 0 for text that is not JSON, 4 for an unknown command, 1
/// for anything else, naming the field.
pub(crate) fn parse(text: &str) -> Result<Request, (i64, WsError)> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        (
            0,
            WsError::new(
                ErrorCode::ParseError,
                400,
                format!("parse error: the frame is not JSON ({e})"),
            ),
        )
    })?;
    let id = value.get("id").and_then(Value::as_i64).unwrap_or(0);
    let fail = |e: WsError| (id, e);
    if !value.is_object() {
        return Err(fail(WsError::bad_request(
            "bad request: a request is a JSON object with id, cmd, sys, mod, index and name",
        )));
    }
    let raw: Raw = serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        fail(WsError::bad_request(if path == "." {
            format!("bad request: {inner}")
        } else {
            format!("bad request: field `{path}`: {inner}")
        }))
    })?;
    let cmd = Command::parse(&raw.cmd).ok_or_else(|| {
        fail(WsError::new(
            ErrorCode::UnknownCommand,
            400,
            format!(
                "unknown command `{}`: expected bind, unbind, exec, debug or ignore",
                truncate(&raw.cmd, 64)
            ),
        ))
    })?;
    for (field, v) in [("sys", &raw.sys), ("mod", &raw.module), ("name", &raw.name)] {
        if v.is_empty() || v.len() > MAX_NAME {
            return Err(fail(WsError::bad_request(format!(
                "bad request: field `{field}` must be 1 to {MAX_NAME} bytes"
            ))));
        }
    }
    if raw.index == 0 {
        return Err(fail(WsError::bad_request(
            "bad request: field `index` starts at 1",
        )));
    }
    Ok(Request {
        id: raw.id,
        cmd,
        sys: raw.sys,
        module: raw.module,
        index: raw.index,
        name: raw.name,
        args: raw.args.unwrap_or_default(),
    })
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Where an answer came from: PlaceOS's `meta`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Hash)]
pub(crate) struct Meta {
    pub sys: String,
    #[serde(rename = "mod")]
    pub module: String,
    pub index: u32,
    pub name: String,
}

impl Meta {
    pub(crate) fn of(r: &Request) -> Self {
        Meta {
            sys: r.sys.clone(),
            module: r.module.clone(),
            index: r.index,
            name: r.name.clone(),
        }
    }
}

#[derive(Serialize)]
struct Answer<'a> {
    id: i64,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    msg: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<&'a Meta>,
    #[serde(rename = "mod", skip_serializing_if = "Option::is_none")]
    module: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    level: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
}

impl Answer<'_> {
    fn new(id: i64, kind: &str) -> Answer<'_> {
        Answer {
            id,
            kind,
            msg: None,
            value: None,
            error_code: None,
            meta: None,
            module: None,
            level: None,
            code: None,
        }
    }

    fn bytes(&self) -> Bytes {
        // Serializing these plain structs cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// `{"id":N,"type":"success"}`.
pub(crate) fn success(id: i64) -> Bytes {
    Answer::new(id, "success").bytes()
}

/// A bind's answer: success with the binding's `meta`.
pub(crate) fn bound(id: i64, meta: &Meta) -> Bytes {
    Answer {
        meta: Some(meta),
        ..Answer::new(id, "success")
    }
    .bytes()
}

/// An exec's answer: its result, `meta` and status 200.
pub(crate) fn executed(id: i64, value: &Value, meta: &Meta) -> Bytes {
    Answer {
        value: Some(value),
        meta: Some(meta),
        code: Some(200),
        ..Answer::new(id, "success")
    }
    .bytes()
}

pub(crate) fn error(id: i64, e: &WsError) -> Bytes {
    Answer {
        msg: Some(&e.message),
        error_code: Some(e.code as u8),
        code: Some(e.status),
        ..Answer::new(id, "error")
    }
    .bytes()
}

/// A module's log line for a `debug` request.
pub(crate) fn debug_line(id: i64, module_id: &str, level: &str, msg: &str, meta: &Meta) -> Bytes {
    Answer {
        msg: Some(msg),
        meta: Some(meta),
        module: Some(module_id),
        level: Some(level),
        ..Answer::new(id, "debug")
    }
    .bytes()
}

/// A binding's `meta` as the end of a notify frame: `"meta":{…}}`.
pub(crate) fn meta_tail(meta: &Meta) -> Vec<u8> {
    let mut out = b"\"meta\":".to_vec();
    out.extend(serde_json::to_vec(meta).unwrap_or_default());
    out.push(b'}');
    out
}

/// Everything of a notify frame after its id, shared by every session bound to the same
/// key: `,"type":"notify","value":<value>,"meta":{…}}`. [`write_notify`] puts the session's
/// `{"id":N` in front.
pub(crate) fn notify_tail(value_json: &[u8], meta_tail: &[u8]) -> Bytes {
    const HEAD: &[u8] = b",\"type\":\"notify\",\"value\":";
    let mut out = BytesMut::with_capacity(HEAD.len() + value_json.len() + 1 + meta_tail.len());
    out.put_slice(HEAD);
    out.put_slice(value_json);
    out.put_u8(b',');
    out.put_slice(meta_tail);
    out.freeze()
}

// ---- WebSocket framing (RFC 6455, server to client: never masked) ----

const FIN: u8 = 0x80;
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

fn header(out: &mut BytesMut, opcode: u8, len: usize) {
    out.put_u8(FIN | opcode);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

/// A text frame holding `payload`.
pub(crate) fn write_text(out: &mut BytesMut, payload: &[u8]) {
    header(out, TEXT, payload.len());
    out.put_slice(payload);
}

/// A notify frame: `{"id":<id>` followed by the shared tail.
pub(crate) fn write_notify(out: &mut BytesMut, id: i64, tail: &[u8]) {
    let mut prefix = itoa::Buffer::new();
    let digits = prefix.format(id).as_bytes();
    header(out, TEXT, 6 + digits.len() + tail.len());
    out.put_slice(b"{\"id\":");
    out.put_slice(digits);
    out.put_slice(tail);
}

pub(crate) fn write_ping(out: &mut BytesMut) {
    header(out, PING, 0);
}

/// A pong echoing a ping's payload (at most 125 bytes, as control frames are).
pub(crate) fn write_pong(out: &mut BytesMut, payload: &[u8]) {
    let payload = &payload[..payload.len().min(125)];
    header(out, PONG, payload.len());
    out.put_slice(payload);
}

/// A close frame with a code and a reason (cut to fit the 125-byte control frame).
pub(crate) fn write_close(out: &mut BytesMut, code: u16, reason: &str) {
    let reason = truncate(reason, 123);
    header(out, CLOSE, 2 + reason.len());
    out.put_u16(code);
    out.put_slice(reason.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(b: Bytes) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn requests_parse_as_placeos_sends_them() {
        let r = parse(
            r#"{"id":1,"cmd":"bind","sys":"sys-A","mod":"Display","index":2,"name":"power"}"#,
        )
        .unwrap();
        assert_eq!(r.cmd, Command::Bind);
        assert_eq!((r.index, r.module.as_str()), (2, "Display"));
        let r =
            parse(r#"{"id":7,"cmd":"EXEC","sys":"s","mod":"m","name":"f","args":[true,{"a":1}]}"#)
                .unwrap();
        assert_eq!((r.cmd, r.index), (Command::Exec, 1));
        assert_eq!(r.args, vec![json!(true), json!({"a": 1})]);
        let r =
            parse(r#"{"id":8,"cmd":"exec","sys":"s","mod":"m","name":"f","args":null}"#).unwrap();
        assert!(r.args.is_empty());
    }

    #[test]
    fn bad_requests_are_answered_with_placeos_codes_naming_the_problem() {
        let cases = [
            ("not json", 0, ErrorCode::ParseError, "not JSON"),
            ("[1,2]", 0, ErrorCode::BadRequest, "JSON object"),
            (
                r#"{"id":3,"cmd":"bind"}"#,
                3,
                ErrorCode::BadRequest,
                "missing field `sys`",
            ),
            (
                r#"{"id":4,"cmd":"bind","sys":"s","mod":"m","index":"1","name":"n"}"#,
                4,
                ErrorCode::BadRequest,
                "field `index`",
            ),
            (
                r#"{"id":5,"cmd":"fly","sys":"s","mod":"m","name":"n"}"#,
                5,
                ErrorCode::UnknownCommand,
                "unknown command `fly`",
            ),
            (
                r#"{"id":6,"cmd":"bind","sys":"s","mod":"m","name":"n","extra":1}"#,
                6,
                ErrorCode::BadRequest,
                "unknown field `extra`",
            ),
            (
                r#"{"id":7,"cmd":"bind","sys":"s","mod":"m","index":0,"name":"n"}"#,
                7,
                ErrorCode::BadRequest,
                "starts at 1",
            ),
            (
                r#"{"id":8,"cmd":"bind","sys":"","mod":"m","name":"n"}"#,
                8,
                ErrorCode::BadRequest,
                "field `sys`",
            ),
            (
                r#"{"id":1.5,"cmd":"bind","sys":"s","mod":"m","name":"n"}"#,
                0,
                ErrorCode::BadRequest,
                "field `id`",
            ),
        ];
        for (input, id, code, msg) in cases {
            let (got_id, e) = parse(input).unwrap_err();
            assert_eq!((got_id, e.code), (id, code), "{input}: {e:?}");
            assert!(e.message.contains(msg), "{input}: {}", e.message);
        }
    }

    #[test]
    fn answers_are_written_as_placeos_writes_them() {
        let meta = Meta {
            sys: "sys-A".into(),
            module: "Display".into(),
            index: 1,
            name: "power".into(),
        };
        assert_eq!(text(success(4)), r#"{"id":4,"type":"success"}"#);
        assert_eq!(
            text(bound(3, &meta)),
            r#"{"id":3,"type":"success","meta":{"sys":"sys-A","mod":"Display","index":1,"name":"power"}}"#
        );
        assert_eq!(
            text(executed(5, &json!({"a": 1}), &meta)),
            r#"{"id":5,"type":"success","value":{"a":1},"meta":{"sys":"sys-A","mod":"Display","index":1,"name":"power"},"code":200}"#
        );
        assert_eq!(
            text(error(
                6,
                &WsError::new(ErrorCode::RequestFailed, 500, "module raised: boom")
            )),
            r#"{"id":6,"type":"error","msg":"module raised: boom","error_code":3,"code":500}"#
        );
        assert_eq!(
            text(debug_line(7, "mod-X", "info", "sent: PWR ON", &meta)),
            r#"{"id":7,"type":"debug","msg":"sent: PWR ON","meta":{"sys":"sys-A","mod":"Display","index":1,"name":"power"},"mod":"mod-X","level":"info"}"#
        );
        let tail = notify_tail(b"true", &meta_tail(&meta));
        let mut out = BytesMut::new();
        write_notify(&mut out, 3, &tail);
        let mut codec = actix_http::ws::Codec::new().client_mode();
        let frame = tokio_util::codec::Decoder::decode(&mut codec, &mut out)
            .unwrap()
            .unwrap();
        let actix_http::ws::Frame::Text(payload) = frame else {
            panic!("{frame:?}")
        };
        assert_eq!(
            std::str::from_utf8(&payload).unwrap(),
            r#"{"id":3,"type":"notify","value":true,"meta":{"sys":"sys-A","mod":"Display","index":1,"name":"power"}}"#
        );
    }

    /// Frames written here decode with an independent implementation (actix's), at every
    /// length boundary of the header.
    #[test]
    fn frames_decode_with_another_implementation() {
        use actix_http::ws::{Codec, Frame};
        use tokio_util::codec::Decoder;
        for len in [0usize, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload = "x".repeat(len);
            let mut out = BytesMut::new();
            write_text(&mut out, payload.as_bytes());
            let mut codec = Codec::new().client_mode().max_size(1 << 20);
            match codec.decode(&mut out).unwrap() {
                Some(Frame::Text(b)) => assert_eq!(b.len(), len),
                other => panic!("{len}: {other:?}"),
            }
            assert!(out.is_empty());
        }
        let mut out = BytesMut::new();
        write_close(&mut out, 1008, &"é".repeat(100));
        write_ping(&mut out);
        write_pong(&mut out, b"abc");
        let mut codec = Codec::new().client_mode();
        let Some(Frame::Close(Some(reason))) = codec.decode(&mut out).unwrap() else {
            panic!("close")
        };
        assert_eq!(u16::from(reason.code), 1008);
        assert!(reason.description.unwrap().len() <= 123);
        assert!(matches!(
            codec.decode(&mut out).unwrap(),
            Some(Frame::Ping(_))
        ));
        assert!(
            matches!(codec.decode(&mut out).unwrap(), Some(Frame::Pong(p)) if &p[..] == b"abc")
        );
    }
}
