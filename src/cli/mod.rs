//! The command line (contract §3). Results go to stdout as JSON; errors go to stderr
//! with a non-zero exit status.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use lapin::options::ExchangeDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, ExchangeKind};
use serde_json::json;
use uuid::Uuid;

mod invalid;
mod manage;
mod progress;
mod remote;

use crate::app::{self, App};
use crate::broker::{self, Outgoing, Publisher};
use crate::config::Settings;
use crate::readiness::Role;
use crate::store;
use crate::telemetry;

#[derive(Parser)]
#[command(name = "herald", version, about = "Broker-native webhook fan-out")]
pub struct Cli {
    /// TOML configuration file (overridden by HERALD__SECTION__KEY variables).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Manage through a running Herald's admin API (`http://host:8080`) instead of the
    /// database and broker: needs only `--token`.
    #[arg(long, global = true, value_name = "URL", env = "HERALD_API")]
    api: Option<String>,
    /// Bearer token for `--api` (an admin or tenant token).
    #[arg(long, global = true, env = "HERALD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run Herald until SIGTERM/SIGINT.
    Serve {
        #[arg(long, value_enum, default_value = "all")]
        role: Role,
    },
    /// Apply database migrations.
    Migrate,
    /// Publish one event with publisher confirms.
    Publish(PublishArgs),
    /// Send an endpoint every stored event of a window again; progress on stderr.
    Replay(manage::ReplayArgs),
    #[command(flatten)]
    Manage(Box<manage::Command>),
}

#[derive(Args)]
struct PublishArgs {
    #[arg(long)]
    routing_key: String,
    /// The event's data, JSON.
    #[arg(long)]
    data: String,
    /// Defaults to the first of `ingest.exchanges`.
    #[arg(long)]
    exchange: Option<String>,
    /// Event id; a new UUID when absent.
    #[arg(long)]
    id: Option<String>,
    #[arg(long)]
    tenant: Option<String>,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(api) = &cli.api {
        let token = cli
            .token
            .as_deref()
            .context("--api needs --token (or HERALD_TOKEN)")?;
        let call = match &cli.command {
            Command::Manage(command) => manage::remote_call(command)?,
            Command::Replay(args) => manage::remote_replay(args),
            _ => anyhow::bail!("--api works with the managing commands only"),
        };
        return print_json(&remote::call(api, token, call).await?);
    }
    let settings = Settings::load(cli.config.as_deref())?;
    let _telemetry = telemetry::init(&settings.telemetry)?;
    match cli.command {
        Command::Serve { role } => serve(settings, role).await,
        Command::Migrate => {
            let pool = store::pool(&settings.database)?;
            store::migrate(&pool)
                .await
                .context("migrating the database")?;
            eprintln!("migrations applied");
            Ok(())
        }
        Command::Publish(args) => publish(settings, args).await,
        Command::Replay(args) => manage::replay(settings, args).await,
        Command::Manage(command) => manage::run(settings, *command).await,
    }
}

async fn serve(settings: Settings, role: Role) -> anyhow::Result<()> {
    let app = App::build(settings, role).await?;
    let stop = app.shutdown_token();
    tokio::spawn(async move {
        app::shutdown_signal().await;
        stop.cancel();
    });
    app.stopped().await;
    Ok(())
}

pub(crate) fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn publish(settings: Settings, args: PublishArgs) -> anyhow::Result<()> {
    serde_json::from_str::<serde::de::IgnoredAny>(&args.data).context("--data is not JSON")?;
    let exchange = args
        .exchange
        .unwrap_or_else(|| settings.ingest.exchanges[0].clone());
    let id = args.id.unwrap_or_else(|| Uuid::now_v7().to_string());
    let connection = broker::connect(settings.amqp.url.expose(), "herald-publish").await?;
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(
            &exchange,
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let publisher = Publisher::open(&connection).await?;
    let mut headers = FieldTable::default();
    if let Some(tenant) = &args.tenant {
        headers.insert(
            "x-tenant-id".into(),
            AMQPValue::LongString(LongString::from(tenant.as_str())),
        );
    }
    let span = tracing::info_span!("publish", event_id = %id);
    let traceparent = telemetry::link(&span, None);
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(LongString::from(traceparent.as_str())),
    );
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(id.as_str().into())
        .with_timestamp(chrono::Utc::now().timestamp() as u64)
        .with_headers(headers);
    publisher
        .publish(Outgoing {
            exchange: &exchange,
            routing_key: &args.routing_key,
            body: args.data.as_bytes(),
            properties,
        })
        .await
        .context("publishing (is Herald's ingest queue declared? start `herald serve` once)")?;
    broker::close_connection(&connection).await;
    print_json(&json!({ "id": id, "exchange": exchange, "routing_key": args.routing_key }))
}
