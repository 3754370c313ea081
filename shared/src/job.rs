//! What a job is, typed: the work it does (train an algorithm with its typed params, or infer
//! with a model) and the input it reads. The API parses a submission into a [`JobSpec`] once;
//! the worker gets the same typed spec back from the job's row ([`JobSpec::from_stored`]).

use crate::domain::{Algorithm, JobType, ModelId, S3Uri};
use crate::error::{ErrorCode, JobError};
use crate::params::{InferParams, TrainParams};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Where a job's rows come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Input {
    /// A CSV or `.npy` object, read inside what the job's tenant may read.
    S3 { uri: S3Uri },
    /// Rows sent in the submit body, and for supervised training their labels.
    Inline {
        rows: Vec<Vec<f64>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        labels: Option<Vec<f64>>,
    },
}

impl Input {
    pub fn uri(&self) -> Option<&S3Uri> {
        match self {
            Input::S3 { uri } => Some(uri),
            Input::Inline { .. } => None,
        }
    }

    /// Inline rows' count and width.
    pub fn inline_shape(&self) -> Option<(usize, usize)> {
        match self {
            Input::S3 { .. } => None,
            Input::Inline { rows, .. } => Some((rows.len(), rows.first().map_or(0, Vec::len))),
        }
    }

    /// What a list shows of an input: the uri, or the inline rows' shape (never the rows).
    pub fn summary(&self) -> Value {
        match self {
            Input::S3 { uri } => json!({ "uri": uri }),
            Input::Inline { rows, labels } => json!({
                "inline": {
                    "rows": rows.len(),
                    "width": rows.first().map_or(0, Vec::len),
                    "labels": labels.is_some(),
                }
            }),
        }
    }
}

/// What a job does.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// Train a model; the params say which algorithm.
    Train(TrainParams),
    /// Run a model over the input.
    Infer {
        model_id: ModelId,
        params: InferParams,
    },
}

/// A job's work and input, typed.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    pub work: Work,
    pub input: Input,
}

/// Inline inputs up to this many rows get inline results only (no S3 object).
pub const INLINE_ONLY_ROWS: usize = 1000;

/// The most values (rows × width) an inline infer job may have to run in a batch. A worker holds
/// up to its prefetch of batch jobs at once (1,024 by default) outside its memory budget, which
/// only jobs run alone reserve from, so each must be small: 4,096 values is about 160 KB as
/// parsed JSON, 160 MB for a full prefetch. A verification is one row of a few dozen.
pub const BATCH_VALUES: usize = 4096;

impl JobSpec {
    /// Small inline inference: a worker runs it in one forward pass with the other such jobs of
    /// its model that it has in hand, and writes no object for it. Larger inline inference runs
    /// alone, within the worker's memory budget.
    pub fn batchable(&self) -> bool {
        matches!(self.work, Work::Infer { .. })
            && matches!(&self.input, Input::Inline { rows, .. }
                if rows.len() <= INLINE_ONLY_ROWS
                    && rows.iter().map(Vec::len).sum::<usize>() <= BATCH_VALUES)
    }

    pub fn job_type(&self) -> JobType {
        match self.work {
            Work::Train(_) => JobType::Train,
            Work::Infer { .. } => JobType::Infer,
        }
    }

    /// The recorded params: every training parameter with its default filled in, or the
    /// inference label column.
    pub fn params_json(&self) -> Value {
        match &self.work {
            Work::Train(p) => p.to_json(),
            Work::Infer { params, .. } => params.to_json(),
        }
    }

    /// The spec of a stored job, from its row's columns. The API wrote them, so a failure here
    /// means a row that did not come through it: the job fails `invalid_params` or
    /// `invalid_input`, never runs with a guess.
    pub fn from_stored(
        job_type: JobType,
        algorithm: Algorithm,
        model_id: Option<ModelId>,
        params: &Value,
        input: &Value,
    ) -> Result<Self, JobError> {
        let invalid =
            |e: crate::params::ParamError| JobError::new(ErrorCode::InvalidParams, e.to_string());
        let work = match (job_type, model_id) {
            (JobType::Train, _) => {
                Work::Train(TrainParams::parse(algorithm, params).map_err(invalid)?)
            }
            (JobType::Infer, Some(model_id)) => Work::Infer {
                model_id,
                params: InferParams::parse(params).map_err(invalid)?,
            },
            (JobType::Infer, None) => {
                return Err(JobError::new(
                    ErrorCode::InvalidParams,
                    "an infer job without a model_id",
                ));
            }
        };
        let input = Input::deserialize(input)
            .map_err(|e| JobError::invalid_input(format!("the recorded input: {e}")))?;
        Ok(Self { work, input })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_round_trip_through_their_stored_form() {
        for stored in [
            json!({"uri": "s3://bucket/a.csv"}),
            json!({"rows": [[1.0, 2.0]], "labels": [0.0]}),
            json!({"rows": [[1.0, 2.0]]}),
        ] {
            let input = Input::deserialize(&stored).unwrap();
            assert_eq!(serde_json::to_value(&input).unwrap(), stored);
        }
        assert!(Input::deserialize(&json!({"uri": "http://x/y"})).is_err());
        assert!(Input::deserialize(&json!({"rows": [[1]], "extra": 1})).is_err());
    }

    #[test]
    fn a_stored_row_that_does_not_parse_is_an_error_not_a_default() {
        let input = json!({"uri": "s3://bucket/a.csv"});
        let e = JobSpec::from_stored(
            JobType::Train,
            Algorithm::Mlp,
            None,
            &json!({"activation": "sigmoid"}),
            &input,
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParams);
        let e = JobSpec::from_stored(JobType::Infer, Algorithm::Knn, None, &json!({}), &input)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParams);
        let spec =
            JobSpec::from_stored(JobType::Train, Algorithm::Knn, None, &json!({}), &input).unwrap();
        assert_eq!(spec.job_type(), JobType::Train);
        assert!(matches!(spec.work, Work::Train(TrainParams::Knn(_))));
    }

    #[test]
    fn only_small_inline_inference_is_batchable() {
        let infer = |rows: usize, width: usize| JobSpec {
            work: Work::Infer {
                model_id: crate::domain::ModelId::new(),
                params: Default::default(),
            },
            input: Input::Inline {
                rows: vec![vec![0.5; width]; rows],
                labels: None,
            },
        };
        assert!(infer(1, 64).batchable());
        assert!(infer(64, 64).batchable(), "4,096 values");
        assert!(!infer(65, 64).batchable(), "4,160 values run alone");
        assert!(!infer(1001, 1).batchable(), "over INLINE_ONLY_ROWS");
        let s3 = JobSpec {
            input: Input::S3 {
                uri: "s3://bucket/a.csv".parse().unwrap(),
            },
            ..infer(1, 1)
        };
        assert!(!s3.batchable());
    }

    #[test]
    fn a_list_summary_never_carries_the_rows() {
        let input = Input::Inline {
            rows: vec![vec![1.0; 3]; 1000],
            labels: None,
        };
        let summary = input.summary().to_string();
        assert!(summary.len() < 100, "{summary}");
        assert_eq!(input.summary()["inline"]["rows"], 1000);
    }
}
