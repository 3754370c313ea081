//! Model artifacts as safetensors: `0.weight` (classes × features, float32) and `0.bias`, the
//! keys of `torch.nn.Sequential(torch.nn.Linear(features, classes))`. Metadata (strings, as
//! the format requires) records the algorithm, the class labels and the feature columns.

use crate::algorithms::logreg::LogregModel;
use gpuq_shared::JobError;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;

pub fn logreg_to_bytes(m: &LogregModel) -> Vec<u8> {
    let (k, f) = (m.n_classes(), m.n_features());
    let w: &[u8] = bytemuck::cast_slice(&m.weight);
    let b: &[u8] = bytemuck::cast_slice(&m.bias);
    let tensors = [
        (
            "0.weight",
            TensorView::new(Dtype::F32, vec![k, f], w).expect("shape matches data"),
        ),
        (
            "0.bias",
            TensorView::new(Dtype::F32, vec![k], b).expect("shape matches data"),
        ),
    ];
    let meta = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("gpuq_algorithm".to_string(), "logreg".to_string()),
        (
            "classes".to_string(),
            serde_json::to_string(&m.classes).expect("json"),
        ),
        (
            "feature_columns".to_string(),
            serde_json::to_string(&m.feature_columns).expect("json"),
        ),
    ]);
    safetensors::serialize(tensors, Some(meta)).expect("serialising in-memory tensors")
}

fn corrupt(msg: impl std::fmt::Display) -> JobError {
    JobError::fatal(
        "model_corrupt",
        format!("the model artifact is unreadable: {msg}"),
    )
}

pub fn logreg_from_bytes(bytes: &[u8]) -> Result<LogregModel, JobError> {
    let st = SafeTensors::deserialize(bytes).map_err(corrupt)?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(corrupt)?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let classes: Vec<f64> =
        serde_json::from_str(meta.get("classes").ok_or_else(|| corrupt("no classes"))?)
            .map_err(corrupt)?;
    let feature_columns: Vec<String> = serde_json::from_str(
        meta.get("feature_columns")
            .ok_or_else(|| corrupt("no feature_columns"))?,
    )
    .map_err(corrupt)?;
    let read = |name: &str, shape: &[usize]| -> Result<Vec<f32>, JobError> {
        let t = st.tensor(name).map_err(corrupt)?;
        if t.dtype() != Dtype::F32 || t.shape() != shape {
            return Err(corrupt(format!(
                "{name} has {:?} {:?}, expected F32 {shape:?}",
                t.dtype(),
                t.shape()
            )));
        }
        Ok(t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect())
    };
    let (k, f) = (classes.len(), feature_columns.len());
    Ok(LogregModel {
        weight: read("0.weight", &[k, f])?,
        bias: read("0.bias", &[k])?,
        classes,
        feature_columns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logreg_model_round_trips_through_safetensors() {
        let m = LogregModel {
            weight: vec![1.0, -2.0, 0.5, 3.0, 0.0, 1.5],
            bias: vec![0.25, -0.25],
            classes: vec![0.0, 7.0],
            feature_columns: vec!["a".into(), "b".into(), "c".into()],
        };
        let bytes = logreg_to_bytes(&m);
        assert_eq!(logreg_from_bytes(&bytes).unwrap(), m);
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("0.weight").unwrap().shape(), &[2, 3]);
    }

    #[test]
    fn garbage_is_model_corrupt_not_a_panic() {
        assert_eq!(
            logreg_from_bytes(b"not a model").unwrap_err().code,
            "model_corrupt"
        );
        assert_eq!(
            logreg_from_bytes(&[255; 16]).unwrap_err().code,
            "model_corrupt"
        );
    }
}
