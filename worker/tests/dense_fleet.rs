//! Classifier fleets on the real device: every member of a logistic-regression or MLP fleet
//! answers as the model trained alone on its group's rows with the same parameters (labels on
//! ≥ 99.5 % of held-out rows, probabilities within 1e-4), a group that cannot train fails
//! alone, and a refresh carries the other groups over bit for bit.

mod common;

use common::gpu;
use gpuq_shared::Algorithm;
use gpuq_shared::dataset::{Groups, Table, from_rows};
use gpuq_shared::params::TrainParams;
use gpuq_worker::algorithms::{self, Control, LoadedModel, Scope};
use gpuq_worker::synthetic::{Rng, Users};
use serde_json::{Value, json};

/// One group's rows: its user's own (label 1), other users' (label 0) and, for `three`, a
/// third class (label 2) drawn from one more user.
fn group_rows(
    users: &Users,
    u: usize,
    n: usize,
    three: bool,
    rng: &mut Rng,
) -> Vec<(Vec<f64>, f64)> {
    let mut out = Vec::new();
    for i in 0..n {
        let (who, label) = match i % 4 {
            0 | 1 => (u, 1.0),
            2 if three => ((u + 1) % users.count, 2.0),
            _ => ((u + 2 + rng.below(users.count - 2)) % users.count, 0.0),
        };
        let mut row = Vec::new();
        users.row(who, rng, &mut row);
        // One label in five flipped, so no model can be sure of every row and the
        // probabilities compared below are not all 0 or 1.
        let label = if rng.below(5) == 0 {
            if label == 0.0 { 1.0 } else { 0.0 }
        } else {
            label
        };
        out.push((row.iter().map(|&v| v as f64).collect(), label));
    }
    out
}

fn table(rows: &[(Vec<f64>, f64)], groups: Option<&[String]>) -> Table {
    let x: Vec<Vec<f64>> = rows.iter().map(|r| r.0.clone()).collect();
    let y: Vec<f64> = rows.iter().map(|r| r.1).collect();
    let mut t = from_rows(&x, Some(&y)).unwrap();
    if let Some(names) = groups {
        let mut g = Groups::default();
        for n in names {
            g.push(n);
        }
        t.groups = Some(g);
    }
    t
}

struct Case {
    /// Training rows per group (interleaved in the fleet's input), and held-out rows.
    train: Vec<Vec<(Vec<f64>, f64)>>,
    held_out: Vec<Vec<(Vec<f64>, f64)>>,
}

fn case() -> Case {
    let mut rng = Rng(7);
    let users = Users::new(12, &mut rng);
    // Sizes that exercise full and partial batches and groups smaller than a batch.
    let sizes = [20, 37, 64, 90, 150, 256];
    let train = sizes
        .iter()
        .enumerate()
        .map(|(u, &n)| group_rows(&users, u, n, u == 3, &mut rng))
        .collect();
    let held_out = (0..sizes.len())
        .map(|u| group_rows(&users, u, 400, u == 3, &mut rng))
        .collect();
    Case { train, held_out }
}

/// The fleet's input: the groups' rows interleaved (a group's rows keep their order), with a
/// last group `solo` whose rows are all one class.
fn fleet_input(c: &Case) -> Table {
    let mut rows = Vec::new();
    let mut names = Vec::new();
    let longest = c.train.iter().map(Vec::len).max().unwrap();
    for i in 0..longest {
        for (g, t) in c.train.iter().enumerate() {
            if let Some(r) = t.get(i) {
                rows.push(r.clone());
                names.push(format!("user{g}"));
            }
        }
        if i < 5 {
            rows.push((c.train[0][0].0.clone(), 1.0));
            names.push("solo".to_string());
        }
    }
    table(&rows, Some(&names))
}

