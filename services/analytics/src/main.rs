use clap::Parser;
use orderflow_analytics::{cli, start, Args};

fn main() -> anyhow::Result<()> {
    orderflow_platform::runtime::run(async_main())
}

async fn async_main() -> anyhow::Result<()> {
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
