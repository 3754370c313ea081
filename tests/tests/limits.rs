//! Limits that hold before authentication and on long-polls: failed key attempts per client
//! address (answered before any key lookup), waiting requests per tenant, and waiters woken by
//! NOTIFY alone. Against the real Postgres and RabbitMQ; no worker runs, so jobs stay queued.

use gpuq_tests::{Options, StatusCode, TestApp};
use serde_json::{Value, json};
use sqlx::Connection;
use std::net::IpAddr;
use std::time::{Duration, Instant};

fn train_body() -> Value {
    json!({"type": "train", "algorithm": "logreg", "input": {"rows": [[0.0, 1.0], [1.0, 0.0]], "labels": [0, 1]}})
}

/// A client whose connections come from `address` (any of 127.0.0.0/8 reaches the test API).
fn client_from(address: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(address.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_keys_from_one_address_get_429_without_a_key_lookup_once_its_failures_are_spent() {
    let app = TestApp::spawn_with(Options {
        workers: 0,
        auth_failure_limit: (0.5, 5),
        ..Options::default()
    })
    .await;
    let url = format!("{}/v1/jobs", app.url);
    // Well formed, so each attempt costs a lookup (a malformed key is refused without one).
    let unknown = &format!("Bearer gpuq_0011223344556677_{}", "ab".repeat(32));
    let here = client_from("127.0.0.1");
    for _ in 0..5 {
        let (s, b) = app
            .send(here.get(&url).header("authorization", unknown))
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    }

    // With the keys table locked, a key lookup would hang: the address's next 100 attempts
    // are all answered at once.
    let mut lock = app.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let started = Instant::now();
    let attempts = (0..100).map(|_| here.get(&url).header("authorization", unknown).send());
    let answers = futures_util::future::join_all(attempts).await;
    let elapsed = started.elapsed();
    for answer in answers {
        let r = answer.expect("an answer while the keys table is locked: no lookup was made");
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=2).contains(&retry), "Retry-After {retry}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    }
    let lookups_waiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE relation = 'api_keys'::regclass AND NOT granted",
    )
    .fetch_one(&mut *lock)
    .await
    .unwrap();
    assert_eq!(lookups_waiting, 0);
    lock.rollback().await.unwrap();
    eprintln!("100 attempts with an unknown key answered 429 in {elapsed:?}, none looked up");

    // Another address has its budget of its own; from there the real key works.
    let there = client_from("127.0.0.2");
    let (s, _) = app
        .send(there.get(&url).header("authorization", unknown))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let real = format!("Bearer {}", app.key);
    let (s, _) = app
        .send(there.get(&url).header("authorization", &real))
        .await;
    assert_eq!(s, StatusCode::OK);
    // Until the spent address's budget refills, even a real key from it waits: no key can be
    // told from a guess without the lookup the limit is there to spare.
    let (s, _) = app
        .send(here.get(&url).header("authorization", &real))
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = TestApp::spawn_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let anonymous = reqwest::Client::new();
    for scheme in ["bearer", "BEARER", "bEaReR"] {
        let (s, b) = app
            .send(
                anonymous
                    .get(format!("{}/v1/jobs", app.url))
                    .header("authorization", format!("{scheme} {}", app.key)),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{scheme}: {b}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_may_have_only_so_many_requests_waiting_and_a_hung_up_one_frees_its_place() {
    let app = TestApp::spawn_with(Options {
        workers: 0,
        max_waiters_per_tenant: 3,
        ..Options::default()
    })
    .await;
    let job = app.submit(train_body()).await;
    let id = job["id"].as_str().unwrap().to_string();
    let wait_url = |secs: f64| format!("{}/v1/jobs/{id}?wait={secs}", app.url);
    let waiting: Vec<_> = (0..3)
        .map(|_| tokio::spawn(app.client.get(wait_url(30.0)).send()))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let r = app.client.get(wait_url(5.0)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "1");
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "too_many_waiters", "{b}");
    // A submit that asks to wait is refused before anything is recorded.
    let (s, b) = app
        .send(
            app.client
                .post(format!("{}/v1/jobs", app.url))
                .header("prefer", "wait=5")
                .json(&train_body()),
        )
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("too_many_waiters")),
        "{b}"
    );
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 1);
    // Without waiting, everything works; another tenant waits within its own cap.
    let (s, _) = app.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    let second = app.submit(train_body()).await;
    let beta = app.client_for("beta").await;
    let (s, _) = app
        .send(
            beta.post(format!("{}/v1/jobs", app.url))
                .header("prefer", "wait=0.2")
                .json(&train_body()),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);

    // The job finishes: the three waiters return with it, and their places are free again.
    let (s, _) = app
        .send(app.client.post(format!("{}/v1/jobs/{id}/cancel", app.url)))
        .await;
    assert_eq!(s, StatusCode::OK);
    for w in waiting {
        let r = w.await.unwrap().unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.json::<Value>().await.unwrap()["status"], "canceled");
    }
    let (s, _) = app.get(&format!("/v1/jobs/{id}?wait=1")).await;
    assert_eq!(s, StatusCode::OK);

    // Three clients that give up waiting on the second job hang up: their places come back.
    let second = second["id"].as_str().unwrap();
    let impatient: Vec<_> = (0..3)
        .map(|_| {
            let request = app
                .client
                .get(format!("{}/v1/jobs/{second}?wait=30", app.url))
                .timeout(Duration::from_millis(300));
            tokio::spawn(request.send())
        })
        .collect();
    for w in impatient {
        assert!(w.await.unwrap().unwrap_err().is_timeout());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (s, b) = app.get(&format!("/v1/jobs/{second}?wait=0.2")).await;
    assert_eq!(s, StatusCode::OK, "{b}");
}

