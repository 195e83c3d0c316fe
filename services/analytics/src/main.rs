use clap::Parser;
use orderflow_analytics::{cli, start, Args};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orderflow_platform::memory::limit_arenas();
    let args = Args::parse();
    if let Some(command) = &args.command {
        return cli::run(&args, command).await;
    }
    let telemetry = orderflow_platform::telemetry::init("analytics")?;
    let running = start(args, orderflow_platform::shutdown::on_signal()).await?;
    let result = running.task.await?;
    telemetry.shutdown();
    result
}
