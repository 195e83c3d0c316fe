//! The gRPC exporter on a Tokio runtime of its own. OpenTelemetry's batch
//! processor exports from a plain thread (`futures_executor::block_on`), and
//! tonic's HTTP/2 connection needs a Tokio reactor: called directly, the
//! exporter panics "there is no reactor running" and every span is lost
//! (open-telemetry/opentelemetry-rust#2673). The channel is built and each
//! export runs on this runtime, so the exporter works whatever runtime the
//! service has, and still during its shutdown flush.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;

#[derive(Debug)]
pub(super) struct OnRuntime<E> {
    exporter: Arc<E>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl<E: SpanExporter + Sync + 'static> OnRuntime<E> {
    /// `build` runs inside the runtime, so what it spawns (tonic's channel
    /// worker) lives there.
    pub(super) fn build<Err>(
        build: impl FnOnce() -> Result<E, Err>,
    ) -> anyhow::Result<Result<Self, Err>> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()?;
        let exporter = {
            let _inside = runtime.enter();
            build()
        };
        Ok(exporter.map(|exporter| OnRuntime {
            exporter: Arc::new(exporter),
            runtime: Some(runtime),
        }))
    }
}

impl<E: SpanExporter + Sync + 'static> SpanExporter for OnRuntime<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let exporter = self.exporter.clone();
        let task = self
            .runtime
            .as_ref()
            .map(|rt| rt.spawn(async move { exporter.export(batch).await }));
        async move {
            match task {
                Some(task) => task
                    .await
                    .unwrap_or_else(|e| Err(OTelSdkError::InternalFailure(e.to_string()))),
                None => Err(OTelSdkError::AlreadyShutdown),
            }
        }
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        // No export is in flight when the processor shuts its exporter down,
        // so the exporter is ours alone again.
        let result = match Arc::get_mut(&mut self.exporter) {
            Some(exporter) => exporter.shutdown_with_timeout(timeout),
            None => Ok(()),
        };
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        result
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        match Arc::get_mut(&mut self.exporter) {
            Some(exporter) => exporter.force_flush(),
            None => Ok(()),
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called as the provider is built, before any export.
        if let Some(exporter) = Arc::get_mut(&mut self.exporter) {
            exporter.set_resource(resource);
        }
    }
}

impl<E> Drop for OnRuntime<E> {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is not allowed on a runtime's
        // thread; this returns at once.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
