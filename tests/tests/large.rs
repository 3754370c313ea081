//! Inputs too large for the worker and outputs too large for one PUT, against a real worker
//! process: a hostile input fails `input_too_large` while it streams, with the worker's memory
//! held to its budget, and an output of several parts arrives whole.

use aws_sdk_s3::Client;
use gpuq_shared::dataset::read_csv;
use gpuq_shared::memory::Reservation;
use gpuq_shared::storage::MIN_PART_BYTES;
use gpuq_tests::{Options, TestApp, digits};
use gpuq_worker::algorithms::LoadedModel;
use gpuq_worker::gpu::Gpu;
use serde_json::json;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(240);

/// A line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    let kb: u64 = line.trim().trim_end_matches("kB").trim().parse().unwrap();
    kb * 1024
}

/// A header of `cols` columns (the last one `label`), then `rows` rows of small numbers.
fn wide_csv(cols: usize, rows: usize) -> Vec<u8> {
    let mut header: Vec<String> = (0..cols - 1).map(|c| format!("c{c}")).collect();
    header.push("label".into());
    let mut out = format!("{}\n", header.join(",")).into_bytes();
    let row = format!("{}1\n", "0,".repeat(cols - 1)).into_bytes();
    out.reserve(row.len() * rows);
    for _ in 0..rows {
        out.extend_from_slice(&row);
    }
    out
}

