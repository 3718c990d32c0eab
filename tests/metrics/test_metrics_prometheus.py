"""A real Prometheus (Debian package prometheus on loopback) scraping the observer's /metrics while
a fake training loop advances: the step series is recorded and only moves forward."""

from __future__ import annotations

import threading

from metrics_support import free_port, wait_until

from dreambooth_job.events import TrainProgress
from dreambooth_job.metrics import PrometheusObserver


def test_prometheus_records_the_step_series_of_a_running_job(start_prometheus, make_config):
    port = free_port()
    observer = PrometheusObserver(make_config(metrics_port=port, job_id="dog-prom"), host="127.0.0.1")
    stop = threading.Event()

    def train() -> None:
        step = 0
        while not stop.wait(0.2):
            step += 1
            observer.train_progress(TrainProgress(
                step=step, max_steps=10_000, loss=1.0, instance_loss=0.5, prior_loss=0.5,
                learning_rate=5e-6, steps_per_second=5.0, images_per_second=10.0, eta_seconds=99.0))

    with observer:
        observer.phase_started("train")
        trainer = threading.Thread(target=train, daemon=True)
        trainer.start()
        try:
            prometheus = start_prometheus([f"127.0.0.1:{port}"])
            # The first scrape becomes queryable some seconds after start: poll until the range
            # vector holds several scrapes.
            series = '{__name__="dreambooth_train_step",job_id="dog-prom",subject_id="dog"}'

            def scraped():
                result = prometheus.query(series + "[1m]")["result"]
                return result if result and len(result[0]["values"]) >= 3 else None

            (recorded,) = wait_until(scraped, 45, "three scrapes of the step series", interval=0.5)
        finally:
            stop.set()
            trainer.join()

    steps = [float(v) for _, v in recorded["values"]]
    assert steps == sorted(steps) and steps[-1] > steps[0]
    assert recorded["metric"]["batch_id"] == "nightly"
    phase = prometheus.query('dreambooth_phase{job_id="dog-prom",phase="train"}')["result"]
    assert phase and phase[0]["value"][1] == "1"
