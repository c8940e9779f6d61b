//! A Samsung display answering MDC (Multiple Display Control, the binary protocol of
//! `drivers/samsung-mdc`): `0xAA cmd id len data.. checksum` in, `0xAA 0xFF id len
//! 'A'|'N' r-cmd values.. checksum` out, checksums the sum of every byte after `0xAA`.
//!
//! It answers status (0x00), serial number (0x0B), software version (0x0E), power
//! (0x11), volume (0x12), mute (0x13), input source (0x14), volume step (0x62) and model
//! name (0x8A); anything else gets a NAK with error code 0x01. Commands for another
//! display id or with a bad checksum are ignored, as a display does. Fault knobs
//! ([`MdcFaults`]) make it misbehave the ways a real line does.

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

/// The longest command frame.
const MAX_FRAME: usize = 4 + 255 + 1;
/// The pause between the two writes of a split reply.
const SPLIT_PAUSE: Duration = Duration::from_millis(30);
/// The banner of a display whose "secured protocol" is on.
pub const SECURED_BANNER: &[u8] = b"MDCSTART<<TLS>>";

/// What the display holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdcState {
    pub power: bool,
    /// The MDC input source code (0x21 is HDMI1).
    pub input: u8,
    pub volume: u8,
    pub mute: bool,
}

/// Ways to misbehave; change them at any time with [`MdcSimulator::set_faults`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MdcFaults {
    /// The next this many replies carry a wrong checksum (counts down).
    pub bad_checksums: u32,
    /// Written before every reply, in the same write.
    pub garbage: Vec<u8>,
    /// Every reply is written in two parts (its first 3 bytes, a 30 ms pause, the rest).
    pub split: bool,
    /// Every reply is followed, in the same write, by an unsolicited status reply (as if
    /// the display pushed its status): two replies in one read.
    pub coalesce: bool,
    /// Refuse every command with a NAK carrying this error code.
    pub nak: Option<u8>,
    /// Read every command and answer nothing.
    pub silent: bool,
    /// New connections get the secured-protocol banner (TLS and a PIN expected) and no
    /// answer to anything.
    pub secured: bool,
}

/// A Samsung display on MDC; clones share the display.
#[derive(Clone)]
pub struct MdcSimulator {
    id: u8,
    state: Arc<Mutex<MdcState>>,
    faults: Arc<Mutex<MdcFaults>>,
    commands: Arc<Mutex<u64>>,
}

impl Default for MdcSimulator {
    fn default() -> Self {
        MdcSimulator::new(1)
    }
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
}

/// A reply frame.
pub fn reply(id: u8, ack: bool, rcmd: u8, values: &[u8]) -> Vec<u8> {
    let len = u8::try_from(values.len() + 2).unwrap_or(u8::MAX);
    let mut f = vec![0xAA, 0xFF, id, len, if ack { b'A' } else { b'N' }, rcmd];
    f.extend_from_slice(&values[..usize::from(len) - 2]);
    f.push(checksum(&f[1..]));
    f
}

impl MdcSimulator {
    /// A display with MDC id `id`, off, on HDMI1, volume 30, not muted.
    pub fn new(id: u8) -> Self {
        MdcSimulator {
            id,
            state: Arc::new(Mutex::new(MdcState {
                power: false,
                input: 0x21,
                volume: 30,
                mute: false,
            })),
            faults: Arc::default(),
            commands: Arc::default(),
        }
    }

    pub fn state(&self) -> MdcState {
        self.state.lock().clone()
    }

    /// Change the display's state as its remote control would.
    pub fn set_state(&self, state: MdcState) {
        *self.state.lock() = state;
    }

    pub fn faults(&self) -> MdcFaults {
        self.faults.lock().clone()
    }

    pub fn set_faults(&self, faults: MdcFaults) {
        *self.faults.lock() = faults;
    }

    /// Commands received with a good checksum for this display (answered or not).
    pub fn commands(&self) -> u64 {
        *self.commands.lock()
    }

    fn status_values(s: &MdcState) -> [u8; 7] {
        // power, volume, mute, input, aspect (16:9), N time NF, F time NF
        [
            u8::from(s.power),
            s.volume,
            u8::from(s.mute),
            s.input,
            0x10,
            0,
            0,
        ]
    }

