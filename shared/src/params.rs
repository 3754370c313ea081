//! Algorithm hyper-parameters as typed values: one struct per algorithm, an enum for every
//! choice. Parsed and defaulted once at the API (so a job records the parameters it really ran
//! with, in full); the worker gets them back typed from the job's row ([`TrainParams::parse`]
//! on the stored JSON, which the API wrote). An unknown name is an error, never a default.

use crate::domain::{Algorithm, ModelId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::fmt;

/// A closed set of names a parameter may take: each variant with its wire name.
macro_rules! choice_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $wire:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            /// Every choice; the first is the default.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire,)*
                }
            }

            /// The choice named `s`, if there is one.
            pub fn from_name(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|c| c.as_str() == s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

choice_enum!(
    /// The hidden layers' activation of an MLP.
    Activation {
        Relu = "relu",
        Tanh = "tanh",
    }
);

choice_enum!(
    /// How an MLP's weights are updated.
    Optimizer {
        Adam = "adam",
        /// Stochastic gradient descent with `momentum`.
        Sgd = "sgd",
    }
);

choice_enum!(
    /// The distance k-nearest-neighbours ranks by.
    Metric {
        Euclidean = "euclidean",
        Cosine = "cosine",
        Manhattan = "manhattan",
    }
);

choice_enum!(
    /// The one-class detectors of Killourhy & Maxion (DSN 2009).
    AnomalyMethod {
        ScaledManhattan = "scaled_manhattan",
        Mahalanobis = "mahalanobis",
        Zscore = "zscore",
        NearestNeighborMahalanobis = "nearest_neighbor_mahalanobis",
    }
);

/// A parameter that is wrong: which one (as a dotted path) and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ParamError {
    pub field: String,
    pub message: String,
}

fn err(field: &str, message: impl Into<String>) -> ParamError {
    ParamError {
        field: format!("params.{field}"),
        message: message.into(),
    }
}

/// The algorithms that train fleets (one model per group of rows).
pub const FLEET_ALGORITHMS: &str = "anomaly, logreg, mlp";

/// A fleet: one model per distinct value of `group_column`, trained together and stored as one
/// artifact. With `base_fleet`, only the groups present in the input are trained; the base's
/// other groups are carried over into the new fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetParams {
    pub group_column: String,
    pub base_fleet: Option<ModelId>,
}

impl FleetParams {
    fn insert_into(this: &Option<Self>, v: &mut Value) {
        if let Some(f) = this {
            v["group_column"] = json!(f.group_column);
            if let Some(base) = f.base_fleet {
                v["base_fleet"] = json!(base.to_string());
            }
        }
    }
}

/// Multinomial logistic regression, trained by mini-batch SGD on standardised features.
#[derive(Debug, Clone, PartialEq)]
pub struct LogregParams {
    pub epochs: u32,
    pub learning_rate: f64,
    pub batch_size: u32,
    pub l2: f64,
    pub label_column: String,
    pub seed: u64,
    /// One model per group (a user, say) instead of one for all rows.
    pub fleet: Option<FleetParams>,
}

impl Default for LogregParams {
    fn default() -> Self {
        Self {
            epochs: 100,
            learning_rate: 0.1,
            batch_size: 32,
            l2: 1e-4,
            label_column: "label".into(),
            seed: 0,
            fleet: None,
        }
    }
}

/// Reads typed fields out of a params object, remembering which ones it consumed so that
/// unknown (misspelt) parameters are refused instead of silently ignored.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    seen: Vec<&'static str>,
}

