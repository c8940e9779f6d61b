//! A real CalDAV server for the calendar driver's tests: Radicale 3.9 from the checkout's
//! virtualenv (see [`crate::python`]), on a loopback port, storing in a temporary directory,
//! with htpasswd authentication (plain-text user file: one user, [`RADICALE_USER`]) and
//! `owner_only` rights (the user reaches only `/<user>/…`).
//!
//! A small blocking HTTP/1.1 client ([`Radicale::request`]) seeds and reads events
//! directly, independently of the driver under test.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The user Radicale accepts.
pub const RADICALE_USER: &str = "room";
/// Its password.
pub const RADICALE_PASSWORD: &str = "s3cret-caldav-pw";

/// A running Radicale; killed on drop.
pub struct Radicale {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// The first header of this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Radicale {
    /// Start on a free port with empty storage.
    pub fn start() -> Radicale {
        Self::start_in(
            tempfile::tempdir().expect("a temporary directory"),
            crate::free_port(),
        )
    }

    /// Start with the storage in `dir` (kept from [`Radicale::stop`]) on `port`.
    ///
    /// Another test may grab `port` between [`Radicale::stop`] and this call: the port is
    /// checked free first and the start retried (5 attempts, 300 ms apart) when it is busy
    /// or Radicale exits at once; then this panics saying the port was taken.
    pub fn start_in(mut dir: tempfile::TempDir, port: u16) -> Radicale {
        const ATTEMPTS: u32 = 5;
        let mut why = String::new();
        for attempt in 1..=ATTEMPTS {
            if attempt > 1 {
                std::thread::sleep(Duration::from_millis(300));
            }
            // The port must be free (not held by another test's server).
            if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                why = format!("the port is in use ({e})");
                continue;
            }
            let mut r = Self::spawn(dir, port);
            match r.wait_ready() {
                Ok(()) => return r,
                Err(e) => {
                    why = e;
                    r.kill();
                    dir = std::mem::replace(
                        &mut r.dir,
                        tempfile::tempdir().expect("a temporary directory"),
                    );
                }
            }
        }
        panic!(
            "radicale could not start on 127.0.0.1:{port} after {ATTEMPTS} attempts (another process may have taken the port since it was stopped): {why}"
        );
    }

    fn spawn(dir: tempfile::TempDir, port: u16) -> Radicale {
        let users = dir.path().join("users");
        std::fs::write(&users, format!("{RADICALE_USER}:{RADICALE_PASSWORD}\n"))
            .expect("writing the htpasswd file");
        let conf = dir.path().join("radicale.conf");
        std::fs::write(
            &conf,
            format!(
                "[server]\nhosts = 127.0.0.1:{port}\n\n\
                 [auth]\ntype = htpasswd\nhtpasswd_filename = {}\nhtpasswd_encryption = plain\ndelay = 0\n\n\
                 [rights]\ntype = owner_only\n\n\
                 [storage]\nfilesystem_folder = {}\n\n\
                 [web]\ntype = none\n\n\
                 [logging]\nlevel = warning\n",
                users.display(),
                dir.path().join("collections").display()
            ),
        )
        .expect("writing radicale.conf");
        let log = std::fs::File::create(dir.path().join("radicale.log")).expect("a log file");
        let child = Command::new(crate::python::python())
            .args(["-m", "radicale", "--config"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("radicale starts (tests/peers/requirements.txt in .venv)");
        Radicale {
            child: Some(child),
            port,
            dir,
        }
    }

    /// Wait for the server to answer: `Err` when it exited (e.g. its port was taken).
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!(
                    "radicale exited ({status}): {}",
                    std::fs::read_to_string(self.dir.path().join("radicale.log"))
                        .unwrap_or_default()
                ));
            }
            if let Ok(r) = self.request("OPTIONS", "/", &[], "")
                && r.status < 500
            {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "radicale did not answer on port {} within 20 s: {}",
                self.port,
                std::fs::read_to_string(self.dir.path().join("radicale.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop the server, keeping its storage and port for [`Radicale::start_in`].
    pub fn stop(mut self) -> (tempfile::TempDir, u16) {
        self.kill();
        let dir = std::mem::replace(
            &mut self.dir,
            tempfile::tempdir().expect("a temporary directory"),
        );
        (dir, self.port)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`: the module uri.
    pub fn uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The storage directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A request as [`RADICALE_USER`].
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> std::io::Result<Reply> {
        let auth = basic(RADICALE_USER, RADICALE_PASSWORD);
        let mut all = vec![("Authorization", auth.as_str())];
        all.extend_from_slice(headers);
        http(self.port, method, path, &all, body)
    }

    fn must(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        self.request(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Create a calendar collection (MKCALENDAR) at `path` (e.g. `/room/calendar/`).
    pub fn make_calendar(&self, path: &str) {
        let r = self.must("MKCALENDAR", path, &[], "");
        assert_eq!(r.status, 201, "MKCALENDAR {path}: {r:?}");
    }

    /// PUT an iCalendar object at `path` (e.g. `/room/calendar/x.ics`); returns its ETag.
    pub fn put_event(&self, path: &str, ics: &str) -> String {
        let r = self.must(
            "PUT",
            path,
            &[("Content-Type", "text/calendar; charset=utf-8")],
            ics,
        );
        assert!(matches!(r.status, 201 | 204), "PUT {path}: {r:?}");
        r.header("ETag").unwrap_or_default().to_string()
    }

    /// The iCalendar object at `path`, if there is one.
    pub fn get_event(&self, path: &str) -> Option<String> {
        let r = self.must("GET", path, &[], "");
        match r.status {
            200 => Some(r.body),
            404 => None,
            other => panic!("GET {path}: HTTP {other}: {}", r.body),
        }
    }

    /// The whole calendar at `path` as one iCalendar object.
    pub fn calendar(&self, path: &str) -> String {
        let r = self.must("GET", path, &[], "");
        assert_eq!(r.status, 200, "GET {path}: {r:?}");
        r.body
    }

    /// DELETE the object at `path`.
    pub fn delete(&self, path: &str) {
        let r = self.must("DELETE", path, &[], "");
        assert!(matches!(r.status, 200 | 204), "DELETE {path}: {r:?}");
    }
}

impl Drop for Radicale {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A VCALENDAR holding one VEVENT from `start` to `end` (UTC, `YYYYMMDDTHHMMSSZ`) plus
/// `extra` property lines (CRLF-separated, no trailing CRLF needed).
pub fn event_ics(uid: &str, start: &str, end: &str, summary: &str, extra: &str) -> String {
    let mut s = format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Lintel testkit//EN\r\nBEGIN:VEVENT\r\n\
         UID:{uid}\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:{start}\r\nDTEND:{end}\r\nSUMMARY:{summary}\r\n"
    );
    for line in extra.split("\r\n").filter(|l| !l.is_empty()) {
        s.push_str(line);
        s.push_str("\r\n");
    }
    s.push_str("END:VEVENT\r\nEND:VCALENDAR\r\n");
    s
}

/// `Basic base64(user:password)`.
pub fn basic(user: &str, password: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{password}").into_bytes();
    let mut out = String::from("Basic ");
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One blocking HTTP/1.1 request to `127.0.0.1:port` (`Connection: close`).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&rest[..eol])
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim(),
                16,
            )
            .map_err(|_| bad("bad chunk size"))?;
            if size == 0 || rest.len() < eol + 2 + size {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest = &rest[(eol + 4 + size).min(rest.len())..];
        }
        body = out;
    }
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn basic_auth_encodes() {
        assert_eq!(
            super::basic("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(super::basic("a", "b"), "Basic YTpi");
    }
}
