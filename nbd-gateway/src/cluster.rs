//! The production export provider: `pool/image` names resolve to images of the Atlant
//! cluster, served through the client library.

use crate::backend::{Backend, Cancel, ExportProvider, IoError, OpenError};
use bytes::Bytes;
use client::{ClientError, Cluster, Image};
use std::sync::Arc;

pub struct ClusterProvider {
    pub cluster: Arc<Cluster>,
}

pub struct ClusterBackend {
    image: Image,
}

fn io_error(e: ClientError) -> IoError {
    match e {
        ClientError::Invalid(s) => IoError::Invalid(s),
        ClientError::NoSpace(s) => IoError::NoSpace(s),
        ClientError::Cancelled => IoError::Cancelled,
        other => {
            tracing::error!("io failed: {other}");
            IoError::Io(other.to_string())
        }
    }
}

impl Backend for ClusterBackend {
    fn size(&self) -> u64 {
        self.image.size_bytes
    }

    async fn read(&self, offset: u64, len: u64, cancel: &Cancel) -> Result<Bytes, IoError> {
        self.image
            .read_cancellable(offset, len, cancel)
            .await
            .map_err(io_error)
    }

    async fn write(
        &self,
        offset: u64,
        data: Bytes,
        fua: bool,
        cancel: &Cancel,
    ) -> Result<(), IoError> {
        self.image
            .write_cancellable(offset, data, fua, cancel)
            .await
            .map_err(io_error)
    }

    async fn trim(&self, offset: u64, len: u64, fua: bool, cancel: &Cancel) -> Result<(), IoError> {
        self.image
            .trim_cancellable(offset, len, fua, cancel)
            .await
            .map_err(io_error)
    }

    /// Trimmed blocks read as zeroes, so zeroing is a trim (it also frees the space).
    async fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
        cancel: &Cancel,
    ) -> Result<(), IoError> {
        self.image
            .trim_cancellable(offset, len, fua, cancel)
            .await
            .map_err(io_error)
    }

    async fn flush(&self, cancel: &Cancel) -> Result<(), IoError> {
        self.image.flush_cancellable(cancel).await.map_err(io_error)
    }
}

impl ExportProvider for ClusterProvider {
    type Backend = ClusterBackend;

    async fn open(&self, name: &str) -> Result<Arc<ClusterBackend>, OpenError> {
        let Some((pool, image)) = name.split_once('/') else {
            return Err(OpenError::NotFound(name.to_string()));
        };
        // A newly created image may not be in our map yet: look once more after a refresh.
        let map = self.cluster.map();
        if map.resolve_image(pool, image).is_err() {
            if let Ok(fresh) = self.cluster.mon().get_map().await {
                self.cluster
                    .wait_for_epoch(fresh.epoch, std::time::Duration::from_secs(2))
                    .await;
            }
        }
        match Image::open(&self.cluster, pool, image) {
            Ok(image) => Ok(Arc::new(ClusterBackend { image })),
            Err(ClientError::NotFound(_)) => Err(OpenError::NotFound(name.to_string())),
            Err(e) => Err(OpenError::Failed {
                name: name.to_string(),
                reason: e.to_string(),
            }),
        }
    }

    async fn list(&self) -> Vec<String> {
        let map = self.cluster.map();
        map.images
            .values()
            .filter_map(|i| {
                map.pools
                    .get(&i.pool)
                    .map(|p| format!("{}/{}", p.name, i.name))
            })
            .collect()
    }
}