impl<'a> Fields<'a> {
    fn new(v: &'a Value) -> Result<Self, ParamError> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        let map = match v {
            Value::Null => EMPTY.get_or_init(Map::new),
            Value::Object(m) => m,
            _ => {
                return Err(ParamError {
                    field: "params".into(),
                    message: "must be an object".into(),
                });
            }
        };
        Ok(Self {
            map,
            seen: Vec::new(),
        })
    }

    fn uint(
        &mut self,
        name: &'static str,
        default: u32,
        range: (u32, u32),
    ) -> Result<u32, ParamError> {
        self.seen.push(name);
        let Some(v) = self.map.get(name) else {
            return Ok(default);
        };
        let n = v
            .as_u64()
            .ok_or_else(|| err(name, "must be a whole number"))?;
        if n < range.0 as u64 || n > range.1 as u64 {
            return Err(err(
                name,
                format!("must be between {} and {}", range.0, range.1),
            ));
        }
        Ok(n as u32)
    }

    fn float(
        &mut self,
        name: &'static str,
        default: f64,
        min: f64,
        max: f64,
    ) -> Result<f64, ParamError> {
        self.seen.push(name);
        let Some(v) = self.map.get(name) else {
            return Ok(default);
        };
        let x = v.as_f64().ok_or_else(|| err(name, "must be a number"))?;
        if !x.is_finite() || x < min || x > max {
            return Err(err(name, format!("must be between {min} and {max}")));
        }
        Ok(x)
    }

    fn string(&mut self, name: &'static str, default: &str) -> Result<String, ParamError> {
        self.seen.push(name);
        let Some(v) = self.map.get(name) else {
            return Ok(default.into());
        };
        let s = v.as_str().ok_or_else(|| err(name, "must be a string"))?;
        if s.is_empty() || s.len() > 256 {
            return Err(err(name, "must be 1 to 256 characters"));
        }
        Ok(s.into())
    }

    /// One of `choices` by name; the first is the default.
    fn choice<T: Copy + fmt::Display>(
        &mut self,
        name: &'static str,
        choices: &[T],
    ) -> Result<T, ParamError> {
        self.seen.push(name);
        let Some(v) = self.map.get(name) else {
            return Ok(choices[0]);
        };
        let s = v.as_str().unwrap_or_default();
        choices
            .iter()
            .find(|c| c.to_string() == s)
            .copied()
            .ok_or_else(|| {
                let names: Vec<String> = choices.iter().map(T::to_string).collect();
                err(name, format!("must be one of: {}", names.join(", ")))
            })
    }

    /// A list of whole numbers, each within `range`, of at most `max_len` entries.
    fn uint_list(
        &mut self,
        name: &'static str,
        default: &[u32],
        range: (u32, u32),
        max_len: usize,
    ) -> Result<Vec<u32>, ParamError> {
        self.seen.push(name);
        let Some(v) = self.map.get(name) else {
            return Ok(default.to_vec());
        };
        let items = v
            .as_array()
            .filter(|a| a.len() <= max_len)
            .ok_or_else(|| err(name, format!("must be a list of at most {max_len} widths")))?;
        items
            .iter()
            .map(|x| {
                x.as_u64()
                    .filter(|n| (range.0 as u64..=range.1 as u64).contains(n))
                    .map(|n| n as u32)
                    .ok_or_else(|| {
                        err(
                            name,
                            format!(
                                "entries must be whole numbers from {} to {}",
                                range.0, range.1
                            ),
                        )
                    })
            })
            .collect()
    }

    /// `group_column` and `base_fleet`: a fleet of one model per group, or none.
    fn fleet(&mut self, label_column: &str) -> Result<Option<FleetParams>, ParamError> {
        let given = |f: &Self, name| f.map.get(name).is_some_and(|v| !v.is_null());
        let (has_group, has_base) = (given(self, "group_column"), given(self, "base_fleet"));
        self.seen.extend(["group_column", "base_fleet"]);
        if !has_group {
            if has_base {
                return Err(err(
                    "base_fleet",
                    "refreshes a fleet: give `group_column` as well",
                ));
            }
            return Ok(None);
        }
        let group_column = self.string("group_column", "")?;
        if group_column == label_column {
            return Err(err("group_column", "must differ from `label_column`"));
        }
        let base_fleet = match self.map.get("base_fleet") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_str()
                    .and_then(|s| s.parse::<ModelId>().ok())
                    .ok_or_else(|| err("base_fleet", "must be a fleet id (a UUID)"))?,
            ),
        };
        Ok(Some(FleetParams {
            group_column,
            base_fleet,
        }))
    }

    /// Refuses `group_column` (and `base_fleet`) for an algorithm that trains no fleets.
    fn no_fleet(&mut self, algorithm: &str) -> Result<(), ParamError> {
        for name in ["group_column", "base_fleet"] {
            if self.map.get(name).is_some_and(|v| !v.is_null()) {
                return Err(err(
                    name,
                    format!("{algorithm} does not train fleets (fleets: {FLEET_ALGORITHMS})"),
                ));
            }
            self.seen.push(name);
        }
        Ok(())
    }

    fn finish(self) -> Result<(), ParamError> {
        match self.map.keys().find(|k| !self.seen.contains(&k.as_str())) {
            Some(k) => Err(err(
                k,
                format!("unknown parameter (known: {})", self.seen.join(", ")),
            )),
            None => Ok(()),
        }
    }
}

