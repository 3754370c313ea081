//! Replays every file under `fuzz/seeds/*/` and `fuzz/regressions/*/` through the csv and .npy
//! readers and submit parsing, with the fuzz targets' own checks (`fuzz/src/lib.rs`), so a bug
//! the fuzzer once found stays fixed without a nightly toolchain or cargo-fuzz.

#[allow(dead_code)]
#[path = "../../fuzz/src/lib.rs"]
mod harness;

use std::path::{Path, PathBuf};

fn files(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(dir);
    let mut out = Vec::new();
    for target in std::fs::read_dir(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display())) {
        let target = target.unwrap().path();
        if !target.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&target).unwrap() {
            let file = file.unwrap().path();
            if file.is_file() {
                out.push(file);
            }
        }
    }
    out.sort();
    out
}

/// Runs `file` through all three; returns whether the one its directory names accepted it.
async fn replay(file: &Path) -> bool {
    let data = std::fs::read(file).unwrap();
    let csv = harness::check_csv(&data).await;
    let npy = harness::check_npy(&data).await;
    let submit = harness::check_submit(&data);
    match file
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
    {
        Some("csv") => csv,
        Some("npy") => npy,
        Some("submit") => submit,
        other => panic!("{}: unknown target directory {other:?}", file.display()),
    }
}

#[tokio::test]
async fn seeds_are_accepted_and_keep_the_invariants() {
    let seeds = files("seeds");
    assert!(seeds.len() >= 9, "{seeds:?}");
    for file in seeds {
        assert!(
            replay(&file).await,
            "{}: a seed should be valid",
            file.display()
        );
    }
}

#[tokio::test]
async fn regressions_keep_the_invariants() {
    for file in files("regressions") {
        replay(&file).await;
    }
}
