//! What the fuzz targets feed `gpuq-shared` and the invariants they check on every result.
//! `shared/tests/fuzz_corpus.rs` includes this file to replay `fuzz/seeds/` and
//! `fuzz/regressions/` with the very same checks.
//!
//! A csv or npy input is one options byte followed by the file:
//! bit 0 `require_label`; bits 1–2 the label column (`label`, `0`, `1`, `b`); bit 3 read
//! through a 7-byte `BufReader`, so lines and values straddle buffer refills; bit 4 tight
//! limits (4 rows, 3 features) instead of loose ones (1000 rows, 64 features).
//! A submit input is the whole body, checked against `SUBMIT_LIMITS`.

use gpuq_shared::JobError;
use gpuq_shared::config::Limits;
use gpuq_shared::dataset::{self, Table};
use gpuq_shared::job::{Input, Work};
use gpuq_shared::memory::Reservation;
use gpuq_shared::submit::{self, Submission, SubmitError};
use tokio::io::BufReader;

pub const LABEL_COLUMNS: [&str; 4] = ["label", "0", "1", "b"];

pub const SUBMIT_LIMITS: Limits = Limits {
    max_rows: 1000,
    max_features: 8,
    max_cells: 16,
    max_epochs: 1000,
    max_inline_values: 16,
    max_timeout_s: 3600,
};

/// How one csv/npy input is read (decoded from its first byte).
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub label_column: &'static str,
    pub require_label: bool,
    pub small_buffer: bool,
    pub limits: Limits,
}

/// Splits off the options byte; `None` for an empty input.
pub fn options(data: &[u8]) -> Option<(Options, &[u8])> {
    let (&b, body) = data.split_first()?;
    let (max_rows, max_features) = if b & 16 != 0 { (4, 3) } else { (1000, 64) };
    let options = Options {
        require_label: b & 1 != 0,
        label_column: LABEL_COLUMNS[usize::from((b >> 1) & 3)],
        small_buffer: b & 8 != 0,
        limits: Limits {
            max_rows,
            max_features,
            ..Limits::default()
        },
    };
    Some((options, body))
}

/// Runs a future to completion on this thread (the readers do no real I/O).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime");
    }
    RT.with(|rt| rt.block_on(f))
}

/// Reads `data` as csv and checks the result; true when it was accepted.
pub async fn check_csv(data: &[u8]) -> bool {
    let Some((o, body)) = options(data) else {
        return false;
    };
    let (label, require, limits) = (o.label_column, o.require_label, &o.limits);
    let memory = &mut Reservation::unlimited();
    let result = if o.small_buffer {
        dataset::read_csv(
            BufReader::with_capacity(7, body),
            label,
            require,
            limits,
            memory,
        )
        .await
    } else {
        dataset::read_csv(body, label, require, limits, memory).await
    };
    check_table(&o, &result);
    result.is_ok()
}

/// Reads `data` as .npy and checks the result; true when it was accepted.
pub async fn check_npy(data: &[u8]) -> bool {
    let Some((o, body)) = options(data) else {
        return false;
    };
    let (label, require, limits) = (o.label_column, o.require_label, &o.limits);
    let memory = &mut Reservation::unlimited();
    let result = if o.small_buffer {
        dataset::read_npy(
            BufReader::with_capacity(7, body),
            label,
            require,
            limits,
            memory,
        )
        .await
    } else {
        dataset::read_npy(body, label, require, limits, memory).await
    };
    check_table(&o, &result);
    result.is_ok()
}

pub fn check_table(o: &Options, result: &Result<Table, JobError>) {
    let t = match result {
        Ok(t) => t,
        Err(e) => return check_job_error(e),
    };
    let m = &t.features;
    assert!(
        m.rows >= 1 && m.cols >= 1,
        "empty table accepted: {o:?} {t:?}"
    );
    assert_eq!(
        m.data.len(),
        m.rows * m.cols,
        "data is not rows × cols: {o:?}"
    );
    assert_eq!(m.columns.len(), m.cols, "a name per column: {o:?}");
    assert!(
        m.rows <= o.limits.max_rows,
        "{} rows accepted: {o:?}",
        m.rows
    );
    assert!(
        m.cols <= o.limits.max_features,
        "{} features accepted: {o:?}",
        m.cols
    );
    assert!(
        m.rows * m.cols <= o.limits.max_cells,
        "{} cells accepted: {o:?}",
        m.rows * m.cols
    );
    assert!(
        m.data.iter().all(|v| v.is_finite()),
        "non-finite value: {o:?}"
    );
    if o.require_label {
        assert!(t.labels.is_some(), "required label missing but Ok: {o:?}");
    }
    if let Some(labels) = &t.labels {
        assert_eq!(labels.len(), m.rows, "a label per row: {o:?}");
        assert!(
            labels.iter().all(|v| v.is_finite()),
            "non-finite label: {o:?}"
        );
    }
}

pub fn check_job_error(e: &JobError) {
    assert!(!e.message.is_empty(), "blank error: {e:?}");
    // The input is in memory: nothing about it is a transient failure worth a retry.
    assert!(!e.retryable(), "in-memory input failed as retryable: {e:?}");
}

/// Parses `body` as a submit body and checks the result; true when it was accepted.
pub fn check_submit(body: &[u8]) -> bool {
    let limits = &SUBMIT_LIMITS;
    match submit::parse(body, limits) {
        Ok(s) => {
            check_submission(&s, limits);
            true
        }
        Err(e) => {
            check_submit_error(&e);
            false
        }
    }
}

pub fn check_submission(s: &Submission, limits: &Limits) {
    if let Some(t) = s.timeout_s {
        assert!(
            (1..=limits.max_timeout_s).contains(&t),
            "timeout_s {t} accepted"
        );
    }
    if let Some(n) = s.max_attempts {
        assert!((1..=20).contains(&n), "max_attempts {n} accepted");
    }
    match &s.spec.work {
        Work::Train(params) => {
            assert!(s.infer_algorithm.is_none(), "{s:?}");
            if let Some((field, n)) = params.passes() {
                assert!(n <= limits.max_epochs, "{field} {n} accepted");
            }
        }
        Work::Infer { .. } => {}
    }
    assert!(
        s.spec.params_json().is_object(),
        "params not normalised to an object: {s:?}"
    );
    match &s.spec.input {
        Input::Inline { rows, labels } => {
            let w = rows[0].len();
            assert!(w >= 1 && w <= limits.max_features, "width {w} accepted");
            assert!(
                rows.len() * w <= limits.max_inline_values,
                "{} rows accepted",
                rows.len()
            );
            assert!(rows.iter().all(|r| r.len() == w));
            if let Some(labels) = labels {
                assert_eq!(labels.len(), rows.len());
            }
        }
        Input::S3 { uri } => {
            assert!(uri.to_string().starts_with("s3://"), "uri {uri} accepted");
        }
    }
}

pub fn check_submit_error(e: &SubmitError) {
    let (code, message) = match e {
        SubmitError::BadRequest { code, message } => (code, message),
        SubmitError::Invalid { code, message, .. } => (code, message),
    };
    assert!(
        !code.as_str().is_empty() && !message.is_empty(),
        "blank error: {e:?}"
    );
}
