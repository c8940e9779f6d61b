//! The MDC wire format: command frames, the reply framer and reply parsing. Pure code
//! (no host calls), so it is unit-tested natively.
//!
//! Command: `0xAA, cmd, id, len, data[len], checksum`; reply: `0xAA, 0xFF, id, len, ack,
//! r-cmd, values[len - 2], checksum`, where `ack` is `'A'` (0x41) or `'N'` (0x4E, the
//! first value then is an error code) and the checksum is the sum of every byte after the
//! `0xAA` header, modulo 256.

/// The first byte of every frame.
pub const HEADER: u8 = 0xAA;
/// The command byte of every reply.
pub const REPLY: u8 = 0xFF;
/// A positive reply.
pub const ACK: u8 = b'A';
/// A refusal; its first value is the display's error code.
pub const NAK: u8 = b'N';
/// The display id that addresses every display on the line (some models do not answer it).
pub const BROADCAST_ID: u8 = 0xFE;
/// The longest frame: header, command, id, length, 255 data bytes, checksum.
pub const MAX_FRAME: usize = 4 + 255 + 1;
/// The banner of a display whose "secured protocol" is on: it expects TLS and a PIN,
/// which this driver does not speak.
pub const SECURED_BANNER: &[u8] = b"MDCSTART<<TLS>>";

/// The command codes the driver uses (MDC Protocol 2015 v13.7c).
pub mod cmd {
    /// Status: power, volume, mute, input, aspect, N time NF, F time NF.
    pub const STATUS: u8 = 0x00;
    /// Serial number (ASCII).
    pub const SERIAL_NUMBER: u8 = 0x0B;
    /// Software version (ASCII).
    pub const SOFTWARE_VERSION: u8 = 0x0E;
    /// Power: 0 off, 1 on.
    pub const POWER: u8 = 0x11;
    /// Volume 0..=100.
    pub const VOLUME: u8 = 0x12;
    /// Mute: 0 off, 1 on.
    pub const MUTE: u8 = 0x13;
    /// Input source.
    pub const INPUT_SOURCE: u8 = 0x14;
    /// Volume one step up (0) or down (1).
    pub const VOLUME_CHANGE: u8 = 0x62;
    /// Model name (ASCII).
    pub const MODEL_NAME: u8 = 0x8A;
}

/// The sum of `bytes` modulo 256.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b))
}

/// A command frame. `data` is at most 255 bytes (the driver sends at most one).
pub fn encode(cmd: u8, id: u8, data: &[u8]) -> Vec<u8> {
    let len = u8::try_from(data.len()).unwrap_or(u8::MAX);
    let data = &data[..usize::from(len)];
    let mut frame = Vec::with_capacity(data.len() + 5);
    frame.extend_from_slice(&[HEADER, cmd, id, len]);
    frame.extend_from_slice(data);
    frame.push(checksum(&frame[1..]));
    frame
}

/// A well-formed reply with a good checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The id of the display that answered.
    pub id: u8,
    /// `true` for an ACK, `false` for a NAK.
    pub ack: bool,
    /// The command this answers.
    pub rcmd: u8,
    /// The values (for a NAK, the error code first).
    pub values: Vec<u8>,
}

/// What the framer found in the bytes it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A reply.
    Reply(Reply),
    /// A complete frame whose checksum is wrong: its `0xAA` is dropped and the bytes
    /// after it are scanned again (a real reply may start inside a bogus frame).
    BadChecksum { got: u8, want: u8 },
    /// A frame with a good checksum that is no reply (too short or neither ACK nor NAK).
    Malformed(String),
    /// Bytes that start no frame, skipped to resynchronise on the next `0xAA 0xFF`.
    Garbage(usize),
    /// The display asks for TLS and a PIN (its "secured protocol" is on).
    Secured,
}

/// Reassembles replies from raw reads: a reply split across reads waits for its rest,
/// several replies in one read come out one by one, bytes before a reply header are
/// skipped. After a bad checksum only the frame's `0xAA` is dropped and the scan goes on
/// from the next byte, so a real reply inside a bogus frame (e.g. junk `0xAA 0xFF` whose
/// length byte swallowed the reply) is not lost; the rest of the bogus frame is not
/// reported again as garbage. At most [`MAX_FRAME`] bytes stay buffered between reads.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
    /// The last skipped bytes, to spot the secured-protocol banner across reads.
    skipped_tail: Vec<u8>,
    /// How many of the next buffered bytes belong to a frame already reported with a bad
    /// checksum: skipping them is not reported as garbage.
    quiet: usize,
}

