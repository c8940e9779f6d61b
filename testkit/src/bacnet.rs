//! A real BACnet/IP device (bacpypes3) on a loopback UDP port.
//!
//! [`BacnetDevice::start`] runs a bacpypes3 `Application` (the version pinned in
//! `tests/peers/requirements.txt`) from the checkout's virtualenv, bound to
//! `127.0.0.1/32:<port>`, with device object [`BacnetDevice::INSTANCE`] and these objects:
//!
//! | object | name | present-value |
//! |---|---|---|
//! | `analog-input,1` | `Salle 1 – Température` (non-ASCII) | 21.5 (°C) |
//! | `analog-input,2` | `Room Humidity` | 45.0 (%RH) |
//! | `analog-value,1` | `CO2` | 612.0 (ppm) |
//! | `binary-input,1` | `Occupancy` | active |
//! | `multi-state-value,1` | `Mode` (states `Off`, `Comfort`, `Eco`) | 2 |
//!
//! bacpypes3 answers ReadProperty and ReadPropertyMultiple to the sender's address (the
//! engine's ephemeral UDP port), an Error PDU (`unknown-object`, `unknown-property`) for
//! what it does not hold. The test changes present-values through the script's stdin
//! ([`BacnetDevice::set`]), makes it stop answering ([`BacnetDevice::pause`]: SIGSTOP),
//! and kills and restarts it on the same port ([`BacnetDevice::stop`],
//! [`BacnetDevice::start_on`]).
//!
//! Every method blocks (waiting for the device to answer, a control answer on the pipe,
//! `kill`): called inside a multi-thread tokio runtime it runs in
//! [`tokio::task::block_in_place`], so the runtime's other tasks (the engine under test)
//! keep their worker threads.

use crate::python::blocking;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// The device script: a bacpypes3 application controlled over stdin (`set OBJECT VALUE`,
/// answered `ok` or `error: …`).
const DEVICE: &str = r#"
import asyncio
import sys
import threading

from bacpypes3.app import Application
from bacpypes3.argparse import SimpleArgumentParser
from bacpypes3.local.analog import AnalogInputObject, AnalogValueObject
from bacpypes3.local.binary import BinaryInputObject
from bacpypes3.local.multistate import MultiStateValueObject
from bacpypes3.primitivedata import ObjectIdentifier

NORMAL = dict(statusFlags=[0, 0, 0, 0], eventState="normal", outOfService=False)


def build(app):
    app.add_object(AnalogInputObject(
        objectIdentifier=("analog-input", 1), objectName="Salle 1 \u2013 Temp\u00e9rature",
        presentValue=21.5, units="degreesCelsius", **NORMAL))
    app.add_object(AnalogInputObject(
        objectIdentifier=("analog-input", 2), objectName="Room Humidity",
        presentValue=45.0, units="percentRelativeHumidity", **NORMAL))
    app.add_object(AnalogValueObject(
        objectIdentifier=("analog-value", 1), objectName="CO2",
        presentValue=612.0, units="partsPerMillion", **NORMAL))
    app.add_object(BinaryInputObject(
        objectIdentifier=("binary-input", 1), objectName="Occupancy",
        presentValue="active", polarity="normal", **NORMAL))
    app.add_object(MultiStateValueObject(
        objectIdentifier=("multi-state-value", 1), objectName="Mode",
        presentValue=2, numberOfStates=3, stateText=["Off", "Comfort", "Eco"], **NORMAL))


def control(app, loop):
    for line in sys.stdin:
        parts = line.split()
        try:
            if len(parts) != 3 or parts[0] != "set":
                raise ValueError("unknown command")
            obj = app.get_object_id(ObjectIdentifier(parts[1]))
            if obj is None:
                raise ValueError(f"no object {parts[1]}")
            kind = parts[1].split(",")[0]
            if kind.startswith("analog"):
                value = float(parts[2])
            elif kind.startswith("multi-state"):
                value = int(parts[2])
            else:
                value = parts[2]

            async def assign():
                obj.presentValue = value

            asyncio.run_coroutine_threadsafe(assign(), loop).result(5)
            answer = "ok"
        except Exception as e:  # reported to the test
            answer = f"error: {e!r}"
        print(answer, flush=True)


