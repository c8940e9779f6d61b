//! Simulated Modbus TCP room sensor (see `drivers/modbus`): a small Modbus TCP server
//! answering functions 0x01–0x06 and 0x10 from four tables of 256 entries each, with
//! readings that drift like a real room sensor.
//!
//! Register map (the driver's default settings): input register 0 = temperature in
//! 0.1 °C (i16), 1 = relative humidity in 0.1 % (u16), 2 = CO2 in ppm (u16); discrete
//! input 0 = occupancy. Holding registers and coils are plain read/write storage.
//! Addresses past 255 answer exception 2 (illegal data address), an unknown function
//! exception 1, a bad quantity exception 3.

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

/// Entries per table.
pub const TABLE_SIZE: usize = 256;

/// The simulated device's tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModbusTables {
    pub coils: Vec<bool>,
    pub discrete: Vec<bool>,
    pub holding: Vec<u16>,
    pub input: Vec<u16>,
}

/// A Modbus TCP room sensor.
#[derive(Clone)]
pub struct ModbusSimulator {
    tables: Arc<Mutex<ModbusTables>>,
}

impl Default for ModbusSimulator {
    fn default() -> Self {
        Self::new(None)
    }
}

impl ModbusSimulator {
    /// A sensor at 21.5 °C, 45 % RH, 600 ppm, unoccupied, whose readings drift every
    /// `period` (never if `None`; the drift needs a tokio runtime).
    pub fn new(period: Option<Duration>) -> Self {
        let mut tables = ModbusTables {
            coils: vec![false; TABLE_SIZE],
            discrete: vec![false; TABLE_SIZE],
            holding: vec![0; TABLE_SIZE],
            input: vec![0; TABLE_SIZE],
        };
        tables.input[0] = 215;
        tables.input[1] = 450;
        tables.input[2] = 600;
        let sim = ModbusSimulator {
            tables: Arc::new(Mutex::new(tables)),
        };
        if let Some(period) = period {
            let weak = Arc::downgrade(&sim.tables);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(tables) = weak.upgrade() else { return };
                    drift(&mut tables.lock());
                }
            });
        }
        sim
    }

    /// A copy of the tables.
    pub fn tables(&self) -> ModbusTables {
        self.tables.lock().clone()
    }

    /// Change the tables (e.g. set a reading).
    pub fn update(&self, f: impl FnOnce(&mut ModbusTables)) {
        f(&mut self.tables.lock());
    }

    /// The reply ADU to one request ADU (`None` if it is not a Modbus TCP request).
    pub fn answer(&self, request: &[u8]) -> Option<Vec<u8>> {
        if request.len() < 8 || request[2..4] != [0, 0] {
            return None;
        }
        let pdu = self.answer_pdu(&request[7..]);
        let mut out = Vec::with_capacity(7 + pdu.len());
        out.extend_from_slice(&request[..4]);
        out.extend_from_slice(&((pdu.len() + 1) as u16).to_be_bytes());
        out.push(request[6]);
        out.extend_from_slice(&pdu);
        Some(out)
    }

    fn answer_pdu(&self, pdu: &[u8]) -> Vec<u8> {
        let function = pdu[0];
        let exception = |code: u8| vec![function | 0x80, code];
        // The function code first: an unknown one is exception 1 whatever follows it.
        if !matches!(function, 0x01..=0x06 | 0x10) {
            return exception(0x01);
        }
        let word = |at: usize| -> Option<usize> {
            Some(usize::from(u16::from_be_bytes([
                *pdu.get(at)?,
                *pdu.get(at + 1)?,
            ])))
        };
        let (Some(address), Some(arg)) = (word(1), word(3)) else {
            return exception(0x03);
        };
        let mut t = self.tables.lock();
        match function {
            0x01 | 0x02 => {
                if !(1..=2000).contains(&arg) {
                    return exception(0x03);
                }
                let bits = if function == 0x01 {
                    &t.coils
                } else {
                    &t.discrete
                };
                let Some(bits) = bits.get(address..address + arg) else {
                    return exception(0x02);
                };
                let mut bytes = vec![0u8; arg.div_ceil(8)];
                for (i, b) in bits.iter().enumerate() {
                    if *b {
                        bytes[i / 8] |= 1 << (i % 8);
                    }
                }
                let mut out = vec![function, bytes.len() as u8];
                out.extend_from_slice(&bytes);
                out
            }
            0x03 | 0x04 => {
                if !(1..=125).contains(&arg) {
                    return exception(0x03);
                }
                let regs = if function == 0x03 {
                    &t.holding
                } else {
                    &t.input
                };
                let Some(regs) = regs.get(address..address + arg) else {
                    return exception(0x02);
                };
                let mut out = vec![function, (arg * 2) as u8];
                for r in regs {
                    out.extend_from_slice(&r.to_be_bytes());
                }
                out
            }
            0x05 => {
                let on = match arg {
                    0xFF00 => true,
                    0x0000 => false,
                    _ => return exception(0x03),
                };
                match t.coils.get_mut(address) {
                    Some(c) => *c = on,
                    None => return exception(0x02),
                }
                pdu[..5].to_vec()
            }
            0x06 => {
                match t.holding.get_mut(address) {
                    Some(r) => *r = arg as u16,
                    None => return exception(0x02),
                }
                pdu[..5].to_vec()
            }
            0x10 => {
                let data = pdu.get(6..).unwrap_or_default();
                if !(1..=123).contains(&arg)
                    || pdu.get(5).map(|n| usize::from(*n)) != Some(arg * 2)
                    || data.len() != arg * 2
                {
                    return exception(0x03);
                }
                let Some(regs) = t.holding.get_mut(address..address + arg) else {
                    return exception(0x02);
                };
                for (r, w) in regs.iter_mut().zip(data.chunks(2)) {
                    *r = u16::from_be_bytes([w[0], w[1]]);
                }
                pdu[..5].to_vec()
            }
            _ => exception(0x01),
        }
    }

    /// Serve one connection until it closes or sends something that is not Modbus TCP.
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(self, mut stream: S) {
        let mut header = [0u8; 7];
        loop {
            if stream.read_exact(&mut header).await.is_err() {
                return;
            }
            let length = usize::from(u16::from_be_bytes([header[4], header[5]]));
            if header[2..4] != [0, 0] || !(2..=254).contains(&length) {
                return;
            }
            let mut request = header.to_vec();
            request.resize(6 + length, 0);
            if stream.read_exact(&mut request[7..]).await.is_err() {
                return;
            }
            let Some(reply) = self.answer(&request) else {
                return;
            };
            if stream.write_all(&reply).await.is_err() {
                return;
            }
        }
    }

    /// An in-process connection to this sensor.
    pub fn connect(&self) -> DuplexStream {
        let (client, device) = tokio::io::duplex(super::PIPE_BYTES);
        tokio::spawn(self.clone().serve(device));
        client
    }
}

