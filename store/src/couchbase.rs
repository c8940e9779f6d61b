//! Couchbase adapter (stub while the SDK facts are gathered).
use std::path::PathBuf;
#[derive(Debug, Clone, Default)]
pub struct CouchbaseConfig {
    pub url: String,
    pub username: String,
    pub password: String,
    pub bucket: String,
    pub scope: String,
    pub ca_file: Option<PathBuf>,
    pub create_layout: bool,
}
pub struct CouchbaseStore;
impl CouchbaseStore {
    pub async fn connect(_cfg: CouchbaseConfig) -> crate::Result<Self> {
        Err(crate::StoreError::Backend("not yet".into()))
    }
}
#[async_trait::async_trait]
impl crate::Store for CouchbaseStore {
    async fn get_doc(
        &self,
        _: lintel_model::IdKind,
        _: &str,
        _: &str,
    ) -> crate::Result<Option<crate::Doc>> {
        todo!()
    }
    async fn commit(&self, _: Vec<crate::Write>) -> crate::Result<()> {
        todo!()
    }
    async fn query(&self, _: crate::Query) -> crate::Result<crate::Page> {
        todo!()
    }
    async fn export(&self) -> crate::Result<Vec<crate::Doc>> {
        todo!()
    }
    async fn put_blob(&self, _: &str, _: &str, _: Vec<u8>) -> crate::Result<()> {
        todo!()
    }
    async fn get_blob(&self, _: &str, _: &str) -> crate::Result<Option<Vec<u8>>> {
        todo!()
    }
    fn changes(&self) -> tokio::sync::broadcast::Receiver<crate::Change> {
        todo!()
    }
    async fn ping(&self) -> crate::Result<()> {
        todo!()
    }
    fn backend_name(&self) -> &'static str {
        "couchbase"
    }
}
