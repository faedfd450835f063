//! The `cachecoord` binary: flags → configuration → logging → server, until SIGTERM or SIGINT.

use anyhow::Context;
use cachecoord::config::{Cli, Command, Config};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::HashToken) = cli.command {
        let mut token = String::new();
        std::io::stdin().read_line(&mut token)?;
        anyhow::ensure!(!token.trim().is_empty(), "no token on stdin");
        println!("{}", cachecoord::auth::hash_token(&token));
        return Ok(());
    }
    let config = Config::load(&cli)?;
    if let Some(Command::CheckConfig) = cli.command {
        println!("{}", toml::to_string_pretty(&config.redacted())?);
        return Ok(());
    }
    let telemetry = cachecoord::telemetry::init(&config)?;
    for renamed in config.renamed_knobs() {
        tracing::warn!(
            renamed,
            "the configuration uses a knob's old name; it still works, but prefer the new one"
        );
    }

    if let Some(Command::Migrate) = cli.command {
        cachecoord::outbox::migrate(&config)
            .await
            .context("outbox migration failed")?;
        tracing::info!("outbox migration applied");
        return Ok(());
    }

    let listener = tokio::net::TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen_addr))?;
    cachecoord::server::serve(config, listener, shutdown_signal()).await?;
    telemetry.shutdown();
    tracing::info!("cachecoord stopped");
    Ok(())
}

/// Resolves on the first SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received, draining");
}