fn answers(inference: &algorithms::Inference) -> Vec<(f64, Vec<f64>)> {
    inference
        .rows
        .iter()
        .map(|r| {
            let p = r["p"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            (r["label"].as_f64().unwrap(), p)
        })
        .collect()
}

/// Trains the fleet and each group alone; returns, over all held-out rows, the share of equal
/// labels and the largest probability difference.
fn parity(algorithm: Algorithm, params: Value) -> (f64, f64, Value) {
    let (labels, worst, uncertain, metrics) = parity_of(algorithm, params);
    // The comparison means something only if the models are unsure of many rows.
    assert!(
        uncertain >= 0.05,
        "only {uncertain} of the probabilities are in (0.01, 0.99)"
    );
    println!("{uncertain:.3} of the probabilities are in (0.01, 0.99)");
    (labels, worst, metrics)
}

fn parity_of(algorithm: Algorithm, params: Value) -> (f64, f64, f64, Value) {
    let g = gpu();
    let ctl = Control::default();
    let c = case();
    let mut fleet_params = params.clone();
    fleet_params["group_column"] = json!("user");
    let fp = TrainParams::parse(algorithm, &fleet_params).unwrap();
    let trained = algorithms::train_fleet(g, fleet_input(&c), &fp, None, &ctl).unwrap();
    let outcomes = trained.fleet.as_ref().unwrap();
    let solo = outcomes.iter().find(|o| o.key == "solo").unwrap();
    let e = solo.slot.as_ref().unwrap_err();
    assert!(e.message.contains("two distinct classes"), "{}", e.message);
    let fleet = LoadedModel::load(g, &trained.artifact).unwrap();
    let p = TrainParams::parse(algorithm, &params).unwrap();
    let mut metrics = trained.metrics.clone();
    metrics["member_epochs"] = outcomes
        .iter()
        .filter(|o| o.slot.is_ok())
        .map(|o| o.metrics["epochs"].clone())
        .collect();
    let (mut same, mut total, mut worst) = (0usize, 0usize, 0f64);
    let (mut unsure, mut probabilities) = (0usize, 0usize);
    for (u, rows) in c.train.iter().enumerate() {
        let key = format!("user{u}");
        let slot = *outcomes
            .iter()
            .find(|o| o.key == key)
            .unwrap()
            .slot
            .as_ref()
            .unwrap();
        let alone = algorithms::train(g, table(rows, None), &p, &ctl).unwrap();
        let alone = LoadedModel::load(g, &alone.artifact).unwrap();
        let held = table(&c.held_out[u], None);
        let want = answers(&alone.infer(g, &held, true, &ctl).unwrap());
        let got = answers(
            &fleet
                .infer_scoped(
                    g,
                    &held,
                    Scope::Member(slot),
                    true,
                    &ctl,
                    algorithms::CsvOut::discard(),
                )
                .unwrap(),
        );
        assert_eq!(got.len(), want.len());
        for ((gl, gp), (wl, wp)) in got.iter().zip(&want) {
            total += 1;
            same += (gl == wl) as usize;
            assert_eq!(gp.len(), wp.len(), "{key}: classes");
            for (a, b) in gp.iter().zip(wp) {
                worst = worst.max((a - b).abs());
                unsure += (0.01..0.99).contains(b) as usize;
                probabilities += 1;
            }
        }
    }
    (
        same as f64 / total as f64,
        worst,
        unsure as f64 / probabilities as f64,
        metrics,
    )
}

#[test]
fn a_logreg_fleet_member_answers_as_the_model_trained_alone() {
    let (labels, worst, metrics) = parity(
        Algorithm::Logreg,
        json!({"epochs": 20, "batch_size": 16, "learning_rate": 0.1, "seed": 5}),
    );
    println!("logreg fleet: labels {labels}, largest probability difference {worst:e}; {metrics}");
    assert!(labels >= 0.995, "labels agree on {labels}");
    assert!(worst <= 1e-4, "probabilities differ by {worst}");
    assert_eq!(metrics["trained_groups"], 6);
    assert!(
        metrics["train_accuracy"]["mean"].as_f64().unwrap() > 0.6,
        "{metrics}"
    );
    assert_eq!(metrics["failed_groups"], 1);
    assert_eq!(metrics["classes_max"], 3);
}

#[test]
fn an_mlp_fleet_member_answers_as_the_model_trained_alone_with_adam_and_with_momentum() {
    for params in [
        json!({"hidden": [16], "epochs": 30, "batch_size": 32, "learning_rate": 0.01,
               "seed": 3, "patience": 2, "tol": 0.03}),
        json!({"hidden": [12, 8], "activation": "tanh", "optimizer": "sgd", "momentum": 0.9,
               "epochs": 25, "batch_size": 50, "learning_rate": 0.05, "seed": 9}),
    ] {
        let (labels, worst, metrics) = parity(Algorithm::Mlp, params.clone());
        if params.get("patience").is_some() {
            // Early stopping is per group: some groups stop before others.
            let epochs: Vec<u64> = metrics["member_epochs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e.as_u64().unwrap())
                .collect();
            let (lo, hi) = (epochs.iter().min().unwrap(), epochs.iter().max().unwrap());
            assert!(lo < hi && *lo < 30, "epochs per group: {epochs:?}");
        }
        println!(
            "mlp fleet {params}: labels {labels}, largest probability difference {worst:e}; {metrics}"
        );
        assert!(labels >= 0.995, "labels agree on {labels}");
        assert!(worst <= 1e-4, "probabilities differ by {worst}");
    }
}

#[test]
fn a_refresh_retrains_the_groups_it_is_given_and_carries_the_others_bit_for_bit() {
    let g = gpu();
    let ctl = Control::default();
    let c = case();
    let params = json!({"hidden": [8], "epochs": 5, "group_column": "user", "seed": 1});
    let p = TrainParams::parse(Algorithm::Mlp, &params).unwrap();
    let first = algorithms::train_fleet(g, fleet_input(&c), &p, None, &ctl).unwrap();
    // The refresh: new rows for user2 only.
    let names = vec!["user2".to_string(); c.held_out[2].len()];
    let again = table(&c.held_out[2], Some(&names));
    let second = algorithms::train_fleet(g, again, &p, Some(&first.artifact), &ctl).unwrap();
    assert_eq!(second.metrics["trained_groups"], 1);
    assert_eq!(second.metrics["carried_groups"], 5);
    let (a, b) = (
        gpuq_worker::artifact::Artifact::parse(&first.artifact).unwrap(),
        gpuq_worker::artifact::Artifact::parse(&second.artifact).unwrap(),
    );
    let slot = |t: &algorithms::Trained, key: &str| {
        *t.fleet
            .as_ref()
            .unwrap()
            .iter()
            .find(|o| o.key == key)
            .unwrap()
            .slot
            .as_ref()
            .unwrap() as usize
    };
    let member = |a: &gpuq_worker::artifact::Artifact, t: &algorithms::Trained, key: &str| {
        algorithms::dense_fleet::member_of(a, slot(t, key)).unwrap()
    };
    for u in [0, 1, 3, 4, 5] {
        let key = format!("user{u}");
        assert_eq!(member(&a, &first, &key), member(&b, &second, &key), "{key}");
    }
    assert_ne!(member(&a, &first, "user2"), member(&b, &second, "user2"));
    // The refreshed member is the model trained alone on the new rows.
    let mut alone_params = params.clone();
    alone_params.as_object_mut().unwrap().remove("group_column");
    let alone = algorithms::train(
        g,
        table(&c.held_out[2], None),
        &TrainParams::parse(Algorithm::Mlp, &alone_params).unwrap(),
        &ctl,
    )
    .unwrap();
    let alone = gpuq_worker::algorithms::classifier::ClassifierModel::from_artifact(
        &gpuq_worker::artifact::Artifact::parse(&alone.artifact).unwrap(),
    )
    .unwrap();
    let refreshed = member(&b, &second, "user2");
    for (x, y) in refreshed.layers.iter().zip(&alone.layers) {
        for (p, q) in x.weight.iter().zip(&y.weight) {
            assert!((p - q).abs() <= 1e-5 * (1.0 + q.abs()), "{p} vs {q}");
        }
    }
}
