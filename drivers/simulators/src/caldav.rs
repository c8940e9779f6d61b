//! A minimal CalDAV server for the demo building (see `docs/drivers/caldav.md` and the
//! `lintel-driver-caldav` crate): one calendar collection holding a day of generated
//! bookings, over real HTTP.
//!
//! [`CaldavSimulator::serve`] binds `127.0.0.1:0` and returns the address (the module's
//! uri is `http://<addr>`, its `calendar_path` [`CaldavSimulator::calendar_path`]). It
//! answers the subset the driver uses:
//!
//! - `REPORT <calendar>` (`calendar-query` with a `time-range`; what the driver reads
//!   with): a 207 multistatus of the objects overlapping the range, with `href`,
//!   `getetag` and `calendar-data` (recurrences are not expanded);
//! - `GET <calendar>`: the whole calendar as one iCalendar object (as Radicale does; the
//!   driver's fallback for servers refusing REPORT);
//! - `GET <calendar><name>.ics`: one object with its `ETag`;
//! - `PUT <calendar><name>.ics` (`If-None-Match: *` honoured: 412 when it exists) and
//!   `DELETE` (`If-Match` honoured: 412 when the etag differs, 404 when missing).
//!
//! Events are kept as given; only UTC `DTSTART`/`DTEND` are understood for the REPORT's
//! time-range (enough for the generated day and the driver's own bookings). Not a
//! general CalDAV server: tests of the driver run against a real Radicale.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

/// Largest request body accepted.
pub const MAX_BODY: usize = 256 * 1024;
/// Objects the calendar holds at most (PUT answers 507 beyond).
pub const MAX_OBJECTS: usize = 1000;

/// One stored calendar object.
#[derive(Debug, Clone)]
struct Object {
    ics: String,
    etag: u64,
}

#[derive(Default)]
struct Store {
    objects: BTreeMap<String, Object>,
    next_etag: u64,
}

/// The simulated server; clones share the calendar.
#[derive(Clone)]
pub struct CaldavSimulator {
    calendar: String,
    store: Arc<Mutex<Store>>,
}

/// `YYYYMMDDTHHMMSSZ` for unix seconds.
pub fn utc_stamp(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// A calendar object holding one event from `start` to `end` (unix seconds, UTC):
/// `title` is its SUMMARY as written (escape `,`, `;` and backslashes yourself), `extra` more property
/// lines, each ending in CRLF (`ORGANIZER:…\r\n`).
pub fn event_ics(uid: &str, start: i64, end: i64, title: &str, extra: &str) -> String {
    format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Lintel//CalDAV simulator//EN\r\n\
         BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:{}\r\nDTSTART:{}\r\nDTEND:{}\r\n\
         SUMMARY:{title}\r\n{extra}END:VEVENT\r\nEND:VCALENDAR\r\n",
        utc_stamp(start),
        utc_stamp(start),
        utc_stamp(end)
    )
}

