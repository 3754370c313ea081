//! S3 access through aws-sdk-s3 with the endpoint from the standard AWS variables
//! (`AWS_ENDPOINT_URL` for the dev server) and path-style addressing. Large objects are
//! written in parts by [`ObjectWriter`] (`upload`).

use crate::config::Limits;
use crate::dataset::{self, Table};
use crate::domain::S3Uri;
use crate::error::{ErrorCode, JobError};
use crate::memory::Reservation;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use chrono::{DateTime, Utc};

mod upload;
pub use upload::{MAX_PARTS, MIN_PART_BYTES, ObjectWriter};

fn presigning(
    expires_in: std::time::Duration,
) -> Result<aws_sdk_s3::presigning::PresigningConfig, JobError> {
    aws_sdk_s3::presigning::PresigningConfig::expires_in(expires_in)
        .map_err(|e| JobError::new(ErrorCode::InternalError, format!("presigning: {e}")))
}

#[derive(Clone, Debug)]
pub struct Storage {
    client: Client,
}

impl Storage {
    /// A client configured from the environment (`AWS_*` variables, profiles, instance roles).
    pub async fn from_env() -> Self {
        let conf = aws_config::load_from_env().await;
        let s3 = aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(true)
            .build();
        Self {
            client: Client::from_conf(s3),
        }
    }

    /// Creates the bucket unless it exists (development and tests).
    pub async fn ensure_bucket(&self, bucket: &str) -> Result<(), JobError> {
        if self
            .client
            .head_bucket()
            .bucket(bucket)
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        match self.client.create_bucket().bucket(bucket).send().await {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.code(),
                    Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(storage_error(&format!("s3://{bucket}"), Access::Write, e)),
        }
    }

    /// Streams a CSV or `.npy` object (chosen by its extension) into a [`Table`], growing
    /// `memory` as it goes.
    pub async fn read_table(
        &self,
        uri: &S3Uri,
        columns: dataset::Columns<'_>,
        limits: &Limits,
        memory: &mut Reservation,
    ) -> Result<Table, JobError> {
        let object = self.get(uri).await?;
        let reader = tokio::io::BufReader::with_capacity(256 * 1024, object.into_async_read());
        if uri.key.ends_with(".npy") {
            dataset::read_npy_columns(reader, columns, limits, memory).await
        } else {
            dataset::read_csv_columns(reader, columns, limits, memory).await
        }
    }

    /// The whole object in memory (model artifacts, which are small).
    pub async fn get_bytes(&self, uri: &S3Uri) -> Result<Vec<u8>, JobError> {
        let body = self.get(uri).await?;
        let bytes = body.collect().await.map_err(|e| {
            JobError::new(ErrorCode::StorageUnavailable, format!("reading {uri}: {e}"))
        })?;
        Ok(bytes.to_vec())
    }

    async fn get(&self, uri: &S3Uri) -> Result<ByteStream, JobError> {
        let out = self
            .client
            .get_object()
            .bucket(&uri.bucket)
            .key(&uri.key)
            .send()
            .await
            .map_err(|e| storage_error(&uri.to_string(), Access::Read, e))?;
        Ok(out.body)
    }

