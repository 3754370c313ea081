//! Faults in the shared services: RabbitMQ and PostgreSQL stopped and started under load, and
//! RabbitMQ's consumer timeout lowered below a job's length. These stop services every other
//! test uses, so they are `#[ignore]`d in the parallel run and `scripts/dev test` runs them
//! afterwards, one at a time (`--ignored --test-threads 1`).

use gpuq_tests::{
    Options, TestApp, postgres, rabbitmq, rabbitmq_eval, submit_batch_retrying, submit_retrying,
    wait_all,
};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
#[ignore = "stops the shared RabbitMQ and PostgreSQL: run by scripts/dev test, serially"]
async fn four_hundred_jobs_single_and_batched_across_a_rabbitmq_and_a_postgres_restart_all_succeed()
{
    let mut opts = Options {
        workers: 0,
        ..Options::default()
    };
    opts.lifecycle.lease = Duration::from_secs(10);
    let mut app = TestApp::spawn_with(opts).await;
    app.spawn_worker_process();
    app.spawn_worker_process();
    let trained = app.run(json!({"type": "train", "algorithm": "logreg", "params": {"epochs": 20},
        "input": {"rows": [[0.0, 1.0], [1.0, 0.0], [0.2, 0.8], [0.9, 0.1]], "labels": [0, 1, 0, 1]}})).await;
    assert_eq!(trained["status"], "succeeded", "{trained}");
    let model = trained["result"]["model_id"].as_str().unwrap().to_string();
    let app = Arc::new(app);
    let submitted = Arc::new(AtomicUsize::new(0));
    let unavailable = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    // Three submitters of single jobs at once (their submits share group commits) and one of
    // batches (the batch endpoint), all under idempotency keys, retried through the outages.
    let singles = (0..3u32).map(|t| {
        let (app, submitted, unavailable, model) =
            (app.clone(), submitted.clone(), unavailable.clone(), model.clone());
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in t * 100..(t + 1) * 100 {
                let body = if i.is_multiple_of(10) {
                    json!({"type": "train", "algorithm": "logreg", "params": {"epochs": 10},
                        "input": {"rows": [[0.0, 1.0], [1.0, 0.0]], "labels": [0, 1]}})
                } else {
                    json!({"type": "infer", "model_id": model, "input": {"rows": [[i as f64 / 300.0, 0.5]]}})
                };
                ids.push(submit_retrying(&app, &body, &format!("job-{i}"), &unavailable).await);
                submitted.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            ids
        })
    });
    let singles: Vec<_> = singles.collect();
    let batches = {
        let (app, submitted, unavailable, model) = (
            app.clone(),
            submitted.clone(),
            unavailable.clone(),
            model.clone(),
        );
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for b in 0..20u32 {
                let bodies: Vec<_> = (0..5)
                    .map(|i| {
                        json!({"type": "infer", "model_id": model,
                                    "input": {"rows": [[(b * 5 + i) as f64 / 100.0, 0.5]]}})
                    })
                    .collect();
                ids.extend(
                    submit_batch_retrying(&app, &bodies, &format!("batch-{b}"), &unavailable).await,
                );
                submitted.fetch_add(5, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1000)).await;
            }
            ids
        })
    };
    let reach = |n: usize| {
        let submitted = submitted.clone();
        async move {
            while submitted.load(Ordering::Relaxed) < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    reach(80).await;
    rabbitmq("stop_app");
    let t = Instant::now();
    let (s, b) = app.get("/readyz").await;
    let readyz_in = t.elapsed();
    assert_eq!(
        (s.as_u16(), b["error"]["checks"]["rabbitmq"].as_bool()),
        (503, Some(false)),
        "{b}"
    );
    // A submit while the broker is down is recorded at once; the reaper publishes it later.
    let t_submit = Instant::now();
    let during = app
        .submit(
            json!({"type": "train", "algorithm": "logreg", "params": {"epochs": 5},
            "input": {"rows": [[0.0], [1.0]], "labels": [0, 1]}}),
        )
        .await;
    let submit_in = t_submit.elapsed();
    assert!(
        submit_in < Duration::from_secs(3),
        "submit took {submit_in:?}"
    );
    println!("a submit while RabbitMQ was down answered 202 in {submit_in:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    rabbitmq("start_app");
    println!(
        "RabbitMQ down for {:?}; /readyz answered 503 in {readyz_in:?}",
        t.elapsed()
    );

    reach(260).await;
    assert!(
        submitted.load(Ordering::Relaxed) < 350,
        "the submitters should still be going when PostgreSQL stops"
    );
    postgres("stop");
    let t = Instant::now();
    let (s, b) = app.get("/v1/jobs").await;
    let unavailable_in = t.elapsed();
    assert_eq!(
        (s.as_u16(), b["error"]["code"].as_str()),
        (503, Some("unavailable")),
        "{b}"
    );
    assert!(
        unavailable_in < Duration::from_secs(5),
        "503 took {unavailable_in:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    postgres("start");
    println!(
        "PostgreSQL down for {:?}; the API answered 503 in {unavailable_in:?}",
        t.elapsed()
    );

    let mut ids = Vec::new();
    for s in singles {
        ids.extend(s.await.unwrap());
    }
    ids.extend(batches.await.unwrap());
    ids.push(during["id"].as_str().unwrap().to_string());
    let (succeeded, failed) = wait_all(&app, &ids, Duration::from_secs(300)).await;
    println!(
        "400 jobs (300 single, 100 in batches, +1 submitted while RabbitMQ was down): {succeeded} succeeded, {} not, in {:?}; the submitters met {} 503s",
        failed.len(),
        started.elapsed(),
        unavailable.load(Ordering::Relaxed)
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(
        unavailable.load(Ordering::Relaxed) > 0,
        "PostgreSQL's stop met submits in flight"
    );
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 401, "one job per idempotency key");
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 402, "no job doubled by retried submissions");
    let doubled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT job_id FROM models GROUP BY job_id HAVING count(*) > 1) d",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let models: i64 = sqlx::query_scalar("SELECT count(*) FROM models")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!((models, doubled), (32, 0), "one model per train job");
}

/// Lowers RabbitMQ's consumer timeout for the length of a test, restoring it on drop.
struct ConsumerTimeout {
    before: String,
    tick_before: String,
}

impl ConsumerTimeout {
    fn lower_to(ms: u32) -> Self {
        let me = Self {
            before: rabbitmq_eval("application:get_env(rabbit, consumer_timeout)."),
            tick_before: rabbitmq_eval("application:get_env(rabbit, channel_tick_interval)."),
        };
        rabbitmq_eval(&format!(
            "application:set_env(rabbit, consumer_timeout, {ms})."
        ));
        // The broker checks the timeout on each channel tick (60 s by default).
        rabbitmq_eval("application:set_env(rabbit, channel_tick_interval, 500).");
        me
    }
}

impl Drop for ConsumerTimeout {
    fn drop(&mut self) {
        for (key, before) in [
            ("consumer_timeout", &self.before),
            ("channel_tick_interval", &self.tick_before),
        ] {
            let restore = match before
                .strip_prefix("{ok,")
                .and_then(|v| v.strip_suffix('}'))
            {
                Some(v) => format!("application:set_env(rabbit, {key}, {v})."),
                None => format!("application:unset_env(rabbit, {key})."),
            };
            rabbitmq_eval(&restore);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "changes the shared RabbitMQ's consumer timeout: run by scripts/dev test, serially"]
async fn jobs_longer_than_rabbitmqs_consumer_timeout_still_finish() {
    use futures_util::StreamExt;
    let _lowered = ConsumerTimeout::lower_to(2000);
    let mut app = TestApp::spawn_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;

    // The lowered timeout is in force: a delivery held unacked gets its channel closed.
    let conn = gpuq_shared::queue::connect(app.settings.amqp_url.expose())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let probe = format!("{}.probe", app.settings.queue);
    gpuq_shared::queue::declare(&channel, &probe).await.unwrap();
    channel
        .basic_publish(
            "".into(),
            probe.as_str().into(),
            Default::default(),
            b"x",
            Default::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let mut held = channel
        .basic_consume(
            probe.as_str().into(),
            "probe".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let _delivery = held.next().await.unwrap().unwrap();
    let t = Instant::now();
    while channel.status().connected() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the broker never enforced the timeout"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "the broker closed a channel holding an unacked delivery after {:?}",
        t.elapsed()
    );

    // A worker with one slot: a job several times longer than the timeout, and one behind it.
    app.spawn_worker_process_with(&[("GPUQ_WORKER_CONCURRENCY", "1")]);
    let train = app
        .put("digits/train.csv", gpuq_tests::digits("train"))
        .await;
    let long = app
        .submit(json!({"type": "train", "algorithm": "logreg",
        "input": {"uri": train}, "params": {"epochs": 500}}))
        .await;
    let next = app
        .submit(
            json!({"type": "train", "algorithm": "logreg", "params": {"epochs": 5},
        "input": {"rows": [[0.0], [1.0]], "labels": [0, 1]}}),
        )
        .await;
    let t = Instant::now();
    let long = app.wait(&long, Duration::from_secs(300)).await;
    let took = t.elapsed();
    let next = app.wait(&next, Duration::from_secs(300)).await;
    println!("the long job took {took:?} against a 2 s consumer timeout");
    assert_eq!(long["status"], "succeeded", "{long}");
    assert_eq!(long["attempt"], 1, "never handed on: {long}");
    assert!(
        took > Duration::from_secs(4),
        "the job was not longer than the timeout: {took:?}"
    );
    assert_eq!(next["status"], "succeeded", "{next}");
}
