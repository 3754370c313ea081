//! Model files as a hostile tenant or a damaged object store could leave them: every one that
//! is not a whole, consistent gpuq model is refused as `model_corrupt` when it is loaded, before
//! anything reaches the GPU, and none panics. Each case is a valid model of its algorithm (the
//! baselines, which load and infer) with one thing wrong.

mod common;

use common::gpu;
use gpuq_shared::ErrorCode;
use gpuq_shared::dataset::from_rows;
use gpuq_worker::algorithms::{Control, LoadedModel};
use gpuq_worker::artifact::{Tensor, write};
use serde_json::{Value, json};

/// A tensor of the artifacts built here: float32 ones, or u32s all of one value.
enum T {
    F(&'static str, &'static [usize]),
    U(&'static str, &'static [usize], u32),
}

fn build(algorithm: &str, tensors: &[T], meta: &[(&str, Value)]) -> Vec<u8> {
    let len = |s: &[usize]| s.iter().product::<usize>();
    let ones: Vec<Vec<f32>> = tensors
        .iter()
        .map(|t| match t {
            T::F(_, s) => vec![1.0; len(s)],
            T::U(..) => vec![],
        })
        .collect();
    let ints: Vec<Vec<u32>> = tensors
        .iter()
        .map(|t| match t {
            T::U(_, s, v) => vec![*v; len(s)],
            T::F(..) => vec![],
        })
        .collect();
    let views: Vec<Tensor> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| match t {
            T::F(name, s) => Tensor::F32(name, s.to_vec(), &ones[i]),
            T::U(name, s, _) => Tensor::U32(name, s.to_vec(), &ints[i]),
        })
        .collect();
    write(algorithm, &views, meta)
}

/// `base` with `key` set to `value` (or removed, for `Value::Null`).
fn with(
    base: &[(&'static str, Value)],
    key: &'static str,
    value: Value,
) -> Vec<(&'static str, Value)> {
    let mut m: Vec<_> = base.iter().filter(|(k, _)| *k != key).cloned().collect();
    if !value.is_null() {
        m.push((key, value));
    }
    m
}

const MLP: &[T] = &[
    T::F("0.weight", &[3, 2]),
    T::F("0.bias", &[3]),
    T::F("2.weight", &[2, 3]),
    T::F("2.bias", &[2]),
];
const LOGREG: &[T] = &[T::F("0.weight", &[2, 2]), T::F("0.bias", &[2])];
const KNN: &[T] = &[T::F("references", &[4, 2]), T::U("label_index", &[4], 1)];
const NN_ANOMALY: &[T] = &[
    T::F("mean", &[2]),
    T::F("whitening", &[2, 2]),
    T::F("references", &[4, 2]),
];

fn classifier_meta(activation: &str, hidden: Value) -> Vec<(&'static str, Value)> {
    vec![
        ("feature_columns", json!(["a", "b"])),
        ("classes", json!([0.0, 1.0])),
        ("activation", json!(activation)),
        ("hidden", hidden),
    ]
}

fn mlp_meta() -> Vec<(&'static str, Value)> {
    let mut m = classifier_meta("relu", json!([3]));
    m.push(("input_mean", json!([0.0, 0.0])));
    m.push(("input_std", json!([1.0, 1.0])));
    m
}

fn knn_meta() -> Vec<(&'static str, Value)> {
    vec![
        ("feature_columns", json!(["a", "b"])),
        ("classes", json!([0.0, 1.0])),
        ("k", json!(3)),
        ("metric", json!("euclidean")),
    ]
}

fn anomaly_meta(method: &str) -> Vec<(&'static str, Value)> {
    vec![
        ("feature_columns", json!(["a", "b"])),
        ("method", json!(method)),
        ("z_threshold", json!(3.0)),
    ]
}

/// A valid model of every algorithm, each as its trainer writes it.
fn baselines() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "logreg",
            build("logreg", LOGREG, &classifier_meta("identity", json!([]))),
        ),
        ("mlp", build("mlp", MLP, &mlp_meta())),
        (
            "kmeans",
            build(
                "kmeans",
                &[T::F("centroids", &[3, 2])],
                &[("feature_columns", json!(["a", "b"]))],
            ),
        ),
        ("knn", build("knn", KNN, &knn_meta())),
        (
            "zscore",
            build(
                "anomaly",
                &[T::F("mean", &[2]), T::F("scale", &[2])],
                &anomaly_meta("zscore"),
            ),
        ),
        (
            "mahalanobis",
            build(
                "anomaly",
                &[T::F("mean", &[2]), T::F("whitening", &[2, 2])],
                &anomaly_meta("mahalanobis"),
            ),
        ),
        (
            "nearest_neighbor_mahalanobis",
            build(
                "anomaly",
                NN_ANOMALY,
                &anomaly_meta("nearest_neighbor_mahalanobis"),
            ),
        ),
    ]
}

