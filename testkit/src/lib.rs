//! Real peers for Lintel's tests, started on loopback ports and stopped with the value
//! that owns them. Dev-only: no Lintel crate depends on this outside its tests and benches.

pub mod bacnet;
pub mod modbus;
pub mod python;
pub mod radicale;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The user the brokers accept.
pub const MQTT_USER: &str = "lintel";
/// Its password.
pub const MQTT_PASSWORD: &str = "s3cret-broker-pw";

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A mosquitto broker on `127.0.0.1:port` that accepts only [`MQTT_USER`] /
/// [`MQTT_PASSWORD`], without persistence (a restart loses retained messages, as a
/// broker without a persistence file does).
pub struct Mosquitto {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    /// The TLS listener's port and the PEM of the CA that issued its certificate.
    tls: Option<(u16, String)>,
}

/// A site CA (PEM) and a certificate it issued for `127.0.0.1` and `localhost` (PEM,
/// with its private key).
pub fn site_certificate() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("a key")).expect("a CA");
    let key = KeyPair::generate().expect("a key");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("leaf parameters")
        .signed_by(&key, &ca)
        .expect("a leaf certificate");
    (ca.pem(), leaf.pem(), key.serialize_pem())
}

impl Mosquitto {
    /// Start on `port`, or a free one.
    pub fn start(port: Option<u16>) -> Mosquitto {
        Self::start_in(
            tempfile::tempdir().expect("a temporary directory"),
            port.unwrap_or_else(free_port),
        )
    }

    /// Start with a plain listener and a TLS one (a certificate for `127.0.0.1` from a
    /// site CA: see [`Mosquitto::tls`]).
    pub fn start_tls() -> Mosquitto {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (ca, cert, key) = site_certificate();
        std::fs::write(dir.path().join("server.crt"), cert).expect("writing the certificate");
        std::fs::write(dir.path().join("server.key"), key).expect("writing the key");
        let tls_port = free_port();
        let extra = format!(
            "listener {tls_port} 127.0.0.1\ncertfile {}\nkeyfile {}\n",
            dir.path().join("server.crt").display(),
            dir.path().join("server.key").display()
        );
        let mut m = Self::launch(dir, free_port(), &extra, &[tls_port]);
        m.tls = Some((tls_port, ca));
        m
    }

    /// The TLS listener's port and its CA (PEM), for a broker from [`Mosquitto::start_tls`].
    pub fn tls(&self) -> Option<(u16, &str)> {
        self.tls.as_ref().map(|(p, ca)| (*p, ca.as_str()))
    }

    /// Start with the files in `dir` (kept from [`Mosquitto::stop`]) on `port`.
    pub fn start_in(dir: tempfile::TempDir, port: u16) -> Mosquitto {
        Self::launch(dir, port, "", &[])
    }

    fn launch(dir: tempfile::TempDir, port: u16, extra: &str, extra_ports: &[u16]) -> Mosquitto {
        let passwd = dir.path().join("passwd");
        write_password_file(&passwd);
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n\
                 persistence false\nlog_dest stderr\nmax_packet_size 2000000\n\
                 max_queued_messages 100000\nmax_inflight_messages 0\n\
                 per_listener_settings false\n{extra}",
                passwd.display()
            ),
        )
        .expect("writing mosquitto.conf");
        let child = Command::new(mosquitto_bin("mosquitto"))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is required for the MQTT tests (apt-get install mosquitto)");
        let m = Mosquitto {
            child,
            port,
            dir,
            tls: None,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        for p in std::iter::once(port).chain(extra_ports.iter().copied()) {
            while std::net::TcpStream::connect(("127.0.0.1", p)).is_err() {
                assert!(Instant::now() < deadline, "mosquitto did not listen on {p}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        m
    }

    /// Stop the broker, keeping its port and files for [`Mosquitto::start_in`].
    pub fn stop(mut self) -> (tempfile::TempDir, u16) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(
            &mut self.dir,
            tempfile::tempdir().expect("a temporary directory"),
        );
        (dir, self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtt://127.0.0.1:<port>`.
    pub fn uri(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// A client session with the broker's credentials (`client_id` must be unique).
    pub fn options(&self, client_id: &str) -> rumqttc::MqttOptions {
        let mut o = rumqttc::MqttOptions::new(client_id, "127.0.0.1", self.port);
        o.set_credentials(MQTT_USER, MQTT_PASSWORD)
            .set_max_packet_size(2_000_000, 2_000_000)
            .set_keep_alive(Duration::from_secs(30));
        o
    }

    /// Publish once with QoS 1 and wait for the broker's acknowledgement.
    pub async fn publish(&self, topic: &str, payload: &[u8], retain: bool) {
        let id = format!("testkit-pub-{}", free_port());
        let (client, mut events) = rumqttc::AsyncClient::new(self.options(&id), 10);
        client
            .publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload.to_vec())
            .await
            .expect("queueing the test's publish");
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match events.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => break,
                    Ok(_) => {}
                    Err(e) => panic!("test publisher: {e}"),
                }
            }
        })
        .await
        .expect("the broker acknowledged the test's publish");
        let _ = client.disconnect().await;
    }

    /// Subscribe to `filter` and collect messages in the background.
    pub async fn subscribe(&self, filter: &str) -> Subscriber {
        let id = format!("testkit-sub-{}", free_port());
        let (client, mut events) = rumqttc::AsyncClient::new(self.options(&id), 1000);
        client
            .subscribe(filter, rumqttc::QoS::AtLeastOnce)
            .await
            .expect("queueing the test's subscription");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                match events.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let msg = Message {
                            topic: p.topic,
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                        };
                        if tx.send(msg).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .expect("the broker acknowledged the test's subscription")
            .expect("the subscriber is running");
        Subscriber {
            _client: client,
            rx,
            task,
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A message a [`Subscriber`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// Messages of a subscription, in arrival order.
pub struct Subscriber {
    _client: rumqttc::AsyncClient,
    rx: tokio::sync::mpsc::UnboundedReceiver<Message>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// The next message, or `None` after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Message> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn write_password_file(path: &Path) {
    let status = Command::new(mosquitto_bin("mosquitto_passwd"))
        .args(["-b", "-c"])
        .arg(path)
        .args([MQTT_USER, MQTT_PASSWORD])
        .status()
        .expect("mosquitto_passwd is required for the MQTT tests (apt-get install mosquitto)");
    assert!(status.success(), "mosquitto_passwd failed");
}

/// Debian installs mosquitto in /usr/sbin, which is not on every user's PATH.
fn mosquitto_bin(name: &str) -> String {
    let sbin = format!("/usr/sbin/{name}");
    if Path::new(&sbin).exists() {
        sbin
    } else {
        name.to_string()
    }
}
