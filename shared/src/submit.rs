//! Parses a submit body (`POST /v1/jobs`) into a typed [`Submission`], once: its [`JobSpec`] is
//! what the job records and what the worker runs. Every problem names the field it is in. Pure:
//! no I/O, so the API calls it and a fuzzer can hammer it.

use crate::config::Limits;
use crate::domain::{Algorithm, JobType, ModelId, S3Uri};
use crate::error::ErrorCode;
use crate::job::{Input, JobSpec, Work};
use crate::params::{InferParams, ParamError, TrainParams};
use serde_json::{Map, Value};

/// Why a body was refused: `BadRequest` (400) when it is not a JSON object at all, `Invalid`
/// (422) when a field is wrong; `field` is its dotted path.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    #[error("{message}")]
    BadRequest { code: ErrorCode, message: String },
    #[error("{field}: {message}")]
    Invalid {
        code: ErrorCode,
        field: String,
        message: String,
    },
}

impl SubmitError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        SubmitError::Invalid {
            code: ErrorCode::InvalidField,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A submission that passed validation (model existence is checked by the handler).
#[derive(Debug)]
pub struct Submission {
    pub spec: JobSpec,
    /// An infer job may name the algorithm it expects its model to be; `None` leaves it to the
    /// model.
    pub infer_algorithm: Option<Algorithm>,
    pub max_attempts: Option<i32>,
    /// Seconds one attempt may run; `None` leaves it to the deployment's default.
    pub timeout_s: Option<u32>,
    /// An infer job naming a fleet member as `fleet_id` + `group`: the group. The spec's
    /// `model_id` is then the fleet's, and the handler puts the member's in its place.
    pub member_group: Option<String>,
}

const FIELDS: [&str; 9] = [
    "type",
    "algorithm",
    "model_id",
    "fleet_id",
    "group",
    "input",
    "params",
    "max_attempts",
    "timeout_s",
];

fn missing(field: &str) -> SubmitError {
    SubmitError::Invalid {
        code: ErrorCode::MissingField,
        field: field.into(),
        message: "is required".into(),
    }
}

impl From<ParamError> for SubmitError {
    fn from(e: ParamError) -> Self {
        SubmitError::invalid(e.field, e.message)
    }
}

/// Parses and validates a submit body against the deployment's `limits`.
pub fn parse(body: &[u8], limits: &Limits) -> Result<Submission, SubmitError> {
    validate(&parse_json(body)?, limits)
}

/// The body as JSON, or `malformed_json`.
pub fn parse_json(body: &[u8]) -> Result<Value, SubmitError> {
    serde_json::from_slice(body).map_err(|e| SubmitError::BadRequest {
        code: ErrorCode::MalformedJson,
        message: format!("the body is not valid JSON: {e}"),
    })
}

/// Validates a parsed submit body against the deployment's `limits`.
pub fn validate(value: &Value, limits: &Limits) -> Result<Submission, SubmitError> {
    let Some(obj) = value.as_object() else {
        return Err(SubmitError::BadRequest {
            code: ErrorCode::MalformedJson,
            message: "the body must be a JSON object".into(),
        });
    };
    if let Some(k) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(SubmitError::invalid(
            k.clone(),
            format!("unknown field (known: {})", FIELDS.join(", ")),
        ));
    }
    let job_type: JobType = match obj.get("type") {
        None | Some(Value::Null) => return Err(missing("type")),
        Some(Value::String(s)) => s
            .parse()
            .map_err(|m: String| SubmitError::invalid("type", m))?,
        Some(_) => return Err(SubmitError::invalid("type", "must be a string")),
    };
    let algorithm = match obj.get("algorithm") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(
            s.parse()
                .map_err(|m: String| SubmitError::invalid("algorithm", m))?,
        ),
        Some(_) => return Err(SubmitError::invalid("algorithm", "must be a string")),
    };
    let model_id = match obj.get("model_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(
            s.parse::<ModelId>()
                .map_err(|_| SubmitError::invalid("model_id", "must be a UUID"))?,
        ),
        Some(_) => return Err(SubmitError::invalid("model_id", "must be a string")),
    };
    let fleet_id = match obj.get("fleet_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(
            s.parse::<ModelId>()
                .map_err(|_| SubmitError::invalid("fleet_id", "must be a UUID"))?,
        ),
        Some(_) => return Err(SubmitError::invalid("fleet_id", "must be a string")),
    };
    let member_group = match obj.get("group") {
        None | Some(Value::Null) => None,
        Some(Value::String(g)) if !g.is_empty() && g.len() <= 256 => Some(g.clone()),
        Some(_) => {
            return Err(SubmitError::invalid(
                "group",
                "must be a string of 1 to 256 characters",
            ));
        }
    };
    let model_id = match (model_id, fleet_id, &member_group) {
        (Some(_), Some(_), _) => {
            return Err(SubmitError::invalid(
                "fleet_id",
                "name the model either by `model_id` or by `fleet_id` (and `group`), not both",
            ));
        }
        (_, None, Some(_)) => {
            return Err(SubmitError::invalid(
                "group",
                "names a member of the fleet in `fleet_id`, which is missing",
            ));
        }
        (Some(m), None, None) => Some(m),
        (None, fleet, _) => fleet,
    };
    let params_in = obj.get("params").cloned().unwrap_or(Value::Null);
    let (work, infer_algorithm) = match (job_type, model_id) {
        (JobType::Train, Some(_)) => {
            return Err(SubmitError::invalid(
                if fleet_id.is_some() {
                    "fleet_id"
                } else {
                    "model_id"
                },
                "a train job makes a model; it takes none (a fleet refresh names its base in \
                 `params.base_fleet`)",
            ));
        }
        (JobType::Train, None) => {
            let algorithm = algorithm.ok_or_else(|| missing("algorithm"))?;
            (
                Work::Train(TrainParams::parse(algorithm, &params_in)?),
                None,
            )
        }
        (JobType::Infer, None) => return Err(missing("model_id")),
        (JobType::Infer, Some(model_id)) => {
            let params = InferParams::parse(&params_in)?;
            (Work::Infer { model_id, params }, algorithm)
        }
    };
    if let Work::Train(params) = &work {
        check_passes(params, limits)?;
    }
    let labels_required = matches!(&work, Work::Train(p) if p.algorithm().needs_labels());
    let input = parse_input(obj.get("input"), labels_required)?;
    if let (Work::Train(p), Input::Inline { .. }) = (&work, &input)
        && let Some(fleet) = p.fleet()
    {
        return Err(SubmitError::invalid(
            "input",
            format!(
                "a fleet reads each row's group from its `{}` column: upload a CSV or .npy \
                 and pass its `uri`",
                fleet.group_column
            ),
        ));
    }
    if let Some((rows, width)) = input.inline_shape() {
        let values = width.saturating_mul(rows);
        if values > limits.max_inline_values || width > limits.max_features {
            return Err(SubmitError::Invalid {
                code: ErrorCode::InputTooLarge,
                field: "input.rows".into(),
                message: format!(
                    "{rows} rows × {width} features is over this deployment's inline limit of {} \
                     values and {} features: upload the data to S3 and pass its `uri`",
                    limits.max_inline_values, limits.max_features
                ),
            });
        }
        if values > limits.max_cells {
            return Err(SubmitError::Invalid {
                code: ErrorCode::InputTooLarge,
                field: "input.rows".into(),
                message: format!(
                    "{rows} rows × {width} features is over this deployment's limit of {} cells",
                    limits.max_cells
                ),
            });
        }
    }
    let max_attempts = match obj.get("max_attempts") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n @ 1..=20) => Some(n as i32),
            _ => {
                return Err(SubmitError::invalid(
                    "max_attempts",
                    "must be a whole number from 1 to 20",
                ));
            }
        },
    };
    let timeout_s = match obj.get("timeout_s") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 && n <= u64::from(limits.max_timeout_s) => Some(n as u32),
            _ => {
                return Err(SubmitError::invalid(
                    "timeout_s",
                    format!(
                        "must be a whole number of seconds from 1 to {}",
                        limits.max_timeout_s
                    ),
                ));
            }
        },
    };
    Ok(Submission {
        spec: JobSpec { work, input },
        infer_algorithm,
        max_attempts,
        timeout_s,
        member_group,
    })
}

