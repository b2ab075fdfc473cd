"""Prometheus metrics, in a registry of the app's own so that every app (and test) starts at zero."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# Seconds: from a health check's milliseconds to SVD on a CPU (many minutes).
_DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    20,
    30,
    60,
    120,
    300,
    600,
    1800,
    float("inf"),
)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64, float("inf"))


class CudaMemoryCollector(Collector):
    """CUDA memory per device, read at scrape time; nothing when CUDA is not in use."""

    def __init__(self, model_ready: Callable[[], bool]) -> None:
        self._model_ready = model_ready

    def collect(self) -> Iterator[GaugeMetricFamily]:
        # Only once the model is loaded: before that, importing the models layer here would make a
        # scrape wait for torch and diffusers to import (seconds) instead of answering at once.
        if not self._model_ready():
            return
        from ..models.memory import cuda_memory

        stats = cuda_memory()
        if not stats:
            return
        families = {
            "allocated": GaugeMetricFamily(
                "opea_media_cuda_memory_allocated_bytes", "CUDA memory held by tensors.", labels=["device"]
            ),
            "reserved": GaugeMetricFamily(
                "opea_media_cuda_memory_reserved_bytes",
                "CUDA memory reserved by the caching allocator.",
                labels=["device"],
            ),
            "peak_allocated": GaugeMetricFamily(
                "opea_media_cuda_memory_peak_allocated_bytes",
                "Most CUDA memory held by tensors since start.",
                labels=["device"],
            ),
        }
        for device in stats:
            for key, family in families.items():
                family.add_metric([device.name], getattr(device, key))
        yield from families.values()


class Metrics:
    """Every metric the service exports; one instance per app."""

    def __init__(
        self,
        *,
        service: str,
        model: str,
        model_ready: Callable[[], bool],
        load_seconds: Callable[[], float | None],
        convert_seconds: Callable[[], float | None] = lambda: None,
    ) -> None:
        """`model_ready`, `load_seconds` and `convert_seconds` are read at each scrape from the model's
        one state."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.model_info = Gauge(
            "opea_media_model_info", "The served model.", ["service", "model"], registry=r
        )
        self.model_info.labels(service, model).set(1)
        self.model_ready = Gauge(
            "opea_media_model_ready", "1 once the model is loaded and serving.", registry=r
        )
        self.model_ready.set_function(lambda: float(model_ready()))
        self.model_load_seconds = Gauge(
            "opea_media_model_load_seconds", "How long loading the model took (0 until loaded).", registry=r
        )
        self.model_load_seconds.set_function(lambda: load_seconds() or 0.0)
        self.model_convert_seconds = Gauge(
            "opea_media_model_convert_seconds",
            "Of the load, seconds the backend took to make its form of the model (OpenVINO: converting, "
            "or reading the cached conversion, and compiling; 0 for torch and until loaded).",
            registry=r,
        )
        self.model_convert_seconds.set_function(lambda: convert_seconds() or 0.0)
        self.requests = Counter(
            "opea_media_http_requests",
            "HTTP requests by endpoint, method and status (success/failure rate).",
            ["endpoint", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "opea_media_http_request_duration_seconds",
            "HTTP request duration, from the first byte read to the response.",
            ["endpoint"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.requests_in_progress = Gauge(
            "opea_media_http_requests_in_progress", "Generation requests being handled now.", registry=r
        )
        self.queue_depth = Gauge("opea_media_queue_depth", "Jobs waiting for the model.", registry=r)
        self.inference_in_progress = Gauge(
            "opea_media_inference_in_progress", "Jobs inside the running pipeline call.", registry=r
        )
        self.queue_wait_seconds = Histogram(
            "opea_media_queue_wait_seconds",
            "Time a job waited in the queue.",
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "opea_media_inference_duration_seconds",
            "Duration of one pipeline call (a batch of text2image jobs or one image2video job).",
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "opea_media_batch_size", "Jobs merged into one pipeline call.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.stored_jobs_queued = Gauge(
            "opea_media_stored_jobs_queued",
            "Jobs of the jobs API waiting in the store (with PostgreSQL: all replicas').",
            registry=r,
        )
        self.stored_jobs_finished = Counter(
            "opea_media_stored_jobs_finished",
            "Jobs of the jobs API that this process ended, by final state.",
            ["state"],
            registry=r,
        )
        self.jobs_cancelled = Counter(
            "opea_media_jobs_cancelled",
            "Admitted jobs that ended without a result, by reason.",
            ["reason"],
            registry=r,
        )
        self.body_bytes_held = Gauge(
            "opea_media_request_body_bytes_held",
            "Bytes of the body budget reserved by the request bodies being received now.",
            registry=r,
        )
        self.connections_refused = Counter(
            "opea_media_connections_refused",
            "Connections answered 503 and closed at once: as many were open as --max-connections allows.",
            registry=r,
        )
        # Resident memory, CPU time, open files: the standard process_* series, Linux only.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        r.register(CudaMemoryCollector(model_ready))

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
