//! Objects written as they are produced: an S3 multipart upload in parts of a set size, so an
//! output of any size is never held whole in memory. An object smaller than one part goes up in
//! a single PUT; an upload that does not finish is aborted, so no parts are left behind.

use super::{Access, Storage, storage_error};
use crate::domain::S3Uri;
use crate::error::{ErrorCode, JobError};
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};

/// S3's smallest part (all but the last).
pub const MIN_PART_BYTES: usize = 5 << 20;
/// S3's most parts in one upload.
pub const MAX_PARTS: usize = 10_000;

/// An object being written part by part; [`finish`](Self::finish) makes it exist.
pub struct ObjectWriter {
    client: Client,
    uri: S3Uri,
    content_type: String,
    part_bytes: usize,
    /// The part being filled.
    buf: Vec<u8>,
    /// Set once the first part is full.
    upload_id: Option<String>,
    parts: Vec<CompletedPart>,
}

impl Storage {
    /// A writer of `uri` in parts of `part_bytes` (at least [`MIN_PART_BYTES`]).
    pub fn writer(&self, uri: &S3Uri, content_type: &str, part_bytes: usize) -> ObjectWriter {
        ObjectWriter {
            client: self.client.clone(),
            uri: uri.clone(),
            content_type: content_type.to_string(),
            part_bytes: part_bytes.max(MIN_PART_BYTES),
            buf: Vec::new(),
            upload_id: None,
            parts: Vec::new(),
        }
    }
}

impl ObjectWriter {
    /// Appends `bytes`, uploading each part as it fills.
    pub async fn write(&mut self, mut bytes: &[u8]) -> Result<(), JobError> {
        while !bytes.is_empty() {
            let room = self.part_bytes - self.buf.len();
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            if self.buf.capacity() < self.buf.len() + now.len() {
                // Doubling up to one part, never past it.
                let want =
                    (self.buf.capacity() * 2).clamp(self.buf.len() + now.len(), self.part_bytes);
                self.buf.reserve_exact(want - self.buf.len());
            }
            self.buf.extend_from_slice(now);
            bytes = later;
            if self.buf.len() == self.part_bytes {
                self.upload_part().await?;
            }
        }
        Ok(())
    }

    /// Parts uploaded so far.
    pub fn parts(&self) -> usize {
        self.parts.len()
    }

    /// Uploads what is left and completes the object; returns how many parts it took (0: one
    /// PUT). On failure the upload is aborted.
    pub async fn finish(mut self) -> Result<usize, JobError> {
        if self.upload_id.is_none() {
            let body = std::mem::take(&mut self.buf);
            self.client
                .put_object()
                .bucket(&self.uri.bucket)
                .key(&self.uri.key)
                .content_type(&self.content_type)
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|e| storage_error(&self.uri.to_string(), Access::Write, e))?;
            return Ok(0);
        }
        if !self.buf.is_empty() {
            self.upload_part().await?;
        }
        let upload_id = self.upload_id.clone().expect("an upload");
        let parts = CompletedMultipartUpload::builder()
            .set_parts(Some(std::mem::take(&mut self.parts)))
            .build();
        let n = parts.parts().len();
        self.client
            .complete_multipart_upload()
            .bucket(&self.uri.bucket)
            .key(&self.uri.key)
            .upload_id(&upload_id)
            .multipart_upload(parts)
            .send()
            .await
            .map_err(|e| storage_error(&self.uri.to_string(), Access::Write, e))?;
        self.upload_id = None;
        Ok(n)
    }

    /// Abandons the object: the parts uploaded so far are deleted.
    pub async fn abort(mut self) {
        if let Some(id) = self.upload_id.take() {
            abort(&self.client, &self.uri, &id).await;
        }
    }

    async fn upload_part(&mut self) -> Result<(), JobError> {
        let what = self.uri.to_string();
        let number = self.parts.len() + 1;
        if number > MAX_PARTS {
            return Err(JobError::new(
                ErrorCode::OutputWriteFailed,
                format!(
                    "{what}: the output is over {MAX_PARTS} parts of {} bytes",
                    self.part_bytes
                ),
            ));
        }
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let created = self
                    .client
                    .create_multipart_upload()
                    .bucket(&self.uri.bucket)
                    .key(&self.uri.key)
                    .content_type(&self.content_type)
                    .send()
                    .await
                    .map_err(|e| storage_error(&what, Access::Write, e))?;
                let id = created.upload_id().ok_or_else(|| {
                    JobError::new(
                        ErrorCode::StorageUnavailable,
                        format!("{what}: S3 started an upload without an id"),
                    )
                })?;
                self.upload_id = Some(id.to_string());
                id.to_string()
            }
        };
        let body = std::mem::replace(&mut self.buf, Vec::with_capacity(self.part_bytes));
        let uploaded = self
            .client
            .upload_part()
            .bucket(&self.uri.bucket)
            .key(&self.uri.key)
            .upload_id(&upload_id)
            .part_number(number as i32)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| storage_error(&what, Access::Write, e))?;
        self.parts.push(
            CompletedPart::builder()
                .part_number(number as i32)
                .set_e_tag(uploaded.e_tag().map(str::to_string))
                .build(),
        );
        Ok(())
    }
}

/// A writer dropped before it finished (its job failed or was abandoned) aborts its upload.
impl Drop for ObjectWriter {
    fn drop(&mut self) {
        let Some(id) = self.upload_id.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (client, uri) = (self.client.clone(), self.uri.clone());
            runtime.spawn(async move { abort(&client, &uri, &id).await });
        }
    }
}

async fn abort(client: &Client, uri: &S3Uri, upload_id: &str) {
    let aborted = client
        .abort_multipart_upload()
        .bucket(&uri.bucket)
        .key(&uri.key)
        .upload_id(upload_id)
        .send()
        .await;
    if let Err(e) = aborted {
        tracing::warn!(%uri, error = %e, "could not abort a multipart upload; S3 keeps its parts");
    }
}
