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

use crate::app::{self, App};
use crate::broker::{self, Outgoing, Publisher};
use crate::config::Settings;
use crate::dlq::{self, Selection};
use crate::domain::{EndpointUrl, SigningSecret, TopicPattern};
use crate::readiness::Role;
use crate::store::{self, endpoints};
use crate::telemetry;

#[derive(Parser)]
#[command(name = "herald", version, about = "Broker-native webhook fan-out")]
pub struct Cli {
    /// TOML configuration file (overridden by HERALD__SECTION__KEY variables).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
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
    /// Manage subscribed endpoints.
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Publish one event with publisher confirms.
    Publish(PublishArgs),
    /// Inspect and redrive the dead-letter queue.
    #[command(subcommand)]
    Dlq(DlqCommand),
}

#[derive(Subcommand)]
enum EndpointCommand {
    /// Subscribe a URL to event types; prints the endpoint with its secret.
    Add {
        #[arg(long)]
        url: String,
        /// AMQP topic pattern (`*` one word, `#` zero or more); repeatable.
        #[arg(long = "event-type", required = true)]
        event_types: Vec<String>,
        #[arg(long)]
        tenant: Option<String>,
        /// `whsec_…`; generated when absent.
        #[arg(long)]
        secret: Option<String>,
        /// Requests per minute.
        #[arg(long)]
        rate_limit: Option<i32>,
        #[arg(long)]
        description: Option<String>,
    },
    /// All endpoints, as JSON.
    List,
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

#[derive(Subcommand)]
enum DlqCommand {
    /// Failed deliveries with their reason, newest first, as JSON.
    List {
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Send dead deliveries again with a fresh retry schedule.
    Redrive {
        #[arg(
            long,
            conflicts_with = "delivery",
            required_unless_present = "delivery"
        )]
        all: bool,
        #[arg(long, num_args = 1..)]
        delivery: Vec<Uuid>,
    },
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
        Command::Endpoint(command) => endpoint(settings, command).await,
        Command::Publish(args) => publish(settings, args).await,
        Command::Dlq(command) => dead_letters(settings, command).await,
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

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn endpoint(settings: Settings, command: EndpointCommand) -> anyhow::Result<()> {
    let pool = store::pool(&settings.database)?;
    match command {
        EndpointCommand::Add {
            url,
            event_types,
            tenant,
            secret,
            rate_limit,
            description,
        } => {
            let new = endpoints::NewEndpoint {
                url: url.parse::<EndpointUrl>()?,
                event_types: event_types
                    .iter()
                    .map(|p| p.parse::<TopicPattern>())
                    .collect::<Result<_, _>>()?,
                tenant_id: tenant.filter(|t| !t.is_empty()),
                secret: secret.map(|s| s.parse::<SigningSecret>()).transpose()?,
                rate_limit,
                description,
            };
            let endpoint = endpoints::insert(&pool, new).await?;
            let mut out = serde_json::to_value(endpoints::EndpointView::from(&endpoint))?;
            out["secret"] = json!(endpoint.secrets[0].expose());
            print_json(&out)
        }
        EndpointCommand::List => {
            let list = endpoints::list(&pool).await?;
            print_json(
                &list
                    .iter()
                    .map(endpoints::EndpointView::from)
                    .collect::<Vec<_>>(),
            )
        }
    }
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
    let _ = connection.close(200, "published").await;
    print_json(&json!({ "id": id, "exchange": exchange, "routing_key": args.routing_key }))
}

async fn dead_letters(settings: Settings, command: DlqCommand) -> anyhow::Result<()> {
    let pool = store::pool(&settings.database)?;
    match command {
        DlqCommand::List { limit } => print_json(&dlq::list(&pool, limit).await?),
        DlqCommand::Redrive { all, delivery } => {
            let selection = if all {
                Selection::All
            } else {
                Selection::Deliveries(delivery)
            };
            let report = dlq::redrive(&settings, &pool, selection).await?;
            print_json(&report)?;
            if !report.not_found.is_empty() {
                anyhow::bail!(
                    "{} delivery id(s) not in the dead-letter queue",
                    report.not_found.len()
                );
            }
            Ok(())
        }
    }
}