impl Framer {
    /// Bytes held back (an incomplete frame).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Forget an incomplete frame (after a disconnect or a command timeout).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.skipped_tail.clear();
        self.quiet = 0;
    }

    /// Feed one read; returns what it completed, in order.
    pub fn push(&mut self, data: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        // In pieces, so the buffer never holds more than two frames' worth.
        for piece in data.chunks(MAX_FRAME) {
            self.buf.extend_from_slice(piece);
            self.drain(&mut out);
        }
        out
    }

    fn skip(&mut self, n: usize, out: &mut Vec<Frame>) {
        let n = n.min(self.buf.len());
        if n == 0 {
            return;
        }
        self.skipped_tail.extend_from_slice(&self.buf[..n]);
        let excess = self
            .skipped_tail
            .len()
            .saturating_sub(2 * SECURED_BANNER.len());
        self.skipped_tail.drain(..excess);
        self.buf.drain(..n);
        let quiet = n.min(self.quiet);
        self.quiet -= quiet;
        let reported = n - quiet;
        if reported > 0 {
            match out.last_mut() {
                Some(Frame::Garbage(count)) => *count += reported,
                _ => out.push(Frame::Garbage(reported)),
            }
        }
        if self
            .skipped_tail
            .windows(SECURED_BANNER.len())
            .any(|w| w == SECURED_BANNER)
        {
            self.skipped_tail.clear();
            out.push(Frame::Secured);
        }
    }

    fn drain(&mut self, out: &mut Vec<Frame>) {
        loop {
            match self.buf.iter().position(|&b| b == HEADER) {
                None => {
                    self.skip(self.buf.len(), out);
                    return;
                }
                Some(p) => self.skip(p, out),
            }
            if self.buf.len() < 2 {
                return;
            }
            if self.buf[1] != REPLY {
                self.skip(1, out);
                continue;
            }
            if self.buf.len() < 4 {
                return;
            }
            let total = 4 + usize::from(self.buf[3]) + 1;
            if self.buf.len() < total {
                return;
            }
            match parse(&self.buf[..total]) {
                bad @ Frame::BadChecksum { .. } => {
                    out.push(bad);
                    // Drop only the header byte and scan the rest again: the frame's
                    // other bytes are not reported as garbage.
                    self.quiet = self.quiet.max(total);
                    self.skip(1, out);
                }
                frame => {
                    self.buf.drain(..total);
                    self.quiet = self.quiet.saturating_sub(total);
                    self.skipped_tail.clear();
                    out.push(frame);
                }
            }
        }
    }
}

/// One complete frame (`0xAA 0xFF id len ... checksum`).
fn parse(frame: &[u8]) -> Frame {
    let n = frame.len();
    let want = checksum(&frame[1..n - 1]);
    let got = frame[n - 1];
    if want != got {
        return Frame::BadChecksum { got, want };
    }
    let body = &frame[4..n - 1];
    let (ack, rcmd, values) = match body {
        [ack, rcmd, values @ ..] => (*ack, *rcmd, values),
        _ => {
            return Frame::Malformed(format!(
                "reply of {} data byte(s) (at least 2 expected)",
                body.len()
            ));
        }
    };
    if ack != ACK && ack != NAK {
        return Frame::Malformed(format!(
            "reply to command 0x{rcmd:02X} is neither ACK nor NAK (0x{ack:02X})"
        ));
    }
    Frame::Reply(Reply {
        id: frame[2],
        ack: ack == ACK,
        rcmd,
        values: values.to_vec(),
    })
}

