//! Fleets: one anomaly detector per group of rows, trained in one job, stored as one artifact and
//! scored by member or by each row's group — held to the same detectors trained alone and to the
//! published keystroke table, through the whole path (API → queue → worker → S3 → Postgres).

use gpuq_tests::{TestApp, data, reference};
use reqwest::StatusCode;
use safetensors::SafeTensors;
use serde_json::{Value, json};
use std::time::Duration;

const METHODS: [&str; 4] = [
    "scaled_manhattan",
    "mahalanobis",
    "zscore",
    "nearest_neighbor_mahalanobis",
];
const SUBJECTS: [&str; 3] = ["s002", "s003", "s004"];

/// The CSVs of `parts` (same header) as one, with a first column `subject` naming each part.
fn with_subject(parts: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = String::new();
    for (i, (subject, bytes)) in parts.iter().enumerate() {
        let text = String::from_utf8(bytes.clone()).unwrap();
        let mut lines = text.lines();
        let header = lines.next().unwrap();
        if i == 0 {
            out += &format!("subject,{header}\n");
        }
        for line in lines.filter(|l| !l.trim().is_empty()) {
            out += &format!("{subject},{line}\n");
        }
    }
    out.into_bytes()
}

fn keystrokes(subject: &str, part: &str) -> Vec<u8> {
    data(&format!("data/keystroke/{subject}_{part}.csv"))
}

/// The first column of an output CSV.
fn scores(bytes: &[u8]) -> Vec<f64> {
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect()
}

async fn output(app: &TestApp, job: &Value) -> Vec<f64> {
    assert_eq!(job["status"], "succeeded", "{job}");
    scores(
        &app.get_object(job["result"]["output_uri"].as_str().unwrap())
            .await,
    )
}

/// Trains a fleet; returns the finished job.
async fn train_fleet(app: &TestApp, params: Value, uri: &str) -> Value {
    let job = app
        .run(json!({"type": "train", "algorithm": "anomaly", "params": params, "input": {"uri": uri}}))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    job
}

/// A tensor of the artifact as f64 (f32 and u32 tensors), with its shape.
fn tensor(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f64>) {
    let t = st.tensor(name).unwrap();
    let values = t
        .data()
        .chunks_exact(4)
        .map(|c| match t.dtype() {
            safetensors::Dtype::U32 => u32::from_le_bytes(c.try_into().unwrap()) as f64,
            _ => f32::from_le_bytes(c.try_into().unwrap()) as f64,
        })
        .collect();
    (t.shape().to_vec(), values)
}

/// The scores of `rows` (features only) of groups `groups` computed from the fleet artifact
/// alone, in f64, the way a NumPy user would (`tests/reference/check_fleet_artifact.py`).
fn scores_from_artifact(bytes: &[u8], rows: &[Vec<f64>], groups: &[&str]) -> Vec<f64> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    let parse = |k: &str| serde_json::from_str::<Value>(&meta[k]).unwrap();
    let slots: Vec<String> = serde_json::from_value(parse("groups")).unwrap();
    let method = parse("method");
    let threshold = parse("z_threshold").as_f64().unwrap();
    let (shape, mean) = tensor(&st, "mean");
    let f = shape[1];
    rows.iter()
        .zip(groups)
        .map(|(x, g)| {
            let s = slots.iter().position(|k| k == g).unwrap();
            let d: Vec<f64> = (0..f).map(|j| x[j] - mean[s * f + j]).collect();
            match method.as_str().unwrap() {
                "scaled_manhattan" | "zscore" => {
                    let scale = tensor(&st, "scale").1;
                    let z = (0..f).map(|j| d[j].abs() / scale[s * f + j]);
                    if method == "zscore" {
                        z.filter(|v| *v > threshold).count() as f64
                    } else {
                        z.sum()
                    }
                }
                _ => {
                    let w = tensor(&st, "whitening").1;
                    let z: Vec<f64> = (0..f)
                        .map(|c| (0..f).map(|j| d[j] * w[s * f * f + j * f + c]).sum())
                        .collect();
                    if method == "mahalanobis" {
                        return z.iter().map(|v| v * v).sum::<f64>().sqrt();
                    }
                    let refs = tensor(&st, "references").1;
                    let offsets = tensor(&st, "reference_offsets").1;
                    (offsets[s] as usize..offsets[s + 1] as usize)
                        .map(|r| {
                            (0..f)
                                .map(|c| (z[c] - refs[r * f + c]).powi(2))
                                .sum::<f64>()
                        })
                        .fold(f64::INFINITY, f64::min)
                        .sqrt()
                }
            }
        })
        .collect()
}

