//! A PJLink class 1/2 projector (JBMIA PJLink specification 1.04 / 2.00) for the PJLink
//! driver's tests (`drivers/pjlink`).
//!
//! On connect it sends `PJLINK 0\r` (no password) or `PJLINK 1 <8 hex digits>\r` (with a
//! password); then it answers one `%<class><CMD> <param>\r` line at a time with
//! `%<class><CMD>=<answer>\r`. With a password, the first command of a connection must be
//! prefixed with the lowercase hex MD5 of the random number and the password; a wrong one
//! is answered `PJLINK ERRA\r` and the connection is closed.
//!
//! State: power (off, on, and the timed warming/cooling transitions), input, video/audio
//! mute, freeze, lamp hours, the ERST error digits, name/manufacturer/product/info, serial
//! and software version, an input list with names (`%1INST ?` lists the class 1 codes,
//! `%2INST ?` all of them), and a relative volume counter. Commands that need the
//! projector on answer `ERR3` while it is not.
//!
//! Fault knobs for tests: [`PjlinkSimulator::set_garbage`] (answer junk instead of
//! answers), [`set_silent`](PjlinkSimulator::set_silent) (no greeting, no answers),
//! [`set_split`](PjlinkSimulator::set_split) (each reply in two writes) and
//! [`set_password`](PjlinkSimulator::set_password) (a password the driver does not know).

use md5::{Digest, Md5};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

const PIPE_BYTES: usize = 16 * 1024;
/// The longest command line the simulator reads (the spec's limit is 136 bytes with the
/// digest); a longer one closes the connection.
pub const MAX_LINE: usize = 256;

/// The projector's power state as PJLink reports it (`POWR ?`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    Off,
    On,
    Cooling,
    Warming,
}

impl Power {
    fn digit(self) -> char {
        match self {
            Power::Off => '0',
            Power::On => '1',
            Power::Cooling => '2',
            Power::Warming => '3',
        }
    }
}

/// What the simulated projector holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PjlinkState {
    /// 1 or 2: class 2 commands (`%2...`) answer `ERR1` on a class 1 projector.
    pub class: u8,
    pub power: Power,
    pub input: String,
    /// Input codes (`INST ?`), e.g. `["11", "31", "32"]`.
    pub inputs: Vec<String>,
    /// Input names (`INNM ?31`).
    pub input_names: BTreeMap<String, String>,
    pub video_mute: bool,
    pub audio_mute: bool,
    pub freeze: bool,
    pub lamp_hours: u32,
    /// The six ERST digits: fan, lamp, temperature, cover, filter, other (0 ok, 1 warning,
    /// 2 error).
    pub errors: String,
    pub name: String,
    pub manufacturer: String,
    pub product: String,
    pub info: String,
    pub serial: String,
    pub software: String,
    /// Relative volume steps taken (`SVOL 1` +1, `SVOL 0` -1), clamped to 0..=100.
    pub volume: i32,
    /// Microphone volume steps (`MVOL`), clamped to 0..=100.
    pub mic_volume: i32,
}