async def main():
    args = SimpleArgumentParser().parse_args()
    app = Application.from_args(args)
    build(app)
    threading.Thread(
        target=control, args=(app, asyncio.get_running_loop()), daemon=True
    ).start()
    await asyncio.Future()


asyncio.run(main())
"#;

/// A free UDP port on the loopback interface.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port()
}

/// A bacpypes3 BACnet/IP device on `127.0.0.1:<port>`, killed on drop.
pub struct BacnetDevice {
    child: Child,
    port: u16,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    dir: tempfile::TempDir,
}

impl BacnetDevice {
    /// The device object's instance number.
    pub const INSTANCE: u32 = 1234;
    /// The device object's name.
    pub const NAME: &'static str = "Lintel-Test";

    /// Start on a free UDP port.
    pub fn start() -> BacnetDevice {
        Self::start_on(free_udp_port())
    }

    /// Start on `port` (e.g. the port of a device just [stopped](BacnetDevice::stop)),
    /// with the initial values; waits until it answers a ReadProperty.
    pub fn start_on(port: u16) -> BacnetDevice {
        blocking(|| Self::spawn_on(port))
    }

    fn spawn_on(port: u16) -> BacnetDevice {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let script = dir.path().join("bacnet_device.py");
        std::fs::write(&script, DEVICE).expect("writing the device script");
        let log = std::fs::File::create(dir.path().join("device.log")).expect("a log file");
        let mut child = Command::new(crate::python::python())
            .arg(&script)
            .arg("--address")
            .arg(format!("127.0.0.1/32:{port}"))
            .arg("--instance")
            .arg(Self::INSTANCE.to_string())
            .arg("--name")
            .arg(Self::NAME)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starting the bacpypes3 device");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut device = BacnetDevice {
            child,
            port,
            stdin,
            stdout,
            dir,
        };
        device.wait_until_answering();
        device
    }

    /// Ask for the device object's name until it answers (20 s deadline).
    fn wait_until_answering(&mut self) {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("a probe socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("a read timeout");
        let oid = ((8u32 << 22) | Self::INSTANCE).to_be_bytes();
        // ReadProperty (device,INSTANCE) object-name, invoke id 0.
        let probe = [
            0x81, 0x0A, 0, 17, 0x01, 0x04, 0x00, 0x05, 0, 12, 0x0C, oid[0], oid[1], oid[2], oid[3],
            0x19, 77,
        ];
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 1500];
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the bacpypes3 device exited ({status}) before answering on {}: {}",
                    self.port,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the bacpypes3 device did not answer on {}: {}",
                self.port,
                self.log()
            );
            let _ = socket.send_to(&probe, ("127.0.0.1", self.port));
            if let Ok(n) = socket.recv(&mut buf)
                && n > 6
                && buf[0] == 0x81
                && buf[6] >> 4 == 3
            {
                return;
            }
        }
    }

    /// What the device wrote to stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("device.log")).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `udp://127.0.0.1:<port>`.
    pub fn uri(&self) -> String {
        format!("udp://127.0.0.1:{}", self.port)
    }

    fn command(&mut self, line: &str) -> String {
        blocking(|| self.command_blocking(line))
    }

    fn command_blocking(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .unwrap_or_else(|e| panic!("bacnet control `{line}`: {e}; log: {}", self.log()));
        let mut answer = String::new();
        match self.stdout.read_line(&mut answer) {
            Ok(n) if n > 0 => {}
            other => panic!(
                "bacnet control `{line}`: no answer ({other:?}); log: {}",
                self.log()
            ),
        }
        let answer = answer.trim().to_string();
        assert_eq!(answer, "ok", "bacnet control `{line}`");
        answer
    }

    /// Set an object's present-value: a number for analog objects, an integer for
    /// multi-state objects, `active`/`inactive` for binary ones. Not while paused.
    pub fn set(&mut self, object: &str, value: &str) {
        self.command(&format!("set {object} {value}"));
    }

    fn signal(&self, signal: &str) {
        crate::python::signal(&self.child, signal);
    }

    /// Freeze the device (SIGSTOP): nothing is answered.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Let a [paused](BacnetDevice::pause) device run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// Kill the device and return its port for [`BacnetDevice::start_on`].
    pub fn stop(mut self) -> u16 {
        self.kill();
        self.port
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = blocking(|| self.child.wait());
    }
}

impl Drop for BacnetDevice {
    fn drop(&mut self) {
        self.kill();
    }
}