/// A safetensors file with no metadata, and the logreg baseline without its `gpuq_algorithm`.
fn foreign_files() -> [Vec<u8>; 2] {
    let f32s = |shape: Vec<usize>, bytes: &'static [u8]| {
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, bytes).unwrap()
    };
    let no_metadata = safetensors::serialize([("x", f32s(vec![1], &[0; 4]))], None).unwrap();
    let meta = classifier_meta("identity", json!([]));
    let meta = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let weights = [
        ("0.weight", f32s(vec![2, 2], &[0; 16])),
        ("0.bias", f32s(vec![2], &[0; 8])),
    ];
    let unnamed = safetensors::serialize(weights, Some(meta)).unwrap();
    [no_metadata, unnamed]
}

/// Each baseline with one thing wrong.
#[rustfmt::skip]
fn hostile() -> Vec<(&'static str, Vec<u8>)> {
    use T::{F, U};
    let (lr, mlp, knn) = (classifier_meta("identity", json!([])), mlp_meta(), knn_meta());
    let nn = anomaly_meta("nearest_neighbor_mahalanobis");
    let two = [("feature_columns", json!(["a", "b"]))];
    let [no_metadata, unnamed] = foreign_files();
    vec![
        // Not a gpuq model at all.
        ("garbage", b"\xff\xff\xff\xff\xff\xff\xff\x7fnot safetensors".to_vec()),
        ("no metadata", no_metadata),
        ("no gpuq_algorithm", unnamed),
        ("an unknown algorithm", build("svm", LOGREG, &lr)),
        ("no feature columns",
            build("logreg", &[F("0.weight", &[2, 0]), F("0.bias", &[2])],
                &with(&lr, "feature_columns", json!([])))),
        // Classifiers.
        ("no classes",
            build("logreg", &[F("0.weight", &[0, 2]), F("0.bias", &[0])],
                &with(&lr, "classes", json!([])))),
        ("classes that are not numbers",
            build("logreg", LOGREG, &with(&lr, "classes", json!(["x", "y"])))),
        ("more classes than outputs",
            build("logreg", LOGREG, &with(&lr, "classes", json!([0, 1, 2])))),
        ("a layer with no outputs",
            build("logreg", &[F("0.weight", &[0, 2]), F("0.bias", &[0])], &lr)),
        ("a zero-width hidden layer",
            build("mlp", &[F("0.weight", &[0, 2]), F("0.bias", &[0]), F("2.weight", &[2, 0]),
                F("2.bias", &[2])], &with(&mlp, "hidden", json!([0])))),
        ("hidden widths the layers disagree with",
            build("mlp", MLP, &with(&mlp, "hidden", json!([4])))),
        ("an mlp without its hidden widths", build("mlp", MLP, &with(&mlp, "hidden", Value::Null))),
        ("an mlp without its activation",
            build("mlp", MLP, &with(&mlp, "activation", Value::Null))),
        ("an unknown activation", build("mlp", MLP, &with(&mlp, "activation", json!("gelu")))),
        ("a logreg with a hidden layer",
            build("logreg", MLP, &with(&mlp, "activation", json!("identity")))),
        ("weights wider than the feature columns",
            build("logreg", &[F("0.weight", &[2, 3]), F("0.bias", &[2])], &lr)),
        ("a weight of three dimensions",
            build("logreg", &[F("0.weight", &[2, 2, 1]), F("0.bias", &[2])], &lr)),
        ("a bias that does not fit its layer",
            build("mlp", &[F("0.weight", &[3, 2]), F("0.bias", &[4]), F("2.weight", &[2, 3]),
                F("2.bias", &[2])], &mlp)),
        ("input_mean of the wrong length",
            build("mlp", MLP, &with(&mlp, "input_mean", json!([0.0])))),
        ("input_mean without input_std", build("mlp", MLP, &with(&mlp, "input_std", Value::Null))),
        // k-means.
        ("no centroids", build("kmeans", &[F("centroids", &[0, 2])], &two)),
        ("centroids narrower than the feature columns",
            build("kmeans", &[F("centroids", &[3, 1])], &two)),
        ("centroids as one vector", build("kmeans", &[F("centroids", &[6])], &two)),
        // k nearest neighbours.
        ("knn label index past its classes",
            build("knn", &[F("references", &[4, 2]), U("label_index", &[4], 5)], &knn)),
        ("knn with no classes", build("knn", KNN, &with(&knn, "classes", json!([])))),
        ("knn label index shorter than the references",
            build("knn", &[F("references", &[4, 2]), U("label_index", &[3], 0)], &knn)),
        ("knn references narrower than the feature columns",
            build("knn", &[F("references", &[4, 1]), U("label_index", &[4], 0)], &knn)),
        ("knn with no references",
            build("knn", &[F("references", &[0, 2]), U("label_index", &[0], 0)], &knn)),
        ("knn with k = 0", build("knn", KNN, &with(&knn, "k", json!(0)))),
        ("knn with k past 1024", build("knn", KNN, &with(&knn, "k", json!(5000)))),
        ("knn with an unknown metric",
            build("knn", KNN, &with(&knn, "metric", json!("chebyshev")))),
        // Anomaly detectors.
        ("anomaly with an unknown method",
            build("anomaly", &[F("mean", &[2])], &anomaly_meta("bogus"))),
        ("a mean of the wrong length",
            build("anomaly", &[F("mean", &[3]), F("scale", &[2])], &anomaly_meta("zscore"))),
        ("zscore without its scale", build("anomaly", &[F("mean", &[2])], &anomaly_meta("zscore"))),
        ("a whitening wider than the features",
            build("anomaly", &[F("mean", &[2]), F("whitening", &[2, 3]), F("references", &[4, 3])],
                &nn)),
        ("a whitening of more rows than features",
            build("anomaly", &[F("mean", &[2]), F("whitening", &[3, 2]), F("references", &[4, 2])],
                &nn)),
        ("references narrower than the whitening",
            build("anomaly", &[F("mean", &[2]), F("whitening", &[2, 2]), F("references", &[4, 1])],
                &nn)),
        ("a nearest-neighbour detector without references",
            build("anomaly", &[F("mean", &[2]), F("whitening", &[2, 2])], &nn)),
        ("no reference samples",
            build("anomaly", &[F("mean", &[2]), F("whitening", &[2, 2]), F("references", &[0, 2])],
                &nn)),
    ]
}

