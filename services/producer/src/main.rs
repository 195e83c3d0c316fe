use clap::Parser;
use orderflow_producer::{start, Args, SERVICE};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orderflow_platform::memory::limit_arenas();
    let args = Args::parse();
    let telemetry = orderflow_platform::telemetry::init(SERVICE)?;
    let running = start(args, orderflow_platform::shutdown::on_signal()).await?;
    let result = running.task.await?;
    telemetry.shutdown();
    result
}
