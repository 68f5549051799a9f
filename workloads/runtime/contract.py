"""The contract between the runtime image and the Pulumi workload components.

One place for every name both sides must agree on: entrypoint modules, ports,
paths, exit codes and metric names. The runtime programs import it relatively
(``from .contract import ...``); the components import it as
``workloads.runtime.contract``. It must stay pure Python with no third-party
imports: the Pulumi program loads it without torch installed.
"""

from __future__ import annotations

# Inside the image the runtime package is installed as /app/mlruntime.
PACKAGE = "mlruntime"
TRAIN_MODULE = f"{PACKAGE}.train"
SERVE_MODULE = f"{PACKAGE}.serve"
BATCH_MODULE = f"{PACKAGE}.batch"
FETCH_MODULE = f"{PACKAGE}.fetch"
NCCL_TEST_MODULE = f"{PACKAGE}.nccl_test"

# The non-root user the image runs as (Dockerfile `USER`).
RUN_AS_USER = 10001
RUN_AS_GROUP = 10001

# Ports.
SERVE_PORT = 8080  # HTTP: inference, health and /metrics
TRAIN_METRICS_PORT = 9090  # Prometheus /metrics of train.py (local rank 0 of each node)
# Prometheus /metrics of batch.py. The same number as train.py's (the two never
# share a pod), so a team's scrape network policy admits both.
BATCH_METRICS_PORT = TRAIN_METRICS_PORT
RENDEZVOUS_PORT = 29400  # torchrun c10d rendezvous (the TCPStore on node 0)

# HTTP paths of serve.py.
HEALTH_LIVE_PATH = "/v2/health/live"
HEALTH_READY_PATH = "/v2/health/ready"
METRICS_PATH = "/metrics"

# Mount points the components give the containers.
CHECKPOINT_DIR = "/checkpoints"
MODEL_DIR = "/models"
DATA_DIR = "/data"
OUTPUT_DIR = "/output"
SCRATCH_DIR = "/tmp"  # writable emptyDir; HOME and caches point here (read-only root fs)

# Exit codes of the runtime programs (a Job podFailurePolicy keys on them).
EXIT_OK = 0
EXIT_USAGE = 2  # bad arguments or input: retrying cannot help
EXIT_PREEMPTED = 143  # stopped by SIGTERM after saving a checkpoint: retry resumes
EXIT_BELOW_THRESHOLD = 3  # nccl_test: bus bandwidth under --min-busbw (the fabric is slow)

# The least memory (MiB) each program needs on CPU with the reference models;
# the settings model rejects a workload that asks for less.
MIN_MEMORY_MIB = {"train": 1024, "serve": 512, "batch": 512, "nccl_test": 1024}

# Metric names the runtime exports (the monitoring component's alerts and
# dashboards may only use names that something really exports).
SERVE_METRICS = {
    "mlserve_requests_total": "counter",  # labels: model, protocol (v1|v2), code
    "mlserve_request_duration_seconds": "histogram",  # labels: model, protocol, code
    "mlserve_batch_size": "histogram",  # labels: model
    "mlserve_queue_depth": "gauge",  # labels: model
    "mlserve_inflight_requests": "gauge",  # labels: model
}
TRAIN_METRICS = {
    "mltrain_step": "gauge",
    "mltrain_loss": "gauge",
    "mltrain_samples_per_second": "gauge",
    "mltrain_gpu_memory_allocated_bytes": "gauge",
    "mltrain_checkpoints_total": "counter",
}
# batch.py: one pod (one shard) each; the PodMonitor adds job_name and shard.
BATCH_METRICS = {
    "mlbatch_records_total": "counter",  # records predicted and written
    "mlbatch_shards_total": "counter",  # labels: outcome (complete|skipped|failed)
    "mlbatch_rows_per_second": "gauge",  # this shard's mean since its first forward pass
    "mlbatch_input_files": "gauge",  # input files of this shard
    "mlbatch_input_files_done": "gauge",  # of which fully processed
    "mlbatch_last_progress_timestamp_seconds": "gauge",  # start, then each batch written
}

# The exported-model directory that train.py writes and serve.py, batch.py and
# fetch.py read: a JSON description plus a torch state dict (tensors only, so
# it loads with torch.load(weights_only=True); no pickled code).
EXPORT_CONFIG_FILE = "config.json"
EXPORT_WEIGHTS_FILE = "model.pt"
EXPORT_FORMAT_VERSION = 1

# fetch.py writes this file into DEST_DIR last: its presence means "complete".
FETCH_MARKER_FILE = ".mlruntime-fetch.json"

# batch.py shard outputs (under --output): the predictions, then the marker
# that says the shard is complete. `{index}`/`{count}` are zero-padded to 5.
BATCH_OUTPUT_TEMPLATE = "part-{index:05d}-of-{count:05d}.jsonl"
BATCH_MARKER_TEMPLATE = "part-{index:05d}-of-{count:05d}.done.json"
