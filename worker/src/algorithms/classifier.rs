//! A trained classifier — logistic regression or a multilayer perceptron — as a stack of dense
//! layers, its safetensors form, and its inference on the GPU.
//!
//! The artifact holds `0.weight`, `0.bias`, `2.weight`, … (out × in, float32): the keys of
//! `torch.nn.Sequential(Linear, ReLU|Tanh, Linear, …)`, so `load_state_dict` takes it as is.
//! Metadata (JSON values): `classes` (the label of each output), `feature_columns`,
//! `activation`, and `input_mean`/`input_std` when inputs must be scaled as
//! `(x - input_mean) / input_std` before the first layer.

use super::features::scale;
use super::pacing::paced;
use super::{Control, CsvOut, Inference, accuracy_summary, gpu_lost, label_text};
use crate::artifact::{self, Artifact, Tensor};
use crate::gpu::Gpu;
use crate::gpu::gemm::GemmParams;
use crate::gpu::kernels::{Activation, Kernel, SoftmaxMode, SoftmaxParams};
use gpuq_shared::dataset::{Matrix, Table};
use gpuq_shared::{Algorithm, JobError};
use serde_json::{Value, json};

/// One `Linear(in, out)`: `weight` is out × in, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub inputs: usize,
    pub outputs: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierModel {
    /// `gpuq_algorithm`: `logreg` or `mlp`.
    pub algorithm: Algorithm,
    pub layers: Vec<Dense>,
    /// Between hidden layers (none after the last).
    pub activation: Activation,
    /// Input scaling `(x - mean) / std`, when the model needs it.
    pub input_scaling: Option<(Vec<f32>, Vec<f32>)>,
    /// The label value of each output.
    pub classes: Vec<f64>,
    pub feature_columns: Vec<String>,
}

pub fn activation_name(a: Activation) -> &'static str {
    match a {
        Activation::Relu => "relu",
        Activation::Tanh => "tanh",
        Activation::Identity => "identity",
    }
}

pub fn activation_from_name(name: &str) -> Option<Activation> {
    match name {
        "relu" => Some(Activation::Relu),
        "tanh" => Some(Activation::Tanh),
        "identity" => Some(Activation::Identity),
        _ => None,
    }
}

impl ClassifierModel {
    pub fn n_features(&self) -> usize {
        self.feature_columns.len()
    }
    pub fn n_classes(&self) -> usize {
        self.classes.len()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let names: Vec<(String, String)> = (0..self.layers.len())
            .map(|l| (format!("{}.weight", 2 * l), format!("{}.bias", 2 * l)))
            .collect();
        let mut tensors = Vec::new();
        for (layer, (w, b)) in self.layers.iter().zip(&names) {
            tensors.push(Tensor::F32(
                w,
                vec![layer.outputs, layer.inputs],
                &layer.weight,
            ));
            tensors.push(Tensor::F32(b, vec![layer.outputs], &layer.bias));
        }
        let hidden: Vec<usize> = self.layers[..self.layers.len() - 1]
            .iter()
            .map(|l| l.outputs)
            .collect();
        let mut meta = vec![
            ("classes", json!(self.classes)),
            ("feature_columns", json!(self.feature_columns)),
            ("activation", json!(activation_name(self.activation))),
            ("hidden", json!(hidden)),
        ];
        if let Some((mean, std)) = &self.input_scaling {
            meta.push(("input_mean", json!(mean)));
            meta.push(("input_std", json!(std)));
        }
        artifact::write(self.algorithm.as_str(), &tensors, &meta)
    }

