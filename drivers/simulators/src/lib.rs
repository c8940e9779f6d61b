//! Simulated devices for the demo building and tests. Each speaks the same protocol as
//! its driver's real device (see the driver crates' docs) over any byte stream: an
//! in-process duplex pipe (`connect`) or a TCP listener (`serve_tcp`).

pub mod caldav;
pub mod google_calendar;
pub mod modbus;
pub mod msgraph;
pub mod pjlink;
pub mod room_panel;
pub mod samsung_mdc;

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, DuplexStream};
use tokio::net::TcpListener;
use tokio::sync::watch;

const PIPE_BYTES: usize = 16 * 1024;
const MAX_LINE: usize = 1024;

/// Accept connections on `listener` forever, serving each with `serve`.
pub async fn serve_tcp<F, Fut>(listener: TcpListener, serve: F)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(serve(stream));
    }
}

/// Bind a new loopback port (`127.0.0.1:0`) and accept connections on it with `serve`
/// until the runtime stops; returns the address.
pub async fn serve_loopback<F, Fut>(serve: F) -> std::io::Result<std::net::SocketAddr>
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve_tcp(listener, serve));
    Ok(addr)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayState {
    pub power: bool,
    pub input: String,
    pub volume: u8,
    pub mute: bool,
}

/// A display answering the demo display line protocol (`POWER ON` → `POWER=ON`).
#[derive(Clone)]
pub struct DisplaySimulator {
    state: Arc<Mutex<DisplayState>>,
}

impl Default for DisplaySimulator {
    fn default() -> Self {
        DisplaySimulator {
            state: Arc::new(Mutex::new(DisplayState {
                power: false,
                input: "HDMI1".into(),
                volume: 30,
                mute: false,
            })),
        }
    }
}

fn on_off(b: bool) -> &'static str {
    if b { "ON" } else { "OFF" }
}

impl DisplaySimulator {
    pub fn state(&self) -> DisplayState {
        self.state.lock().clone()
    }

    /// The reply to one command line.
    pub fn answer(&self, line: &str) -> String {
        let mut s = self.state.lock();
        let (cmd, arg) = line.split_once(' ').unwrap_or((line, ""));
        match (cmd, arg) {
            ("POWER?", "") => format!("POWER={}", on_off(s.power)),
            ("POWER", "ON" | "OFF") => {
                s.power = arg == "ON";
                format!("POWER={arg}")
            }
            ("INPUT?", "") => format!("INPUT={}", s.input),
            ("INPUT", "HDMI1" | "HDMI2" | "DisplayPort") => {
                s.input = arg.to_string();
                format!("INPUT={arg}")
            }
            ("VOLUME?", "") => format!("VOLUME={}", s.volume),
            ("VOLUME", v) => match v.parse::<u8>() {
                Ok(v) if v <= 100 => {
                    s.volume = v;
                    format!("VOLUME={v}")
                }
                _ => "ERR volume must be 0-100".into(),
            },
            ("MUTE?", "") => format!("MUTE={}", on_off(s.mute)),
            ("MUTE", "ON" | "OFF") => {
                s.mute = arg == "ON";
                format!("MUTE={arg}")
            }
            _ => "ERR unknown command".into(),
        }
    }

    /// Serve one connection until it closes.
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(self, stream: S) {
        let (r, mut w) = tokio::io::split(stream);
        let mut lines = BufReader::new(r);
        let mut line = String::new();
        loop {
            line.clear();
            match lines.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) if line.len() > MAX_LINE => return,
                Ok(_) => {}
            }
            let reply = self.answer(line.trim_end_matches(['\r', '\n']));
            if w.write_all(format!("{reply}\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// An in-process connection to this display.
    pub fn connect(&self) -> DuplexStream {
        let (client, device) = tokio::io::duplex(PIPE_BYTES);
        tokio::spawn(self.clone().serve(device));
        client
    }
}

/// An occupancy sensor whose people count takes a random walk, pushing
/// `PRESENCE=<0|1> PEOPLE=<n>` on every change and answering `STATE?`.
#[derive(Clone)]
pub struct OccupancySimulator {
    people: Arc<watch::Sender<u32>>,
}

impl OccupancySimulator {
    /// A sensor that changes its reading every `period` (none if `None`).
    pub fn new(period: Option<Duration>) -> Self {
        let (tx, _) = watch::channel(0u32);
        let people = Arc::new(tx);
        if let Some(period) = period {
            let weak = Arc::downgrade(&people);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(people) = weak.upgrade() else { return };
                    let step: i32 = rand::random::<u8>() as i32 % 3 - 1;
                    people.send_modify(|n| *n = (*n as i32 + step).clamp(0, 8) as u32);
                }
            });
        }
        OccupancySimulator { people }
    }

    pub fn set_people(&self, n: u32) {
        self.people.send_replace(n);
    }

    fn reading(n: u32) -> String {
        format!("PRESENCE={} PEOPLE={n}\n", u8::from(n > 0))
    }

    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(self, stream: S) {
        let (r, mut w) = tokio::io::split(stream);
        let mut lines = BufReader::new(r);
        let mut rx = self.people.subscribe();
        let mut line = String::new();
        loop {
            line.clear();
            let reply = tokio::select! {
                read = lines.read_line(&mut line) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) if line.len() > MAX_LINE => return,
                    Ok(_) if line.trim() == "STATE?" => Self::reading(*rx.borrow()),
                    Ok(_) => "ERR unknown command\n".to_string(),
                },
                changed = rx.changed() => match changed {
                    Ok(()) => Self::reading(*rx.borrow_and_update()),
                    Err(_) => return,
                },
            };
            if w.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    pub fn connect(&self) -> DuplexStream {
        let (client, device) = tokio::io::duplex(PIPE_BYTES);
        tokio::spawn(self.clone().serve(device));
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_protocol() {
        let d = DisplaySimulator::default();
        assert_eq!(d.answer("POWER?"), "POWER=OFF");
        assert_eq!(d.answer("POWER ON"), "POWER=ON");
        assert_eq!(d.answer("VOLUME 101"), "ERR volume must be 0-100");
        assert_eq!(d.answer("VOLUME 55"), "VOLUME=55");
        assert_eq!(d.answer("INPUT VGA"), "ERR unknown command");
        assert!(d.state().power);
    }

    #[tokio::test]
    async fn occupancy_pushes_changes_and_answers_queries() {
        let s = OccupancySimulator::new(None);
        let mut c = BufReader::new(s.connect());
        c.get_mut().write_all(b"STATE?\n").await.unwrap();
        let mut line = String::new();
        c.read_line(&mut line).await.unwrap();
        assert_eq!(line, "PRESENCE=0 PEOPLE=0\n");
        s.set_people(3);
        line.clear();
        c.read_line(&mut line).await.unwrap();
        assert_eq!(line, "PRESENCE=1 PEOPLE=3\n");
    }
}
