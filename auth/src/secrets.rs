//! The secret keyring: AES-256-GCM sealing of secret values at rest.
//!
//! Keyring text holds one key per line, `<key_id>:<base64 32-byte key>`; blank lines and
//! lines starting with `#` are ignored. The first key is the primary and seals new values;
//! every key opens. Each sealed value is bound (through the GCM associated data) to the key
//! id, tenant, record and field it was sealed for, so a value copied elsewhere will not open.

use crate::AuthError;
use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInOut, KeyInit, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use lintel_model::{SealedValue, Settings, SettingsBody};
use rand::RngCore as _;
use rand::rngs::OsRng;
use std::fmt;
use std::path::Path;
use zeroize::Zeroizing;

/// Version tag at the head of the associated data; change it if the encoding changes.
const AAD_VERSION: &[u8] = b"lintel-seal-v1";
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const MAX_KEY_ID_LEN: usize = 64;
const CANNOT_OPEN: &str =
    "the sealed value cannot be opened (tampered with, copied from another record, or wrong key)";

/// Where a sealed value belongs. All three parts are authenticated with the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealContext<'a> {
    pub tenant_id: &'a str,
    pub record_id: &'a str,
    pub field: &'a str,
}

/// The sealed fields of Lintel's records: one definition for whoever seals, opens or
/// re-seals them (a wrong field name would make a value unopenable).
impl<'a> SealContext<'a> {
    /// A settings record's body (levels above `none`).
    pub fn settings_body(tenant_id: &'a str, settings_id: &'a str) -> Self {
        SealContext {
            tenant_id,
            record_id: settings_id,
            field: "body",
        }
    }
    /// An identity provider's client secret.
    pub fn client_secret(tenant_id: &'a str, idp_id: &'a str) -> Self {
        SealContext {
            tenant_id,
            record_id: idp_id,
            field: "client_secret",
        }
    }
    /// A token-signing key's private half.
    pub fn private_key(tenant_id: &'a str, key_id: &'a str) -> Self {
        SealContext {
            tenant_id,
            record_id: key_id,
            field: "private_key",
        }
    }
    /// A module's kept OAuth 2.0 refresh token (`RefreshToken` records).
    pub fn refresh_token(tenant_id: &'a str, record_id: &'a str) -> Self {
        SealContext {
            tenant_id,
            record_id,
            field: "refresh_token",
        }
    }
    /// An MQTT broker's password.
    pub fn broker_password(tenant_id: &'a str, broker_id: &'a str) -> Self {
        SealContext {
            tenant_id,
            record_id: broker_id,
            field: "password",
        }
    }
}

#[derive(Clone)]
struct KeyEntry {
    id: String,
    /// Zeroizes its key schedule on drop (`aes-gcm`'s `zeroize` feature).
    cipher: Aes256Gcm,
}

/// The master keys that seal and open secret values. The first key is the primary.
#[derive(Clone)]
pub struct SecretKeyring {
    /// Never empty; `keys[0]` is the primary.
    keys: Vec<KeyEntry>,
}

impl fmt::Debug for SecretKeyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKeyring")
            .field("primary", &self.primary_id())
            .field("key_ids", &self.key_ids())
            .finish()
    }
}

