"""Prometheus metrics in a registry of the app's own (no process-global state): requests, jobs, queues."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("ourvidz_http_requests", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.request_seconds = Histogram(
            "ourvidz_http_request_duration_seconds", "HTTP request duration", ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5), registry=self.registry)
        self.jobs_submitted = Counter("ourvidz_jobs_submitted", "Jobs accepted", ["job_type"], registry=self.registry)
        self.jobs = Gauge("ourvidz_jobs", "Jobs in the store", ["job_type", "status"], registry=self.registry)
        self.queue_depth = Gauge("ourvidz_queue_depth", "Messages waiting", ["queue"], registry=self.registry)
        self.workers = Gauge("ourvidz_workers_live", "Workers with a live heartbeat", registry=self.registry)
        self.job_seconds = Histogram(
            "ourvidz_job_duration_seconds", "From claim to terminal callback", ["job_type", "status"],
            buckets=(1, 5, 15, 30, 60, 120, 240, 480, 900), registry=self.registry)
        self.orphans_removed = Counter("ourvidz_orphan_files_removed",
                                       "Files of completions refused because the job had failed or was canceled",
                                       registry=self.registry)
        self.refusals = Counter(
            "ourvidz_refusals", "Requests refused to keep the service fair, by reason (rate_limit, active_jobs, "
            "queue_full)", ["reason"], registry=self.registry)
        self.queue_wait = Histogram(
            "ourvidz_queue_wait_seconds", "From a job's submit to its claim by a worker", ["queue"],
            buckets=(0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600), registry=self.registry)
        self.user_wait = Gauge(
            "ourvidz_user_wait_seconds", "Across the users with a job waiting, quantiles of how long each user's "
            "oldest waiting job has waited", ["queue", "quantile"], registry=self.registry)

        self.webhook_deliveries = Counter(
            "ourvidz_webhook_deliveries", "The app's webhook tries by outcome (delivered, retry, gave_up, gone)",
            ["outcome"], registry=self.registry)
        self.webhook_delay = Histogram(
            "ourvidz_webhook_delivery_delay_seconds", "From a job's event to its delivery's 2xx",
            buckets=(0.1, 0.5, 1, 5, 30, 60, 300, 1800, 3600, 21600, 86400), registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
