//! Algorithm hyper-parameters: parsed and defaulted once at the API (so a job records the
//! parameters it really ran with) and parsed again by the worker from the stored JSON.

use crate::domain::Algorithm;
use serde_json::{Map, Value, json};

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

/// Multinomial logistic regression, trained by mini-batch SGD on standardised features.
#[derive(Debug, Clone, PartialEq)]
pub struct LogregParams {
    pub epochs: u32,
    pub learning_rate: f64,
    pub batch_size: u32,
    pub l2: f64,
    pub label_column: String,
    pub seed: u64,
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
        };
        f.finish()?;
        Ok(p)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "epochs": self.epochs, "learning_rate": self.learning_rate,
            "batch_size": self.batch_size, "l2": self.l2,
            "label_column": self.label_column, "seed": self.seed,
        })
    }
}

/// Validates training params for `algorithm` and returns them with every default filled in.
pub fn normalize_train(algorithm: Algorithm, params: &Value) -> Result<Value, ParamError> {
    match algorithm {
        Algorithm::Logreg => Ok(LogregParams::parse(params)?.to_json()),
    }
}

/// Inference takes no hyper-parameters but the label column to ignore (default: the model's).
pub fn normalize_infer(params: &Value) -> Result<Value, ParamError> {
    let mut f = Fields::new(params)?;
    let label = f.string("label_column", "")?;
    f.finish()?;
    Ok(if label.is_empty() {
        json!({})
    } else {
        json!({ "label_column": label })
    })
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
}
