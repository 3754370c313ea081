//! An inference's CSV, streamed to S3 as the model produces it: the GPU thread sends chunks over
//! a bounded channel and this side uploads them in parts, so neither the whole CSV nor more than
//! a part and a few chunks of it is ever held in memory.

use super::models::CachedModel;
use super::{WorkerContext, blocking};
use crate::algorithms::{Control, CsvOut, Inference, Scope};
use gpuq_shared::dataset::Table;
use gpuq_shared::memory::Reservation;
use gpuq_shared::{JobError, S3Uri};
use std::sync::Arc;

/// The size of the chunks the GPU thread hands over, and how many may wait for the uploader.
const CHUNK_BYTES: usize = 256 * 1024;
const CHUNKS_WAITING: usize = 4;

impl WorkerContext {
    /// Runs `model` over the input on a blocking thread (which keeps the input's reservation
    /// until it is done with the table), writing the CSV to `uri` when there is one; on any
    /// failure the partial upload is aborted.
    pub(super) async fn run_inference(
        &self,
        model: Arc<CachedModel>,
        scope: Scope,
        (table, memory): (Table, Reservation),
        rows_json: bool,
        ctl: &Arc<Control>,
        uri: Option<&S3Uri>,
    ) -> Result<Inference, JobError> {
        let (gpu, c) = (self.gpu.clone(), ctl.clone());
        let Some(uri) = uri else {
            return blocking(move || {
                let _memory = memory;
                model
                    .model
                    .infer_scoped(&gpu, &table, scope, rows_json, &c, CsvOut::discard())
            })
            .await;
        };
        let (csv, mut chunks) = CsvOut::channel(CHUNK_BYTES, CHUNKS_WAITING);
        let produced = blocking(move || {
            let _memory = memory;
            let mut inference = model
                .model
                .infer_scoped(&gpu, &table, scope, rows_json, &c, csv)?;
            inference.csv.finish()?;
            Ok(inference)
        });
        let mut writer = self.storage.writer(uri, "text/csv", self.output_part_bytes);
        let sink = &mut writer;
        // Owns the receiver: when an upload fails, dropping it stops the producer at once.
        let uploaded = async move {
            while let Some(chunk) = chunks.recv().await {
                sink.write(&chunk).await?;
            }
            Ok::<_, JobError>(())
        };
        match tokio::join!(produced, uploaded) {
            (Ok(inference), Ok(())) => {
                let parts = writer.finish().await?;
                tracing::debug!(%uri, parts, "output written");
                Ok(inference)
            }
            (_, Err(e)) | (Err(e), Ok(())) => {
                writer.abort().await;
                Err(e)
            }
        }
    }
}
