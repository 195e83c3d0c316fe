use clap::Parser;
use orderflow_analytics::{start, Args};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let telemetry = orderflow_platform::telemetry::init("analytics");
    let running = start(args, orderflow_platform::shutdown::on_signal()).await?;
    let result = running.task.await?;
    telemetry.shutdown();
    result
}
