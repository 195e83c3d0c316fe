use clap::Parser;
use orderflow_consumer::{replay, start, Args};

fn main() -> anyhow::Result<()> {
    orderflow_platform::runtime::run(async_main())
}

async fn async_main() -> anyhow::Result<()> {
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