impl LogregParams {
    pub fn parse(v: &Value) -> Result<Self, ParamError> {
        let d = Self::default();
        let mut f = Fields::new(v)?;
        let p = Self {
            epochs: f.uint("epochs", d.epochs, (1, 100_000))?,
            learning_rate: f.float("learning_rate", d.learning_rate, 1e-9, 100.0)?,
            batch_size: f.uint("batch_size", d.batch_size, (1, 65_536))?,
            l2: f.float("l2", d.l2, 0.0, 100.0)?,
            label_column: f.string("label_column", &d.label_column)?,
            seed: f.uint("seed", 0, (0, u32::MAX))? as u64,
            fleet: None,
        };
        let p = Self {
            fleet: f.fleet(&p.label_column)?,
            ..p
        };
        f.finish()?;
        Ok(p)
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "epochs": self.epochs, "learning_rate": self.learning_rate,
            "batch_size": self.batch_size, "l2": self.l2,
            "label_column": self.label_column, "seed": self.seed,
        });
        FleetParams::insert_into(&self.fleet, &mut v);
        v
    }
}

/// Multilayer perceptron classifier: hidden layers of `activation`, softmax output,
/// cross-entropy, mini-batches reshuffled every epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct MlpParams {
    pub hidden: Vec<u32>,
    pub activation: Activation,
    pub epochs: u32,
    pub batch_size: u32,
    pub learning_rate: f64,
    /// With `Sgd`, `momentum` applies.
    pub optimizer: Optimizer,
    pub momentum: f64,
    pub l2: f64,
    pub seed: u64,
    pub label_column: String,
    /// Held out to decide early stopping; 0 stops on the training loss instead.
    pub validation_fraction: f64,
    /// Epochs without improvement (by more than `tol`) before training stops.
    pub patience: u32,
    pub tol: f64,
    /// One model per group (a user, say) instead of one for all rows.
    pub fleet: Option<FleetParams>,
}

impl MlpParams {
    pub fn parse(v: &Value) -> Result<Self, ParamError> {
        let mut f = Fields::new(v)?;
        let p = Self {
            hidden: f.uint_list("hidden", &[64], (1, 4096), 8)?,
            activation: f.choice("activation", Activation::ALL)?,
            epochs: f.uint("epochs", 200, (1, 100_000))?,
            batch_size: f.uint("batch_size", 200, (1, 65_536))?,
            learning_rate: f.float("learning_rate", 1e-3, 1e-9, 10.0)?,
            optimizer: f.choice("optimizer", Optimizer::ALL)?,
            momentum: f.float("momentum", 0.9, 0.0, 0.999)?,
            l2: f.float("l2", 1e-4, 0.0, 100.0)?,
            seed: f.uint("seed", 0, (0, u32::MAX))? as u64,
            label_column: f.string("label_column", "label")?,
            validation_fraction: f.float("validation_fraction", 0.0, 0.0, 0.5)?,
            patience: f.uint("patience", 10, (1, 100_000))?,
            tol: f.float("tol", 1e-4, 0.0, 1.0)?,
            fleet: None,
        };
        let p = Self {
            fleet: f.fleet(&p.label_column)?,
            ..p
        };
        if p.fleet.is_some() && p.validation_fraction > 0.0 {
            return Err(err(
                "validation_fraction",
                "a fleet stops each group early on its own training loss; give \
                 validation_fraction 0 (the default) with group_column",
            ));
        }
        f.finish()?;
        Ok(p)
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "hidden": self.hidden, "activation": self.activation, "epochs": self.epochs,
            "batch_size": self.batch_size, "learning_rate": self.learning_rate,
            "optimizer": self.optimizer, "momentum": self.momentum, "l2": self.l2,
            "seed": self.seed, "label_column": self.label_column,
            "validation_fraction": self.validation_fraction, "patience": self.patience,
            "tol": self.tol,
        });
        FleetParams::insert_into(&self.fleet, &mut v);
        v
    }
}

