"""The job runner: one fine-tuning job at a time, FIFO, on its own thread.

validating_files: the datalab pipeline cleans, validates, dedupes and splits the
training file into the job's folder; a file that cannot train fails the job.
queued -> running: `finetune.train` runs with a callback that records metrics,
checkpoints (each served at once as `ft:...:ckpt-step-N`) and polls for cancel.
succeeded: the adapter is registered as `ft:<base>:pomar:<suffix>:<id>` and served
on the already-loaded base; results (CSV + loss curve) are stored as files.
Serving goes on meanwhile: training runs here, generation on the engine's worker.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server.jobs.callback import JobCallback
from server.jobs.errors import JobFailed
from server.jobs.launch import Host, take_ranks, total_slots
from server.jobs.naming import fine_tuned_model_id
from server.models.loading import backend_for, training_backend
from server.store import Store
from server.store.jobs import JobRecord, JobStatus

log = logging.getLogger(__name__)

ACTIVE: tuple[JobStatus, ...] = ("validating_files", "queued", "running")
RUNNING: tuple[JobStatus, ...] = ("running",)
WAITING: tuple[JobStatus, ...] = ("queued", "running")
#: a job whose training process dies this many times in a row fails
MAX_CRASHES = 3
#: persist and serve a fine-tuned model: (model id, base id, adapter folder, job id)
Register = Callable[[str, str, Path, str], None]


class JobRunner:
    """Runs fine-tuning jobs from the store, one at a time."""

    def __init__(
        self,
        store: Store,
        base_model_path: Callable[[str], Path | None],
        register: Register,
        train_hosts: list[Host] | None = None,
    ) -> None:
        """`base_model_path` says whether a base is still served here; `register` is
        `server.models.finetuned.FineTunedModels.register`; `train_hosts` the machines a
        job may train on data-parallel (`POMAR_TRAIN_HOSTS`; none: one process here)."""
        self._hosts = list(train_hosts or [])
        self._store = store
        self._base_path = base_model_path
        self._register = register
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._stops: dict[str, threading.Event] = {}
        self._crashes: dict[str, int] = {}  # training-process deaths per job, this run
        self._shutdown = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pomar-jobs", daemon=True)

    @property
    def train_slots(self) -> int:
        """How many ranks a job may train on (1 without `POMAR_TRAIN_HOSTS`)."""
        return total_slots(self._hosts) if self._hosts else 1

    def _ranks_of(self, job: JobRecord) -> list[Host] | None:
        """The slots the job trains on: its `hosts` hyperparameter ("auto": every one)."""
        wanted = job.hyperparameters.get("hosts", "auto")
        ranks = self.train_slots if wanted in (None, "auto") else int(wanted)
        if ranks > self.train_slots:
            raise JobFailed(
                "invalid_hosts",
                f"The job asks for {ranks} ranks; POMAR_TRAIN_HOSTS has {self.train_slots}.",
                "hyperparameters.hosts",
            )
        return take_ranks(self._hosts, ranks) if ranks > 1 else None

    def start(self) -> None:
        """Queue every unfinished job (a restart resumes them) and start the thread."""
        for job in self._store.jobs.with_status(*ACTIVE):
            if job.status == "running":
                step = job.last_checkpoint_step
                where = f"from the checkpoint at step {step}" if step else "from the beginning"
                self._store.events.add(job.id, f"Server restarted: the job resumes {where}.")
            self._queue.put(job.id)
        self._thread.start()

    def submit(self, job_id: str) -> None:
        """Queue a new job."""
        self._queue.put(job_id)

    def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel an unfinished job; the trainer stops within one step. None if finished."""
        job = self._store.jobs.update(
            job_id, status="cancelled", finished_at=int(time.time()), expect_status=ACTIVE
        )
        if job is not None:
            self._stops.setdefault(job_id, threading.Event()).set()
            self._store.events.add(job_id, "Job cancelled.")
        return job

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down: a running job checkpoints and stays resumable; the thread ends."""
        self._shutdown.set()
        for event in self._stops.values():
            event.set()
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while (job_id := self._queue.get()) is not None:
            if self._shutdown.is_set():
                return
            try:
                self._run(job_id)
            except JobFailed as failed:
                self._fail(job_id, failed.error)
            except Exception as exc:  # a job's failure must not kill the runner
                if self._shutdown.is_set():
                    # the store may be closing under us: leave the job resumable, not failed
                    log.warning("job %s interrupted by shutdown: %s", job_id, exc)
                    return
                log.exception("job %s failed", job_id)
                message = f"Training failed: {type(exc).__name__}: {exc}"[:500]
                self._fail(job_id, {"code": "training_failed", "message": message, "param": None})
            finally:
                self._stops.pop(job_id, None)

    def _fail(self, job_id: str, error: dict[str, Any]) -> None:
        done = self._store.jobs.update(
            job_id, status="failed", error=error, finished_at=int(time.time()), expect_status=ACTIVE
        )
        if done is not None:
            self._store.events.add(job_id, f"Job failed: {error['message']}", level="error")

    def _run(self, job_id: str) -> None:
        job = self._store.jobs.get(job_id)
        if job is None or job.status not in ACTIVE:
            return
        stop = self._stops.setdefault(job_id, threading.Event())
        # the job records the folder it trains on when it is created
        served = self._base_path(job.base_id)
        base_path = Path(job.base_model_path) if job.base_model_path else served
        if served is not None and base_path is not None and not base_path.is_dir():
            base_path = self._training_copy(job, served)
            if self._store.jobs.get(job_id).status not in ACTIVE:  # type: ignore[union-attr]
                return  # cancelled while it was built
        if served is None or base_path is None or not base_path.is_dir():
            raise JobFailed(
                "server_restarted",
                f"The base model '{job.base_id}' is not served by this server any more.",
                "model",
            )
        if job.hyperparameters.get("quantize") and job.backend == "mlx":  # QLoRA
            base_path = self._quantized_base(job, base_path)
            if self._store.jobs.get(job_id).status not in ACTIVE:  # type: ignore[union-attr]
                return  # cancelled while it was built
        work = self._store.job_dir(job_id)
        data_dir = work / "data"
        if job.status == "validating_files" or not (data_dir / "train.jsonl").is_file():
            from server.jobs.validation import validate_files

            validate_files(self._store, job, base_path, data_dir)
            if self._store.jobs.update(job_id, status="queued", expect_status=ACTIVE) is None:
                return  # cancelled while validating
            self._store.events.add(job_id, "Files validated, moving job to queued state.")
        if self._shutdown.is_set():
            return  # queued: the next start trains it
        self._train(job_id, base_path, data_dir, work / "train", stop)

    def _training_copy(self, job: JobRecord, served: Path) -> Path:
        """A GGUF base's Hugging Face weights, built in the job (once; models/trainable.py)."""
        from server.errors import ModelNotTrainable
        from server.models.trainable import ensure_training_copy

        def event(message: str) -> None:
            self._store.events.add(job.id, message)

        try:
            return ensure_training_copy(job.base_id, served, event)
        except ModelNotTrainable as exc:
            raise JobFailed("model_not_trainable", exc.message, "model") from exc

    def _quantized_base(self, job: JobRecord, base_path: Path) -> Path:
        """A QLoRA job's base quantized as a stored model, made once (its ft: model is
        served on it: `_served_on`)."""
        from server.models.quantized_base import ensure_quantized_base
        from server.models.store import CatalogError

        def event(message: str) -> None:
            self._store.events.add(job.id, message)

        bits = int(job.hyperparameters["quantize"])
        try:
            made = ensure_quantized_base(self._models_dir, job.base_id, base_path, bits, event)
        except CatalogError as exc:
            raise JobFailed("model_not_trainable", str(exc), "hyperparameters.quantize") from exc
        return made.path

    def _served_on(self, job: JobRecord) -> str:
        """The base id the job's ft: model and checkpoints are served on."""
        from server.models.quantized_base import served_base_id

        return served_base_id(self._models_dir, job.base_id, job.hyperparameters, job.backend)

    @property
    def _models_dir(self) -> Path:
        return self._store.home / "models"  # settings.models_dir: the store's home

    def _train(
        self, job_id: str, base_path: Path, data_dir: Path, out_dir: Path, stop: threading.Event
    ) -> None:
        from finetune.folders import clean_partial_writes
        from finetune.state import latest_checkpoint
        from server.jobs.hyper import train_config
        from server.jobs.parent import parent_adapter

        job = self._store.jobs.get(job_id)
        assert job is not None
        if cleaned := clean_partial_writes(out_dir):
            log.info("job %s: removed %d half-written folder(s) of a crash", job_id, cleaned)
        resume = latest_checkpoint(out_dir)
        # the job records the trainer chosen for its base when it is created
        backend = job.backend or training_backend(backend_for("auto", base_path))
        method = job.method_type
        parent = parent_adapter(job, backend, base_path, out_dir.parent)
        config, resolved = train_config(
            job.hyperparameters,
            job.seed,
            base_path,
            data_dir,
            out_dir,
            backend,
            resume,
            method=method,
            parent=parent,
        )
        ranks = self._ranks_of(job)
        if ranks is not None:
            resolved["hosts"] = total_slots(ranks)
        ft_id = fine_tuned_model_id(job.base_id, job.suffix, job.id)
        started = self._store.jobs.update(
            job_id,
            status="running",
            started_at=job.started_at or int(time.time()),
            hyperparameters=resolved,
            method={"type": method, method: {"hyperparameters": resolved}},
            expect_status=WAITING,
        )
        if started is None:
            return
        self._store.events.add(
            job_id,
            f"Fine-tuning job started on {backend}"
            + (" (DPO)" if method == "dpo" else "")
            + (f", data-parallel on {total_slots(ranks)} ranks" if ranks else "")
            + (f", from {job.parent_model}" if job.parent_model else "")
            + (f", resuming at step {resume.name.removeprefix('step-')}" if resume else "")
            + ".",
        )

        served_on = self._served_on(job)

        def register_checkpoint(model_id: str, path: Path) -> None:
            self._register(model_id, served_on, path, job_id)

        callback = JobCallback(self._store, job_id, ft_id, stop, register_checkpoint)
        result = self._train_child(job_id, config, callback, ranks)
        if result is None:
            return  # the training process died; the job was queued again or failed
        if result.stopped_early:
            if self._shutdown.is_set() and self._store.jobs.get(job_id).status == "running":  # type: ignore[union-attr]
                self._store.events.add(
                    job_id, f"Server stopping: paused at step {result.steps}, resumes on restart."
                )
            return
        self._finish(job, ft_id, result)

    def _train_child(
        self, job_id: str, config: Any, callback: JobCallback, ranks: list[Host] | None
    ) -> Any:
        """Train in a child process (server.jobs.trainproc). A crash there resumes the
        job from its last checkpoint, up to MAX_CRASHES times, then fails it."""
        from server.jobs.trainproc import TrainerCrashed, TrainerError, train_in_child

        def started(pid: int) -> None:
            log.info("job %s trains in process %d", job_id, pid)
            self._store.events.add(job_id, f"Training runs in process {pid}.", data={"pid": pid})

        try:
            result = train_in_child(config, callback, started, ranks)
        except TrainerError as exc:
            message = f"Training failed: {exc.kind}: {exc}"[:500]
            raise JobFailed("training_failed", message, None) from exc
        except TrainerCrashed as crash:
            if self._shutdown.is_set():
                return None  # stopping: the job resumes on the next start
            crashes = self._crashes[job_id] = self._crashes.get(job_id, 0) + 1
            if crashes >= MAX_CRASHES:
                raise JobFailed(
                    "training_crashed",
                    f"The training process died ({crash.how}) {crashes} times in a row.",
                    None,
                ) from crash
            current = self._store.jobs.get(job_id)
            step = current.last_checkpoint_step if current else None
            where = f"its checkpoint at step {step}" if step else "the beginning"
            log.warning("job %s: %s; resuming from %s", job_id, crash, where)
            self._store.events.add(
                job_id,
                f"The training process died ({crash.how}); the job resumes from {where}.",
                level="warn",
            )
            self.submit(job_id)
            return None
        if result.steps > 0:
            self._crashes.pop(job_id, None)  # "in a row": a run that trained resets it
        return result

    def _finish(self, job: JobRecord, ft_id: str, result: Any) -> None:
        from server.jobs.results import store_results

        result_files = store_results(self._store, job.id, result.history, result.evaluation)
        created = int(time.time())
        done = self._store.jobs.update(
            job.id,
            status="succeeded",
            fine_tuned_model=ft_id,
            finished_at=created,
            trained_tokens=result.trained_tokens,
            result_files=result_files,
            estimated_finish=None,
            adapter_path=str(result.adapter_path),
            expect_status=RUNNING,
        )
        if done is None:
            return  # cancelled at the very end: the checkpoints stay, no final model
        # a crash right here leaves the job succeeded and its model unregistered: the next
        # start registers it (FineTunedModels.serve_all)
        self._register(ft_id, self._served_on(job), result.adapter_path, job.id)
        self._store.events.add(job.id, f"New fine-tuned model created: {ft_id}")
        self._store.events.add(job.id, "The job has successfully completed.")
