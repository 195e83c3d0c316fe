use clap::Parser;
use orderflow_producer::{start, Args, SCHED_SLICE, SERVICE};

fn main() -> anyhow::Result<()> {
    orderflow_platform::runtime::run_with_slice(Some(SCHED_SLICE), async_main())
}

async fn async_main() -> anyhow::Result<()> {
    let args = Args::parse();
    let telemetry = orderflow_platform::telemetry::init(SERVICE)?;
    let running = start(args, orderflow_platform::shutdown::on_signal()).await?;
    let result = running.task.await?;
    telemetry.shutdown();
    result
}