/// k-means: k-means++ seeding, Lloyd iterations, best of `n_init` runs by inertia.
#[derive(Debug, Clone, PartialEq)]
pub struct KmeansParams {
    pub k: u32,
    pub max_iter: u32,
    /// Convergence: centroid movement (squared, summed) at most `tol` × the mean feature variance.
    pub tol: f64,
    pub n_init: u32,
    pub seed: u64,
    /// Dropped from the features when present.
    pub label_column: String,
}

impl KmeansParams {
    pub fn parse(v: &Value) -> Result<Self, ParamError> {
        let mut f = Fields::new(v)?;
        let p = Self {
            k: f.uint("k", 8, (1, 10_000))?,
            max_iter: f.uint("max_iter", 300, (1, 100_000))?,
            tol: f.float("tol", 1e-4, 0.0, 1.0)?,
            n_init: f.uint("n_init", 10, (1, 1000))?,
            seed: f.uint("seed", 0, (0, u32::MAX))? as u64,
            label_column: f.string("label_column", "label")?,
        };
        f.no_fleet("kmeans")?;
        f.finish()?;
        Ok(p)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "k": self.k, "max_iter": self.max_iter, "tol": self.tol, "n_init": self.n_init,
            "seed": self.seed, "label_column": self.label_column,
        })
    }
}

/// k-nearest neighbours: the training rows are the model.
#[derive(Debug, Clone, PartialEq)]
pub struct KnnParams {
    pub k: u32,
    pub metric: Metric,
    pub label_column: String,
}

impl KnnParams {
    pub fn parse(v: &Value) -> Result<Self, ParamError> {
        let mut f = Fields::new(v)?;
        let p = Self {
            k: f.uint("k", 5, (1, 1024))?,
            metric: f.choice("metric", Metric::ALL)?,
            label_column: f.string("label_column", "label")?,
        };
        f.no_fleet("knn")?;
        f.finish()?;
        Ok(p)
    }

    pub fn to_json(&self) -> Value {
        json!({ "k": self.k, "metric": self.metric, "label_column": self.label_column })
    }
}

/// One-class detectors of Killourhy & Maxion (DSN 2009), trained on genuine samples.
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalyParams {
    pub method: AnomalyMethod,
    /// `zscore`: a feature is an outlier when its |z| exceeds this.
    pub z_threshold: f64,
    /// Dropped from the features when present.
    pub label_column: String,
    /// One detector per group (a user, say) instead of one for all rows.
    pub fleet: Option<FleetParams>,
}

impl AnomalyParams {
    pub fn parse(v: &Value) -> Result<Self, ParamError> {
        let mut f = Fields::new(v)?;
        let method = f.choice("method", AnomalyMethod::ALL)?;
        let z_threshold = f.float("z_threshold", 1.96, 0.0, 1e6)?;
        let label_column = f.string("label_column", "label")?;
        let fleet = f.fleet(&label_column)?;
        f.finish()?;
        Ok(Self {
            method,
            z_threshold,
            label_column,
            fleet,
        })
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "method": self.method, "z_threshold": self.z_threshold,
            "label_column": self.label_column,
        });
        FleetParams::insert_into(&self.fleet, &mut v);
        v
    }
}

/// Training parameters: the algorithm's own typed struct.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainParams {
    Logreg(LogregParams),
    Mlp(MlpParams),
    Kmeans(KmeansParams),
    Knn(KnnParams),
    Anomaly(AnomalyParams),
}