    /// Reads and validates a classifier: at least one class, layers that chain from the
    /// features to one output per class with none of zero width, the hidden widths and the
    /// input scaling its metadata records; a logreg is a single layer.
    pub fn from_artifact(a: &Artifact) -> Result<Self, JobError> {
        let algorithm = match a.algorithm()? {
            a @ (Algorithm::Mlp | Algorithm::Logreg) => a,
            other => return Err(artifact::corrupt(format!("`{other}` is not a classifier"))),
        };
        let classes: Vec<f64> = a.meta("classes")?;
        if classes.is_empty() {
            return Err(artifact::corrupt("it names no classes"));
        }
        let feature_columns: Vec<String> = a.meta("feature_columns")?;
        let activation = match a.meta_opt::<String>("activation")? {
            Some(name) => activation_from_name(&name)
                .ok_or_else(|| artifact::corrupt(format!("unknown activation {name}")))?,
            // Logistic regression has no hidden layer for one to apply to.
            None if algorithm == Algorithm::Logreg => Activation::Identity,
            None => return Err(artifact::corrupt("no `activation` in the metadata")),
        };
        let mut layers: Vec<Dense> = Vec::new();
        let mut inputs = feature_columns.len();
        while a.has(&format!("{}.weight", 2 * layers.len())) {
            let l = 2 * layers.len();
            let (outputs, _) = a.matrix_shape(&format!("{l}.weight"))?;
            if outputs == 0 {
                return Err(artifact::corrupt(format!("layer {l} has no outputs")));
            }
            layers.push(Dense {
                weight: a.f32(&format!("{l}.weight"), &[outputs, inputs])?,
                bias: a.f32(&format!("{l}.bias"), &[outputs])?,
                inputs,
                outputs,
            });
            inputs = outputs;
        }
        if layers.is_empty() || inputs != classes.len() {
            return Err(artifact::corrupt(
                "the layers do not end in one output per class",
            ));
        }
        let hidden: Vec<usize> = layers[..layers.len() - 1]
            .iter()
            .map(|l| l.outputs)
            .collect();
        match a.meta_opt::<Vec<usize>>("hidden")? {
            Some(recorded) if recorded != hidden => {
                return Err(artifact::corrupt(format!(
                    "the hidden layers are {hidden:?} wide; the metadata says {recorded:?}"
                )));
            }
            None if algorithm == Algorithm::Mlp => {
                return Err(artifact::corrupt("no `hidden` in the metadata"));
            }
            _ => {}
        }
        if algorithm == Algorithm::Logreg && layers.len() != 1 {
            return Err(artifact::corrupt(
                "a logistic regression is one layer; this has hidden layers",
            ));
        }
        let input_scaling = match (
            a.meta_opt::<Vec<f32>>("input_mean")?,
            a.meta_opt::<Vec<f32>>("input_std")?,
        ) {
            (Some(m), Some(s)) if m.len() == feature_columns.len() && s.len() == m.len() => {
                Some((m, s))
            }
            (None, None) => None,
            _ => {
                return Err(artifact::corrupt(
                    "input_mean/input_std do not fit the features",
                ));
            }
        };
        Ok(Self {
            algorithm,
            layers,
            activation,
            input_scaling,
            classes,
            feature_columns,
        })
    }
}

/// One dense layer's weights on the GPU and its shape, as the forward pass sees it.
pub struct GpuDense<'a> {
    pub w: &'a wgpu::Buffer,
    pub b: &'a wgpu::Buffer,
    pub inputs: usize,
    pub outputs: usize,
}

/// Rows per forward pass so that a `widest`-column activation fits one binding.
fn forward_chunk(gpu: &Gpu, widest: usize, n: usize) -> usize {
    n.min(gpu.max_binding_bytes() as usize / (4 * widest.max(1)))
        .clamp(1, 1 << 16)
}

/// Multiply-adds of one row's forward pass.
fn forward_work(layers: &[GpuDense]) -> usize {
    layers.iter().map(|l| l.inputs * l.outputs).sum()
}

