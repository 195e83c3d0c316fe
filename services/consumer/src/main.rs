use clap::Parser;
use orderflow_consumer::{replay, start, Args};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orderflow_platform::memory::limit_arenas();
    let args = Args::parse();
    let telemetry = orderflow_platform::telemetry::init("consumer")?;
    if let Some(from) = args.replay_from {
        let result = replay(&args, from).await;
        telemetry.shutdown();
        return result;
    }
    let running = start(args, orderflow_platform::shutdown::on_signal()).await?;
    let result = running.task.await?;
    telemetry.shutdown();
    result
}
