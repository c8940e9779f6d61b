//! A real Modbus TCP server (pymodbus) on a loopback port.
//!
//! [`Pymodbus::start`] runs pymodbus's `ModbusTcpServer` (the version pinned in
//! `tests/peers/requirements.txt`) from the checkout's virtualenv with four tables
//! (coils, discrete inputs, holding and input registers) of [`Pymodbus::REGISTERS`]
//! registers and [`Pymodbus::BITS`] bits, all 0, any unit id. An address outside them
//! answers exception 2 (illegal data address). The test sets and reads values through the
//! server's stdin ([`Pymodbus::set`], [`Pymodbus::get`]), makes it stop answering
//! ([`Pymodbus::pause`]: SIGSTOP, connections stay open) and kills and restarts it on the
//! same port ([`Pymodbus::stop`], [`Pymodbus::start_on`]).
//!
//! Every method blocks (waiting for the port, a control answer on the pipe, `kill`):
//! called inside a multi-thread tokio runtime it runs in
//! [`tokio::task::block_in_place`], so the runtime's other tasks (the engine under test)
//! keep their worker threads.

use crate::python::blocking;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// The server script: pymodbus 3.16's `SimDevice` datastore, controlled over stdin.
const SERVER: &str = r#"
import asyncio
import sys
import threading

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

REGISTERS = int(sys.argv[2])
BITS = int(sys.argv[3])
TABLES = {"coil": "c", "discrete": "d", "holding": "h", "input": "i"}


def access(runtime, table, address, value=None):
    start, _count, registers, _flags = runtime.block[TABLES[table]]
    if table in ("coil", "discrete"):
        if not 0 <= address < BITS:
            raise ValueError(f"no {table} {address}")
        reg, bit = address // 16 - start, address % 16
        if value is None:
            return int(registers[reg] >> bit & 1)
        if value:
            registers[reg] |= 1 << bit
        else:
            registers[reg] &= ~(1 << bit) & 0xFFFF
        return "ok"
    if not 0 <= address < REGISTERS:
        raise ValueError(f"no {table} register {address}")
    if value is None:
        return registers[address - start]
    registers[address - start] = value & 0xFFFF
    return "ok"


def control(runtime):
    for line in sys.stdin:
        parts = line.split()
        try:
            if len(parts) == 4 and parts[0] == "set":
                answer = access(runtime, parts[1], int(parts[2]), int(parts[3]))
            elif len(parts) == 3 and parts[0] == "get":
                answer = access(runtime, parts[1], int(parts[2]))
            else:
                answer = "error: unknown command"
        except Exception as e:  # reported to the test
            answer = f"error: {e}"
        print(answer, flush=True)


async def main(port):
    def bits():
        return [SimData(0, values=[False] * BITS, datatype=DataType.BITS)]

    def registers():
        return [SimData(0, values=[0] * REGISTERS, datatype=DataType.REGISTERS)]

    device = SimDevice(
        id=0,
        simdata=(bits(), bits(), registers(), registers()),
        use_bit_addressing=True,
    )
    server = ModbusTcpServer(device, address=("127.0.0.1", port))
    threading.Thread(target=control, args=(server.context.devices[0],), daemon=True).start()
    await server.serve_forever()


asyncio.run(main(int(sys.argv[1])))
"#;

/// A Modbus data table of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Coil,
    Discrete,
    Holding,
    Input,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Coil => "coil",
            Table::Discrete => "discrete",
            Table::Holding => "holding",
            Table::Input => "input",
        }
    }
}

/// A pymodbus TCP server on `127.0.0.1:<port>`, killed on drop.
pub struct Pymodbus {
    child: Child,
    port: u16,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    dir: tempfile::TempDir,
}

impl Pymodbus {
    /// Registers per register table (addresses 0..200).
    pub const REGISTERS: u16 = 200;
    /// Bits per bit table (addresses 0..112).
    pub const BITS: u16 = 112;

    /// Start on a free port.
    pub fn start() -> Pymodbus {
        Self::start_on(crate::free_port())
    }

    /// Start on `port` (e.g. the port of a server just [stopped](Pymodbus::stop)), with
    /// every value 0; waits until the port accepts connections.
    pub fn start_on(port: u16) -> Pymodbus {
        blocking(|| Self::spawn_on(port))
    }

    fn spawn_on(port: u16) -> Pymodbus {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let script = dir.path().join("modbus_server.py");
        std::fs::write(&script, SERVER).expect("writing the server script");
        let log = std::fs::File::create(dir.path().join("server.log")).expect("a log file");
        let mut child = Command::new(crate::python::python())
            .arg(&script)
            .arg(port.to_string())
            .arg(Self::REGISTERS.to_string())
            .arg(Self::BITS.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starting the pymodbus server");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut server = Pymodbus {
            child,
            port,
            stdin,
            stdout,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "the pymodbus server exited ({status}) before listening on {port}: {}",
                    server.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the pymodbus server did not listen on {port}: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// What the server wrote to stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `tcp://127.0.0.1:<port>`.
    pub fn uri(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    fn command(&mut self, line: &str) -> String {
        blocking(|| self.command_blocking(line))
    }

    fn command_blocking(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .unwrap_or_else(|e| panic!("pymodbus control `{line}`: {e}; log: {}", self.log()));
        let mut answer = String::new();
        match self.stdout.read_line(&mut answer) {
            Ok(n) if n > 0 => {}
            other => panic!(
                "pymodbus control `{line}`: no answer ({other:?}); log: {}",
                self.log()
            ),
        }
        let answer = answer.trim().to_string();
        assert!(
            !answer.starts_with("error"),
            "pymodbus control `{line}`: {answer}"
        );
        answer
    }

    /// Set a register (or a bit: 0 or 1) in the server's datastore. Not while paused.
    pub fn set(&mut self, table: Table, address: u16, value: u16) {
        let answer = self.command(&format!("set {} {address} {value}", table.name()));
        assert_eq!(answer, "ok");
    }

    /// A register (or a bit: 0 or 1) of the server's datastore. Not while paused.
    pub fn get(&mut self, table: Table, address: u16) -> u16 {
        let answer = self.command(&format!("get {} {address}", table.name()));
        answer
            .parse()
            .unwrap_or_else(|_| panic!("pymodbus answered `{answer}` for a value"))
    }

    fn signal(&self, signal: &str) {
        crate::python::signal(&self.child, signal);
    }

    /// Freeze the server (SIGSTOP): its connections stay open but nothing is answered.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Let a [paused](Pymodbus::pause) server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// Kill the server (its connections close) and return its port for
    /// [`Pymodbus::start_on`].
    pub fn stop(mut self) -> u16 {
        self.kill();
        self.port
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = blocking(|| self.child.wait());
    }
}

impl Drop for Pymodbus {
    fn drop(&mut self) {
        self.kill();
    }
}