/// Epochs (logreg, mlp) and `max_iter × n_init` (kmeans) within the deployment's cap.
fn check_passes(params: &TrainParams, limits: &Limits) -> Result<(), SubmitError> {
    match params.passes() {
        Some((field, asked)) if asked > limits.max_epochs => Err(SubmitError::Invalid {
            code: ErrorCode::OverLimit,
            field: field.into(),
            message: format!(
                "asks for {asked} passes over the data; this deployment allows {}",
                limits.max_epochs
            ),
        }),
        _ => Ok(()),
    }
}

/// `{"uri": "s3://…"}` or `{"rows": [[…], …], "labels": […]}`.
fn parse_input(input: Option<&Value>, labels_required: bool) -> Result<Input, SubmitError> {
    let obj: &Map<String, Value> = match input {
        None | Some(Value::Null) => return Err(missing("input")),
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(SubmitError::invalid(
                "input",
                "must be an object with `uri` or `rows`",
            ));
        }
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !["uri", "rows", "labels"].contains(&k.as_str()))
    {
        return Err(SubmitError::invalid(
            format!("input.{k}"),
            "unknown field (known: uri, rows, labels)",
        ));
    }
    match (obj.get("uri"), obj.get("rows")) {
        (Some(_), Some(_)) => Err(SubmitError::invalid(
            "input",
            "give either `uri` or `rows`, not both",
        )),
        (None, None) => Err(SubmitError::invalid(
            "input",
            "needs `uri` (s3://bucket/key) or inline `rows`",
        )),
        (Some(uri), None) => {
            if obj.contains_key("labels") {
                return Err(SubmitError::invalid(
                    "input.labels",
                    "only goes with inline `rows`",
                ));
            }
            let uri: S3Uri = uri
                .as_str()
                .ok_or_else(|| SubmitError::invalid("input.uri", "must be a string"))?
                .parse()
                .map_err(|m: String| SubmitError::invalid("input.uri", m))?;
            Ok(Input::S3 { uri })
        }
        (None, Some(rows)) => {
            let rows = check_rows(rows)?;
            let labels = match obj.get("labels") {
                None if labels_required => return Err(missing("input.labels")),
                None => None,
                Some(labels) => Some(check_labels(labels, rows.len())?),
            };
            Ok(Input::Inline { rows, labels })
        }
    }
}