/// Largest |a − b| / |b| over the rows (|b| below 1e-12 counts as 1e-12).
fn max_relative(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1e-12))
        .fold(0.0, f64::max)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_keystroke_fleet_reproduces_the_eer_table_and_each_member_scores_as_its_subject_trained_alone()
 {
    let app = TestApp::spawn().await;
    let expected = reference("anomaly.json");
    let train_parts: Vec<(&str, Vec<u8>)> = SUBJECTS
        .iter()
        .map(|s| (*s, keystrokes(s, "train")))
        .collect();
    let test_parts: Vec<(&str, Vec<u8>)> = SUBJECTS
        .iter()
        .map(|s| (*s, keystrokes(s, "test")))
        .collect();
    let fleet_train = app
        .put("ks/fleet_train.csv", with_subject(&train_parts))
        .await;
    let fleet_test = app
        .put("ks/fleet_test.csv", with_subject(&test_parts))
        .await;
    let mut subject_uris = Vec::new();
    for s in SUBJECTS {
        subject_uris.push((
            app.put(&format!("ks/{s}_train.csv"), keystrokes(s, "train"))
                .await,
            app.put(&format!("ks/{s}_test.csv"), keystrokes(s, "test"))
                .await,
        ));
    }
    for method in METHODS {
        let job = train_fleet(
            &app,
            json!({"method": method, "group_column": "subject"}),
            &fleet_train,
        )
        .await;
        let r = &job["result"];
        let fleet_id = r["fleet_id"].as_str().unwrap();
        assert_eq!(r["groups"], 3, "{r}");
        assert_eq!(r["metrics"]["failed_groups"], 0, "{r}");
        assert_eq!(r["metrics"]["rows_per_group"]["min"], 200, "{r}");
        // The fleet as a whole: every test row scored by its own subject's detector.
        let whole = app
            .run(json!({"type": "infer", "fleet_id": fleet_id, "input": {"uri": fleet_test}}))
            .await;
        let whole_uri = whole["result"]["output_uri"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let whole = output(&app, &whole).await;
        // The artifact alone, in f64, reproduces gpuq's scores.
        let (_, fleet) = app.get(&format!("/v1/fleets/{fleet_id}")).await;
        let artifact = app
            .get_object(fleet["artifact_uri"].as_str().unwrap())
            .await;
        let test_csv = String::from_utf8(with_subject(&test_parts)).unwrap();
        let (mut rows, mut groups) = (Vec::new(), Vec::new());
        for line in test_csv.lines().skip(1) {
            let mut cells = line.split(',');
            groups.push(cells.next().unwrap());
            let mut v: Vec<f64> = cells.map(|c| c.parse().unwrap()).collect();
            v.pop(); // the label
            rows.push(v);
        }
        let from_artifact = scores_from_artifact(&artifact, &rows, &groups);
        let rel = max_relative(&whole, &from_artifact);
        eprintln!(
            "{method}: the artifact alone (f64) vs gpuq, largest relative difference {rel:.2e}"
        );
        assert!(rel <= 1e-5, "{method}: {rel}");
        if let Ok(dir) = std::env::var("GPUQ_FLEET_ARTIFACT_DIR") {
            // For tests/reference/check_fleet_artifact.py.
            let dir = std::path::Path::new(&dir);
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(format!("{method}.safetensors")), &artifact).unwrap();
            std::fs::write(dir.join("input.csv"), &test_csv).unwrap();
            std::fs::write(
                dir.join(format!("{method}.scores.csv")),
                app.get_object(&whole_uri).await,
            )
            .unwrap();
        }
        let mut at = 0;
        for (subject, (train, test)) in SUBJECTS.iter().zip(&subject_uris) {
            let member = app
                .run(json!({"type": "infer", "fleet_id": fleet_id, "group": subject, "input": {"uri": test}}))
                .await;
            let want = &expected[*subject][method];
            let (eer, far) = (
                member["result"]["equal_error_rate"].as_f64().unwrap(),
                member["result"]["zero_miss_false_alarm_rate"]
                    .as_f64()
                    .unwrap(),
            );
            eprintln!(
                "{subject} {method}: EER {eer:.4} (reference {:.4}), zero-miss FAR {far:.4} (reference {:.4})",
                want["eer"], want["zero_miss_far"]
            );
            assert!((eer - want["eer"].as_f64().unwrap()).abs() < 5e-5);
            assert!((far - want["zero_miss_far"].as_f64().unwrap()).abs() < 5e-5);
            let member = output(&app, &member).await;
            // The same subject trained alone, as its own model.
            let alone = app
                .run(json!({"type": "train", "algorithm": "anomaly", "params": {"method": method}, "input": {"uri": train}}))
                .await;
            let model_id = alone["result"]["model_id"].as_str().unwrap();
            let alone = app
                .run(json!({"type": "infer", "model_id": model_id, "input": {"uri": test}}))
                .await;
            let alone = output(&app, &alone).await;
            let rel = max_relative(&member, &alone);
            eprintln!("{subject} {method}: member vs alone, largest relative difference {rel:.2e}");
            assert!(rel <= 1e-6, "{subject} {method}: {rel}");
            assert_eq!(
                &whole[at..at + member.len()],
                &member[..],
                "{subject} {method}: scored by group and by member"
            );
            at += member.len();
        }
        assert_eq!(at, whole.len());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn logins_of_many_members_sent_as_one_batch_score_as_each_member_alone() {
    let app = TestApp::spawn().await;
    let train_parts: Vec<(&str, Vec<u8>)> = SUBJECTS
        .iter()
        .map(|s| (*s, keystrokes(s, "train")))
        .collect();
    let fleet_train = app
        .put("ks/fleet_train.csv", with_subject(&train_parts))
        .await;
    let job = train_fleet(
        &app,
        json!({"method": "mahalanobis", "group_column": "subject"}),
        &fleet_train,
    )
    .await;
    let fleet_id = job["result"]["fleet_id"].as_str().unwrap().to_string();
    // 16 logins of each subject, interleaved, each a job of one row (48: the test API's batch
    // limit is 50).
    let mut items = Vec::new();
    let mut want = Vec::new();
    for (subject, _) in &train_parts {
        let test = keystrokes(subject, "test");
        let uri = app
            .put(&format!("ks/{subject}_test.csv"), test.clone())
            .await;
        let member = app
            .run(json!({"type": "infer", "fleet_id": fleet_id, "group": subject, "input": {"uri": uri}}))
            .await;
        want.push(output(&app, &member).await);
    }
    let rows: Vec<Vec<Vec<f64>>> = SUBJECTS
        .iter()
        .map(|s| {
            String::from_utf8(keystrokes(s, "test"))
                .unwrap()
                .lines()
                .skip(1)
                .take(16)
                .map(|l| {
                    let mut v: Vec<f64> = l.split(',').map(|c| c.parse().unwrap()).collect();
                    v.pop(); // the label
                    v
                })
                .collect()
        })
        .collect();
    let mut expect = Vec::new();
    for i in 0..16 {
        for (s, subject) in SUBJECTS.iter().enumerate() {
            items.push(
                json!({"type": "infer", "fleet_id": fleet_id, "group": subject,
                              "input": {"rows": [rows[s][i]]}}),
            );
            expect.push(want[s][i]);
        }
    }
    let (status, body) = app
        .send(
            app.client
                .post(format!("{}/v1/jobs/batch", app.url))
                .header("prefer", "wait=60")
                .json(&json!({ "jobs": items })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let jobs = body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 48);
    let mut ids = Vec::new();
    for (job, want) in jobs.iter().zip(&expect) {
        let job = app.wait(job, Duration::from_secs(120)).await;
        ids.push(job["id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap());
        assert_eq!(job["status"], "succeeded", "{job}");
        let got = job["result"]["predictions"][0]["score"].as_f64().unwrap();
        assert!(
            (got - want).abs() <= 1e-6 * want.abs(),
            "{got} vs {want} for {}",
            job["model_id"]
        );
    }
    // The three subjects' jobs ran together: a batch per member would write each member's
    // jobs in a statement of its own (a `finished_at` each, at least three).
    let statements: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT finished_at) FROM jobs WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    eprintln!("48 jobs of 3 members written in {statements} statement(s)");
    assert!(statements < 3, "{statements}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_answers_for_its_groups_and_refuses_what_it_cannot_do_clearly() {
    let app = TestApp::spawn().await;
    // Group `solo` has one row: it fails alone, the fleet trains.
    let csv = "user,a,b\nann,1,2\nann,2,3\nann,3,1\nbob,5,5\nbob,6,4\nsolo,9,9\n";
    let uri = app.put("fleet/small.csv", csv.as_bytes().to_vec()).await;
    let job = train_fleet(&app, json!({"group_column": "user"}), &uri).await;
    let r = &job["result"];
    let fleet_id = r["fleet_id"].as_str().unwrap().to_string();
    assert_eq!(
        (r["groups"].as_i64(), r["metrics"]["failed_groups"].as_i64()),
        (Some(2), Some(1)),
        "{r}"
    );
    // The fleet, its list, its groups.
    let (s, fleet) = app.get(&format!("/v1/fleets/{fleet_id}")).await;
    assert_eq!(s, StatusCode::OK, "{fleet}");
    assert_eq!(
        (fleet["groups"].as_i64(), fleet["group_column"].as_str()),
        (Some(2), Some("user"))
    );
    assert_eq!(fleet["failed"][0]["group"], "solo", "{fleet}");
    assert_eq!(
        fleet["failed"][0]["error"]["code"], "invalid_input",
        "{fleet}"
    );
    let (_, list) = app.get("/v1/fleets?limit=10").await;
    assert!(
        list["fleets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["id"] == fleet_id.as_str()),
        "{list}"
    );
    let (s, page) = app
        .get(&format!("/v1/fleets/{fleet_id}/groups?limit=2"))
        .await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let names: Vec<&str> = page["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group"].as_str().unwrap())
        .collect();
    assert_eq!(
        (names, page["next"].as_str()),
        (vec!["ann", "bob"], Some("bob"))
    );
    let (_, page) = app
        .get(&format!("/v1/fleets/{fleet_id}/groups?limit=2&after=bob"))
        .await;
    assert_eq!(page["groups"][0]["group"], "solo", "{page}");
    assert_eq!(page["next"], Value::Null, "{page}");
    let (s, solo) = app.get(&format!("/v1/fleets/{fleet_id}/groups/solo")).await;
    assert_eq!(
        (s, solo["status"].as_str()),
        (StatusCode::OK, Some("failed"))
    );
    assert!(
        solo["error"]["message"].as_str().unwrap().contains("two"),
        "{solo}"
    );
    let (s, ann) = app.get(&format!("/v1/fleets/{fleet_id}/groups/ann")).await;
    assert_eq!(
        (s, ann["status"].as_str()),
        (StatusCode::OK, Some("trained"))
    );
    assert_eq!(ann["metrics"]["rows"], 3);
    let ann_id = ann["model_id"].as_str().unwrap().to_string();
    // A member is a model of its own.
    let (s, model) = app.get(&format!("/v1/models/{ann_id}")).await;
    assert_eq!(s, StatusCode::OK, "{model}");
    assert_eq!(
        (model["fleet_id"].as_str(), model["group"].as_str()),
        (Some(fleet_id.as_str()), Some("ann"))
    );
    let by_id = app
        .run(json!({"type": "infer", "model_id": ann_id, "input": {"rows": [[1.0, 2.0], [20.0, 2.0]]}}))
        .await;
    let by_group = app
        .run(json!({"type": "infer", "fleet_id": fleet_id, "group": "ann", "input": {"rows": [[1.0, 2.0], [20.0, 2.0]]}}))
        .await;
    assert_eq!(by_id["status"], "succeeded", "{by_id}");
    assert_eq!(
        by_id["result"]["predictions"],
        by_group["result"]["predictions"]
    );
    let p = &by_id["result"]["predictions"];
    assert!(p[1]["score"].as_f64() > p[0]["score"].as_f64(), "{p}");
    // Unknown and failed groups are not found; so is another fleet.
    for group in ["carol", "solo"] {
        let (s, e) = app
            .post(
                "/v1/jobs",
                &json!({"type": "infer", "fleet_id": fleet_id, "group": group, "input": {"rows": [[1.0, 2.0]]}}),
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{e}");
        assert_eq!(e["error"]["code"], "model_not_found", "{e}");
    }
    let (s, _) = app
        .get(&format!(
            "/v1/fleets/{}/groups/ann",
            gpuq_shared::ModelId::new()
        ))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // A whole fleet needs rows that name their group; inline rows cannot.
    let (s, e) = app
        .post(
            "/v1/jobs",
            &json!({"type": "infer", "fleet_id": fleet_id, "input": {"rows": [[1.0, 2.0]]}}),
        )
        .await;
    assert_eq!(
        (s, e["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("input")),
        "{e}"
    );
    // Rows naming a group the fleet does not hold fail the job as model_not_found.
    let rows = app
        .put("fleet/rows.csv", b"user,a,b\nann,1,2\ncarol,1,1\n".to_vec())
        .await;
    let job = app
        .run(json!({"type": "infer", "fleet_id": fleet_id, "input": {"uri": rows}}))
        .await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "model_not_found", "{job}");
    assert!(
        job["error"]["message"].as_str().unwrap().contains("carol"),
        "{job}"
    );
    // Training: a missing group column, fleets of other algorithms, inline rows.
    let job = app
        .run(json!({"type": "train", "algorithm": "anomaly", "params": {"group_column": "person"}, "input": {"uri": uri}}))
        .await;
    assert_eq!(job["error"]["code"], "invalid_input", "{job}");
    assert!(
        job["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`person`"),
        "{job}"
    );
    for (algorithm, input) in [
        ("kmeans", json!({"uri": uri})),
        ("anomaly", json!({"rows": [[1.0], [2.0]]})),
    ] {
        let (s, e) = app
            .post(
                "/v1/jobs",
                &json!({"type": "train", "algorithm": algorithm, "params": {"group_column": "user"}, "input": input}),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
        eprintln!("{algorithm}: {}", e["error"]["message"]);
    }
    // A member is deleted with its fleet, not alone.
    let (s, e) = app.delete(&format!("/v1/models/{ann_id}")).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    let (s, _) = app.delete(&format!("/v1/fleets/{fleet_id}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app.get(&format!("/v1/models/{ann_id}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app.get(&format!("/v1/fleets/{fleet_id}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_trains_the_groups_it_is_given_and_carries_the_others_over_unchanged() {
    let app = TestApp::spawn().await;
    let base_csv = "user,a,b\nann,1,2\nann,2,3\nann,3,1\nbob,5,5\nbob,6,4\ncid,0,0\ncid,1,1\n";
    let base_uri = app
        .put("fleet/base.csv", base_csv.as_bytes().to_vec())
        .await;
    let base = train_fleet(&app, json!({"group_column": "user"}), &base_uri).await;
    let base_id = base["result"]["fleet_id"].as_str().unwrap().to_string();
    // bob re-enrols with other samples; dan enrols.
    let new_csv = "user,a,b\nbob,50,50\nbob,60,40\ndan,7,7\ndan,8,9\n";
    let new_uri = app
        .put("fleet/refresh.csv", new_csv.as_bytes().to_vec())
        .await;
    let refreshed = train_fleet(
        &app,
        json!({"group_column": "user", "base_fleet": base_id}),
        &new_uri,
    )
    .await;
    let r = &refreshed["result"];
    let new_id = r["fleet_id"].as_str().unwrap().to_string();
    assert_ne!(new_id, base_id);
    assert_eq!(r["groups"], 4, "{r}");
    assert_eq!(
        (
            r["metrics"]["trained_groups"].as_i64(),
            r["metrics"]["carried_groups"].as_i64()
        ),
        (Some(2), Some(2)),
        "{r}"
    );
    let score = |fleet: String, group: &'static str| {
        let app = &app;
        async move {
            let job = app
                .run(json!({"type": "infer", "fleet_id": fleet, "group": group, "input": {"rows": [[4.0, 4.0]]}}))
                .await;
            assert_eq!(job["status"], "succeeded", "{job}");
            job["result"]["predictions"][0]["score"].as_f64().unwrap()
        }
    };
    for group in ["ann", "cid"] {
        assert_eq!(
            score(base_id.clone(), group).await,
            score(new_id.clone(), group).await,
            "{group} is carried over as it was"
        );
    }
    assert_ne!(
        score(base_id.clone(), "bob").await,
        score(new_id.clone(), "bob").await
    );
    assert!(score(new_id.clone(), "dan").await > 0.0);
    let (_, carried) = app.get(&format!("/v1/fleets/{new_id}/groups/ann")).await;
    assert_eq!(carried["metrics"]["carried"], true, "{carried}");
    // A base that is not a fleet of this algorithm, or not there, is refused at submit.
    let (s, e) = app
        .post(
            "/v1/jobs",
            &json!({"type": "train", "algorithm": "anomaly", "input": {"uri": new_uri},
                    "params": {"group_column": "user", "base_fleet": gpuq_shared::ModelId::new().to_string()}}),
        )
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("model_not_found")),
        "{e}"
    );
    let (s, e) = app
        .post(
            "/v1/jobs",
            &json!({"type": "train", "algorithm": "anomaly", "input": {"uri": new_uri},
                    "params": {"method": "zscore", "group_column": "user", "base_fleet": base_id}}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{e}");
    let job = app.wait(&e, Duration::from_secs(120)).await;
    assert_eq!(job["error"]["code"], "invalid_params", "{job}");
    assert!(
        job["error"]["message"]
            .as_str()
            .unwrap()
            .contains("scaled_manhattan"),
        "{job}"
    );
}

/// Class probabilities of `x` by the classifier at `slot` of a logreg/mlp fleet artifact,
/// computed from the file alone in f64 (as `tests/reference/check_fleet_artifact.py` does).
fn probabilities_from_artifact(bytes: &[u8], slot: usize, x: &[f64]) -> Vec<f64> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    let k = tensor(&st, "class_counts").1[slot] as usize;
    let mut a: Vec<f64> = x.to_vec();
    if meta["gpuq_algorithm"] == "mlp" {
        let (shape, mean) = tensor(&st, "input_mean");
        let std = tensor(&st, "input_std").1;
        let f = shape[1];
        a = (0..f)
            .map(|j| (a[j] - mean[slot * f + j]) / std[slot * f + j])
            .collect();
    }
    let mut l = 0;
    while st.tensor(&format!("{}.weight", 2 * l)).is_ok() {
        let (shape, w) = tensor(&st, &format!("{}.weight", 2 * l));
        let b = tensor(&st, &format!("{}.bias", 2 * l)).1;
        let (out, inp) = (shape[1], shape[2]);
        let last = st.tensor(&format!("{}.weight", 2 * l + 2)).is_err();
        let out = if last { k } else { out };
        a = (0..out)
            .map(|o| {
                let z: f64 = (0..inp)
                    .map(|i| a[i] * w[(slot * shape[1] + o) * inp + i])
                    .sum::<f64>()
                    + b[slot * shape[1] + o];
                if last { z } else { z.max(0.0) }
            })
            .collect();
        l += 1;
    }
    let m = a.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let s: f64 = a.iter().map(|z| (z - m).exp()).sum();
    a.iter().map(|z| (z - m).exp() / s).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn logreg_and_mlp_fleets_train_score_and_answer_as_their_members_alone_through_the_service() {
    let app = TestApp::spawn().await;
    // ann: two classes, bob: three, solo: one (it fails alone). Rows interleaved.
    let mut csv = String::from("user,a,b,label\n");
    let mut ann = String::from("a,b,label\n");
    for i in 0..48 {
        let (a, b) = ((i % 7) as f64 * 0.5, (i % 5) as f64 * 0.7);
        let noisy = i % 9 == 0;
        let y = ((a + b > 3.0) != noisy) as u32;
        csv += &format!("ann,{a},{b},{y}\n");
        ann += &format!("{a},{b},{y}\n");
        let (a, b) = ((i % 11) as f64 * 0.3, (i % 3) as f64);
        csv += &format!("bob,{a},{b},{}\n", (a / 1.1) as u32 % 3);
        if i < 4 {
            csv += &format!("solo,{a},{b},1\n");
        }
    }
    let uri = app.put("fleet/classes.csv", csv.into_bytes()).await;
    let ann_uri = app.put("fleet/ann.csv", ann.into_bytes()).await;
    let probe = [[1.0, 2.1], [2.5, 0.3], [0.5, 0.2], [3.0, 2.8]];
    for (algorithm, params) in [
        ("logreg", json!({"epochs": 20, "batch_size": 8, "seed": 4})),
        (
            "mlp",
            json!({"hidden": [8], "epochs": 30, "batch_size": 16, "learning_rate": 0.01, "seed": 4}),
        ),
    ] {
        let mut fleet_params = params.clone();
        fleet_params["group_column"] = json!("user");
        let job = app
            .run(json!({"type": "train", "algorithm": algorithm, "params": fleet_params, "input": {"uri": uri}}))
            .await;
        assert_eq!(job["status"], "succeeded", "{job}");
        let r = &job["result"];
        assert_eq!(
            (
                r["groups"].as_i64(),
                r["metrics"]["failed_groups"].as_i64(),
                r["metrics"]["classes_max"].as_i64()
            ),
            (Some(2), Some(1), Some(3)),
            "{r}"
        );
        let fleet_id = r["fleet_id"].as_str().unwrap().to_string();
        let (_, solo) = app.get(&format!("/v1/fleets/{fleet_id}/groups/solo")).await;
        assert_eq!(solo["status"], "failed", "{solo}");
        let (_, member) = app.get(&format!("/v1/fleets/{fleet_id}/groups/ann")).await;
        assert!(
            member["metrics"]["train_accuracy"].as_f64().unwrap() > 0.6,
            "{member}"
        );
        // ann's member answers as ann's model trained alone with the same params.
        let alone = app
            .run(json!({"type": "train", "algorithm": algorithm, "params": params, "input": {"uri": ann_uri}}))
            .await;
        assert_eq!(alone["status"], "succeeded", "{alone}");
        let by_alone = app
            .run(json!({"type": "infer", "model_id": alone["result"]["model_id"], "input": {"rows": probe}}))
            .await;
        let by_member = app
            .run(json!({"type": "infer", "fleet_id": fleet_id, "group": "ann", "input": {"rows": probe}}))
            .await;
        assert_eq!(by_member["status"], "succeeded", "{by_member}");
        let (want, got) = (
            by_alone["result"]["predictions"].as_array().unwrap(),
            by_member["result"]["predictions"].as_array().unwrap(),
        );
        let artifact = app
            .get_object(
                app.get(&format!("/v1/fleets/{fleet_id}")).await.1["artifact_uri"]
                    .as_str()
                    .unwrap(),
            )
            .await;
        let ann_slot = 0;
        let mut worst = (0f64, 0f64);
        for ((w, g), x) in want.iter().zip(got).zip(&probe) {
            assert_eq!(w["label"], g["label"], "{algorithm}: {w} vs {g}");
            let from_file = probabilities_from_artifact(&artifact, ann_slot, x);
            for ((a, b), c) in w["p"]
                .as_array()
                .unwrap()
                .iter()
                .zip(g["p"].as_array().unwrap())
                .zip(&from_file)
            {
                let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
                worst.0 = worst.0.max((a - b).abs());
                worst.1 = worst.1.max((c - b).abs());
            }
        }
        eprintln!(
            "{algorithm} fleet: member vs alone, largest probability difference {:.1e}; \
             the artifact alone in f64 vs gpuq {:.1e}",
            worst.0, worst.1
        );
        assert!(worst.0 <= 1e-4 && worst.1 <= 1e-5, "{algorithm}: {worst:?}");
        // The whole fleet over rows naming their group: bob's rows have three probabilities,
        // ann's two (the third cell blank).
        let rows = app
            .put(
                "fleet/classes-rows.csv",
                b"user,a,b\nann,1,2.1\nbob,2.5,0.3\n".to_vec(),
            )
            .await;
        let whole = app
            .run(json!({"type": "infer", "fleet_id": fleet_id, "input": {"uri": rows}}))
            .await;
        assert_eq!(whole["status"], "succeeded", "{whole}");
        let out = String::from_utf8(
            app.get_object(whole["result"]["output_uri"].as_str().unwrap())
                .await,
        )
        .unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "label,p0,p1,p2", "{out}");
        assert!(lines[1].ends_with(','), "{out}");
        assert_eq!(
            lines[2].split(',').filter(|c| !c.is_empty()).count(),
            4,
            "{out}"
        );
        // A refresh from ann's rows alone: ann retrained, bob carried over as it was.
        let mut refresh = fleet_params.clone();
        refresh["base_fleet"] = json!(fleet_id);
        let ann_rows = app
            .put(
                "fleet/ann-again.csv",
                b"user,a,b,label\nann,0,0,0\nann,3,3,1\nann,0.5,0.4,0\nann,2.5,2.8,1\n".to_vec(),
            )
            .await;
        let again = app
            .run(json!({"type": "train", "algorithm": algorithm, "params": refresh, "input": {"uri": ann_rows}}))
            .await;
        assert_eq!(again["status"], "succeeded", "{again}");
        let m = &again["result"]["metrics"];
        assert_eq!(
            (m["trained_groups"].as_i64(), m["carried_groups"].as_i64()),
            (Some(1), Some(1)),
            "{m}"
        );
        let new_fleet = again["result"]["fleet_id"].as_str().unwrap();
        let bob = |fleet: String| json!({"type": "infer", "fleet_id": fleet, "group": "bob", "input": {"rows": probe}});
        let (old_bob, new_bob) = (
            app.run(bob(fleet_id.clone())).await,
            app.run(bob(new_fleet.to_string())).await,
        );
        assert_eq!(
            old_bob["result"]["predictions"], new_bob["result"]["predictions"],
            "{algorithm}: bob carried over"
        );
        if let Ok(dir) = std::env::var("GPUQ_FLEET_ARTIFACT_DIR") {
            // For tests/reference/check_fleet_artifact.py.
            let dir = std::path::Path::new(&dir);
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(format!("{algorithm}.safetensors")), &artifact).unwrap();
            std::fs::write(
                dir.join("classes-rows.csv"),
                b"user,a,b\nann,1,2.1\nbob,2.5,0.3\n",
            )
            .unwrap();
            std::fs::write(dir.join(format!("{algorithm}.probabilities.csv")), &out).unwrap();
        }
    }
    // A validation split has no meaning per group yet: refused at submit, naming the field.
    let (s, e) = app
        .post(
            "/v1/jobs",
            &json!({"type": "train", "algorithm": "mlp",
                    "params": {"group_column": "user", "validation_fraction": 0.2},
                    "input": {"uri": uri}}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["error"]["field"], "params.validation_fraction", "{e}");
}