    pub async fn put(
        &self,
        uri: &S3Uri,
        bytes: Vec<u8>,
        content_type: &str,
    ) -> Result<(), JobError> {
        self.client
            .put_object()
            .bucket(&uri.bucket)
            .key(&uri.key)
            .content_type(content_type)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| storage_error(&uri.to_string(), Access::Write, e))?;
        Ok(())
    }
    /// A URL that lets its holder `PUT` one object at `uri` until it expires (SigV4 in the
    /// query string; no credentials needed by whoever holds it).
    pub async fn presign_put(
        &self,
        uri: &S3Uri,
        expires_in: std::time::Duration,
    ) -> Result<String, JobError> {
        let config = presigning(expires_in)?;
        let request = self
            .client
            .put_object()
            .bucket(&uri.bucket)
            .key(&uri.key)
            .presigned(config)
            .await
            .map_err(|e| storage_error(&uri.to_string(), Access::Write, e))?;
        Ok(request.uri().to_string())
    }

    /// A URL that lets its holder `GET` the object at `uri` until it expires.
    pub async fn presign_get(
        &self,
        uri: &S3Uri,
        expires_in: std::time::Duration,
    ) -> Result<String, JobError> {
        let config = presigning(expires_in)?;
        let request = self
            .client
            .get_object()
            .bucket(&uri.bucket)
            .key(&uri.key)
            .presigned(config)
            .await
            .map_err(|e| storage_error(&uri.to_string(), Access::Read, e))?;
        Ok(request.uri().to_string())
    }

    /// One page (up to 1,000) of the objects under `prefix` in `bucket`, and the token of the
    /// next page if there is one.
    pub async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        token: Option<String>,
    ) -> Result<(Vec<StoredObject>, Option<String>), JobError> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| storage_error(&format!("s3://{bucket}/{prefix}"), Access::Read, e))?;
        let objects = out
            .contents()
            .iter()
            .filter_map(|o| {
                let modified = o.last_modified()?;
                Some(StoredObject {
                    uri: S3Uri::new(bucket, o.key()?),
                    last_modified: DateTime::from_timestamp(
                        modified.secs(),
                        modified.subsec_nanos(),
                    )?,
                })
            })
            .collect();
        let next = out
            .is_truncated()
            .unwrap_or(false)
            .then(|| out.next_continuation_token().map(str::to_string))
            .flatten();
        Ok((objects, next))
    }
}

/// An object as a listing shows it.
#[derive(Debug, Clone)]
pub struct StoredObject {
    pub uri: S3Uri,
    pub last_modified: DateTime<Utc>,
}

impl Storage {
    /// Deletes an object; one already gone is not an error.
    pub async fn delete(&self, uri: &S3Uri) -> Result<(), JobError> {
        match self
            .client
            .delete_object()
            .bucket(&uri.bucket)
            .key(&uri.key)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.code(), Some("NoSuchKey" | "NotFound")) => Ok(()),
            Err(e) => Err(storage_error(&uri.to_string(), Access::Write, e)),
        }
    }

    /// The objects under `prefix` in `bucket`, every page of them.
    pub async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<S3Uri>, JobError> {
        let (mut found, mut token) = (Vec::new(), None);
        loop {
            let (page, next) = self.list_page(bucket, prefix, token).await?;
            found.extend(page.into_iter().map(|o| o.uri));
            match next {
                Some(next) => token = Some(next),
                None => return Ok(found),
            }
        }
    }
}

/// Whether a failed call read the tenant's input or wrote what gpuq produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// Reading: a missing object or bucket is the caller's mistake (`input_not_found`), denied access
/// is final (`forbidden_input`). Writing: either is the deployment's (`output_write_failed`).
/// Anything else (5xx, timeouts, dropped connections) is worth a retry.
fn storage_error<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    what: &str,
    access: Access,
    err: SdkError<E>,
) -> JobError {
    let code = err.code().map(str::to_string);
    let missing = matches!(
        code.as_deref(),
        Some("NoSuchKey" | "NoSuchBucket" | "NotFound")
    );
    let denied = matches!(
        code.as_deref(),
        Some("AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch")
    );
    match (access, missing, denied) {
        (Access::Read, true, _) => {
            JobError::new(ErrorCode::InputNotFound, format!("{what} does not exist"))
        }
        (Access::Read, _, true) => JobError::new(
            ErrorCode::ForbiddenInput,
            format!("{what}: access denied ({})", code.unwrap_or_default()),
        ),
        (Access::Write, true, _) | (Access::Write, _, true) => JobError::new(
            ErrorCode::OutputWriteFailed,
            format!("{what}: cannot write ({})", code.unwrap_or_default()),
        ),
        _ => {
            let detail = match &err {
                SdkError::ServiceError(s) => format!("{}", s.err()),
                other => format!("{other}"),
            };
            JobError::new(ErrorCode::StorageUnavailable, format!("{what}: {detail}"))
        }
    }
}
