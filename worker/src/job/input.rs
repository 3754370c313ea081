//! A job's input: authorised against its tenant (again, after the API) and read from S3 or from
//! the inline rows recorded with it, within the worker's memory budget.

use super::WorkerContext;
use gpuq_shared::dataset::{self, Table};
use gpuq_shared::db::{self, JobRecord};
use gpuq_shared::job::Input;
use gpuq_shared::memory::Reservation;
use gpuq_shared::{ErrorCode, JobError, S3Uri, auth};

impl WorkerContext {
    /// The job's input, from S3 (only inside what its tenant may read) or inline, and what it
    /// holds of the worker's memory budget: keep the reservation as long as the table.
    pub(super) async fn load_input(
        &self,
        job: &JobRecord,
        input: &Input,
        columns: dataset::Columns<'_>,
    ) -> Result<(Table, Reservation), JobError> {
        let mut memory = self.memory.reserve();
        let table = match input {
            Input::S3 { uri } => {
                self.check_input_allowed(job, uri).await?;
                let limits = &self.settings.limits;
                self.storage
                    .read_table(uri, columns, limits, &mut memory)
                    .await?
            }
            Input::Inline { rows, labels } => {
                if let Some(group) = columns.group {
                    return Err(JobError::invalid_input(format!(
                        "the group column `{group}` is read from a CSV or .npy input \
                         (`input.uri`); inline rows have none"
                    )));
                }
                if columns.require_label && labels.is_none() {
                    return Err(JobError::invalid_input(
                        "training needs `labels` beside the inline rows",
                    ));
                }
                // Small (the API caps inline values) and already in memory with the job's row.
                let table = dataset::from_rows(rows, labels.as_deref())?;
                let values = table.features.data.len() + table.labels.as_ref().map_or(0, Vec::len);
                memory.grow_to(values as u64 * 4).await?;
                table
            }
        };
        Ok((table, memory))
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
