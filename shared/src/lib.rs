//! Code shared by the gpuq API, workers and scaler: domain types, configuration, the Postgres layer
//! (the only place with SQL), the AMQP topology, S3 access and the input data readers.

pub mod auth;
pub mod config;
pub mod dataset;
#[cfg(feature = "services")]
pub mod db;
pub mod domain;
#[cfg(feature = "services")]
pub mod election;
pub mod error;
pub mod job;
#[cfg(feature = "services")]
pub mod maintenance;
pub mod memory;
pub mod objects;
#[cfg(feature = "services")]
pub mod orphans;
pub mod params;
#[cfg(feature = "services")]
pub mod queue;
#[cfg(feature = "services")]
pub mod reaper;
#[cfg(feature = "services")]
pub mod retention;
#[cfg(feature = "services")]
pub mod shutdown;
#[cfg(feature = "services")]
pub mod storage;
pub mod submit;
#[cfg(feature = "services")]
pub mod telemetry;

pub use domain::{Algorithm, JobId, JobStatus, JobType, ModelId, S3Uri};
pub use error::{ErrorCode, ErrorKind, JobError};
