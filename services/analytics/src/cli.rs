//! `analytics dlq list|show|redrive`: the console's dead-letter API for
//! scripts, without HTTP. It reads the DLQ topic to its end, then does what
//! the endpoints do (the same code), printing JSON. A re-drive is recorded
//! as `cli:<actor>` (`--actor`, else `$USER`); it needs the broker and
//! MongoDB settings, which stand in for the HTTP bearer token.

use std::sync::Arc;

use clap::Subcommand;

use crate::console::{self, Console, RedriveRequest};
use crate::dlq::Filter;
use crate::Args;

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Dead letters: list, show one, re-drive.
    #[command(subcommand)]
    Dlq(DlqCommand),
}

#[derive(Subcommand, Debug, Clone)]
pub enum DlqCommand {
    /// Newest first, as `GET /analytics/dlq`.
    List {
        #[arg(long)]
        stage: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One dead letter with its original bytes and headers.
    Show { partition: i32, offset: i64 },
    /// Sends dead letters back to their source topics, as
    /// `POST /analytics/dlq/redrive`: one (--partition and --offset) or a
    /// filter (--stage, --reason, --limit).
    Redrive {
        #[arg(long)]
        partition: Option<i32>,
        #[arg(long)]
        offset: Option<i64>,
        #[arg(long)]
        stage: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
        /// Recorded as who asked (default: $USER).
        #[arg(long)]
        actor: Option<String>,
    },
}

fn failed(p: orderflow_platform::http::Problem) -> anyhow::Error {
    let fields: Vec<String> = p
        .errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect();
    anyhow::anyhow!(
        "{} {}: {} {}",
        p.status,
        p.title,
        p.detail,
        fields.join("; ")
    )
}

/// Runs one command and prints its JSON answer.
pub async fn run(args: &Args, command: &Command) -> anyhow::Result<()> {
    let db = orderflow_platform::mongo::connect(&args.mongo, "analytics-cli").await?;
    let out = answer(args, command, &db).await;
    orderflow_platform::mongo::close(&db).await;
    println!("{}", serde_json::to_string_pretty(&out?)?);
    Ok(())
}

async fn answer(
    args: &Args,
    command: &Command,
    db: &mongodb::Database,
) -> anyhow::Result<serde_json::Value> {
    let Command::Dlq(command) = command;
    let console = Arc::new(Console::new(args, db)?);
    if !matches!(command, DlqCommand::Show { .. }) {
        let reader = orderflow_platform::kafka::group_reader(
            &args.kafka,
            "orderflow-analytics-cli",
            "orderflow-analytics-dlq",
        )?;
        let (index, topic) = (console.index.clone(), args.topics.dlq.clone());
        tokio::task::spawn_blocking(move || index.read_to_end(&reader, &topic)).await??;
    }
    let out = match command {
        DlqCommand::List {
            stage,
            reason,
            limit,
        } => {
            let filter = Filter {
                stage: stage.clone(),
                reason: reason.clone(),
            };
            serde_json::to_value(console.index.page(&filter, *limit, None))?
        }
        DlqCommand::Show { partition, offset } => {
            let letter = console
                .fetch(*partition, *offset)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no dead letter at {partition}/{offset}"))?;
            serde_json::to_value(letter)?
        }
        DlqCommand::Redrive {
            partition,
            offset,
            stage,
            reason,
            limit,
            actor,
        } => {
            let request = RedriveRequest {
                partition: *partition,
                offset: *offset,
                stage: stage.clone(),
                reason: reason.clone(),
                limit: *limit,
                actor: actor.clone(),
            };
            let selection = request.selection().map_err(failed)?;
            let who = format!(
                "cli:{}",
                actor
                    .clone()
                    .or_else(|| std::env::var("USER").ok())
                    .unwrap_or_else(|| "unknown".into())
            );
            serde_json::to_value(
                console::redrive(&console, selection, &who)
                    .await
                    .map_err(failed)?,
            )?
        }
    };
    Ok(out)
}
