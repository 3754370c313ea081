//! The models a worker keeps on its GPU, loaded from their record and artifact on first use and
//! kept within a budget of bytes, the least recently used evicted first.

use super::{WorkerContext, blocking};
use crate::algorithms::{LoadedModel, Scope};
use gpuq_shared::db::{self, ModelRecord};
use gpuq_shared::params::TrainParams;
use gpuq_shared::{ErrorCode, JobError, ModelId, S3Uri};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// A model on the GPU and the training parameters recorded with it.
pub(super) struct CachedModel {
    pub model: LoadedModel,
    /// The label column it was trained with: an input's column of that name is not a feature.
    pub label_column: String,
    pub tenant: String,
}

/// A model a job names, resolved: what to run and which of its detectors.
pub(super) struct Resolved {
    pub model: Arc<CachedModel>,
    pub scope: Scope,
    /// The id its artifact is cached under: a fleet member's is its fleet's.
    pub loaded_as: ModelId,
}

/// Models already on the GPU, by id (models never change once written).
pub(super) struct ModelCache {
    models: Mutex<Lru<ModelId, Arc<CachedModel>>>,
}

impl ModelCache {
    pub fn new(bytes: u64) -> Self {
        Self {
            models: Mutex::new(Lru::new(bytes)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru<ModelId, Arc<CachedModel>>> {
        // Each operation leaves the cache whole before it can panic.
        self.models.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Values with a size in bytes, kept within `capacity` bytes: an insert evicts the least
/// recently used until the newcomer fits, and a value bigger than the whole capacity is not
/// kept at all.
pub(super) struct Lru<K, V> {
    capacity: u64,
    held: u64,
    /// Bumped on every use; an entry's stamp says when it was last used.
    clock: u64,
    entries: HashMap<K, (V, u64, u64)>,
}

impl<K: Hash + Eq + Clone, V: Clone> Lru<K, V> {
    pub fn new(capacity: u64) -> Self {
        Self {
            capacity,
            held: 0,
            clock: 0,
            entries: HashMap::new(),
        }
    }

    /// The value, marked as just used.
    pub fn get(&mut self, key: &K) -> Option<V> {
        self.clock += 1;
        let (value, _, used) = self.entries.get_mut(key)?;
        *used = self.clock;
        Some(value.clone())
    }

    pub fn insert(&mut self, key: K, value: V, bytes: u64) {
        if let Some((_, old, _)) = self.entries.remove(&key) {
            self.held -= old;
        }
        if bytes > self.capacity {
            return;
        }
        while self.held + bytes > self.capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, _, used))| *used)
                .map(|(k, _)| k.clone())
                .expect("something is held");
            let (_, freed, _) = self.entries.remove(&oldest).expect("present");
            self.held -= freed;
        }
        self.clock += 1;
        self.held += bytes;
        self.entries.insert(key, (value, bytes, self.clock));
    }

    /// Drops `key` (a model deleted since it was cached).
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let (value, bytes, _) = self.entries.remove(key)?;
        self.held -= bytes;
        Some(value)
    }

    /// Bytes held.
    #[cfg(test)]
    pub fn held(&self) -> u64 {
        self.held
    }

    #[cfg(test)]
    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }
}

impl WorkerContext {
    /// The tenant's model on the GPU, loading its record and artifact on first use. Another
    /// tenant's model does not exist for this job, nor does a deleted one: its record is read
    /// on every use, and a copy held for a model deleted since is dropped, never served. A fleet
    /// member resolves to its fleet's artifact (loaded once for all its members) and its slot.
    pub(super) async fn model(&self, tenant: &str, id: ModelId) -> Result<Resolved, JobError> {
        let record = db::model_get_for(&self.pool, tenant, id)
            .await
            .map_err(|e| JobError::new(ErrorCode::DatabaseError, e.to_string()))?;
        self.resolve(tenant, id, record).await
    }