fn valid_key_id(id: &str) -> bool {
    (1..=MAX_KEY_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Parse keyring text; errors name the line and the problem, never key material.
fn parse_keys(text: &str) -> Result<Vec<KeyEntry>, String> {
    let mut keys: Vec<KeyEntry> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let n = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((id, key_text)) = line.split_once(':') else {
            return Err(format!(
                "line {n}: expected `<key_id>:<base64 key>` (no `:` found)"
            ));
        };
        let (id, key_text) = (id.trim(), key_text.trim());
        if !valid_key_id(id) {
            // Not echoed: a malformed line may be key material in the wrong place.
            return Err(format!(
                "line {n}: invalid key id (must be 1-{MAX_KEY_ID_LEN} characters of A-Z a-z 0-9 _ -)"
            ));
        }
        if keys.iter().any(|k| k.id == id) {
            return Err(format!("line {n}: duplicate key id `{id}`"));
        }
        // Decoded into a zeroizing buffer sized up front so it never reallocates. The
        // decoder's own error is not shown: it quotes the offending byte.
        let mut key = Zeroizing::new(Vec::with_capacity(key_text.len()));
        B64.decode_vec(key_text, &mut key)
            .map_err(|_| format!("line {n} (key `{id}`): key is not valid standard base64"))?;
        if key.len() != KEY_LEN {
            return Err(format!(
                "line {n} (key `{id}`): key must be {KEY_LEN} bytes, got {}",
                key.len()
            ));
        }
        let cipher = Aes256Gcm::new_from_slice(&key)
            .map_err(|_| format!("line {n} (key `{id}`): key has the wrong length"))?;
        keys.push(KeyEntry {
            id: id.to_owned(),
            cipher,
        });
    }
    if keys.is_empty() {
        return Err("no master key: the keyring has no `<key_id>:<base64 key>` lines".into());
    }
    Ok(keys)
}

/// Length-prefixed encoding of everything a sealed value is bound to.
fn associated_data(key_id: &str, ctx: &SealContext<'_>) -> Vec<u8> {
    let parts: [&[u8]; 5] = [
        AAD_VERSION,
        key_id.as_bytes(),
        ctx.tenant_id.as_bytes(),
        ctx.record_id.as_bytes(),
        ctx.field.as_bytes(),
    ];
    let mut aad = Vec::with_capacity(parts.iter().map(|p| 8 + p.len()).sum());
    for part in parts {
        aad.extend_from_slice(&(part.len() as u64).to_be_bytes());
        aad.extend_from_slice(part);
    }
    aad
}

/// Group/world permission bits of a keyring file's mode, if any are set.
#[cfg(unix)]
fn loose_mode(mode: u32) -> Option<u32> {
    (mode & 0o077 != 0).then_some(mode & 0o777)
}

impl SecretKeyring {
    /// Parse keyring text (see the module docs). Errors are [`AuthError::Keys`].
    pub fn parse(text: &str) -> Result<Self, AuthError> {
        parse_keys(text)
            .map(|keys| SecretKeyring { keys })
            .map_err(AuthError::Keys)
    }

    /// Read and parse a keyring file. Warns (does not fail) if the file is readable by
    /// group or others.
    pub fn load_file(path: &Path) -> Result<Self, AuthError> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            AuthError::Keys(format!("cannot read keyring {}: {e}", path.display()))
        })?);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            if let Ok(meta) = std::fs::metadata(path)
                && let Some(mode) = loose_mode(meta.permissions().mode())
            {
                tracing::warn!(
                    path = %path.display(),
                    mode = format_args!("{mode:o}"),
                    "keyring file is readable by group or others; restrict it to the owner (chmod 600)"
                );
            }
        }
        parse_keys(&text)
            .map(|keys| SecretKeyring { keys })
            .map_err(|e| AuthError::Keys(format!("keyring {}: {e}", path.display())))
    }

    /// A fresh keyring line: `lk-<16 hex>:<base64 of 32 random bytes>`, from the OS RNG.
    pub fn generate_line() -> String {
        let mut id = [0u8; 8];
        OsRng.fill_bytes(&mut id);
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        OsRng.fill_bytes(key.as_mut());
        format!("lk-{}:{}", hex::encode(id), B64.encode(key.as_ref()))
    }

    /// The id of the key that seals new values.
    pub fn primary_id(&self) -> &str {
        &self.keys[0].id
    }

    /// All key ids, primary first.
    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }

    /// Whether `v` was sealed under a key other than the primary (so should be resealed).
    pub fn needs_reseal(&self, v: &SealedValue) -> bool {
        v.key_id != self.primary_id()
    }

    fn key(&self, id: &str) -> Result<&KeyEntry, AuthError> {
        self.keys.iter().find(|k| k.id == id).ok_or_else(|| {
            AuthError::Sealed(format!(
                "sealed with key `{id}`, which is not in the keyring"
            ))
        })
    }

    /// Seal `plaintext` under the primary key, bound to `ctx`, with a fresh random nonce.
    pub fn seal(&self, ctx: &SealContext<'_>, plaintext: &[u8]) -> Result<SealedValue, AuthError> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        OsRng
            .try_fill_bytes(&mut nonce)
            .map_err(|_| AuthError::Sealed("the system random source failed".into()))?;
        let aad = associated_data(&key.id, ctx);
        // Sized for the tag so the buffer holding the plaintext never reallocates.
        let mut buf = Zeroizing::new(Vec::with_capacity(plaintext.len() + 16));
        buf.extend_from_slice(plaintext);
        key.cipher
            .encrypt_in_place(&Nonce::<Aes256Gcm>::from(nonce), &aad, &mut *buf)
            .map_err(|_| AuthError::Sealed("the value could not be sealed".into()))?;
        Ok(SealedValue {
            key_id: key.id.clone(),
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(&*buf),
        })
    }

    /// Open a value sealed for `ctx`. The plaintext is zeroized when dropped.
    pub fn open(
        &self,
        ctx: &SealContext<'_>,
        v: &SealedValue,
    ) -> Result<Zeroizing<Vec<u8>>, AuthError> {
        let key = self.key(&v.key_id)?;
        let cannot_open = || AuthError::Sealed(CANNOT_OPEN.into());
        let nonce: [u8; NONCE_LEN] = B64
            .decode(&v.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(cannot_open)?;
        let mut buf = Zeroizing::new(B64.decode(&v.ciphertext).map_err(|_| cannot_open())?);
        let aad = associated_data(&key.id, ctx);
        key.cipher
            .decrypt_in_place(&Nonce::<Aes256Gcm>::from(nonce), &aad, &mut *buf)
            .map_err(|_| cannot_open())?;
        Ok(buf)
    }

    /// Seal a JSON value (serialized compactly).
    pub fn seal_json(
        &self,
        ctx: &SealContext<'_>,
        value: &serde_json::Value,
    ) -> Result<SealedValue, AuthError> {
        let bytes = Zeroizing::new(
            serde_json::to_vec(value)
                .map_err(|_| AuthError::Sealed("the value could not be serialized".into()))?,
        );
        self.seal(ctx, &bytes)
    }

    /// Open a value sealed with [`seal_json`](Self::seal_json).
    pub fn open_json(
        &self,
        ctx: &SealContext<'_>,
        v: &SealedValue,
    ) -> Result<serde_json::Value, AuthError> {
        let bytes = self.open(ctx, v)?;
        // The parser's message is not shown: it can quote the plaintext.
        serde_json::from_slice(&bytes)
            .map_err(|_| AuthError::Sealed("the opened value is not valid JSON".into()))
    }

    /// Seal a settings record's body, bound to the record (tenant and id).
    pub fn seal_settings(
        &self,
        tenant_id: &str,
        record_id: &str,
        value: &serde_json::Value,
    ) -> Result<SealedValue, AuthError> {
        self.seal_json(&SealContext::settings_body(tenant_id, record_id), value)
    }

    /// A settings record's sealed body, opened (bound to the record: tenant and id).
    pub fn open_settings(&self, s: &Settings) -> Result<serde_json::Value, AuthError> {
        let SettingsBody::Sealed(sealed) = &s.body else {
            return Err(AuthError::Sealed("the settings are not sealed".into()));
        };
        self.open_json(&SealContext::settings_body(&s.tenant_id, &s.id), sealed)
    }

    /// Seal a module's OAuth refresh token for its `RefreshToken` record.
    pub fn seal_refresh_token(
        &self,
        tenant_id: &str,
        record_id: &str,
        token: &str,
    ) -> Result<SealedValue, AuthError> {
        let ctx = SealContext::refresh_token(tenant_id, record_id);
        self.seal(&ctx, token.as_bytes())
    }

    /// Open a refresh token sealed by [`seal_refresh_token`](Self::seal_refresh_token).
    pub fn open_refresh_token(
        &self,
        tenant_id: &str,
        record_id: &str,
        sealed: &SealedValue,
    ) -> Result<String, AuthError> {
        let ctx = SealContext::refresh_token(tenant_id, record_id);
        let bytes = self.open(&ctx, sealed)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| AuthError::Sealed("the opened token is not text".into()))
    }

    /// Re-seal `v` under the primary key: `None` if it already is.
    pub fn reseal(
        &self,
        ctx: &SealContext<'_>,
        v: &SealedValue,
    ) -> Result<Option<SealedValue>, AuthError> {
        if !self.needs_reseal(v) {
            return Ok(None);
        }
        let plaintext = self.open(ctx, v)?;
        self.seal(ctx, &plaintext).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const K1: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="; // bytes 0..32
    const K2: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="; // bytes 32..64

    /// The record-bound helpers the engine's sealer uses: a settings body or a refresh
    /// token opens for its own record only; a plain body is not opened.
    #[test]
    fn settings_and_refresh_tokens_open_for_their_record_only() {
        let k = SecretKeyring::parse(&SecretKeyring::generate_line()).unwrap();
        let sealed = k.seal_refresh_token("t1", "rtoken-a", "rt-1").unwrap();
        assert!(!sealed.ciphertext.contains("rt-1"));
        assert_eq!(
            k.open_refresh_token("t1", "rtoken-a", &sealed).unwrap(),
            "rt-1"
        );
        assert!(k.open_refresh_token("t1", "rtoken-b", &sealed).is_err());
        assert!(k.open_refresh_token("t2", "rtoken-a", &sealed).is_err());
        let body = json!({"oauth2": {"client_secret": "s"}});
        let mut s = Settings {
            id: "set-1".into(),
            tenant_id: "t1".into(),
            body: SettingsBody::Sealed(k.seal_settings("t1", "set-1", &body).unwrap()),
            ..Default::default()
        };
        assert_eq!(k.open_settings(&s).unwrap(), body);
        s.id = "set-2".into();
        assert!(k.open_settings(&s).is_err());
        s.body = SettingsBody::Plain(json!({}));
        let e = k.open_settings(&s).unwrap_err().to_string();
        assert!(e.contains("not sealed"), "{e}");
    }

    fn ctx() -> SealContext<'static> {
        SealContext {
            tenant_id: "t1",
            record_id: "mod-1",
            field: "settings",
        }
    }

    fn ring(text: &str) -> SecretKeyring {
        SecretKeyring::parse(text).unwrap()
    }

    fn sealed_err(r: Result<impl fmt::Debug, AuthError>) -> String {
        match r {
            Err(AuthError::Sealed(m)) => m,
            other => panic!("expected AuthError::Sealed, got {other:?}"),
        }
    }

    fn keys_err(text: &str) -> String {
        match SecretKeyring::parse(text) {
            Err(AuthError::Keys(m)) => m,
            other => panic!("expected AuthError::Keys for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn test_keys_are_32_bytes() {
        assert_eq!(B64.decode(K1).unwrap(), (0u8..32).collect::<Vec<_>>());
        assert_eq!(B64.decode(K2).unwrap(), (32u8..64).collect::<Vec<_>>());
    }

    #[test]
    fn seal_open_round_trip() {
        let r = ring(&format!("k1:{K1}"));
        let v = r.seal(&ctx(), b"hunter2").unwrap();
        assert_eq!(v.key_id, "k1");
        assert_eq!(B64.decode(&v.nonce).unwrap().len(), NONCE_LEN);
        // Ciphertext is the plaintext length plus a 16-byte tag, and is not the plaintext.
        let ct = B64.decode(&v.ciphertext).unwrap();
        assert_eq!(ct.len(), 7 + 16);
        assert!(!ct.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(r.open(&ctx(), &v).unwrap().as_slice(), b"hunter2");
        // Empty plaintext too.
        let e = r.seal(&ctx(), b"").unwrap();
        assert!(r.open(&ctx(), &e).unwrap().is_empty());
    }

    #[test]
    fn json_round_trip() {
        let r = ring(&format!("k1:{K1}"));
        let value = json!({"password": "s3cret", "port": 22, "nested": [1, {"a": null}]});
        let v = r.seal_json(&ctx(), &value).unwrap();
        assert_eq!(r.open_json(&ctx(), &v).unwrap(), value);
    }

    #[test]
    fn open_json_of_non_json_fails_without_echoing() {
        let r = ring(&format!("k1:{K1}"));
        let v = r.seal(&ctx(), b"not json: hunter2").unwrap();
        let msg = sealed_err(r.open_json(&ctx(), &v));
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[test]
    fn two_seals_of_one_plaintext_differ() {
        let r = ring(&format!("k1:{K1}"));
        let a = r.seal(&ctx(), b"same").unwrap();
        let b = r.seal(&ctx(), b"same").unwrap();
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
        assert_eq!(r.open(&ctx(), &a).unwrap().as_slice(), b"same");
        assert_eq!(r.open(&ctx(), &b).unwrap().as_slice(), b"same");
    }

    #[test]
    fn tampered_ciphertext_fails() {
        let r = ring(&format!("k1:{K1}"));
        let v = r.seal(&ctx(), b"secret value").unwrap();
        let ct = B64.decode(&v.ciphertext).unwrap();
        // Flip one bit in every position in turn: body and tag.
        for i in 0..ct.len() {
            let mut bad = ct.clone();
            bad[i] ^= 0x01;
            let t = SealedValue {
                ciphertext: B64.encode(&bad),
                ..v.clone()
            };
            let msg = sealed_err(r.open(&ctx(), &t));
            assert!(msg.contains("cannot be opened"), "{msg}");
        }
        // Truncated (tag cut off) and garbage base64.
        let short = SealedValue {
            ciphertext: B64.encode(&ct[..ct.len() - 1]),
            ..v.clone()
        };
        sealed_err(r.open(&ctx(), &short));
        let empty = SealedValue {
            ciphertext: String::new(),
            ..v.clone()
        };
        sealed_err(r.open(&ctx(), &empty));
        let garbage = SealedValue {
            ciphertext: "!!not base64!!".into(),
            ..v.clone()
        };
        assert!(sealed_err(r.open(&ctx(), &garbage)).contains("cannot be opened"));
    }

    #[test]
    fn tampered_nonce_fails() {
        let r = ring(&format!("k1:{K1}"));
        let v = r.seal(&ctx(), b"secret value").unwrap();
        let mut nonce = B64.decode(&v.nonce).unwrap();
        nonce[0] ^= 0x80;
        let t = SealedValue {
            nonce: B64.encode(&nonce),
            ..v.clone()
        };
        assert!(sealed_err(r.open(&ctx(), &t)).contains("cannot be opened"));
        // Wrong nonce lengths and bad base64.
        for bad in [B64.encode([0u8; 11]), B64.encode([0u8; 13]), "@@@".into()] {
            let t = SealedValue {
                nonce: bad,
                ..v.clone()
            };
            assert!(sealed_err(r.open(&ctx(), &t)).contains("cannot be opened"));
        }
    }

    #[test]
    fn value_is_bound_to_tenant_record_and_field() {
        let r = ring(&format!("k1:{K1}"));
        let v = r.seal(&ctx(), b"secret value").unwrap();
        let others = [
            SealContext {
                tenant_id: "t2",
                ..ctx()
            },
            SealContext {
                record_id: "mod-2",
                ..ctx()
            },
            SealContext {
                field: "other",
                ..ctx()
            },
            // Length-prefixing: moving bytes between parts is not the same context.
            SealContext {
                tenant_id: "t1m",
                record_id: "od-1",
                field: "settings",
            },
            SealContext {
                tenant_id: "",
                record_id: "",
                field: "",
            },
        ];
        for other in others {
            let msg = sealed_err(r.open(&other, &v));
            assert!(msg.contains("cannot be opened"), "{other:?}: {msg}");
        }
        assert_eq!(r.open(&ctx(), &v).unwrap().as_slice(), b"secret value");
    }

    #[test]
    fn relabelled_key_id_fails() {
        // Same key bytes under two ids: the id is authenticated, so relabelling fails.
        let r = ring(&format!("a:{K1}\nb:{K1}"));
        let v = r.seal(&ctx(), b"x").unwrap();
        assert_eq!(v.key_id, "a");
        let relabelled = SealedValue {
            key_id: "b".into(),
            ..v.clone()
        };
        sealed_err(r.open(&ctx(), &relabelled));
    }

    #[test]
    fn unknown_key_id_is_named() {
        let r1 = ring(&format!("k1:{K1}"));
        let r2 = ring(&format!("k2:{K2}"));
        let v = r1.seal(&ctx(), b"x").unwrap();
        let msg = sealed_err(r2.open(&ctx(), &v));
        assert_eq!(msg, "sealed with key `k1`, which is not in the keyring");
        // Same id, different key bytes: cannot be opened.
        let r3 = ring(&format!("k1:{K2}"));
        assert!(sealed_err(r3.open(&ctx(), &v)).contains("cannot be opened"));
    }

    #[test]
    fn rotation_reseals_under_the_new_primary() {
        let old = ring(&format!("old:{K1}"));
        let v = old.seal(&ctx(), b"rotate me").unwrap();
        assert!(!old.needs_reseal(&v));
        assert!(old.reseal(&ctx(), &v).unwrap().is_none());

        let rotated = ring(&format!("# new primary first\nnew:{K2}\n\nold:{K1}\n"));
        assert_eq!(rotated.primary_id(), "new");
        assert_eq!(rotated.key_ids(), ["new", "old"]);
        assert_eq!(rotated.open(&ctx(), &v).unwrap().as_slice(), b"rotate me");
        assert!(rotated.needs_reseal(&v));

        let moved = rotated.reseal(&ctx(), &v).unwrap().expect("resealed");
        assert_eq!(moved.key_id, "new");
        assert!(!rotated.needs_reseal(&moved));
        assert!(rotated.reseal(&ctx(), &moved).unwrap().is_none());
        assert_eq!(
            rotated.open(&ctx(), &moved).unwrap().as_slice(),
            b"rotate me"
        );
        // The old keyring alone cannot open the resealed value.
        let msg = sealed_err(old.open(&ctx(), &moved));
        assert!(msg.contains("`new`"), "{msg}");
        // Resealing is bound to the context too.
        let elsewhere = SealContext {
            record_id: "mod-2",
            ..ctx()
        };
        sealed_err(rotated.reseal(&elsewhere, &v));
    }

    #[test]
    fn parse_errors_name_the_line_and_hide_key_material() {
        let short = B64.encode([7u8; 16]);
        let long = B64.encode([7u8; 33]);
        let bad_b64 = "QUJD*REVG?0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=";
        let cases: Vec<(String, &str, &str)> = vec![
            (format!("k1:{K1}\nk2:{bad_b64}"), "line 2", bad_b64),
            (format!("# c\n\nk1:{short}"), "line 3", &short),
            (format!("k1:{long}"), "line 1", &long),
            (format!("k1:{K1}\nk1:{K2}"), "line 2", K2),
            (format!("bad id!:{K1}"), "line 1", K1),
            (format!("{}:{K1}", "x".repeat(65)), "line 1", K1),
            (format!(":{K1}"), "line 1", K1),
            (format!("k1:{K1}\n{K2}"), "line 2", K2),
            // Key and id swapped: the "id" is key material and must not be echoed.
            (format!("{K2}:k1"), "line 1", K2),
        ];
        for (text, line, secret) in &cases {
            let msg = keys_err(text);
            assert!(msg.contains(line), "{msg:?} should name {line}");
            assert!(!msg.contains(secret), "{msg:?} echoes key material");
            // Nor any long fragment of it.
            assert!(
                !secret
                    .as_bytes()
                    .windows(12)
                    .any(|w| msg.contains(std::str::from_utf8(w).unwrap())),
                "{msg:?} echoes part of the key"
            );
        }
        assert!(keys_err(&format!("k1:{short}")).contains("32 bytes"));
        assert!(keys_err(&format!("k1:{K1}\nk1:{K2}")).contains("duplicate key id `k1`"));
        assert!(keys_err(&format!("k1:{bad_b64}")).contains("base64"));
        assert!(keys_err(&format!("bad id:{K1}")).contains("invalid key id"));
    }

    #[test]
    fn empty_keyring_is_an_error() {
        for text in ["", "\n\n", "# only a comment\n   \n"] {
            assert!(keys_err(text).contains("no master key"), "{text:?}");
        }
    }

    #[test]
    fn parse_accepts_valid_ids_comments_and_whitespace() {
        let id64 = "a".repeat(64);
        let r = ring(&format!(
            "  # comment\r\n{id64}:{K1}\r\n\t\nA-Z_09 : {K2} \n#k3:{K1}\n"
        ));
        assert_eq!(r.key_ids(), [id64.as_str(), "A-Z_09"]);
        assert_eq!(r.primary_id(), id64);
    }

    #[test]
    fn debug_shows_only_key_ids() {
        let r = ring(&format!("k1:{K1}\nk2:{K2}"));
        let dbg = format!("{r:?} {r:#?}");
        assert!(dbg.contains("k1") && dbg.contains("k2"), "{dbg}");
        for key in [K1, K2] {
            assert!(!dbg.contains(key), "{dbg}");
            assert!(!dbg.contains(&key[..8]), "{dbg}");
        }
        // No raw key bytes either (as a Debug'd byte list or hex).
        assert!(!dbg.contains("[0, 1, 2"), "{dbg}");
        assert!(!dbg.contains("000102"), "{dbg}");
        assert!(!dbg.contains("32, 33, 34"), "{dbg}");
    }

    #[test]
    fn ciphers_zeroize_on_drop() {
        fn zeroizes_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        zeroizes_on_drop::<Aes256Gcm>();
    }

    #[test]
    fn keyring_can_be_shared_between_threads() {
        fn shared<T: Send + Sync + Clone + 'static>() {}
        shared::<SecretKeyring>();
    }

    #[test]
    fn generated_lines_parse_and_differ() {
        let (a, b) = (
            SecretKeyring::generate_line(),
            SecretKeyring::generate_line(),
        );
        assert_ne!(a, b);
        let (id, key) = a.split_once(':').unwrap();
        assert!(id.starts_with("lk-") && id.len() == 3 + 16, "{id}");
        assert!(id[3..].bytes().all(|c| c.is_ascii_hexdigit()), "{id}");
        assert_eq!(B64.decode(key).unwrap().len(), 32);
        let r = ring(&format!("{a}\n{b}\n"));
        assert_eq!(r.primary_id(), id);
        let v = r.seal(&ctx(), b"x").unwrap();
        assert_eq!(r.open(&ctx(), &v).unwrap().as_slice(), b"x");
    }

    #[test]
    fn load_file_reads_and_names_the_path_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring");
        std::fs::write(&path, format!("k1:{K1}\n")).unwrap();
        assert_eq!(SecretKeyring::load_file(&path).unwrap().primary_id(), "k1");

        let missing = dir.path().join("missing-keyring");
        match SecretKeyring::load_file(&missing) {
            Err(AuthError::Keys(m)) => assert!(m.contains("missing-keyring"), "{m}"),
            other => panic!("{other:?}"),
        }
        std::fs::write(&path, format!("k1:{K1}\nk2:AAAA\n")).unwrap();
        match SecretKeyring::load_file(&path) {
            Err(AuthError::Keys(m)) => {
                assert!(m.contains(&*path.to_string_lossy()), "{m}");
                assert!(m.contains("line 2"), "{m}");
                assert!(!m.contains(K1) && !m.contains("AAAA"), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[cfg(unix)]
    #[test]
    fn loose_permissions_are_detected() {
        assert_eq!(loose_mode(0o100600), None);
        assert_eq!(loose_mode(0o100400), None);
        assert_eq!(loose_mode(0o100640), Some(0o640));
        assert_eq!(loose_mode(0o100604), Some(0o604));
        assert_eq!(loose_mode(0o100644), Some(0o644));
    }

    /// A `tracing` writer that collects everything logged while it is the default.
    #[derive(Clone, Default)]
    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Capture {
        fn logged_while(f: impl FnOnce()) -> String {
            let capture = Capture::default();
            let sink = capture.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || sink.clone())
                .with_ansi(false)
                .finish();
            tracing::subscriber::with_default(subscriber, f);
            String::from_utf8(capture.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[cfg(unix)]
    #[test]
    fn load_file_warns_about_readable_keyrings() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring");
        std::fs::write(&path, format!("k1:{K1}\n")).unwrap();

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let logs = Capture::logged_while(|| {
            SecretKeyring::load_file(&path).unwrap();
        });
        assert!(logs.contains("WARN"), "{logs}");
        assert!(logs.contains(&*path.to_string_lossy()), "{logs}");
        assert!(logs.contains("644"), "{logs}");
        assert!(!logs.contains(K1), "{logs}");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let logs = Capture::logged_while(|| {
            SecretKeyring::load_file(&path).unwrap();
        });
        assert!(!logs.contains("WARN"), "{logs}");
    }
}
