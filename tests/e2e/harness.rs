use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_lintel");
pub const PASSWORD: &str = "e2e-admin-password-1234";
pub const ADMIN: &str = "admin@lintel.local";
/// The master keyring the tests run with (a key made for them; never use it elsewhere).
pub const MASTER_KEY: &str = "lk-e2e-test:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=";

/// A running `lintel serve`.
pub struct Lintel {
    child: Option<Child>,
    pub base: String,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

fn collect(stream: impl std::io::Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            into.lock().unwrap().push(line);
        }
    });
}

pub fn command(data_dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LINTEL_DATA_DIR", data_dir)
        .env("LINTEL_HTTP__PORT", "0")
        .env("LINTEL_LOG__FORMAT", "json")
        .env("LINTEL_SECRETS__MASTER_KEY", MASTER_KEY)
        .current_dir(std::env::temp_dir());
    cmd
}

pub fn password_file(dir: &Path) -> PathBuf {
    let p = dir.join("admin-password");
    std::fs::write(&p, format!("{PASSWORD}\n")).unwrap();
    p
}

impl Lintel {
    /// Start with the given command and wait until it listens and reports ready.
    pub fn start(mut cmd: Command) -> Lintel {
        let mut child = cmd
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start lintel");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        collect(child.stdout.take().unwrap(), stdout.clone());
        collect(child.stderr.take().unwrap(), stderr.clone());
        let mut l = Lintel {
            child: Some(child),
            base: String::new(),
            stdout,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(addr) = l
                .log_lines()
                .iter()
                .find(|v| v["message"] == "listening")
                .and_then(|v| v["address"].as_str().map(String::from))
            {
                l.base = format!("http://{addr}");
                break;
            }
            if let Some(status) = l.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "lintel exited early ({status}): {:?} {:?}",
                    l.stdout(),
                    l.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "lintel never listened: {:?}",
                l.stdout()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        l.wait_ready();
        l
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(r) = client()
                .get(format!("{}/api/engine/v2/ready", self.base))
                .send()
                && r.status() == 200
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("never ready: {:?}", self.stdout());
    }

    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }
    pub fn log_lines(&self) -> Vec<Value> {
        self.stdout()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn login(&self, password: &str) -> reqwest::blocking::Response {
        client()
            .post(self.url("/auth/oauth/token"))
            .form(&[
                ("grant_type", "password"),
                ("username", ADMIN),
                ("password", password),
            ])
            .send()
            .unwrap()
    }

    pub fn token(&self, password: &str) -> String {
        let r = self.login(password);
        assert_eq!(r.status(), 200);
        r.json::<Value>().unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn get(&self, token: &str, path: &str) -> reqwest::blocking::Response {
        client()
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .unwrap()
    }

    pub fn post(&self, token: &str, path: &str, body: &str) -> reqwest::blocking::Response {
        client()
            .post(self.url(path))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap()
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(mut self) -> (ExitStatus, Vec<String>) {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                // Let the reader threads drain the pipes.
                std::thread::sleep(Duration::from_millis(100));
                return (status, self.stdout());
            }
            assert!(
                Instant::now() < deadline,
                "lintel did not stop within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Lintel {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Poll `f` until it returns `Some`, for up to 10 s.
pub fn eventually<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    eventually_within(Duration::from_secs(10), what, f)
}

/// [`eventually`] with another deadline.
pub fn eventually_within<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Run `lintel <args>` to completion.
pub fn run_to_exit(mut cmd: Command, timeout: Duration) -> (Option<i32>, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return (out.status.code(), text);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "did not exit within {timeout:?}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
