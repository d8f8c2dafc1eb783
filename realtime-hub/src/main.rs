//! Runs the realtime hub on its own (microservice mode).

use instaclone_shared::{config::Settings, server::shutdown_on_signal, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    telemetry::init(settings.log_format);
    let app = instaclone_realtime_hub::build(&settings, shutdown_on_signal()).await?;
    app.run_until_stopped().await?;
    Ok(())
}
