//! Model artifacts as safetensors: named float32 (and u32) tensors plus string metadata, the
//! format PyTorch and NumPy load directly. Every artifact records `gpuq_algorithm`; each
//! algorithm decides its own tensors (see its module) and validates all of them when it loads
//! one: a file that is not a whole, consistent model is `model_corrupt`, never a panic.

use gpuq_shared::{Algorithm, ErrorCode, JobError};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::de::DeserializeOwned;
use std::collections::HashMap;

/// A tensor to write: name, shape and data.
pub enum Tensor<'a> {
    F32(&'a str, Vec<usize>, &'a [f32]),
    U32(&'a str, Vec<usize>, &'a [u32]),
}

/// Serialises `tensors` with `meta` (JSON-encoded values) and `gpuq_algorithm`.
pub fn write(algorithm: &str, tensors: &[Tensor], meta: &[(&str, serde_json::Value)]) -> Vec<u8> {
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|t| match t {
            Tensor::F32(name, shape, data) => (
                *name,
                TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(data))
                    .expect("shape matches data"),
            ),
            Tensor::U32(name, shape, data) => (
                *name,
                TensorView::new(Dtype::U32, shape.clone(), bytemuck::cast_slice(data))
                    .expect("shape matches data"),
            ),
        })
        .collect();
    let mut metadata: HashMap<String, String> = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    metadata.insert("format".into(), "pt".into());
    metadata.insert("gpuq_algorithm".into(), algorithm.into());
    safetensors::serialize(views, Some(metadata)).expect("serialising in-memory tensors")
}

pub fn corrupt(msg: impl std::fmt::Display) -> JobError {
    JobError::new(
        ErrorCode::ModelCorrupt,
        format!("the model artifact is not a valid gpuq model: {msg}"),
    )
}

/// A parsed artifact.
pub struct Artifact<'a> {
    tensors: SafeTensors<'a>,
    meta: HashMap<String, String>,
}

impl<'a> Artifact<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, JobError> {
        let tensors = SafeTensors::deserialize(bytes).map_err(corrupt)?;
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(corrupt)?;
        Ok(Self {
            tensors,
            meta: meta.metadata().clone().unwrap_or_default(),
        })
    }

    /// The `gpuq_algorithm` that wrote it (a file without one is not gpuq's).
    /// The algorithm the file says it holds, parsed at this boundary: missing or unknown is
    /// `model_corrupt`.
    pub fn algorithm(&self) -> Result<Algorithm, JobError> {
        self.meta
            .get("gpuq_algorithm")
            .ok_or_else(|| corrupt("no `gpuq_algorithm` in the metadata"))?
            .parse()
            .map_err(corrupt)
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.tensor(name).is_ok()
    }

    /// A metadata value (stored as JSON).
    pub fn meta<T: DeserializeOwned>(&self, key: &str) -> Result<T, JobError> {
        self.meta_opt(key)?
            .ok_or_else(|| corrupt(format!("no `{key}` in the metadata")))
    }

    /// A metadata value that may be absent; present, it must parse.
    pub fn meta_opt<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, JobError> {
        self.meta
            .get(key)
            .map(|raw| serde_json::from_str(raw).map_err(|e| corrupt(format!("`{key}`: {e}"))))
            .transpose()
    }

    pub fn shape(&self, name: &str) -> Result<Vec<usize>, JobError> {
        Ok(self.tensors.tensor(name).map_err(corrupt)?.shape().to_vec())
    }

    /// The (rows, columns) of a two-dimensional tensor.
    pub fn matrix_shape(&self, name: &str) -> Result<(usize, usize), JobError> {
        match self.shape(name)?[..] {
            [rows, cols] => Ok((rows, cols)),
            ref other => Err(corrupt(format!("{name} has shape {other:?}, not a matrix"))),
        }
    }

    fn raw(&self, name: &str, dtype: Dtype, shape: &[usize]) -> Result<&[u8], JobError> {
        let t = self.tensors.tensor(name).map_err(corrupt)?;
        if t.dtype() != dtype || t.shape() != shape {
            return Err(corrupt(format!(
                "{name} has {:?} {:?}, expected {dtype:?} {shape:?}",
                t.dtype(),
                t.shape()
            )));
        }
        Ok(t.data())
    }

    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, JobError> {
        Ok(self
            .raw(name, Dtype::F32, shape)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect())
    }

    pub fn u32(&self, name: &str, shape: &[usize]) -> Result<Vec<u32>, JobError> {
        Ok(self
            .raw(name, Dtype::U32, shape)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tensors_and_metadata_round_trip() {
        let w = [1.0f32, -2.0, 0.5, 3.0, 0.0, 1.5];
        let idx = [4u32, 7];
        let bytes = write(
            "knn",
            &[
                Tensor::F32("0.weight", vec![2, 3], &w),
                Tensor::U32("label_index", vec![2], &idx),
            ],
            &[("classes", json!([0.0, 7.5]))],
        );
        let a = Artifact::parse(&bytes).unwrap();
        assert_eq!(a.algorithm().unwrap(), Algorithm::Knn);
        assert_eq!(a.f32("0.weight", &[2, 3]).unwrap(), w);
        assert_eq!(a.u32("label_index", &[2]).unwrap(), idx);
        assert_eq!(a.meta::<Vec<f64>>("classes").unwrap(), vec![0.0, 7.5]);
        assert_eq!(
            a.f32("0.weight", &[3, 2]).unwrap_err().code,
            ErrorCode::ModelCorrupt
        );
        assert_eq!(
            a.meta::<u32>("k").unwrap_err().code,
            ErrorCode::ModelCorrupt
        );
        assert_eq!(a.meta_opt::<u32>("k").unwrap(), None);
        assert_eq!(
            a.meta_opt::<u32>("classes").unwrap_err().code,
            ErrorCode::ModelCorrupt
        );
        assert_eq!(a.matrix_shape("0.weight").unwrap(), (2, 3));
        assert_eq!(
            a.matrix_shape("label_index").unwrap_err().code,
            ErrorCode::ModelCorrupt
        );
    }

    #[test]
    fn garbage_is_model_corrupt_not_a_panic() {
        for bytes in [&b"not a model"[..], &[255; 16][..], &[]] {
            assert_eq!(
                Artifact::parse(bytes).err().unwrap().code,
                ErrorCode::ModelCorrupt
            );
        }
    }
}