    /// The reply to one well-formed command (no faults applied).
    pub fn answer(&self, cmd: u8, data: &[u8]) -> Vec<u8> {
        let mut s = self.state.lock();
        let ack = |values: &[u8]| reply(self.id, true, cmd, values);
        let nak = |code: u8| reply(self.id, false, cmd, &[code]);
        match (cmd, data) {
            (0x00, []) => ack(&Self::status_values(&s)),
            (0x0B, []) => ack(b"SIMMDC0000001"),
            (0x0E, []) => ack(b"S-SIM-1000.1"),
            (0x8A, []) => ack(b"QM55R-SIM"),
            (0x11, []) => ack(&[u8::from(s.power)]),
            (0x11, [p @ (0 | 1)]) => {
                s.power = *p == 1;
                ack(&[*p])
            }
            (0x12, []) => ack(&[s.volume]),
            (0x12, [v]) if *v <= 100 => {
                s.volume = *v;
                ack(&[*v])
            }
            (0x13, []) => ack(&[u8::from(s.mute)]),
            (0x13, [m @ (0 | 1)]) => {
                s.mute = *m == 1;
                ack(&[*m])
            }
            (0x14, []) => ack(&[s.input]),
            (0x14, [i @ (0x08 | 0x0C | 0x14 | 0x18 | 0x20..=0x27 | 0x31..=0x34 | 0x55)]) => {
                s.input = *i;
                ack(&[*i])
            }
            (0x62, [step @ (0 | 1)]) => {
                s.volume = if *step == 0 {
                    (s.volume + 1).min(100)
                } else {
                    s.volume.saturating_sub(1)
                };
                ack(&[s.volume])
            }
            // Unknown command, or a value out of range.
            _ => nak(0x01),
        }
    }

    /// The bytes to write for one command, faults applied: one or two writes.
    fn respond(&self, cmd: u8, data: &[u8]) -> Option<Vec<Vec<u8>>> {
        let mut faults = self.faults.lock();
        if faults.silent {
            return None;
        }
        let mut out = faults.garbage.clone();
        let mut frame = match faults.nak {
            Some(code) => reply(self.id, false, cmd, &[code]),
            None => self.answer(cmd, data),
        };
        if faults.bad_checksums > 0 {
            faults.bad_checksums -= 1;
            if let Some(last) = frame.last_mut() {
                *last = last.wrapping_add(1);
            }
        }
        out.extend_from_slice(&frame);
        if faults.coalesce {
            let status = Self::status_values(&self.state.lock());
            out.extend_from_slice(&reply(self.id, true, 0x00, &status));
        }
        if faults.split && out.len() > 3 {
            let rest = out.split_off(3);
            Some(vec![out, rest])
        } else {
            Some(vec![out])
        }
    }

    /// Serve one connection until it closes.
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(self, stream: S) {
        let (mut r, mut w) = tokio::io::split(stream);
        let secured = self.faults.lock().secured;
        if secured && w.write_all(SECURED_BANNER).await.is_err() {
            return;
        }
        let mut buf: Vec<u8> = Vec::with_capacity(2 * MAX_FRAME);
        let mut read = [0u8; 1024];
        loop {
            let n = match r.read(&mut read).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if secured {
                continue;
            }
            buf.extend_from_slice(&read[..n]);
            while let Some((cmd, id, data)) = next_command(&mut buf) {
                if id != self.id && id != 0xFE {
                    continue;
                }
                *self.commands.lock() += 1;
                let Some(writes) = self.respond(cmd, &data) else {
                    continue;
                };
                let parts = writes.len();
                for (i, bytes) in writes.into_iter().enumerate() {
                    if w.write_all(&bytes).await.is_err() || w.flush().await.is_err() {
                        return;
                    }
                    if i + 1 < parts {
                        tokio::time::sleep(SPLIT_PAUSE).await;
                    }
                }
            }
        }
    }

    /// An in-process connection to this display.
    pub fn connect(&self) -> DuplexStream {
        let (client, device) = tokio::io::duplex(16 * 1024);
        tokio::spawn(self.clone().serve(device));
        client
    }
}