/// Unix seconds of a `YYYYMMDDTHHMMSSZ` value.
pub fn parse_utc(v: &str) -> Option<i64> {
    let v = v.trim().strip_suffix('Z')?;
    if v.len() != 15 || v.as_bytes()[8] != b'T' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| v.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let (hh, mm, ss) = (n(9..11)?, n(11..13)?, n(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// The UTC start and end of the first VEVENT of an object.
fn span(ics: &str) -> Option<(i64, i64)> {
    let mut start = None;
    let mut end = None;
    for line in ics.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(v) = line.strip_prefix("DTSTART:") {
            start = parse_utc(v);
        } else if let Some(v) = line.strip_prefix("DTEND:") {
            end = parse_utc(v);
        }
    }
    let s = start?;
    Some((s, end.unwrap_or(s)))
}

/// The VCALENDAR's inner lines (its components), without BEGIN/END:VCALENDAR, VERSION
/// and PRODID.
fn components(ics: &str) -> String {
    let mut out = String::new();
    for line in ics.lines() {
        let line = line.trim_end_matches('\r');
        if matches!(line, "BEGIN:VCALENDAR" | "END:VCALENDAR")
            || line.starts_with("VERSION:")
            || line.starts_with("PRODID:")
        {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// An attribute's value in an XML text (`name="…"`), naively.
fn attribute(body: &str, name: &str) -> Option<String> {
    let key = format!("{name}=\"");
    let i = body.find(&key)? + key.len();
    let j = body[i..].find('"')?;
    Some(body[i..i + j].to_string())
}

type Answer = Response<Full<Bytes>>;

fn answer(status: StatusCode, content_type: Option<&'static str>, body: String) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Some(t) = content_type {
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(t),
        );
    }
    r
}

fn status(code: StatusCode) -> Answer {
    answer(code, None, String::new())
}

impl CaldavSimulator {
    /// An empty calendar at `calendar_path` (e.g. `/room-101/calendar/`).
    pub fn new(calendar_path: &str) -> CaldavSimulator {
        let mut calendar = calendar_path.to_string();
        if !calendar.ends_with('/') {
            calendar.push('/');
        }
        CaldavSimulator {
            calendar,
            store: Arc::default(),
        }
    }

    /// A calendar with a day of bookings starting at `day_start` (unix seconds, e.g.
    /// today's midnight UTC): a stand-up, a design review, a private 1:1, a customer call
    /// and a cancelled meeting.
    pub fn with_demo_day(calendar_path: &str, day_start: i64) -> CaldavSimulator {
        let sim = Self::new(calendar_path);
        let h = 3600;
        let day: [(&str, i64, i64, &str, &str); 5] = [
            (
                "standup",
                9 * h,
                9 * h + 900,
                "Daily stand-up",
                "ORGANIZER;CN=Ann Lee:mailto:ann@example.com\r\nATTENDEE:mailto:bo@example.com\r\n",
            ),
            (
                "review",
                11 * h,
                12 * h,
                "Design review",
                "ORGANIZER:mailto:cy@example.com\r\n",
            ),
            (
                "one-to-one",
                13 * h,
                13 * h + 1800,
                "1:1",
                "CLASS:PRIVATE\r\n",
            ),
            (
                "customer",
                14 * h,
                15 * h + 1800,
                "Customer call\\, Acme",
                "ORGANIZER:mailto:dee@example.com\r\n",
            ),
            ("dropped", 16 * h, 17 * h, "Retro", "STATUS:CANCELLED\r\n"),
        ];
        for (uid, s, e, title, extra) in day {
            let ics = event_ics(
                &format!("{uid}-{day_start}@sim"),
                day_start + s,
                day_start + e,
                title,
                extra,
            );
            sim.put(&format!("{uid}-{day_start}.ics"), &ics);
        }
        sim
    }

    /// The calendar collection's path.
    pub fn calendar_path(&self) -> &str {
        &self.calendar
    }

    /// Store an object under `name` (`x.ics`), replacing any; returns its etag.
    pub fn put(&self, name: &str, ics: &str) -> String {
        let mut s = self.store.lock();
        s.next_etag += 1;
        let etag = s.next_etag;
        s.objects.insert(
            name.to_string(),
            Object {
                ics: ics.to_string(),
                etag,
            },
        );
        format!("\"{etag}\"")
    }

    /// The names of the stored objects.
    pub fn names(&self) -> Vec<String> {
        self.store.lock().objects.keys().cloned().collect()
    }

    /// The object stored under `name`.
    pub fn get(&self, name: &str) -> Option<String> {
        self.store.lock().objects.get(name).map(|o| o.ics.clone())
    }

    /// Serve on a new loopback port (`127.0.0.1:0`) until the runtime stops; returns the
    /// address.
    pub async fn serve(&self) -> std::io::Result<SocketAddr> {
        let sim = self.clone();
        crate::serve_loopback(move |stream| sim.clone().serve_connection(stream)).await
    }

    /// Serve one HTTP/1.1 connection.
    pub async fn serve_connection(self, stream: tokio::net::TcpStream) {
        let service = service_fn(move |req| {
            let sim = self.clone();
            async move { Ok::<_, Infallible>(sim.handle(req).await) }
        });
        let _ = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    }

    async fn handle(&self, req: Request<Incoming>) -> Answer {
        let method = req.method().as_str().to_string();
        let path = req.uri().path().to_string();
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (if_match, if_none_match) = (header("if-match"), header("if-none-match"));
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
            Err(_) => return status(StatusCode::PAYLOAD_TOO_LARGE),
        };
        let Some(rest) = path.strip_prefix(&self.calendar) else {
            return status(StatusCode::NOT_FOUND);
        };
        if rest.is_empty() {
            return match method.as_str() {
                "GET" => self.whole(),
                "REPORT" => self.report(&body),
                _ => status(StatusCode::METHOD_NOT_ALLOWED),
            };
        }
        if rest.contains('/') {
            return status(StatusCode::NOT_FOUND);
        }
        let mut s = self.store.lock();
        match method.as_str() {
            "GET" => match s.objects.get(rest) {
                Some(o) => {
                    let mut r = answer(StatusCode::OK, Some("text/calendar"), o.ics.clone());
                    r.headers_mut().insert(
                        hyper::header::ETAG,
                        hyper::header::HeaderValue::from_str(&format!("\"{}\"", o.etag))
                            .expect("an etag"),
                    );
                    r
                }
                None => status(StatusCode::NOT_FOUND),
            },
            "PUT" => {
                if if_none_match.as_deref() == Some("*") && s.objects.contains_key(rest) {
                    return status(StatusCode::PRECONDITION_FAILED);
                }
                if !body.starts_with("BEGIN:VCALENDAR") || span(&body).is_none() {
                    return status(StatusCode::BAD_REQUEST);
                }
                if s.objects.len() >= MAX_OBJECTS && !s.objects.contains_key(rest) {
                    return status(StatusCode::INSUFFICIENT_STORAGE);
                }
                s.next_etag += 1;
                let etag = s.next_etag;
                s.objects
                    .insert(rest.to_string(), Object { ics: body, etag });
                let mut r = status(StatusCode::CREATED);
                r.headers_mut().insert(
                    hyper::header::ETAG,
                    hyper::header::HeaderValue::from_str(&format!("\"{etag}\"")).expect("an etag"),
                );
                r
            }
            "DELETE" => match s.objects.get(rest) {
                None => status(StatusCode::NOT_FOUND),
                Some(o)
                    if if_match
                        .as_ref()
                        .is_some_and(|m| *m != format!("\"{}\"", o.etag)) =>
                {
                    status(StatusCode::PRECONDITION_FAILED)
                }
                Some(_) => {
                    s.objects.remove(rest);
                    status(StatusCode::NO_CONTENT)
                }
            },
            _ => status(StatusCode::METHOD_NOT_ALLOWED),
        }
    }

    fn whole(&self) -> Answer {
        let s = self.store.lock();
        let mut out = String::from(
            "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Lintel//CalDAV simulator//EN\r\n",
        );
        for o in s.objects.values() {
            out.push_str(&components(&o.ics));
        }
        out.push_str("END:VCALENDAR\r\n");
        answer(StatusCode::OK, Some("text/calendar; charset=utf-8"), out)
    }

    fn report(&self, body: &str) -> Answer {
        if !body.contains("calendar-query") {
            return status(StatusCode::BAD_REQUEST);
        }
        let range = body.find("time-range").and_then(|i| {
            let tail = &body[i..];
            Some((
                parse_utc(&attribute(tail, "start")?)?,
                parse_utc(&attribute(tail, "end")?)?,
            ))
        });
        let s = self.store.lock();
        let mut out = String::from(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
             <D:multistatus xmlns:D=\"DAV:\" xmlns:C=\"urn:ietf:params:xml:ns:caldav\">\n",
        );
        for (name, o) in &s.objects {
            let overlaps = match (range, span(&o.ics)) {
                (Some((a, b)), Some((s0, e0))) => s0 < b && (e0 > a || (e0 == s0 && s0 >= a)),
                (None, _) => true,
                (_, None) => false,
            };
            if !overlaps {
                continue;
            }
            out.push_str(&format!(
                "<D:response><D:href>{}{}</D:href><D:propstat><D:prop>\
                 <D:getetag>\"{}\"</D:getetag><C:calendar-data>{}</C:calendar-data>\
                 </D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>\n",
                self.calendar,
                name,
                o.etag,
                xml_escape(&o.ics)
            ));
        }
        out.push_str("</D:multistatus>\n");
        answer(
            StatusCode::MULTI_STATUS,
            Some("application/xml; charset=utf-8"),
            out,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        for t in [
            0,
            1_767_225_600,
            1_767_225_600 + 86_399,
            951_782_400,
            4_102_444_799,
        ] {
            assert_eq!(parse_utc(&utc_stamp(t)), Some(t), "{t}");
        }
        assert_eq!(utc_stamp(1_767_225_600), "20260101T000000Z");
        assert_eq!(parse_utc("20260101T000000"), None);
        assert_eq!(parse_utc("2026-01-01T00:00:00Z"), None);
    }

    #[tokio::test]
    async fn serves_the_subset_the_driver_uses() {
        let day = 1_767_225_600;
        let sim = CaldavSimulator::with_demo_day("/room/calendar", day);
        let addr = sim.serve().await.unwrap();
        let ask = |method: &'static str,
                   path: String,
                   headers: Vec<(&'static str, String)>,
                   body: String| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut req = format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
                body.len()
            );
            for (k, v) in headers {
                req.push_str(&format!("{k}: {v}\r\n"));
            }
            req.push_str("\r\n");
            req.push_str(&body);
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let whole = ask("GET", "/room/calendar/".into(), vec![], String::new()).await;
        assert!(whole.starts_with("HTTP/1.1 200"), "{whole}");
        assert_eq!(whole.matches("BEGIN:VEVENT").count(), 5);

        let query = format!(
            "<C:calendar-query xmlns:C=\"urn:ietf:params:xml:ns:caldav\"><C:time-range start=\"{}\" end=\"{}\"/></C:calendar-query>",
            utc_stamp(day + 10 * 3600),
            utc_stamp(day + 14 * 3600)
        );
        let report = ask("REPORT", "/room/calendar/".into(), vec![], query).await;
        assert!(report.starts_with("HTTP/1.1 207"), "{report}");
        assert_eq!(
            report.matches("<D:response>").count(),
            2,
            "review and 1:1: {report}"
        );

        let ics = "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:n\r\nDTSTART:20260101T200000Z\r\nDTEND:20260101T210000Z\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
        let put = |h: Vec<(&'static str, String)>| {
            ask("PUT", "/room/calendar/n.ics".into(), h, ics.into())
        };
        assert!(
            put(vec![("If-None-Match", "*".into())])
                .await
                .starts_with("HTTP/1.1 201")
        );
        assert!(
            put(vec![("If-None-Match", "*".into())])
                .await
                .starts_with("HTTP/1.1 412")
        );
        let del = |m: &str| {
            ask(
                "DELETE",
                "/room/calendar/n.ics".into(),
                vec![("If-Match", m.to_string())],
                String::new(),
            )
        };
        assert!(del("\"999\"").await.starts_with("HTTP/1.1 412"));
        let etag = format!("\"{}\"", sim.store.lock().objects["n.ics"].etag);
        assert!(del(&etag).await.starts_with("HTTP/1.1 204"));
        assert!(del(&etag).await.starts_with("HTTP/1.1 404"));
        assert_eq!(sim.names().len(), 5);
    }
}