    /// Each of the tenant's models `ids` (as [`model`](Self::model) gives it), their records
    /// read in one statement: a batch for many members of one fleet reads them at once and
    /// loads the fleet once.
    pub(super) async fn models(
        &self,
        tenant: &str,
        ids: &[ModelId],
    ) -> Vec<Result<Resolved, JobError>> {
        let records = match db::models_get_for(&self.pool, tenant, ids).await {
            Ok(records) => records,
            Err(e) => {
                let e = JobError::new(ErrorCode::DatabaseError, e.to_string());
                return ids.iter().map(|_| Err(e.clone())).collect();
            }
        };
        let mut by_id: HashMap<ModelId, ModelRecord> =
            records.into_iter().map(|r| (r.id, r)).collect();
        let mut out = Vec::with_capacity(ids.len());
        // One after another: the first member of a fleet loads it, the others find it cached.
        for id in ids {
            out.push(self.resolve(tenant, *id, by_id.remove(id)).await);
        }
        out
    }

    /// The model of `record` (`None`: it does not exist for this tenant) on the GPU.
    async fn resolve(
        &self,
        tenant: &str,
        id: ModelId,
        record: Option<ModelRecord>,
    ) -> Result<Resolved, JobError> {
        let Some(record) = record else {
            let mut cache = self.models.lock();
            if cache.get(&id).is_some_and(|m| m.tenant == tenant) {
                cache.remove(&id);
            }
            drop(cache);
            return Err(JobError::new(
                ErrorCode::ModelNotFound,
                format!("model {id} does not exist"),
            ));
        };
        let (loaded_as, scope) = match record.member() {
            Some((fleet, slot)) => (fleet, Scope::Member(slot)),
            None => (id, Scope::Whole),
        };
        let cached = self.models.lock().get(&loaded_as);
        if let Some(m) = cached.filter(|m| m.tenant == tenant) {
            return Ok(Resolved {
                model: m,
                scope,
                loaded_as,
            });
        }
        let uri: S3Uri = record
            .artifact_uri
            .parse()
            .map_err(|e: String| JobError::new(ErrorCode::ModelCorrupt, e))?;
        let bytes = self.model_bytes(&uri).await?;
        let label_column = TrainParams::parse(record.algorithm, &record.params)
            .map_err(|e| JobError::new(ErrorCode::ModelCorrupt, format!("its params: {e}")))?
            .label_column()
            .to_string();
        let gpu = self.gpu.clone();
        let began = std::time::Instant::now();
        let model = blocking(move || LoadedModel::load(&gpu, &bytes)).await?;
        tracing::info!(model = %loaded_as, bytes = model.bytes(), seconds = began.elapsed().as_secs_f64(),
            "model loaded onto the device");
        let loaded = Arc::new(CachedModel {
            model,
            label_column,
            tenant: record.tenant_id,
        });
        let bytes = loaded.model.bytes();
        self.models.lock().insert(loaded_as, loaded.clone(), bytes);
        Ok(Resolved {
            model: loaded,
            scope,
            loaded_as,
        })
    }

    /// A model's artifact; one that is gone is `model_not_found`.
    pub(super) async fn model_bytes(&self, uri: &S3Uri) -> Result<Vec<u8>, JobError> {
        self.storage.get_bytes(uri).await.map_err(|e| match e.code {
            ErrorCode::InputNotFound => JobError::new(
                ErrorCode::ModelNotFound,
                format!("the artifact {uri} is gone"),
            ),
            _ => e,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Lru;

    #[test]
    fn the_cache_evicts_the_least_recently_used_until_a_newcomer_fits_its_bytes() {
        let mut cache = Lru::new(100);
        cache.insert("a", 1, 40);
        cache.insert("b", 2, 40);
        assert_eq!(cache.get(&"a"), Some(1)); // b is now the least recently used
        cache.insert("c", 3, 40);
        assert!(cache.contains(&"a") && cache.contains(&"c") && !cache.contains(&"b"));
        assert_eq!(cache.held(), 80);
        // One big newcomer pushes out as many as it needs, oldest first, and no more.
        cache.insert("d", 4, 60);
        assert!(!cache.contains(&"a") && cache.contains(&"c") && cache.contains(&"d"));
        assert_eq!(cache.held(), 100);
        // Bigger than the whole cache: used, but not kept, and nothing is evicted for it.
        cache.insert("huge", 5, 101);
        assert!(!cache.contains(&"huge") && cache.contains(&"c") && cache.contains(&"d"));
        // Inserting a key again replaces it and its size.
        cache.insert("c", 6, 10);
        assert_eq!((cache.get(&"c"), cache.held()), (Some(6), 70));
    }
}