/// Take the next complete command with a good checksum off `buf`: `(cmd, id, data)`.
/// Bytes before a header and frames with a bad checksum are dropped; at most one
/// incomplete frame stays.
fn next_command(buf: &mut Vec<u8>) -> Option<(u8, u8, Vec<u8>)> {
    loop {
        match buf.iter().position(|&b| b == 0xAA) {
            None => {
                buf.clear();
                return None;
            }
            Some(p) => {
                buf.drain(..p);
            }
        }
        if buf.len() < 4 {
            return None;
        }
        let total = 4 + usize::from(buf[3]) + 1;
        if buf.len() < total {
            return None;
        }
        let frame: Vec<u8> = buf.drain(..total).collect();
        if checksum(&frame[1..total - 1]) == frame[total - 1] {
            return Some((frame[1], frame[2], frame[4..total - 1].to_vec()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(cmd: u8, id: u8, data: &[u8]) -> Vec<u8> {
        let mut f = vec![0xAA, cmd, id, data.len() as u8];
        f.extend_from_slice(data);
        f.push(checksum(&f[1..]));
        f
    }

    async fn read_n(c: &mut DuplexStream, n: usize) -> Vec<u8> {
        let mut b = vec![0; n];
        c.read_exact(&mut b).await.unwrap();
        b
    }

    #[test]
    fn answers() {
        let d = MdcSimulator::new(1);
        assert_eq!(
            d.answer(0x11, &[1]),
            [0xAA, 0xFF, 0x01, 0x03, 0x41, 0x11, 0x01, 0x56]
        );
        assert!(d.state().power);
        assert_eq!(d.answer(0x12, &[101])[4], b'N');
        assert_eq!(d.answer(0x14, &[0x99])[4], b'N');
        assert_eq!(d.answer(0x14, &[0x25]), reply(1, true, 0x14, &[0x25]));
        assert_eq!(
            d.answer(0x00, &[]),
            reply(1, true, 0x00, &[1, 30, 0, 0x25, 0x10, 0, 0])
        );
        assert_eq!(d.answer(0x62, &[0]), reply(1, true, 0x62, &[31]));
    }

    #[tokio::test]
    async fn serves_with_faults() {
        let d = MdcSimulator::new(1);
        let mut c = d.connect();
        // Two commands in one write, one for another display, one with a bad checksum.
        let mut w = command(0x11, 1, &[1]);
        w.extend(command(0x11, 2, &[0]));
        let mut bad = command(0x13, 1, &[1]);
        *bad.last_mut().unwrap() ^= 1;
        w.extend(bad);
        w.extend(command(0x12, 1, &[]));
        c.write_all(&w).await.unwrap();
        assert_eq!(read_n(&mut c, 8).await, reply(1, true, 0x11, &[1]));
        assert_eq!(read_n(&mut c, 8).await, reply(1, true, 0x12, &[30]));
        assert_eq!(d.commands(), 2);

        d.set_faults(MdcFaults {
            bad_checksums: 1,
            garbage: b"zz".to_vec(),
            coalesce: true,
            ..Default::default()
        });
        c.write_all(&command(0x13, 1, &[1])).await.unwrap();
        let got = read_n(&mut c, 2 + 8 + 14).await;
        assert_eq!(&got[..2], b"zz");
        let mut want = reply(1, true, 0x13, &[1]);
        *want.last_mut().unwrap() = want.last().unwrap().wrapping_add(1);
        assert_eq!(&got[2..10], &want[..]);
        assert_eq!(&got[10..], reply(1, true, 0, &[1, 30, 1, 0x21, 0x10, 0, 0]));

        d.set_faults(MdcFaults {
            nak: Some(0x03),
            split: true,
            ..Default::default()
        });
        c.write_all(&command(0x11, 1, &[0])).await.unwrap();
        assert_eq!(read_n(&mut c, 8).await, reply(1, false, 0x11, &[0x03]));
        assert!(d.state().power, "a refused command changes nothing");
    }

    #[tokio::test]
    async fn secured_banner() {
        let d = MdcSimulator::new(1);
        d.set_faults(MdcFaults {
            secured: true,
            ..Default::default()
        });
        let mut c = d.connect();
        assert_eq!(read_n(&mut c, SECURED_BANNER.len()).await, SECURED_BANNER);
    }
}
