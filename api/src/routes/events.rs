//! `GET /v1/jobs/{id}/events`: a job's progress as Server-Sent Events. One `progress` event per
//! change of its state or progress, then one `completed`, `failed` or `canceled` event carrying
//! the job as `GET /v1/jobs/{id}` returns it, and the stream ends.
//!
//! A progress event's id is `{attempt}.{fraction in millionths}`; a client that reconnects with
//! `Last-Event-ID` gets only progress past it (and the final event, whenever the job ends). A
//! stream holds one of the tenant's waiting places (`GPUQ_MAX_WAITERS_PER_TENANT`) while open.

use super::parse_id;
use crate::AppState;
use crate::auth::Tenant;
use crate::error::ApiError;
use crate::view;
use crate::waiters::WaiterSlot;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use gpuq_shared::db::{self, JobRecord};
use gpuq_shared::{JobId, JobStatus};
use serde_json::json;
use std::convert::Infallible;
use std::time::Duration;

/// How often an open stream re-reads its job's progress (its end wakes it at once).
const POLL: Duration = Duration::from_millis(250);

/// Where a progress event stands: its attempt, then its fraction in millionths.
type Mark = (i32, u32);

fn mark_of(job: &JobRecord) -> Mark {
    let fraction = job
        .progress
        .as_ref()
        .and_then(|p| p.get("fraction"))
        .and_then(|f| f.as_f64())
        .unwrap_or(0.0);
    (job.attempt, (fraction.clamp(0.0, 1.0) * 1e6).round() as u32)
}

fn parse_mark(id: &str) -> Option<Mark> {
    let (attempt, millionths) = id.split_once('.')?;
    Some((attempt.parse().ok()?, millionths.parse().ok()?))
}

struct Stream_ {
    s: AppState,
    tenant: String,
    id: JobId,
    /// The last progress sent (or resumed from), and the state it was sent in.
    sent: Option<(Mark, JobStatus, Option<serde_json::Value>)>,
    resumed: Option<Mark>,
    done: bool,
    _slot: WaiterSlot,
}

/// The next event of the stream, waiting for one; `None` once the final event has gone.
async fn next(mut st: Stream_) -> Option<(Event, Stream_)> {
    if st.done {
        return None;
    }
    loop {
        let watch = st.s.waiters.watch(&[st.id]);
        let job = match db::job_get_for(&st.s.pool, &st.tenant, st.id).await {
            Ok(Some(job)) => job,
            // Deleted meanwhile, or the database is away: the stream ends; a client reconnects.
            Ok(None) | Err(_) => return None,
        };
        if job.status.is_terminal() {
            let name = match job.status {
                JobStatus::Succeeded => "completed",
                JobStatus::Failed => "failed",
                _ => "canceled",
            };
            st.done = true;
            let event = Event::default()
                .event(name)
                .id("end")
                .data(view::job(&job).to_string());
            return Some((event, st));
        }
        let mark = mark_of(&job);
        let changed = match &st.sent {
            None => true,
            Some((m, status, progress)) => {
                *m != mark || *status != job.status || *progress != job.progress
            }
        };
        let past_resume = st.resumed.is_none_or(|r| mark > r);
        if changed && past_resume {
            st.sent = Some((mark, job.status, job.progress.clone()));
            let progress = job.progress.clone().unwrap_or_else(|| json!({}));
            let event = Event::default()
                .event("progress")
                .id(format!("{}.{}", mark.0, mark.1))
                .data(
                    json!({
                        "id": job.id.to_string(),
                        "status": job.status,
                        "attempt": job.attempt,
                        "fraction": progress.get("fraction").cloned().unwrap_or(json!(0.0)),
                        "message": progress.get("message").cloned().unwrap_or(json!(null)),
                    })
                    .to_string(),
                );
            return Some((event, st));
        }
        // Nothing new: wait for the job's end, or a while for its progress.
        if watch.wait(&st.s.pool, POLL, vec![job]).await.is_err() {
            tokio::time::sleep(POLL).await;
        }
    }
}

/// `GET /v1/jobs/{id}/events`.
pub async fn stream(
    State(s): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id: JobId = parse_id(&id, "job")?;
    db::job_get_for(&s.pool, &tenant.id, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no job {id}")))?;
    let resumed = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_mark);
    let slot = s.waiters.admit(&tenant.id)?;
    let state = Stream_ {
        s,
        tenant: tenant.id,
        id,
        sent: None,
        resumed,
        done: false,
        _slot: slot,
    };
    let events = futures_util::stream::unfold(state, |st| async move {
        next(st).await.map(|(e, st)| (Ok(e), st))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::parse_mark;

    #[test]
    fn an_event_id_is_an_attempt_and_millionths() {
        assert_eq!(parse_mark("2.500000"), Some((2, 500_000)));
        assert_eq!(parse_mark("end"), None);
        assert_eq!(parse_mark("1.x"), None);
        assert!(parse_mark("1.5").unwrap() < parse_mark("2.0").unwrap());
    }
}
