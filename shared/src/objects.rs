//! Where gpuq writes a tenant's objects, and how a key is read back. Every key names the attempt
//! that wrote it, so two attempts of one job never write the same object:
//!
//! - `{tenant prefix}outputs/{job}/{attempt}/predictions.csv`
//! - `{tenant prefix}models/{job}/{attempt}/{model}.safetensors`
//!
//! The winner's keys are the ones its job result or model row records; a losing attempt deletes
//! what it wrote, and the orphan sweep ([`crate::orphans`]) removes what a dead one left.

use crate::config::Settings;
use crate::db::WrittenObject;
use crate::domain::{JobId, ModelId, S3Uri};

/// The folders under a tenant's prefix that hold what gpuq writes (and nothing else of gpuq's).
pub const WRITTEN_FOLDERS: [&str; 2] = ["models/", "outputs/"];

/// The output of an inference attempt.
pub fn output_uri(settings: &Settings, tenant: &str, job: JobId, attempt: i32) -> S3Uri {
    let prefix = settings.tenant_prefix(tenant);
    S3Uri::new(
        &settings.bucket,
        format!("{prefix}outputs/{job}/{attempt}/predictions.csv"),
    )
}

/// The artifact of the model a training attempt made.
pub fn model_uri(
    settings: &Settings,
    tenant: &str,
    job: JobId,
    attempt: i32,
    model: ModelId,
) -> S3Uri {
    let prefix = settings.tenant_prefix(tenant);
    S3Uri::new(
        &settings.bucket,
        format!("{prefix}models/{job}/{attempt}/{model}.safetensors"),
    )
}

/// Who wrote an object, from its key below the tenant prefix (`models/…` or `outputs/…`), or
/// `None` for a key gpuq never writes (left alone by the sweep). Also reads the keys written
/// before keys were attempt-scoped: `outputs/{job}/predictions.csv`, `models/{model}.safetensors`.
pub fn written_by(uri: &S3Uri, below_tenant: &str) -> Option<WrittenObject> {
    let parts: Vec<&str> = below_tenant.split('/').collect();
    let (job, attempt, model) = match parts.as_slice() {
        ["outputs", job, attempt, "predictions.csv"] => (Some(*job), Some(*attempt), None),
        ["outputs", job, "predictions.csv"] => (Some(*job), None, None),
        ["models", job, attempt, file] => (Some(*job), Some(*attempt), Some(*file)),
        ["models", file] => (None, None, Some(*file)),
        _ => return None,
    };
    let model_id = match model {
        Some(file) => Some(file.strip_suffix(".safetensors")?.parse().ok()?),
        None => None,
    };
    let attempt = match attempt {
        // Only the decimal form gpuq writes: `01` or `+1` are someone else's.
        Some(a) if a.bytes().all(|b| b.is_ascii_digit()) && !a.starts_with('0') => {
            Some(a.parse::<i32>().ok()?)
        }
        Some(_) => return None,
        None => None,
    };
    let job_id = match job {
        Some(j) => Some(j.parse::<JobId>().ok()?),
        None => None,
    };
    Some(WrittenObject {
        uri: uri.to_string(),
        job_id,
        attempt,
        model_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        let mut s = Settings::from_env().unwrap();
        s.bucket = "bucket".into();
        s.s3_prefix = "p".into();
        s
    }

    #[test]
    fn the_keys_gpuq_writes_read_back_as_their_writer() {
        let s = settings();
        let (job, model) = (JobId::new(), ModelId::new());
        let prefix = s.tenant_prefix("acme");
        for (uri, expected) in [
            (output_uri(&s, "acme", job, 3), (Some(job), Some(3), None)),
            (
                model_uri(&s, "acme", job, 12, model),
                (Some(job), Some(12), Some(model)),
            ),
        ] {
            let below = uri.key.strip_prefix(&prefix).unwrap();
            let w = written_by(&uri, below).unwrap();
            assert_eq!((w.job_id, w.attempt, w.model_id), expected, "{uri}");
            assert_eq!(w.uri, uri.to_string());
        }
        let old = S3Uri::new("bucket", format!("{prefix}models/{model}.safetensors"));
        let w = written_by(&old, &format!("models/{model}.safetensors")).unwrap();
        assert_eq!((w.job_id, w.attempt, w.model_id), (None, None, Some(model)));
        let w = written_by(&old, &format!("outputs/{job}/predictions.csv")).unwrap();
        assert_eq!((w.job_id, w.attempt, w.model_id), (Some(job), None, None));
    }

    #[test]
    fn keys_gpuq_never_writes_are_nobodys() {
        let uri = S3Uri::new("bucket", "k");
        let job = JobId::new();
        for below in [
            "outputs/notes.txt".to_string(),
            format!("outputs/{job}/1/other.csv"),
            format!("outputs/{job}/01/predictions.csv"),
            format!("outputs/{job}/-1/predictions.csv"),
            format!("outputs/{job}/1/x/predictions.csv"),
            "outputs/not-a-uuid/1/predictions.csv".to_string(),
            format!("models/{job}/1/model.bin"),
            "models/readme.safetensors".to_string(),
            format!("inputs/{job}/1/predictions.csv"),
        ] {
            assert_eq!(written_by(&uri, &below), None, "{below}");
        }
    }
}
