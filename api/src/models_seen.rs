//! The models infer submits name, remembered for a moment: an infer job is checked against its
//! model (it exists, is the tenant's, takes rows of this width), and under load the same few
//! models are named thousands of times a second. A model never changes once written, only
//! disappears: a delete through this process forgets it at once; one through another API
//! process may still let a submit through for up to [`FRESH_FOR`], and that job then fails
//! `model_not_found` in the worker, which reads the model's row on every use.

use gpuq_shared::ModelId;
use gpuq_shared::db::ModelRecord;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a looked-up model is taken as still there.
pub const FRESH_FOR: Duration = Duration::from_secs(1);
/// Entries kept before the cache is emptied (it refills from what is in use).
const MAX_ENTRIES: usize = 10_000;

/// Each tenant's model, and when it was read.
type Seen = HashMap<(String, ModelId), (ModelRecord, Instant)>;

#[derive(Clone, Default)]
pub struct ModelsSeen {
    seen: Arc<Mutex<Seen>>,
}

impl ModelsSeen {
    /// The tenant's model if it was looked up less than [`FRESH_FOR`] ago.
    pub fn get(&self, tenant: &str, id: ModelId) -> Option<ModelRecord> {
        let seen = self.seen.lock().expect("models lock");
        seen.get(&(tenant.to_string(), id))
            .filter(|(_, at)| at.elapsed() < FRESH_FOR)
            .map(|(m, _)| m.clone())
    }

    pub fn remember(&self, tenant: &str, model: &ModelRecord) {
        let mut seen = self.seen.lock().expect("models lock");
        if seen.len() >= MAX_ENTRIES {
            seen.clear();
        }
        seen.insert(
            (tenant.to_string(), model.id),
            (model.clone(), Instant::now()),
        );
    }

    pub fn forget(&self, tenant: &str, id: ModelId) {
        self.seen
            .lock()
            .expect("models lock")
            .remove(&(tenant.to_string(), id));
    }
}