/// One step of a room's drift: temperature 19–25 °C, humidity 30–60 %, CO2 following
/// occupancy (400–1500 ppm), people coming and going.
fn drift(t: &mut ModbusTables) {
    let step = |spread: u8| i32::from(rand::random::<u8>() % (2 * spread + 1)) - i32::from(spread);
    if rand::random::<u8>() < 16 {
        t.discrete[0] = !t.discrete[0];
    }
    let temperature = (t.input[0] as i16 as i32 + step(2)).clamp(190, 250);
    t.input[0] = temperature as i16 as u16;
    t.input[1] = (i32::from(t.input[1]) + step(5)).clamp(300, 600) as u16;
    let co2_trend = if t.discrete[0] { 15 } else { -10 };
    t.input[2] = (i32::from(t.input[2]) + co2_trend + step(5)).clamp(400, 1500) as u16;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_reads_writes_and_exceptions() {
        let s = ModbusSimulator::new(None);
        assert_eq!(
            s.answer(&[0, 1, 0, 0, 0, 6, 1, 0x04, 0, 0, 0, 3]).unwrap(),
            vec![0, 1, 0, 0, 0, 9, 1, 0x04, 6, 0, 215, 1, 0xC2, 2, 0x58]
        );
        s.update(|t| t.discrete[1] = true);
        assert_eq!(
            s.answer(&[0, 2, 0, 0, 0, 6, 1, 0x02, 0, 0, 0, 2]).unwrap(),
            vec![0, 2, 0, 0, 0, 4, 1, 0x02, 1, 0b10]
        );
        let write = [0, 3, 0, 0, 0, 6, 1, 0x06, 0, 10, 0x12, 0x34];
        assert_eq!(s.answer(&write).unwrap(), write.to_vec());
        assert_eq!(s.tables().holding[10], 0x1234);
        assert_eq!(
            s.answer(&[0, 4, 0, 0, 0, 6, 1, 0x03, 1, 0, 0, 1]).unwrap(),
            vec![0, 4, 0, 0, 0, 3, 1, 0x83, 0x02]
        );
        assert_eq!(
            s.answer(&[0, 5, 0, 0, 0, 6, 1, 0x2B, 0, 0, 0, 1]).unwrap(),
            vec![0, 5, 0, 0, 0, 3, 1, 0xAB, 0x01]
        );
        // An unknown function is exception 1 even without an address and quantity.
        assert_eq!(
            s.answer(&[0, 6, 0, 0, 0, 2, 1, 0x07]).unwrap(),
            vec![0, 6, 0, 0, 0, 3, 1, 0x87, 0x01]
        );
        assert_eq!(
            s.answer(&[0, 7, 0, 0, 0, 4, 1, 0x2B, 0x0E, 0x01]).unwrap(),
            vec![0, 7, 0, 0, 0, 3, 1, 0xAB, 0x01]
        );
        // A known function that is cut short is exception 3.
        assert_eq!(
            s.answer(&[0, 8, 0, 0, 0, 4, 1, 0x03, 0, 0]).unwrap(),
            vec![0, 8, 0, 0, 0, 3, 1, 0x83, 0x03]
        );
        assert_eq!(s.answer(b"GET / HTTP/1.1"), None);
    }

    #[tokio::test]
    async fn serves_a_stream_and_drifts() {
        let s = ModbusSimulator::new(None);
        let mut c = s.connect();
        c.write_all(&[0, 9, 0, 0, 0, 6, 7, 0x04, 0, 2, 0, 1])
            .await
            .unwrap();
        let mut reply = [0u8; 11];
        c.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply, [0, 9, 0, 0, 0, 5, 7, 0x04, 2, 0x02, 0x58]);
        let mut t = s.tables();
        for _ in 0..1000 {
            drift(&mut t);
            assert!((190..=250).contains(&(t.input[0] as i16)));
            assert!((400..=1500).contains(&t.input[2]));
        }
    }
}
