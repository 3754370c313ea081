//! Domain types: ids, job states, algorithm names and S3 URIs, each parsed once at the boundary.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! id_type {
    ($name:ident, $what:literal) => {
        #[doc = concat!("The id of a ", $what, " (a UUIDv7, so ids sort by creation time).")]
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
        )]
        #[cfg_attr(feature = "services", derive(sqlx::Type), sqlx(transparent))]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(JobId, "job");
id_type!(ModelId, "model");

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobType {
    Train,
    Infer,
}

impl JobType {
    pub fn as_str(self) -> &'static str {
        match self {
            JobType::Train => "train",
            JobType::Infer => "infer",
        }
    }
}

impl FromStr for JobType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "train" => Ok(JobType::Train),
            "infer" => Ok(JobType::Infer),
            other => Err(format!(
                "unknown job type `{other}` (expected `train` or `infer`)"
            )),
        }
    }
}

/// Where a job is in its lifecycle: `queued → running → succeeded | failed | canceled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Canceled => "canceled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Canceled
        )
    }
}

impl FromStr for JobStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "queued" => Ok(JobStatus::Queued),
            "running" => Ok(JobStatus::Running),
            "succeeded" => Ok(JobStatus::Succeeded),
            "failed" => Ok(JobStatus::Failed),
            "canceled" => Ok(JobStatus::Canceled),
            other => Err(format!(
                "unknown status `{other}` (expected queued, running, succeeded, failed or canceled)"
            )),
        }
    }
}

/// The algorithms gpuq can train and run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Multinomial logistic regression.
    Logreg,
    /// Multilayer perceptron classifier.
    Mlp,
    /// k-means clustering (k-means++ initialisation, Lloyd iterations).
    Kmeans,
    /// k-nearest-neighbour classifier.
    Knn,
    /// One-class anomaly detector trained on genuine samples only.
    Anomaly,
}

impl Algorithm {
    pub const ALL: [Algorithm; 5] = [
        Algorithm::Logreg,
        Algorithm::Mlp,
        Algorithm::Kmeans,
        Algorithm::Knn,
        Algorithm::Anomaly,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Logreg => "logreg",
            Algorithm::Mlp => "mlp",
            Algorithm::Kmeans => "kmeans",
            Algorithm::Knn => "knn",
            Algorithm::Anomaly => "anomaly",
        }
    }

    /// Whether training needs a label per row.
    pub fn needs_labels(self) -> bool {
        matches!(self, Algorithm::Logreg | Algorithm::Mlp | Algorithm::Knn)
    }
}

impl FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<_> = Algorithm::ALL.iter().map(|a| a.as_str()).collect();
                format!("unknown algorithm `{s}` (known: {})", known.join(", "))
            })
    }
}

macro_rules! display_as_str {
    ($($ty:ty),*) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}

display_as_str!(JobType, JobStatus, Algorithm);

/// An `s3://bucket/key` location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct S3Uri {
    pub bucket: String,
    pub key: String,
}

impl S3Uri {
    pub fn new(bucket: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            key: key.into(),
        }
    }
}

impl FromStr for S3Uri {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("s3://")
            .ok_or_else(|| format!("`{s}` is not an s3:// URI"))?;
        let (bucket, key) = rest
            .split_once('/')
            .ok_or_else(|| format!("`{s}` has no object key after the bucket"))?;
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err(format!("`{bucket}` is not a valid bucket name"));
        }
        if key.is_empty() || key.len() > 1024 {
            return Err(format!("`{s}` has an empty or over-long object key"));
        }
        Ok(Self::new(bucket, key))
    }
}

impl TryFrom<String> for S3Uri {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<S3Uri> for String {
    fn from(u: S3Uri) -> String {
        u.to_string()
    }
}

impl fmt::Display for S3Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_uri_parses_bucket_and_key() {
        let u: S3Uri = "s3://gpuq-dev/a/b.csv".parse().unwrap();
        assert_eq!(u.bucket, "gpuq-dev");
        assert_eq!(u.key, "a/b.csv");
        assert_eq!(u.to_string(), "s3://gpuq-dev/a/b.csv");
    }

    #[test]
    fn s3_uri_rejects_other_schemes_and_missing_keys() {
        assert!("http://x/y".parse::<S3Uri>().is_err());
        assert!("s3://bucket-only".parse::<S3Uri>().is_err());
        assert!("s3://bucket/".parse::<S3Uri>().is_err());
        assert!("s3://UPPER/key".parse::<S3Uri>().is_err());
    }

    #[test]
    fn unknown_algorithm_names_the_known_ones() {
        let err = "svm".parse::<Algorithm>().unwrap_err();
        assert!(err.contains("logreg"), "{err}");
        assert_eq!("logreg".parse::<Algorithm>().unwrap(), Algorithm::Logreg);
    }

    #[test]
    fn statuses_round_trip_and_know_terminal_states() {
        for s in ["queued", "running", "succeeded", "failed", "canceled"] {
            assert_eq!(s.parse::<JobStatus>().unwrap().as_str(), s);
        }
        assert!(JobStatus::Canceled.is_terminal());
        assert!(!JobStatus::Running.is_terminal());
    }
}