impl TrainParams {
    /// Parses `params` for `algorithm`, filling every default; unknown names are refused.
    pub fn parse(algorithm: Algorithm, params: &Value) -> Result<Self, ParamError> {
        Ok(match algorithm {
            Algorithm::Logreg => Self::Logreg(LogregParams::parse(params)?),
            Algorithm::Mlp => Self::Mlp(MlpParams::parse(params)?),
            Algorithm::Kmeans => Self::Kmeans(KmeansParams::parse(params)?),
            Algorithm::Knn => Self::Knn(KnnParams::parse(params)?),
            Algorithm::Anomaly => Self::Anomaly(AnomalyParams::parse(params)?),
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Self::Logreg(_) => Algorithm::Logreg,
            Self::Mlp(_) => Algorithm::Mlp,
            Self::Kmeans(_) => Algorithm::Kmeans,
            Self::Knn(_) => Algorithm::Knn,
            Self::Anomaly(_) => Algorithm::Anomaly,
        }
    }

    /// The column holding the labels (dropped from the features of unsupervised algorithms).
    pub fn label_column(&self) -> &str {
        match self {
            Self::Logreg(p) => &p.label_column,
            Self::Mlp(p) => &p.label_column,
            Self::Kmeans(p) => &p.label_column,
            Self::Knn(p) => &p.label_column,
            Self::Anomaly(p) => &p.label_column,
        }
    }

    /// The fleet it trains, if it trains one.
    pub fn fleet(&self) -> Option<&FleetParams> {
        match self {
            Self::Anomaly(p) => p.fleet.as_ref(),
            Self::Logreg(p) => p.fleet.as_ref(),
            Self::Mlp(p) => p.fleet.as_ref(),
            Self::Kmeans(_) | Self::Knn(_) => None,
        }
    }

    /// Passes over the data it asks for, and the field that asks: epochs (logreg, mlp) or
    /// `max_iter × n_init` (kmeans); `None` for the algorithms that make one pass.
    pub fn passes(&self) -> Option<(&'static str, u64)> {
        match self {
            Self::Logreg(p) => Some(("params.epochs", u64::from(p.epochs))),
            Self::Mlp(p) => Some(("params.epochs", u64::from(p.epochs))),
            Self::Kmeans(p) => Some((
                "params.max_iter",
                u64::from(p.max_iter) * u64::from(p.n_init),
            )),
            Self::Knn(_) | Self::Anomaly(_) => None,
        }
    }

    /// The recorded form: every parameter, defaults filled in.
    pub fn to_json(&self) -> Value {
        match self {
            Self::Logreg(p) => p.to_json(),
            Self::Mlp(p) => p.to_json(),
            Self::Kmeans(p) => p.to_json(),
            Self::Knn(p) => p.to_json(),
            Self::Anomaly(p) => p.to_json(),
        }
    }
}

/// Inference takes no hyper-parameters but the label column to ignore (default: the model's).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InferParams {
    pub label_column: Option<String>,
}

impl InferParams {
    pub fn parse(params: &Value) -> Result<Self, ParamError> {
        let mut f = Fields::new(params)?;
        let label = f.string("label_column", "")?;
        f.finish()?;
        Ok(Self {
            label_column: (!label.is_empty()).then_some(label),
        })
    }

