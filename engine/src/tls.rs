//! TLS for device connections (`tls://host:port`, or a module with `tls: true`).
//!
//! A module's merged settings may carry a `tls` object:
//! `{"ca": "<PEM>", "verify": true, "server_name": "panel.local"}`.
//! - `ca`: certificates (PEM) trusted in addition to the public web roots, for devices
//!   with a site CA or a self-signed certificate.
//! - `verify: false`: accept any certificate (devices with factory certificates that
//!   cannot be trusted otherwise). The connection is still encrypted; the engine logs a
//!   warning each time it connects this way.
//! - `server_name`: the name checked against the certificate when it differs from the
//!   host in the module's address (an IP address, usually).

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::Value;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Most certificates a module's `tls.ca` may hold.
const MAX_CA_CERTS: usize = 64;

/// How a module connects over TLS, from its settings.
#[derive(Clone)]
pub(crate) struct TlsClient {
    pub connector: TlsConnector,
    /// The same configuration, for clients that build their own connector (MQTT, HTTP).
    pub config: Arc<ClientConfig>,
    /// Overrides the host in the module's address for the certificate check.
    pub server_name: Option<ServerName<'static>>,
    /// Certificates are not checked (`tls.verify: false`).
    pub unverified: bool,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .field("unverified", &self.unverified)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// The client a module's settings ask for; an error names the setting at fault.
    pub fn from_settings(settings: &Value) -> Result<TlsClient, String> {
        let tls = match settings.get("tls") {
            None | Some(Value::Null) => &Value::Object(Default::default()),
            Some(v @ Value::Object(_)) => v,
            Some(_) => return Err("setting `tls` must be an object".into()),
        };
        let verify = match tls.get("verify") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err("setting `tls.verify` must be true or false".into()),
        };
        let server_name = match tls.get("server_name") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(ServerName::try_from(s.clone()).map_err(|_| {
                format!("setting `tls.server_name`: `{s}` is not a DNS name or IP address")
            })?),
            Some(_) => return Err("setting `tls.server_name` must be a string".into()),
        };
        let provider = Arc::new(ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up: {e}"))?;
        let config = if verify {
            let mut roots = RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            match tls.get("ca") {
                None | Some(Value::Null) => {}
                Some(Value::String(pem)) => {
                    let mut added = 0;
                    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                        let cert = cert.map_err(|e| format!("setting `tls.ca`: {e}"))?;
                        roots
                            .add(cert)
                            .map_err(|e| format!("setting `tls.ca`: {e}"))?;
                        added += 1;
                        if added > MAX_CA_CERTS {
                            return Err(format!(
                                "setting `tls.ca` holds more than {MAX_CA_CERTS} certificates"
                            ));
                        }
                    }
                    if added == 0 {
                        return Err("setting `tls.ca` holds no PEM certificate".into());
                    }
                }
                Some(_) => return Err("setting `tls.ca` must be a PEM string".into()),
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth()
        };
        let config = Arc::new(config);
        Ok(TlsClient {
            connector: TlsConnector::from(config.clone()),
            config,
            server_name,
            unverified: !verify,
        })
    }

    /// The name to check the certificate against when connecting to `host`.
    pub fn name_for(&self, host: &str) -> Result<ServerName<'static>, String> {
        match &self.server_name {
            Some(n) => Ok(n.clone()),
            None => ServerName::try_from(host.to_string())
                .map_err(|_| format!("`{host}` is not a DNS name or IP address")),
        }
    }
}

/// `tls.verify: false`: any certificate is accepted; signatures are still checked, so
/// the session is encrypted to whoever holds the certificate's key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, tokio_rustls::rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        tokio_rustls::rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        tokio_rustls::rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bad_tls_settings_are_refused_naming_the_setting() {
        let cases = [
            (json!({"tls": 1}), "setting `tls` must be an object"),
            (
                json!({"tls": {"verify": "no"}}),
                "`tls.verify` must be true or false",
            ),
            (json!({"tls": {"ca": 5}}), "`tls.ca` must be a PEM string"),
            (
                json!({"tls": {"ca": "not a pem"}}),
                "`tls.ca` holds no PEM certificate",
            ),
            (
                json!({"tls": {"ca": "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n"}}),
                "setting `tls.ca`",
            ),
            (
                json!({"tls": {"server_name": "bad name!"}}),
                "`tls.server_name`: `bad name!` is not a DNS name",
            ),
        ];
        for (settings, want) in cases {
            let e = TlsClient::from_settings(&settings).unwrap_err();
            assert!(e.contains(want), "{settings}: {e}");
        }
        let ok = TlsClient::from_settings(&json!({})).unwrap();
        assert!(!ok.unverified);
        assert_eq!(
            ok.name_for("10.0.0.5").unwrap(),
            ServerName::try_from("10.0.0.5").unwrap()
        );
        let named = TlsClient::from_settings(
            &json!({"tls": {"verify": false, "server_name": "panel.local"}}),
        )
        .unwrap();
        assert!(named.unverified);
        assert_eq!(
            named.name_for("10.0.0.5").unwrap(),
            ServerName::try_from("panel.local").unwrap()
        );
    }
}