#[tokio::test(flavor = "multi_thread")]
async fn waiters_read_nothing_while_they_wait_and_wake_as_soon_as_their_job_finishes() {
    let mut options = Options {
        workers: 0,
        ..Options::default()
    };
    // The API's reaper would read the jobs table meanwhile: not during this test.
    options.lifecycle.reaper_interval = Duration::from_secs(600);
    let app = TestApp::spawn_with(options).await;
    let job = app.submit(train_body()).await;
    let id: gpuq_shared::JobId = job["id"].as_str().unwrap().parse().unwrap();
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let request = app.client.get(format!("{}/v1/jobs/{id}?wait=30", app.url));
            tokio::spawn(async move {
                let r = request.send().await.unwrap();
                let at = Instant::now();
                (r.status(), r.json::<Value>().await.unwrap(), at)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Over 3 s, no connection to this test's database runs a statement (watched from a
    // connection of its own: `state_change` moves with every statement a backend runs).
    let mut watch = sqlx::PgConnection::connect(&app.database_url)
        .await
        .unwrap();
    let since: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&mut watch)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let busy: Vec<String> = sqlx::query_scalar(
        "SELECT left(query, 100) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND state_change > $1",
    )
    .bind(since)
    .fetch_all(&mut watch)
    .await
    .unwrap();
    assert!(
        busy.is_empty(),
        "statements ran while 10 requests waited: {busy:#?}"
    );

    // The job finishes: every waiter has it at once.
    let finished = Instant::now();
    gpuq_shared::db::job_set_canceled(&app.pool, &app.tenant, id)
        .await
        .unwrap();
    let mut slowest = Duration::ZERO;
    for w in waiters {
        let (status, job, at) = w.await.unwrap();
        assert_eq!(
            (status, job["status"].as_str()),
            (StatusCode::OK, Some("canceled"))
        );
        slowest = slowest.max(at.duration_since(finished));
    }
    eprintln!("10 waiters woke at most {slowest:?} after their job was canceled");
    // About 10 ms on a quiet machine; the bound leaves room for a loaded one (and is far under
    // what a once-a-second re-read would take on average).
    assert!(slowest < Duration::from_millis(250), "{slowest:?}");
}

/// The listener's connection is cut in the very transaction that finishes a job: the waiter
/// still gets its job (the listener reconnects and everyone looks again), and the listener
/// listens again afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn a_waiter_still_wakes_when_the_listener_is_cut_off_as_its_job_finishes() {
    let app = TestApp::spawn_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let wait_on = |job: &Value| {
        let id = job["id"].as_str().unwrap();
        let request = app.client.get(format!("{}/v1/jobs/{id}?wait=30", app.url));
        tokio::spawn(async move {
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<Value>().await.unwrap()
        })
    };
    let job = app.submit(train_body()).await;
    let waiter = wait_on(&job);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // In one transaction, in one round trip, the job finishes and the listener's connection is
    // cut (waiting until it is gone).
    let script = format!(
        "BEGIN;
         UPDATE jobs SET status = 'canceled', finished_at = now() WHERE id = '{}';
         SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
          WHERE datname = current_database() AND query LIKE 'LISTEN%';
         COMMIT;",
        job["id"].as_str().unwrap()
    );
    let mut conn = app.pool.acquire().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(script))
        .execute(&mut *conn)
        .await
        .unwrap();
    let done = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter woke within 5 s")
        .unwrap();
    assert_eq!(done["status"], "canceled");

    // Listening again: the next job's waiter wakes as soon as it is canceled.
    let next = app.submit(train_body()).await;
    let waiter = wait_on(&next);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let id = next["id"].as_str().unwrap().parse().unwrap();
    let finished = Instant::now();
    gpuq_shared::db::job_set_canceled(&app.pool, &app.tenant, id)
        .await
        .unwrap();
    let done = waiter.await.unwrap();
    assert_eq!(done["status"], "canceled");
    let woke = finished.elapsed();
    eprintln!("after the listener came back, a waiter woke {woke:?} after its job finished");
    assert!(woke < Duration::from_millis(500), "{woke:?}");
}