/// One number per row.
fn check_labels(labels: &Value, n: usize) -> Result<Vec<f64>, SubmitError> {
    let labels = labels
        .as_array()
        .ok_or_else(|| SubmitError::invalid("input.labels", "must be an array of numbers"))?;
    if labels.len() != n {
        return Err(SubmitError::invalid(
            "input.labels",
            format!("has {} labels for {n} rows", labels.len()),
        ));
    }
    labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            l.as_f64().ok_or_else(|| {
                SubmitError::invalid(format!("input.labels[{i}]"), "must be a number")
            })
        })
        .collect()
}

/// Rows must be a non-empty rectangular array of non-empty arrays of numbers.
fn check_rows(rows: &Value) -> Result<Vec<Vec<f64>>, SubmitError> {
    let rows = rows
        .as_array()
        .filter(|r| !r.is_empty())
        .ok_or_else(|| SubmitError::invalid("input.rows", "must be a non-empty array of rows"))?;
    let mut out: Vec<Vec<f64>> = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let cells = row.as_array().filter(|c| !c.is_empty()).ok_or_else(|| {
            SubmitError::invalid(
                format!("input.rows[{i}]"),
                "must be a non-empty array of numbers",
            )
        })?;
        let values = cells
            .iter()
            .enumerate()
            .map(|(j, c)| {
                c.as_f64().ok_or_else(|| {
                    SubmitError::invalid(format!("input.rows[{i}][{j}]"), "must be a number")
                })
            })
            .collect::<Result<Vec<f64>, _>>()?;
        if let Some(first) = out.first()
            && first.len() != values.len()
        {
            return Err(SubmitError::invalid(
                format!("input.rows[{i}]"),
                format!(
                    "has {} values where row 0 has {}",
                    values.len(),
                    first.len()
                ),
            ));
        }
        out.push(values);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> String {
        match parse(body.as_bytes(), &Limits::default()).unwrap_err() {
            SubmitError::Invalid { field, .. } => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn a_train_job_with_inline_rows_parses_and_fills_default_params() {
        let s = parse(
            br#"{"type":"train","algorithm":"logreg","input":{"rows":[[1,2]],"labels":[0]}}"#,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(s.spec.job_type(), JobType::Train);
        assert_eq!(s.spec.params_json()["epochs"], 100);
        assert_eq!(s.spec.input.inline_shape(), Some((1, 2)));
    }

    #[test]
    fn each_mistake_names_its_field() {
        assert_eq!(
            field_of(r#"{"type":"fly","input":{"uri":"s3://b-b/k"}}"#),
            "type"
        );
        assert_eq!(
            field_of(r#"{"type":"train","algorithm":"svm","input":{"uri":"s3://bbb/k"}}"#),
            "algorithm"
        );
        assert_eq!(
            field_of(r#"{"type":"train","algorithm":"logreg"}"#),
            "input"
        );
        assert_eq!(
            field_of(r#"{"type":"infer","input":{"uri":"s3://bbb/k"}}"#),
            "model_id"
        );
        assert_eq!(
            field_of(
                r#"{"type":"train","algorithm":"logreg","input":{"uri":"s3://bbb/k"},"params":{"epochs":0}}"#
            ),
            "params.epochs"
        );
        assert_eq!(
            field_of(
                r#"{"type":"train","algorithm":"logreg","input":{"rows":[[1,2],[3]],"labels":[0,1]}}"#
            ),
            "input.rows[1]"
        );
        assert_eq!(
            field_of(r#"{"type":"train","algorithm":"logreg","input":{"uri":"http://x/y"}}"#),
            "input.uri"
        );
    }

    #[test]
    fn malformed_json_is_a_bad_request() {
        assert!(matches!(
            parse(b"{\"type\":", &Limits::default()),
            Err(SubmitError::BadRequest {
                code: ErrorCode::MalformedJson,
                ..
            })
        ));
        assert!(matches!(
            parse(b"[1]", &Limits::default()),
            Err(SubmitError::BadRequest { .. })
        ));
    }

    #[test]
    fn deployment_limits_are_enforced_with_the_field_named() {
        let limits = Limits {
            max_epochs: 50,
            max_inline_values: 4,
            max_timeout_s: 60,
            ..Limits::default()
        };
        let err = |body: &str| match parse(body.as_bytes(), &limits).unwrap_err() {
            SubmitError::Invalid { code, field, .. } => (code, field),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            err(
                r#"{"type":"train","algorithm":"logreg","input":{"uri":"s3://bbb/k"},"params":{"epochs":51}}"#
            ),
            (ErrorCode::OverLimit, "params.epochs".to_string())
        );
        assert_eq!(
            err(
                r#"{"type":"train","algorithm":"kmeans","input":{"uri":"s3://bbb/k"},"params":{"max_iter":10,"n_init":6}}"#
            ),
            (ErrorCode::OverLimit, "params.max_iter".to_string())
        );
        assert_eq!(
            err(
                r#"{"type":"train","algorithm":"logreg","input":{"rows":[[1,2],[3,4],[5,6]],"labels":[0,1,0]},"params":{"epochs":5}}"#
            ),
            (ErrorCode::InputTooLarge, "input.rows".to_string())
        );
        assert_eq!(
            err(
                r#"{"type":"train","algorithm":"logreg","input":{"uri":"s3://bbb/k"},"params":{"epochs":5},"timeout_s":61}"#
            ),
            (ErrorCode::InvalidField, "timeout_s".to_string())
        );
        let ok = parse(
            br#"{"type":"train","algorithm":"logreg","input":{"uri":"s3://bbb/k"},"params":{"epochs":50},"timeout_s":60}"#,
            &limits,
        )
        .unwrap();
        assert_eq!(ok.timeout_s, Some(60));
    }

    #[test]
    fn inline_rows_over_the_cell_cap_are_refused_even_within_the_inline_limit() {
        let limits = Limits {
            max_cells: 4,
            ..Limits::default()
        };
        let body = |rows: &str| {
            format!(
                r#"{{"type":"train","algorithm":"logreg","input":{{"rows":{rows},"labels":[0,1]}}}}"#
            )
        };
        match parse(body("[[1,2,3],[4,5,6]]").as_bytes(), &limits).unwrap_err() {
            SubmitError::Invalid { code, field, .. } => {
                assert_eq!(
                    (code, field.as_str()),
                    (ErrorCode::InputTooLarge, "input.rows")
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(body("[[1,2],[4,5]]").as_bytes(), &limits).is_ok());
    }
}