impl Default for PjlinkState {
    fn default() -> Self {
        PjlinkState {
            class: 2,
            power: Power::Off,
            input: "31".into(),
            inputs: vec!["11".into(), "31".into(), "32".into(), "5A".into()],
            input_names: [
                ("11", "RGB 1"),
                ("31", "HDMI 1"),
                ("32", "HDMI 2"),
                ("5A", "LAN"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            video_mute: false,
            audio_mute: false,
            freeze: false,
            lamp_hours: 1234,
            errors: "000000".into(),
            name: "Room Projector".into(),
            manufacturer: "Lintel".into(),
            product: "SIM-4352".into(),
            info: "simulated".into(),
            serial: "SN0001".into(),
            software: "2.0.0".into(),
            volume: 50,
            mic_volume: 50,
        }
    }
}

struct Inner {
    state: PjlinkState,
    /// When a warming/cooling transition ends.
    transition_until: Option<Instant>,
    password: Option<String>,
    /// Every command line received (after the digest), in order.
    commands: Vec<String>,
}

/// A PJLink projector; clones share the same projector.
#[derive(Clone)]
pub struct PjlinkSimulator {
    inner: Arc<Mutex<Inner>>,
    garbage: Arc<AtomicBool>,
    silent: Arc<AtomicBool>,
    split: Arc<AtomicBool>,
    connections: Arc<AtomicU32>,
    auth_failures: Arc<AtomicU32>,
    warmup: Duration,
    cooldown: Duration,
}

impl Default for PjlinkSimulator {
    fn default() -> Self {
        PjlinkSimulator::new(PjlinkState::default())
    }
}

/// The lowercase hex MD5 of `random` followed by `password`, as PJLink authenticates.
pub fn digest(random: &str, password: &str) -> String {
    let mut md5 = Md5::new();
    md5.update(random.as_bytes());
    md5.update(password.as_bytes());
    md5.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl PjlinkSimulator {
    /// A projector in `state`, warming up and cooling down in 1 s.
    pub fn new(state: PjlinkState) -> Self {
        PjlinkSimulator {
            inner: Arc::new(Mutex::new(Inner {
                state,
                transition_until: None,
                password: None,
                commands: vec![],
            })),
            garbage: Arc::default(),
            silent: Arc::default(),
            split: Arc::default(),
            connections: Arc::default(),
            auth_failures: Arc::default(),
            warmup: Duration::from_secs(1),
            cooldown: Duration::from_secs(1),
        }
    }

    /// How long warming up and cooling down take (before the projector is shared).
    pub fn with_transitions(mut self, warmup: Duration, cooldown: Duration) -> Self {
        self.warmup = warmup;
        self.cooldown = cooldown;
        self
    }

    /// Require this password (`PJLINK 1 <random>`), or none (`PJLINK 0`).
    pub fn set_password(&self, password: Option<&str>) {
        self.inner.lock().password = password.map(String::from);
    }

    /// Answer every command with junk instead of a PJLink answer.
    pub fn set_garbage(&self, on: bool) {
        self.garbage.store(on, Ordering::SeqCst);
    }

    /// Send no greeting on new connections and answer nothing (commands are still read).
    pub fn set_silent(&self, on: bool) {
        self.silent.store(on, Ordering::SeqCst);
    }

    /// Write every reply (and greeting) in two parts, 20 ms apart.
    pub fn set_split(&self, on: bool) {
        self.split.store(on, Ordering::SeqCst);
    }

    /// The current state (transitions that ended are applied).
    pub fn state(&self) -> PjlinkState {
        let mut inner = self.inner.lock();
        Self::settle(&mut inner);
        inner.state.clone()
    }

    /// Change the state (e.g. set lamp hours or error digits).
    pub fn update(&self, f: impl FnOnce(&mut PjlinkState)) {
        f(&mut self.inner.lock().state);
    }

    /// Every command line received so far (digests stripped).
    pub fn commands(&self) -> Vec<String> {
        self.inner.lock().commands.clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u32 {
        self.connections.load(Ordering::SeqCst)
    }

    /// Connections refused with `PJLINK ERRA` so far.
    pub fn auth_failures(&self) -> u32 {
        self.auth_failures.load(Ordering::SeqCst)
    }

    fn settle(inner: &mut Inner) {
        if let Some(until) = inner.transition_until
            && Instant::now() >= until
        {
            inner.transition_until = None;
            inner.state.power = match inner.state.power {
                Power::Warming => Power::On,
                Power::Cooling => Power::Off,
                other => other,
            };
        }
    }

    /// The answer (without `\r`) to one command line such as `%1POWR ?` (no digest).
    pub fn answer(&self, line: &str) -> String {
        let mut inner = self.inner.lock();
        Self::settle(&mut inner);
        inner.commands.push(line.to_string());
        let bytes = line.as_bytes();
        if bytes.len() < 7 || bytes[0] != b'%' || !line.is_char_boundary(6) {
            return "PJLINK ERR1".into();
        }
        let class = bytes[1];
        let header = &line[..6];
        let cmd = &line[2..6];
        let param = match line[6..].strip_prefix(' ') {
            Some(p) => p,
            None => return format!("{header}=ERR1"),
        };
        if !matches!(class, b'1' | b'2') || (class == b'2' && inner.state.class < 2) {
            return format!("{header}=ERR1");
        }
        let answer = self.answer_command(&mut inner, class, cmd, param);
        format!("{header}={answer}")
    }

    fn answer_command(&self, inner: &mut Inner, class: u8, cmd: &str, param: &str) -> String {
        let s = &mut inner.state;
        let on = s.power == Power::On;
        let ok = |done: bool| if done { "OK" } else { "ERR2" }.to_string();
        match (class, cmd, param) {
            (_, "POWR", "?") => s.power.digit().to_string(),
            (_, "POWR", "1") => match s.power {
                Power::Off => {
                    s.power = Power::Warming;
                    inner.transition_until = Some(Instant::now() + self.warmup);
                    "OK".into()
                }
                Power::On => "OK".into(),
                Power::Warming | Power::Cooling => "ERR3".into(),
            },
            (_, "POWR", "0") => match s.power {
                Power::On => {
                    s.power = Power::Cooling;
                    s.video_mute = false;
                    s.audio_mute = false;
                    s.freeze = false;
                    inner.transition_until = Some(Instant::now() + self.cooldown);
                    "OK".into()
                }
                Power::Off => "OK".into(),
                Power::Warming | Power::Cooling => "ERR3".into(),
            },
            (_, "POWR", _) => "ERR2".into(),
            (_, "INPT", "?") => s.input.clone(),
            (_, "INPT", code) => {
                if !s.inputs.iter().any(|i| i == code) {
                    "ERR2".into()
                } else if !on {
                    "ERR3".into()
                } else {
                    s.input = code.to_string();
                    "OK".into()
                }
            }
            (_, "AVMT", "?") => match (s.video_mute, s.audio_mute) {
                (true, true) => "31",
                (true, false) => "11",
                (false, true) => "21",
                (false, false) => "30",
            }
            .into(),
            (_, "AVMT", v @ ("10" | "11" | "20" | "21" | "30" | "31")) => {
                if !on {
                    return "ERR3".into();
                }
                let state = v.ends_with('1');
                if v.starts_with(['1', '3']) {
                    s.video_mute = state;
                }
                if v.starts_with(['2', '3']) {
                    s.audio_mute = state;
                }
                "OK".into()
            }
            (_, "AVMT", _) => "ERR2".into(),
            (_, "ERST", "?") => s.errors.clone(),
            (_, "LAMP", "?") => format!("{} {}", s.lamp_hours, u8::from(on)),
            (_, "NAME", "?") => s.name.clone(),
            (_, "INF1", "?") => s.manufacturer.clone(),
            (_, "INF2", "?") => s.product.clone(),
            (_, "INFO", "?") => s.info.clone(),
            (_, "CLSS", "?") => s.class.to_string(),
            // Class 1 lists only the inputs it can name: types 1-5, numbers 1-9.
            (b'1', "INST", "?") => s
                .inputs
                .iter()
                .filter(|i| {
                    let b = i.as_bytes();
                    b.len() == 2 && (b'1'..=b'5').contains(&b[0]) && b[1].is_ascii_digit()
                })
                .cloned()
                .collect::<Vec<_>>()
                .join(" "),
            (b'2', "INST", "?") => s.inputs.join(" "),
            (b'2', "INNM", p) => match p.strip_prefix('?').and_then(|c| s.input_names.get(c)) {
                Some(name) => name.clone(),
                None => "ERR2".into(),
            },
            (b'2', "SNUM", "?") => s.serial.clone(),
            (b'2', "SVER", "?") => s.software.clone(),
            (b'2', "SVOL" | "MVOL", d @ ("0" | "1")) => {
                if !on {
                    return "ERR3".into();
                }
                let v = if cmd == "SVOL" {
                    &mut s.volume
                } else {
                    &mut s.mic_volume
                };
                *v = (*v + if d == "1" { 1 } else { -1 }).clamp(0, 100);
                "OK".into()
            }
            (b'2', "SVOL" | "MVOL", _) => "ERR2".into(),
            (b'2', "FREZ", "?") => u8::from(s.freeze).to_string(),
            (b'2', "FREZ", d @ ("0" | "1")) => {
                if !on {
                    return "ERR3".into();
                }
                s.freeze = d == "1";
                "OK".into()
            }
            (b'2', "FREZ", _) => ok(false),
            _ => "ERR1".into(),
        }
    }

    async fn write<W: AsyncWrite + Unpin>(&self, w: &mut W, text: &str) -> std::io::Result<()> {
        let bytes = text.as_bytes();
        if self.split.load(Ordering::SeqCst) && bytes.len() > 1 {
            let (a, b) = bytes.split_at(bytes.len() / 2);
            w.write_all(a).await?;
            w.flush().await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
            w.write_all(b).await?;
        } else {
            w.write_all(bytes).await?;
        }
        w.flush().await
    }

    /// Serve one connection until it closes (or authentication fails).
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(self, stream: S) {
        self.connections.fetch_add(1, Ordering::SeqCst);
        let (mut r, mut w) = tokio::io::split(stream);
        let password = self.inner.lock().password.clone();
        let random = format!("{:08x}", rand::random::<u32>());
        if !self.silent.load(Ordering::SeqCst) {
            let greeting = match &password {
                Some(_) => format!("PJLINK 1 {random}\r"),
                None => "PJLINK 0\r".to_string(),
            };
            if self.write(&mut w, &greeting).await.is_err() {
                return;
            }
        }
        let mut authenticated = password.is_none();
        let mut buf = Vec::with_capacity(MAX_LINE);
        let mut chunk = [0u8; 512];
        loop {
            let n = match r.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            while let Some(pos) = buf.iter().position(|&b| b == b'\r') {
                let raw: Vec<u8> = buf.drain(..=pos).collect();
                let text = String::from_utf8_lossy(&raw[..raw.len() - 1]);
                let mut line = text.trim_start_matches('\n');
                if !authenticated {
                    // Checked against the password as it is now (it may have changed).
                    let current = self.inner.lock().password.clone();
                    let want = digest(&random, current.as_deref().unwrap_or_default());
                    match line.get(..32) {
                        Some(d) if d == want => {
                            authenticated = true;
                            line = &line[32..];
                        }
                        _ => {
                            self.auth_failures.fetch_add(1, Ordering::SeqCst);
                            let _ = self.write(&mut w, "PJLINK ERRA\r").await;
                            return;
                        }
                    }
                }
                if self.silent.load(Ordering::SeqCst) {
                    self.inner.lock().commands.push(line.to_string());
                    continue;
                }
                let reply = if self.garbage.load(Ordering::SeqCst) {
                    self.inner.lock().commands.push(line.to_string());
                    "\u{7}#?garbage?#\r".to_string()
                } else {
                    format!("{}\r", self.answer(line))
                };
                if self.write(&mut w, &reply).await.is_err() {
                    return;
                }
            }
            if buf.len() > MAX_LINE {
                return;
            }
        }
    }

    /// An in-process connection to this projector.
    pub fn connect(&self) -> DuplexStream {
        let (client, device) = tokio::io::duplex(PIPE_BYTES);
        tokio::spawn(self.clone().serve(device));
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};

    #[test]
    fn digest_matches_the_spec_example() {
        assert_eq!(
            digest("498e4a67", "JBMIAProjectorLink"),
            "5d8409bc1c3fa39749434aa3a5c38682"
        );
    }

    #[test]
    fn answers() {
        let p = PjlinkSimulator::default().with_transitions(Duration::ZERO, Duration::ZERO);
        assert_eq!(p.answer("%1POWR ?"), "%1POWR=0");
        assert_eq!(p.answer("%1INPT 32"), "%1INPT=ERR3");
        assert_eq!(p.answer("%1POWR 1"), "%1POWR=OK");
        assert_eq!(p.answer("%1POWR ?"), "%1POWR=1");
        assert_eq!(p.answer("%1INPT 32"), "%1INPT=OK");
        assert_eq!(p.answer("%1INPT 39"), "%1INPT=ERR2");
        assert_eq!(p.answer("%1AVMT 21"), "%1AVMT=OK");
        assert_eq!(p.answer("%1AVMT ?"), "%1AVMT=21");
        assert_eq!(p.answer("%1XXXX ?"), "%1XXXX=ERR1");
        assert_eq!(p.answer("%2INST ?"), "%2INST=11 31 32 5A");
        assert_eq!(p.answer("%1INST ?"), "%1INST=11 31 32");
        assert_eq!(p.answer("%2INNM ?31"), "%2INNM=HDMI 1");
        assert_eq!(p.answer("%2SVOL 1"), "%2SVOL=OK");
        assert_eq!(p.state().volume, 51);
        assert_eq!(p.answer("junk"), "PJLINK ERR1");
        let c1 = PjlinkSimulator::new(PjlinkState {
            class: 1,
            ..Default::default()
        });
        assert_eq!(c1.answer("%2FREZ ?"), "%2FREZ=ERR1");
    }

    #[tokio::test]
    async fn authenticates_with_md5() {
        let p = PjlinkSimulator::default();
        p.set_password(Some("secret"));
        let mut c = BufReader::new(p.connect());
        let mut line = Vec::new();
        c.read_until(b'\r', &mut line).await.unwrap();
        let greeting = String::from_utf8(line.clone()).unwrap();
        let random = greeting
            .strip_prefix("PJLINK 1 ")
            .and_then(|r| r.strip_suffix('\r'))
            .expect("an authentication greeting");
        let first = format!("{}%1POWR ?\r", digest(random, "secret"));
        c.get_mut().write_all(first.as_bytes()).await.unwrap();
        line.clear();
        c.read_until(b'\r', &mut line).await.unwrap();
        assert_eq!(line, b"%1POWR=0\r");

        let mut c = BufReader::new(p.connect());
        line.clear();
        c.read_until(b'\r', &mut line).await.unwrap();
        c.get_mut()
            .write_all(b"00000000000000000000000000000000%1POWR ?\r")
            .await
            .unwrap();
        line.clear();
        c.read_until(b'\r', &mut line).await.unwrap();
        assert_eq!(line, b"PJLINK ERRA\r");
        assert_eq!(p.auth_failures(), 1);
    }
}
