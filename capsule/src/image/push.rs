//! Push a stored image to a registry: blobs the repository lacks, then the manifest.

use bytes::Bytes;
use futures_util::StreamExt;
use oci_client::errors::OciDistributionError;
use tokio::io::AsyncReadExt;

use super::digest::Digest;
use super::progress::{report, Phase, ProgressFn};
use super::reference::ImageRef;
use super::store::{blocking, io_at, ImageError, ImageStore};

/// Options for one push.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// Progress callback.
    pub progress: Option<ProgressFn>,
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The reference pushed to.
    pub reference: String,
    /// The manifest digest (unchanged by the push: the stored bytes are sent as they are).
    pub digest: Digest,
    /// Blobs uploaded.
    pub uploaded: Vec<Digest>,
    /// Blobs the repository already had.
    pub skipped: Vec<Digest>,
}

const CHUNK: usize = 1 << 20;

impl ImageStore {
    /// Push the stored image named `reference` to the registry and repository it names (tag it
    /// first to push under another name).
    pub async fn push(&self, reference: &str, opts: &PushOptions) -> Result<Pushed, ImageError> {
        let r = ImageRef::parse(reference)?;
        let rec = self.require(reference).await?;
        let registry = &self.inner.registry;
        registry.auth_push(&r).await?;
        let mut uploaded = Vec::new();
        let mut skipped = Vec::new();
        let mut blobs: Vec<(Digest, u64)> = rec
            .layers
            .iter()
            .map(|l| (l.digest.clone(), l.size))
            .collect();
        let cfg_size = std::fs::metadata(self.blob_path(&rec.config_digest))
            .map_err(io_at("stat", &self.blob_path(&rec.config_digest)))?
            .len();
        blobs.push((rec.config_digest.clone(), cfg_size));
        for (d, size) in blobs {
            if registry.has_blob(&r, &d).await? {
                report(&opts.progress, &d, Phase::Pushed, size, Some(size));
                skipped.push(d);
                continue;
            }
            let path = self.blob_path(&d);
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(io_at("open", &path))?;
            let progress = opts.progress.clone();
            let digest = d.clone();
            let stream =
                futures_util::stream::try_unfold((file, 0u64), |(mut f, done)| async move {
                    let mut buf = vec![0u8; CHUNK];
                    let n = f
                        .read(&mut buf)
                        .await
                        .map_err(OciDistributionError::IoError)?;
                    if n == 0 {
                        return Ok::<_, OciDistributionError>(None);
                    }
                    buf.truncate(n);
                    Ok(Some((Bytes::from(buf), (f, done + n as u64))))
                });
            let counted = stream.scan(0u64, move |done, item| {
                if let Ok(b) = &item {
                    *done += b.len() as u64;
                    report(&progress, &digest, Phase::Pushing, *done, Some(size));
                }
                futures_util::future::ready(Some(item))
            });
            registry.push_blob(&r, &d, size, counted).await?;
            report(&opts.progress, &d, Phase::Pushed, size, Some(size));
            uploaded.push(d);
        }
        let mpath = self.blob_path(&rec.manifest_digest);
        let manifest =
            blocking(move || std::fs::read(&mpath).map_err(io_at("read", &mpath))).await?;
        registry
            .push_manifest(&r, Bytes::from(manifest), &rec.manifest_media_type)
            .await?;
        Ok(Pushed {
            reference: r.to_string(),
            digest: rec.manifest_digest,
            uploaded,
            skipped,
        })
    }
}
