//! A job's input: authorised against its tenant (again, after the API) and read from S3 or from
//! the inline rows recorded with it.

use super::WorkerContext;
use gpuq_shared::dataset::{self, Table};
use gpuq_shared::db::{self, JobRecord};
use gpuq_shared::{ErrorCode, JobError, S3Uri, auth};
use serde_json::Value;

impl WorkerContext {
    /// The job's input, from S3 (only inside what its tenant may read) or inline.
    pub(super) async fn load_input(
        &self,
        job: &JobRecord,
        label_column: &str,
        require_label: bool,
    ) -> Result<Table, JobError> {
        let input = &job.input;
        if let Some(uri) = input.get("uri").and_then(Value::as_str) {
            let uri: S3Uri = uri.parse().map_err(JobError::invalid_input)?;
            self.check_input_allowed(job, &uri).await?;
            let limits = &self.settings.limits;
            return self
                .storage
                .read_table(&uri, label_column, require_label, limits)
                .await;
        }
        let rows: Vec<Vec<f64>> =
            serde_json::from_value(input.get("rows").cloned().unwrap_or(Value::Null))
                .map_err(|e| JobError::invalid_input(format!("input.rows: {e}")))?;
        let labels: Option<Vec<f64>> =
            serde_json::from_value(input.get("labels").cloned().unwrap_or(Value::Null))
                .map_err(|e| JobError::invalid_input(format!("input.labels: {e}")))?;
        if require_label && labels.is_none() {
            return Err(JobError::invalid_input(
                "training needs `labels` beside the inline rows",
            ));
        }
        dataset::from_rows(&rows, labels.as_deref())
    }

    /// The API checked this at submit; checked again here, before any S3 call, so a message or
    /// row that did not come through the API cannot make a worker read another tenant's data.
    pub(super) async fn check_input_allowed(
        &self,
        job: &JobRecord,
        uri: &S3Uri,
    ) -> Result<(), JobError> {
        let tenant = db::tenant_get(&self.pool, &job.tenant_id)
            .await
            .map_err(|e| JobError::new(ErrorCode::DatabaseError, e.to_string()))?
            .ok_or_else(|| {
                JobError::new(ErrorCode::ForbiddenInput, "the job's tenant does not exist")
            })?;
        let own = self.settings.tenant_prefix(&tenant.id);
        if auth::may_read(uri, &self.settings.bucket, &own, &tenant.input_prefixes) {
            Ok(())
        } else {
            Err(JobError::new(
                ErrorCode::ForbiddenInput,
                format!("{uri} is outside what tenant `{}` may read", tenant.id),
            ))
        }
    }
}