/// Encodes `acts[l] = act(acts[l-1] · Wₗᵀ + bₗ)` for every layer over `rows` rows of `x`
/// starting at element `x_off` (no activation after the last layer: it leaves logits).
/// Returns the uniforms, which must live until the encoder is submitted.
#[allow(clippy::too_many_arguments)]
pub fn encode_layers(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    layers: &[GpuDense],
    activation: Activation,
    x: &wgpu::Buffer,
    x_off: usize,
    acts: &[wgpu::Buffer],
    rows: usize,
) -> Vec<wgpu::Buffer> {
    let gemm = Kernel::gemm(gpu);
    let last = layers.len() - 1;
    let mut uniforms = Vec::with_capacity(layers.len());
    for (l, layer) in layers.iter().enumerate() {
        let act = if l == last {
            Activation::Identity
        } else {
            activation
        };
        let mut p = GemmParams::new(rows, layer.outputs, layer.inputs, false, true)
            .with_epilogue(true, act);
        if l == 0 {
            p.a_off = x_off as u32;
        }
        let u = gpu.uniform(&p);
        let input = if l == 0 { x } else { &acts[l - 1] };
        gemm.encode(
            enc,
            &gemm.bind(gpu, &[input, layer.w, &acts[l], &u, layer.b]),
            p.groups(),
        );
        uniforms.push(u);
    }
    uniforms
}

/// Forward passes over a whole matrix in chunks, leaving each row's loss and correctness.
pub struct Evaluator {
    chunk: usize,
    acts: Vec<wgpu::Buffer>,
}

impl Evaluator {
    pub fn new(gpu: &Gpu, layers: &[GpuDense], n: usize) -> Self {
        let widest = layers.iter().map(|l| l.outputs).max().unwrap_or(1);
        let chunk = forward_chunk(gpu, widest, n);
        let acts = layers
            .iter()
            .map(|l| gpu.zeros("eval activations", chunk * l.outputs))
            .collect();
        Self { chunk, acts }
    }

    /// Mean cross-entropy and accuracy over the `n` rows of `x` with labels `y`.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        gpu: &Gpu,
        layers: &[GpuDense],
        activation: Activation,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        n: usize,
        ctl: &Control,
    ) -> Result<(f64, f64), JobError> {
        let loss = gpu.zeros("eval loss", n);
        let correct = gpu.zeros("eval correct", n);
        let softmax = Kernel::softmax(gpu);
        let (f, k) = (layers[0].inputs, layers[layers.len() - 1].outputs);
        let logits = &self.acts[layers.len() - 1];
        paced(n, forward_work(layers), self.chunk, ctl, |off, rows| {
            let mut enc = gpu.encoder();
            let mut keep = encode_layers(
                gpu,
                &mut enc,
                layers,
                activation,
                x,
                off * f,
                &self.acts,
                rows,
            );
            let sp = SoftmaxParams::new(rows, k, off, SoftmaxMode::Evaluate);
            let u = gpu.uniform(&sp);
            softmax.encode(
                &mut enc,
                &softmax.bind(gpu, &[logits, y, &loss, &correct, &u]),
                sp.groups(),
            );
            keep.push(u);
            gpu.submit(enc);
            gpu.wait();
            Ok(())
        })?;
        let loss = gpu.read(&loss, n).map_err(gpu_lost)?;
        let correct = gpu.read(&correct, n).map_err(gpu_lost)?;
        let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / n.max(1) as f64;
        Ok((mean(&loss), mean(&correct)))
    }
}

/// A classifier's layers resident on the GPU, ready for repeated inference.
pub struct GpuClassifier {
    pub model: ClassifierModel,
    weights: Vec<(wgpu::Buffer, wgpu::Buffer)>,
    /// Placeholders for the softmax's label, loss and correctness bindings.
    unused_labels: wgpu::Buffer,
    unused: wgpu::Buffer,
}