/// An `.npy` header claiming `shape`, followed by only `payload` bytes.
fn npy_claiming(shape: &str, payload: usize) -> Vec<u8> {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(vec![0u8; payload]);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_inputs_fail_input_too_large_while_streaming_within_the_workers_memory_budget() {
    const BUDGET: u64 = 64 << 20;
    let mut app = TestApp::spawn_with(Options {
        workers: 0,
        concurrency: 1,
        ..Options::default()
    })
    .await;
    let pid = app.spawn_worker_process_with(&[("GPUQ_WORKER_MEMORY_BYTES", &BUDGET.to_string())]);
    // A normal job first: the worker is up, its device ready, its footprint settled.
    let train = app.put("digits/train.csv", digits("train")).await;
    let normal = json!({"type": "train", "algorithm": "knn", "input": {"uri": train}});
    let warm = app.run(normal.clone()).await;
    assert_eq!(warm["status"], "succeeded", "{warm}");
    let baseline = status_bytes(pid, "VmHWM");

    // 60,000 columns and 1,500 rows: 360 MB of f32 once read, five times the budget.
    let wide = app.put("hostile/wide.csv", wide_csv(60_000, 1_500)).await;
    // A shape within every cap (100 M cells) claiming 400 MB, with 4 KB behind it.
    let claim = app
        .put("hostile/claim.npy", npy_claiming("(1000000, 100)", 4096))
        .await;
    let mut peak_rss = 0;
    let hostile = [
        (&wide, "label", "wide csv"),
        // `.npy` columns are named by index.
        (&claim, "99", "npy claiming a huge shape"),
    ];
    for (uri, label_column, what) in hostile {
        let job = app
            .submit(
                json!({"type": "train", "algorithm": "knn", "input": {"uri": uri},
                           "params": {"label_column": label_column}}),
            )
            .await;
        let started = Instant::now();
        let id = job["id"].as_str().unwrap().to_string();
        let job = loop {
            peak_rss = peak_rss.max(status_bytes(pid, "VmRSS"));
            let (_, j) = app.get(&format!("/v1/jobs/{id}")).await;
            if ["succeeded", "failed"].contains(&j["status"].as_str().unwrap()) {
                break j;
            }
            assert!(started.elapsed() < LIMIT, "{what}: still {j}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let took = started.elapsed();
        assert_eq!(job["status"], "failed", "{what}: {job}");
        assert_eq!(job["error"]["code"], "input_too_large", "{what}: {job}");
        assert!(
            took < Duration::from_secs(30),
            "{what}: failed only after {took:?}"
        );
        eprintln!(
            "{what}: input_too_large after {took:?}: {}",
            job["error"]["message"]
        );
    }
    let peak = status_bytes(pid, "VmHWM");
    eprintln!(
        "worker memory: {} MiB before, peak {} MiB (VmHWM), VmRSS sampled up to {} MiB; budget {} MiB",
        baseline >> 20,
        peak >> 20,
        peak_rss >> 20,
        BUDGET >> 20
    );
    // What the inputs held stayed within the budget; the rest of the growth is the readers'
    // buffers, well short of what reading either input whole would have taken.
    assert!(
        peak.saturating_sub(baseline) < BUDGET + (32 << 20),
        "the worker grew by {} MiB with a {} MiB budget",
        (peak - baseline) >> 20,
        BUDGET >> 20
    );
    // And it keeps serving.
    assert!(!app.worker_exited(pid));
    let after = app.run(normal).await;
    assert_eq!(after["status"], "succeeded", "{after}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_output_of_several_parts_arrives_whole_and_equals_the_models_predictions() {
    let mut app = TestApp::spawn_with(Options {
        workers: 0,
        concurrency: 1,
        ..Options::default()
    })
    .await;
    app.spawn_worker_process_with(&[("GPUQ_OUTPUT_PART_BYTES", &MIN_PART_BYTES.to_string())]);
    // k = 50 neighbours of 100 references: about 160 bytes of CSV a row, 12 MB for 75,000.
    let point = |i: usize| {
        let x = (i * 7919 % 1000) as f32 / 100.0;
        let y = (i * 104_729 % 1000) as f32 / 100.0;
        (x, y, (x * y).sin(), (x - y).cos())
    };
    let mut train = String::from("a,b,c,d,label\n");
    for i in 0..100 {
        let (a, b, c, d) = point(i);
        train.push_str(&format!("{a},{b},{c},{d},{}\n", i % 3));
    }
    let mut queries = String::from("a,b,c,d\n");
    for i in 0..75_000 {
        let (a, b, c, d) = point(i + 1000);
        queries.push_str(&format!("{a},{b},{c},{d}\n"));
    }
    let train = app.put("out/train.csv", train.into_bytes()).await;
    let input = app
        .put("out/queries.csv", queries.clone().into_bytes())
        .await;
    let job = app
        .run(
            json!({"type": "train", "algorithm": "knn", "input": {"uri": train},
                    "params": {"k": 50}}),
        )
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let model_id = job["result"]["model_id"].as_str().unwrap();
    let job = app
        .run(json!({"type": "infer", "model_id": model_id, "input": {"uri": input}}))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["rows"], 75_000);
    let output_uri: gpuq_shared::S3Uri = job["result"]["output_uri"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let output = app.get_object(&output_uri.to_string()).await;

    // Uploaded in parts: a multipart object's ETag ends in `-<parts>`.
    let parts = output.len().div_ceil(MIN_PART_BYTES);
    assert!(parts >= 3, "the output is only {} bytes", output.len());
    let conf = aws_config::load_from_env().await;
    let s3 = Client::from_conf(
        aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(true)
            .build(),
    );
    let head = s3
        .head_object()
        .bucket(&output_uri.bucket)
        .key(&output_uri.key)
        .send()
        .await
        .unwrap();
    let etag = head
        .e_tag()
        .unwrap_or_default()
        .trim_matches('"')
        .to_string();
    assert!(
        etag.ends_with(&format!("-{parts}")),
        "ETag {etag}: not {parts} parts"
    );
    eprintln!(
        "output: {} bytes in {parts} parts (ETag {etag})",
        output.len()
    );
    assert_eq!(head.content_type(), Some("text/csv"));

    // Row for row what the model predicts, run here on the same input.
    let (_, model) = app.get(&format!("/v1/models/{model_id}")).await;
    let artifact = app
        .get_object(model["artifact_uri"].as_str().unwrap())
        .await;
    let want = tokio::task::spawn_blocking(move || -> String {
        let gpu = Gpu::new().expect("a Vulkan device");
        let model = LoadedModel::load(&gpu, &artifact).unwrap();
        let table = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(read_csv(
                queries.as_bytes(),
                "label",
                false,
                &Default::default(),
                &mut Reservation::unlimited(),
            ))
            .unwrap();
        model
            .infer(
                &gpu,
                &table,
                false,
                &gpuq_worker::algorithms::Control::default(),
            )
            .unwrap()
            .csv
            .text()
            .to_string()
    })
    .await
    .unwrap();
    let got = String::from_utf8(output).unwrap();
    assert_eq!(got.lines().count(), 75_001);
    for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
        assert_eq!(g, w, "line {i} of the output");
    }
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_writer_puts_a_small_object_whole_and_an_aborted_one_leaves_nothing() {
    let app = TestApp::spawn_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let at = |name: &str| {
        let key = app.settings.object_key(&format!("writer/{name}"));
        gpuq_shared::S3Uri::new(&app.settings.bucket, key)
    };
    let mut small = app.storage.writer(&at("small"), "text/csv", MIN_PART_BYTES);
    small.write(b"a,b\n1,2\n").await.unwrap();
    assert_eq!(small.finish().await.unwrap(), 0, "one PUT");
    assert_eq!(
        app.get_object(&at("small").to_string()).await,
        b"a,b\n1,2\n"
    );

    let mut big = app.storage.writer(&at("big"), "text/csv", MIN_PART_BYTES);
    big.write(&vec![b'x'; MIN_PART_BYTES + 10]).await.unwrap();
    assert_eq!(big.parts(), 1);
    big.abort().await;
    let gone = app.storage.get_bytes(&at("big")).await.unwrap_err();
    assert_eq!(gone.code, gpuq_shared::ErrorCode::InputNotFound, "{gone}");
}