    pub fn to_json(&self) -> Value {
        match &self.label_column {
            Some(label) => json!({ "label_column": label }),
            None => json!({}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_in_and_round_trip() {
        let p = LogregParams::parse(&json!({"epochs": 5})).unwrap();
        assert_eq!(p.epochs, 5);
        assert_eq!(p.batch_size, 32);
        assert_eq!(LogregParams::parse(&p.to_json()).unwrap(), p);
    }

    #[test]
    fn bad_values_name_the_field() {
        let e = LogregParams::parse(&json!({"learning_rate": -1})).unwrap_err();
        assert_eq!(e.field, "params.learning_rate");
        let e = LogregParams::parse(&json!({"epochs": 1.5})).unwrap_err();
        assert_eq!(e.field, "params.epochs");
        let e = LogregParams::parse(&json!({"epoch": 3})).unwrap_err();
        assert_eq!(e.field, "params.epoch");
        assert!(e.message.contains("unknown parameter"));
        assert!(LogregParams::parse(&json!([1])).is_err());
    }

    #[test]
    fn every_algorithm_fills_defaults_that_parse_back_unchanged() {
        for a in Algorithm::ALL {
            let p = TrainParams::parse(a, &json!({})).unwrap();
            assert_eq!(p.algorithm(), a);
            assert_eq!(TrainParams::parse(a, &p.to_json()).unwrap(), p, "{a:?}");
        }
    }

    #[test]
    fn choices_parse_to_their_enum_and_round_trip() {
        let p = MlpParams::parse(&json!({"activation": "tanh", "optimizer": "sgd"})).unwrap();
        assert_eq!(
            (p.activation, p.optimizer),
            (Activation::Tanh, Optimizer::Sgd)
        );
        assert_eq!(p.to_json()["activation"], "tanh");
        let p = KnnParams::parse(&json!({"metric": "cosine"})).unwrap();
        assert_eq!(p.metric, Metric::Cosine);
        for &m in AnomalyMethod::ALL {
            let p = AnomalyParams::parse(&json!({"method": m.as_str()})).unwrap();
            assert_eq!(p.method, m);
        }
        assert_eq!(
            InferParams::parse(&json!({})).unwrap(),
            InferParams::default()
        );
    }

    #[test]
    fn new_algorithms_refuse_bad_choices_lists_and_ranges() {
        let e = MlpParams::parse(&json!({"activation": "sigmoid"})).unwrap_err();
        assert_eq!(e.field, "params.activation");
        assert!(e.message.contains("relu, tanh"), "{}", e.message);
        let e = MlpParams::parse(&json!({"hidden": [64, 0]})).unwrap_err();
        assert_eq!(e.field, "params.hidden");
        let e = MlpParams::parse(&json!({"hidden": 64})).unwrap_err();
        assert_eq!(e.field, "params.hidden");
        assert_eq!(
            MlpParams::parse(&json!({"hidden": []})).unwrap().hidden,
            Vec::<u32>::new()
        );
        let e = KmeansParams::parse(&json!({"k": -3})).unwrap_err();
        assert_eq!(e.field, "params.k");
        let e = KnnParams::parse(&json!({"metric": "chebyshev"})).unwrap_err();
        assert_eq!(e.field, "params.metric");
        let e = AnomalyParams::parse(&json!({"method": 3})).unwrap_err();
        assert_eq!(e.field, "params.method");
    }

    #[test]
    fn anomaly_logreg_and_mlp_train_fleets_and_a_fleet_round_trips() {
        let base = ModelId::new();
        for a in [Algorithm::Anomaly, Algorithm::Logreg, Algorithm::Mlp] {
            let p = TrainParams::parse(
                a,
                &json!({"group_column": "user", "base_fleet": base.to_string()}),
            )
            .unwrap();
            let fleet = p.fleet().unwrap();
            assert_eq!(
                (fleet.group_column.as_str(), fleet.base_fleet),
                ("user", Some(base))
            );
            assert_eq!(TrainParams::parse(a, &p.to_json()).unwrap(), p);
            let plain = TrainParams::parse(a, &json!({})).unwrap();
            assert!(plain.fleet().is_none() && plain.to_json().get("group_column").is_none());
        }
        let e = TrainParams::parse(
            Algorithm::Mlp,
            &json!({"group_column": "user", "validation_fraction": 0.2}),
        )
        .unwrap_err();
        assert_eq!(e.field, "params.validation_fraction");
        for a in [Algorithm::Kmeans, Algorithm::Knn] {
            let e = TrainParams::parse(a, &json!({"group_column": "user"})).unwrap_err();
            assert_eq!(e.field, "params.group_column", "{a:?}");
            assert!(e.message.contains("does not train fleets"), "{}", e.message);
        }
        let e = AnomalyParams::parse(&json!({"base_fleet": base.to_string()})).unwrap_err();
        assert_eq!(e.field, "params.base_fleet");
        let e = AnomalyParams::parse(&json!({"group_column": "label"})).unwrap_err();
        assert_eq!(e.field, "params.group_column");
        let e = AnomalyParams::parse(&json!({"group_column": "u", "base_fleet": "x"})).unwrap_err();
        assert_eq!(e.field, "params.base_fleet");
    }
}