#[test]
fn a_valid_model_of_every_algorithm_loads_and_infers() {
    let probe = from_rows(&[vec![0.5, 0.5]], None).unwrap();
    for (what, bytes) in baselines() {
        let model = LoadedModel::load(gpu(), &bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
        let out = model.infer(gpu(), &probe, true, &Control::default());
        assert_eq!(out.unwrap_or_else(|e| panic!("{what}: {e}")).rows.len(), 1);
    }
}

#[test]
fn hostile_artifacts_are_refused_as_model_corrupt_and_never_panic() {
    let probe = from_rows(&[vec![0.5, 0.5]], None).unwrap();
    let mut loaded = Vec::new();
    for (what, bytes) in hostile() {
        // Loading may only fail as `model_corrupt`; a model that loads must infer without panic.
        let result = std::panic::catch_unwind(|| match LoadedModel::load(gpu(), &bytes) {
            Err(e) => (e.code == ErrorCode::ModelCorrupt)
                .then_some(())
                .ok_or(format!("{e}")),
            Ok(model) => {
                let out = model.infer(gpu(), &probe, true, &Control::default());
                Err(format!("loaded; inference gave {:?}", out.map(|i| i.rows)))
            }
        });
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => loaded.push(format!("{what}: {e}")),
            Err(_) => loaded.push(format!("{what}: panicked")),
        }
    }
    assert!(
        loaded.is_empty(),
        "not refused as model_corrupt:\n{}",
        loaded.join("\n")
    );
}

#[test]
fn models_past_one_binding_are_refused_by_size_before_any_upload() {
    // Bindings of 8 floats: every model below holds a 16-float tensor.
    let mut small = gpuq_worker::gpu::Gpu::new().unwrap();
    small.cap_bindings(32);
    let wide = classifier_meta("identity", json!([]));
    let cases = [
        (
            "logreg",
            build(
                "logreg",
                &[T::F("0.weight", &[8, 2]), T::F("0.bias", &[8])],
                &with(&wide, "classes", json!([0, 1, 2, 3, 4, 5, 6, 7])),
            ),
        ),
        (
            "kmeans",
            build(
                "kmeans",
                &[T::F("centroids", &[8, 2])],
                &[("feature_columns", json!(["a", "b"]))],
            ),
        ),
        (
            "knn",
            build(
                "knn",
                &[T::F("references", &[8, 2]), T::U("label_index", &[8], 0)],
                &knn_meta(),
            ),
        ),
        (
            "anomaly",
            build(
                "anomaly",
                &[
                    T::F("mean", &[2]),
                    T::F("whitening", &[2, 2]),
                    T::F("references", &[8, 2]),
                ],
                &anomaly_meta("nearest_neighbor_mahalanobis"),
            ),
        ),
    ];
    for (what, bytes) in cases {
        let e = LoadedModel::load(&small, &bytes).err();
        assert_eq!(e.map(|e| e.code), Some(ErrorCode::InputTooLarge), "{what}");
    }
}
