//! Code shared by the gpuq API and workers: domain types, configuration, the Postgres layer
//! (the only place with SQL), the AMQP topology, S3 access and the input data readers.

pub mod config;
pub mod dataset;
pub mod db;
pub mod domain;
pub mod params;
pub mod queue;
pub mod reaper;
pub mod storage;
pub mod telemetry;

pub use domain::{Algorithm, JobError, JobId, JobStatus, JobType, ModelId, S3Uri};