impl GpuClassifier {
    /// Bytes held: the weights on the device and their copy on the host.
    pub fn bytes(&self) -> u64 {
        let device: u64 = self.weights.iter().map(|(w, b)| w.size() + b.size()).sum();
        let host: usize = self
            .model
            .layers
            .iter()
            .map(|l| l.weight.len() + l.bias.len())
            .sum();
        let scaling = self
            .model
            .input_scaling
            .as_ref()
            .map_or(0, |(m, s)| m.len() + s.len());
        device + (host + scaling) as u64 * 4 + self.unused.size() + self.unused_labels.size()
    }

    pub fn upload(gpu: &Gpu, model: ClassifierModel) -> Self {
        let weights = model
            .layers
            .iter()
            .map(|l| (gpu.upload("weight", &l.weight), gpu.upload("bias", &l.bias)))
            .collect();
        Self {
            model,
            weights,
            unused_labels: gpu.upload::<u32>("labels", &[]),
            unused: gpu.zeros("unused", 1),
        }
    }

    /// Class probabilities, `rows × classes`, for raw feature rows of the model's width.
    fn predict(&self, gpu: &Gpu, x: &Matrix, ctl: &Control) -> Result<Vec<f32>, JobError> {
        let (n, f, k) = (x.rows, self.model.n_features(), self.model.n_classes());
        let layers: Vec<GpuDense> = self
            .model
            .layers
            .iter()
            .zip(&self.weights)
            .map(|(l, (w, b))| GpuDense {
                w,
                b,
                inputs: l.inputs,
                outputs: l.outputs,
            })
            .collect();
        let widest = layers
            .iter()
            .map(|l| l.outputs.max(l.inputs))
            .max()
            .unwrap_or(1);
        let chunk = forward_chunk(gpu, widest, n);
        let acts: Vec<wgpu::Buffer> = layers
            .iter()
            .map(|l| gpu.zeros("activations", chunk * l.outputs))
            .collect();
        let logits = &acts[layers.len() - 1];
        let softmax = Kernel::softmax(gpu);
        let mut out = Vec::with_capacity(n * k);
        paced(n, forward_work(&layers), chunk, ctl, |off, rows| {
            let mut slice = x.data[off * f..(off + rows) * f].to_vec();
            if let Some((mean, std)) = &self.model.input_scaling {
                scale(&mut slice, mean, std);
            }
            let x_buf = gpu.upload("features", &slice);
            let mut enc = gpu.encoder();
            let mut keep = encode_layers(
                gpu,
                &mut enc,
                &layers,
                self.model.activation,
                &x_buf,
                0,
                &acts,
                rows,
            );
            let soft = SoftmaxParams::new(rows, k, 0, SoftmaxMode::Probabilities);
            let u = gpu.uniform(&soft);
            softmax.encode(
                &mut enc,
                &softmax.bind(
                    gpu,
                    &[logits, &self.unused_labels, &self.unused, &self.unused, &u],
                ),
                soft.groups(),
            );
            keep.push(u);
            gpu.submit(enc);
            out.extend(gpu.read(logits, rows * k).map_err(gpu_lost)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// `label,p0..p{k-1}` per row; with labels in the input, accuracy in the summary.
    pub fn infer(
        &self,
        gpu: &Gpu,
        table: &Table,
        rows_json: bool,
        ctl: &Control,
        csv: CsvOut,
    ) -> Result<Inference, JobError> {
        let probs = self.predict(gpu, &table.features, ctl)?;
        self.inference(table, &probs, rows_json, ctl, csv)
    }

    /// Each table's inference (rows as JSON, CSV discarded) from one forward pass over all of
    /// their rows: a batch of small jobs costs one upload, one dispatch chain and one readback.
    pub fn infer_many(
        &self,
        gpu: &Gpu,
        tables: &[&Table],
        ctl: &Control,
    ) -> Result<Vec<Inference>, JobError> {
        let f = self.model.n_features();
        let rows: usize = tables.iter().map(|t| t.features.rows).sum();
        let mut data = Vec::with_capacity(rows * f);
        for t in tables {
            data.extend_from_slice(&t.features.data);
        }
        let all = Matrix {
            rows,
            cols: f,
            data,
            columns: Vec::new(),
        };
        let probs = self.predict(gpu, &all, ctl)?;
        let k = self.model.n_classes();
        let mut at = 0;
        tables
            .iter()
            .map(|t| {
                let mine = &probs[at * k..(at + t.features.rows) * k];
                at += t.features.rows;
                self.inference(t, mine, true, ctl, CsvOut::discard())
            })
            .collect()
    }

    /// The inference of `table` from its class probabilities (`rows × classes`).
    fn inference(
        &self,
        table: &Table,
        probs: &[f32],
        rows_json: bool,
        ctl: &Control,
        csv: CsvOut,
    ) -> Result<Inference, JobError> {
        let k = self.model.n_classes();
        let classes = &self.model.classes;
        let labels: Vec<f64> = probs.chunks(k).map(|p| classes[argmax(p)]).collect();
        let mut columns = vec!["label".to_string()];
        columns.extend((0..k).map(|c| format!("p{c}")));
        let mut inf = Inference::new(columns, csv);
        for (l, p) in labels.iter().zip(probs.chunks(k)) {
            ctl.check()?;
            let mut cells = vec![label_text(*l)];
            cells.extend(p.iter().map(|v| v.to_string()));
            inf.push_csv(&cells)?;
            if rows_json {
                inf.rows.push(json!({ "label": l, "p": p }));
            }
        }
        inf.summary.insert("classes".into(), json!(classes));
        if let Some(truth) = &table.labels {
            inf.summary.extend(accuracy_summary(&labels, truth));
        }
        Ok(inf)
    }
}

pub fn argmax(p: &[f32]) -> usize {
    p.iter()
        .enumerate()
        .fold(0, |best, (i, &v)| if v > p[best] { i } else { best })
}

/// Metrics of a classifier, shared by the training paths.
pub fn training_metrics(loss: f64, accuracy: f64, rows: usize, model: &ClassifierModel) -> Value {
    json!({
        "final_loss": loss,
        "train_accuracy": accuracy,
        "rows": rows,
        "features": model.n_features(),
        "classes": model.n_classes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuq_shared::ErrorCode;

    fn model(hidden: usize) -> ClassifierModel {
        ClassifierModel {
            algorithm: Algorithm::Mlp,
            layers: vec![
                Dense {
                    weight: vec![1.0, -2.0, 0.5, 3.0, 0.0, 1.5][..hidden * 3].to_vec(),
                    bias: vec![0.25; hidden],
                    inputs: 3,
                    outputs: hidden,
                },
                Dense {
                    weight: vec![0.5; 2 * hidden],
                    bias: vec![-0.25, 0.25],
                    inputs: hidden,
                    outputs: 2,
                },
            ],
            activation: Activation::Tanh,
            input_scaling: Some((vec![1.0, 2.0, 3.0], vec![0.5, 1.0, 2.0])),
            classes: vec![0.0, 7.0],
            feature_columns: vec!["a".into(), "b".into(), "c".into()],
        }
    }

    #[test]
    fn a_classifier_round_trips_through_safetensors_with_torch_keys() {
        let m = model(2);
        let bytes = m.to_bytes();
        let a = Artifact::parse(&bytes).unwrap();
        assert_eq!(a.shape("0.weight").unwrap(), vec![2, 3]);
        assert_eq!(a.shape("2.weight").unwrap(), vec![2, 2]);
        assert!(!a.has("1.weight"));
        assert_eq!(ClassifierModel::from_artifact(&a).unwrap(), m);
    }

    #[test]
    fn layers_that_do_not_chain_are_model_corrupt() {
        let mut m = model(2);
        m.classes.push(9.0);
        let bytes = m.to_bytes();
        let a = Artifact::parse(&bytes).unwrap();
        assert_eq!(
            ClassifierModel::from_artifact(&a).unwrap_err().code,
            ErrorCode::ModelCorrupt
        );
    }
}
