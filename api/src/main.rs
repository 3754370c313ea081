//! `gpuq-api`: the HTTP front of gpuq. Configuration: see the README's table of variables.
//!
//! Administration, against the same database (`DATABASE_URL`):
//!   gpuq-api key create TENANT          a new API key for TENANT (created if new), printed last
//!   gpuq-api key revoke KEY_ID          the key stops working at once
//!   gpuq-api tenant allow TENANT URI    TENANT's jobs may also read under `s3://bucket/prefix/`
//!   gpuq-api workers                    the worker pool: one JSON line per worker, alive first

use gpuq_api::{ApiSettings, Application};
use gpuq_shared::{config::Settings, db};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.is_empty() {
        // An admin command's stdout is its answer (a key, the pool): logs go to stderr.
        gpuq_shared::telemetry::init_stderr();
        return admin(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    }
    gpuq_shared::telemetry::init();
    let settings = ApiSettings::from_env()?;
    let shutdown = gpuq_shared::shutdown::on_signal("draining in-flight requests");
    let app = Application::build(settings, &shutdown).await?;
    tracing::info!(port = app.port(), "gpuq-api listening");
    app.run_until_stopped(shutdown).await
}

async fn admin(args: &[&str]) -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let pool = db::connect(&settings.database, 1).await?;
    db::migrate(&pool).await?;
    match args {
        ["key", "create", tenant] => {
            let key = gpuq_api::create_key(&pool, tenant).await?;
            eprintln!(
                "API key {} for tenant `{tenant}` (shown once; stored only as a hash):",
                key.id
            );
            println!("{}", key.token);
        }
        ["key", "revoke", id] => {
            anyhow::ensure!(db::api_key_revoke(&pool, id).await?, "no live key `{id}`");
            eprintln!("revoked key {id}");
        }
        ["tenant", "allow", tenant, uri] => {
            let prefix: gpuq_shared::S3Uri = uri.parse().map_err(anyhow::Error::msg)?;
            anyhow::ensure!(prefix.key.ends_with('/'), "the prefix must end with `/`");
            anyhow::ensure!(
                db::tenant_allow_input(&pool, tenant, uri).await?,
                "no tenant `{tenant}`"
            );
            eprintln!("tenant `{tenant}` may read under {uri}");
        }
        ["workers"] => {
            let workers = db::workers_list(&pool, std::time::Duration::from_secs(30)).await?;
            for w in &workers {
                println!("{w}");
            }
            let alive = workers.iter().filter(|w| w["alive"] == true).count();
            eprintln!(
                "{alive} alive, {} stopped within a day",
                workers.len() - alive
            );
        }
        _ => anyhow::bail!(
            "usage: gpuq-api [key create TENANT | key revoke KEY_ID | tenant allow TENANT s3://bucket/prefix/ | workers]"
        ),
    }
    Ok(())
}
