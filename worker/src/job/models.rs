//! The models a worker keeps on its GPU, loaded from their record and artifact on first use.

use super::{WorkerContext, blocking};
use crate::algorithms::LoadedModel;
use gpuq_shared::db;
use gpuq_shared::params::TrainParams;
use gpuq_shared::{ErrorCode, JobError, ModelId, S3Uri};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A model on the GPU and the training parameters recorded with it.
pub(super) struct CachedModel {
    pub model: LoadedModel,
    /// The label column it was trained with: an input's column of that name is not a feature.
    pub label_column: String,
    pub tenant: String,
}

/// Models already on the GPU, by id (models never change once written).
#[derive(Default)]
pub(super) struct ModelCache {
    models: Mutex<HashMap<ModelId, Arc<CachedModel>>>,
}

impl WorkerContext {
    /// The tenant's model on the GPU, loading its record and artifact on first use. Another
    /// tenant's model does not exist for this job, nor does a deleted one: its record is read
    /// on every use, and a copy held for a model deleted since is dropped, never served.
    pub(super) async fn model(
        &self,
        tenant: &str,
        id: ModelId,
    ) -> Result<Arc<CachedModel>, JobError> {
        let record = db::model_get_for(&self.pool, tenant, id)
            .await
            .map_err(|e| JobError::new(ErrorCode::DatabaseError, e.to_string()))?;
        let Some(record) = record else {
            let mut cache = self.models.models.lock().expect("model cache");
            if cache.get(&id).is_some_and(|m| m.tenant == tenant) {
                cache.remove(&id);
            }
            drop(cache);
            return Err(JobError::new(
                ErrorCode::ModelNotFound,
                format!("model {id} does not exist"),
            ));
        };
        let cached = self
            .models
            .models
            .lock()
            .expect("model cache")
            .get(&id)
            .cloned();
        if let Some(m) = cached.filter(|m| m.tenant == tenant) {
            return Ok(m);
        }
        let uri: S3Uri = record
            .artifact_uri
            .parse()
            .map_err(|e: String| JobError::new(ErrorCode::ModelCorrupt, e))?;
        let bytes = self
            .storage
            .get_bytes(&uri)
            .await
            .map_err(|e| match e.code {
                ErrorCode::InputNotFound => JobError::new(
                    ErrorCode::ModelNotFound,
                    format!("the artifact {uri} is gone"),
                ),
                _ => e,
            })?;
        let label_column = TrainParams::parse(record.algorithm, &record.params)
            .map_err(|e| JobError::new(ErrorCode::ModelCorrupt, format!("its params: {e}")))?
            .label_column()
            .to_string();
        let gpu = self.gpu.clone();
        let model = blocking(move || LoadedModel::load(&gpu, &bytes)).await?;
        let loaded = Arc::new(CachedModel {
            model,
            label_column,
            tenant: record.tenant_id,
        });
        let mut cache = self.models.models.lock().expect("model cache");
        if cache.len() >= 256 {
            cache.clear();
        }
        cache.insert(id, loaded.clone());
        Ok(loaded)
    }
}