/// The text of an ASCII value (serial number, software version, model name): NULs and
/// surrounding blanks removed, anything not printable replaced.
pub fn ascii(values: &[u8]) -> String {
    values
        .iter()
        .filter(|&&b| b != 0)
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect::<String>()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(id: u8, ack: u8, rcmd: u8, values: &[u8]) -> Vec<u8> {
        let mut f = vec![HEADER, REPLY, id, values.len() as u8 + 2, ack, rcmd];
        f.extend_from_slice(values);
        f.push(checksum(&f[1..]));
        f
    }

    #[test]
    fn encodes_with_checksum() {
        assert_eq!(encode(0x11, 1, &[1]), [0xAA, 0x11, 0x01, 0x01, 0x01, 0x14]);
        assert_eq!(encode(0x00, 0xFE, &[]), [0xAA, 0x00, 0xFE, 0x00, 0xFE]);
        // The sum wraps.
        assert_eq!(encode(0x8A, 0xFE, &[]), [0xAA, 0x8A, 0xFE, 0x00, 0x88]);
    }

    #[test]
    fn frames_split_coalesced_and_garbage() {
        let a = reply(1, ACK, 0x11, &[1]);
        let b = reply(1, ACK, 0x12, &[40]);
        let mut f = Framer::default();
        assert_eq!(f.push(&a[..3]), vec![]);
        assert_eq!(f.buffered(), 3);
        let mut rest = a[3..].to_vec();
        rest.extend_from_slice(b"xyz");
        rest.extend_from_slice(&b);
        let got = f.push(&rest);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(matches!(&got[0], Frame::Reply(r) if r.rcmd == 0x11 && r.values == [1]));
        assert_eq!(got[1], Frame::Garbage(3));
        assert!(matches!(&got[2], Frame::Reply(r) if r.rcmd == 0x12 && r.values == [40]));
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn bad_checksum_and_malformed() {
        let mut a = reply(1, ACK, 0x11, &[1]);
        *a.last_mut().unwrap() ^= 0xFF;
        let mut f = Framer::default();
        let got = f.push(&a);
        assert!(matches!(got[..], [Frame::BadChecksum { .. }]), "{got:?}");
        let got = f.push(&reply(1, b'?', 0x11, &[1]));
        assert!(matches!(&got[..], [Frame::Malformed(m)] if m.contains("neither ACK nor NAK")));
        let mut short = vec![HEADER, REPLY, 1, 0];
        short.push(checksum(&short[1..]));
        assert!(matches!(&f.push(&short)[..], [Frame::Malformed(_)]));
    }

    #[test]
    fn a_reply_inside_a_frame_with_a_bad_checksum_is_found() {
        let real = reply(1, ACK, 0x11, &[1]);
        // Junk `0xAA 0xFF` whose length byte (6) swallows the real reply: the bogus frame
        // is 11 bytes, ending at the real reply's checksum-less part.
        let mut data = vec![HEADER, REPLY, 0x01, 0x06];
        data.extend_from_slice(&real);
        let bogus = &data[..11];
        assert_ne!(
            checksum(&bogus[1..10]),
            bogus[10],
            "the test needs a bad checksum"
        );
        let mut f = Framer::default();
        let got = f.push(&data);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(matches!(got[0], Frame::BadChecksum { .. }), "{got:?}");
        assert!(
            matches!(&got[1], Frame::Reply(r) if r.rcmd == 0x11 && r.values == [1] && r.ack),
            "the real reply is found: {got:?}"
        );
        assert_eq!(f.buffered(), 0);

        // The same split across reads, with a second real reply after it: nothing lost,
        // no garbage reported for the bogus frame's bytes.
        let second = reply(1, ACK, 0x12, &[40]);
        let mut all = data.clone();
        all.extend_from_slice(&second);
        let mut f = Framer::default();
        let mut got = Vec::new();
        for piece in all.chunks(3) {
            got.extend(f.push(piece));
        }
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(matches!(got[0], Frame::BadChecksum { .. }), "{got:?}");
        assert!(
            matches!(&got[1], Frame::Reply(r) if r.rcmd == 0x11),
            "{got:?}"
        );
        assert!(
            matches!(&got[2], Frame::Reply(r) if r.rcmd == 0x12),
            "{got:?}"
        );

        // Junk after the bogus frame's end is still reported.
        let mut f = Framer::default();
        let mut junk = corrupt_tail(reply(1, ACK, 0x11, &[1]));
        junk.extend_from_slice(b"xyz");
        let got = f.push(&junk);
        assert!(matches!(got[0], Frame::BadChecksum { .. }), "{got:?}");
        assert_eq!(got[1..], [Frame::Garbage(3)], "{got:?}");
    }

    fn corrupt_tail(mut frame: Vec<u8>) -> Vec<u8> {
        *frame.last_mut().unwrap() ^= 0xFF;
        frame
    }

    #[test]
    fn buffer_stays_bounded() {
        let mut f = Framer::default();
        // A header announcing 255 bytes, then a flood without a header.
        f.push(&[HEADER, REPLY, 1, 255]);
        assert_eq!(f.buffered(), 4);
        let got = f.push(&vec![0x00; 10 * MAX_FRAME]);
        assert!(f.buffered() < MAX_FRAME, "{}", f.buffered());
        assert!(got.iter().any(|e| matches!(e, Frame::BadChecksum { .. })));
        let got = f.push(&vec![0x55; 64 * 1024]);
        assert_eq!(f.buffered(), 0);
        assert_eq!(got, vec![Frame::Garbage(64 * 1024)]);
    }

    #[test]
    fn secured_banner_across_reads() {
        let mut f = Framer::default();
        let got = f.push(b"MDCSTA");
        assert_eq!(got, vec![Frame::Garbage(6)]);
        let got = f.push(b"RT<<TLS>>");
        assert_eq!(got, vec![Frame::Garbage(9), Frame::Secured]);
    }

    #[test]
    fn ascii_values() {
        assert_eq!(ascii(b"QM55R\0\0"), "QM55R");
        assert_eq!(ascii(b" T-KTM2\x01 "), "T-KTM2?");
    }
}
