"""Resumable checkpoints under `<output>/checkpoints/step-NNNNNN/`.

A checkpoint is accelerate's `save_state` directory (trainable weights as safetensors, optimizer,
LR scheduler, RNG states) plus `trainer_state.json` (step, identifier, the config). Its files are
uploaded first and `manifest.json` (each file's size and sha256) last: a checkpoint without a
manifest is invisible, and one whose files do not match it is skipped for the previous one.

Saving the state to local disk is all that training waits for: `BackgroundUploads` hashes and
uploads it while the next steps run (for SD 1.5, 10.3 GB of weights and AdamW state, whose upload
took 3 to 6 times as long as the local save where it was measured: docs/benchmarks.md).
"""

from __future__ import annotations

import concurrent.futures
import datetime
import hashlib
import json
import logging
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dreambooth_job.config.run_identity import differing_model_fields
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.redaction import redact_value
from dreambooth_job.storage import object_keys
from dreambooth_job.storage import places as storage

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d{6,})/")
HASH_CHUNK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Checkpoint:
    step: int
    uri: str
    manifest: dict

    @property
    def config(self) -> dict:
        return self.manifest.get("config", {})


def step_dir(step: int) -> str:
    return f"step-{step:06d}"


def _sha256(path: Path, cancel: threading.Event | None = None) -> str:
    """The file's sha256, read in chunks so that a cancelled upload stops within one."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            if cancel is not None and cancel.is_set():
                raise storage.TransferCancelled(f"hashing {path.name} cancelled")
            digest.update(chunk)
    return digest.hexdigest()


class CheckpointStore:
    def __init__(self, output_uri: str, keep: int):
        self.root = storage.join(output_uri, "checkpoints")
        self.keep = keep

    def list(self) -> list[Checkpoint]:
        """Checkpoints with a readable manifest, newest first."""
        steps = sorted({int(m.group(1)) for f in storage.list_files(self.root)
                        if (m := _STEP_DIR.match(f.relative_path))}, reverse=True)
        found = []
        for step in steps:
            uri = storage.join(self.root, step_dir(step))
            try:
                manifest = json.loads(storage.read_bytes(storage.join(uri, MANIFEST)))
            except FileNotFoundError:
                log.warning("checkpoint %s has no manifest (partial write): skipped", uri)
                continue
            except ValueError:
                manifest = None
            if not isinstance(manifest, dict):
                log.warning("checkpoint %s has an unreadable manifest: skipped", uri)
                continue
            found.append(Checkpoint(step, uri, manifest))
        return found

    def save(self, local_dir: Path, step: int, config: dict, identifier: str,
             cancel: threading.Event | None = None) -> Checkpoint:
        """Upload `local_dir` (an accelerate state) as the checkpoint of `step`, then prune.
        The config is recorded redacted, as in result.json (compare with `conflicts`). `cancel`
        set stops it with storage.TransferCancelled before the manifest: the files it left are
        an invisible partial write, like those of a killed pod."""
        config = redact_value(config)
        (local_dir / TRAINER_STATE).write_text(json.dumps(
            {"step": step, "identifier": identifier, "config": config}, indent=2))
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        manifest = {
            "step": step, "identifier": identifier, "config": config,
            "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "files": [{"path": p.relative_to(local_dir).as_posix(), "size": p.stat().st_size,
                       "sha256": _sha256(p, cancel)} for p in files]}
        uri = storage.join(self.root, step_dir(step))
        storage.delete(uri + "/")  # leftovers of an attempt that died before its manifest
        storage.upload_dir(local_dir, uri, cancel=cancel)
        if cancel is not None and cancel.is_set():
            raise storage.TransferCancelled(f"upload of {uri} cancelled")
        storage.write_bytes(storage.join(uri, MANIFEST), json.dumps(manifest, indent=2).encode())
        checkpoint = Checkpoint(step, uri, manifest)
        self.prune()
        return checkpoint

    def prune(self) -> None:
        """Delete all but the newest `keep` complete checkpoints; manifest first, so a reader
        never sees a checkpoint whose files are half gone."""
        for old in self.list()[self.keep:]:
            storage.delete(storage.join(old.uri, MANIFEST))
            storage.delete(old.uri + "/")

    def delete_all(self) -> None:
        storage.delete(self.root + "/")

    def fetch(self, checkpoint: Checkpoint, local_dir: Path) -> bool:
        """Download and verify every file against the manifest; False if anything is off.

        The manifest is as hostile as any object under --output: its paths are checked, all of
        them, before anything is written (exit 2 naming the first bad one).
        """
        entries = _manifest_entries(checkpoint, local_dir)
        shutil.rmtree(local_dir, ignore_errors=True)
        for entry in entries:
            target = local_dir / entry["path"]
            try:
                storage.download_file(storage.join(checkpoint.uri, entry["path"]), target)
            except FileNotFoundError:
                log.warning("checkpoint %s lacks %s: skipped", checkpoint.uri, entry["path"])
                return False
            if target.stat().st_size != entry["size"] or _sha256(target) != entry["sha256"]:
                log.warning("checkpoint %s: %s does not match its manifest: skipped",
                            checkpoint.uri, entry["path"])
                return False
        return True

    def fetch_newest_valid(self, local_dir: Path) -> Checkpoint | None:
        """The newest checkpoint that verifies, downloaded into `local_dir`."""
        for checkpoint in self.list():
            if self.fetch(checkpoint, local_dir):
                return checkpoint
        return None


class BackgroundUploads:
    """Runs one checkpoint upload at a time on a worker thread, so that training goes on meanwhile.

    `submit` first waits for the upload in flight: the caller reuses one local state directory, and
    a slow store then slows training down instead of piling up checkpoints. `wait` returns when
    nothing is in flight and raises the error of a failed upload, so a failure stops the job at the
    next checkpoint or at the end of training, as it did when uploads ran inline. `abandon` stops
    the upload in flight instead (the SIGTERM checkpoint supersedes it); uploads that watch the
    `abandoning` event stop at their next chunk.
    """

    def __init__(self):
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="checkpoint-upload")
        self._in_flight: concurrent.futures.Future | None = None
        self.abandoning = threading.Event()

    def submit(self, upload: Callable[[], object]) -> None:
        self.wait()
        self._in_flight = self._executor.submit(upload)

    def wait(self) -> None:
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight.result()

    def abandon(self) -> bool:
        """Stop the upload in flight and wait until it stopped; True if one was stopped. Its
        error, if it failed on its own, is only logged: what it uploaded is superseded anyway."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is None:
            return False
        self.abandoning.set()
        try:
            in_flight.result()
        except storage.TransferCancelled:
            return True
        except Exception as exc:  # noqa: BLE001 - superseded by the checkpoint about to be written
            log.warning("checkpoint upload failed: %s", exc)
        finally:
            self.abandoning.clear()
        return False

    def __enter__(self) -> BackgroundUploads:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Wait for the upload in flight (a job that already failed reports the first error only)."""
        try:
            self.wait()
        except Exception as exc:  # noqa: BLE001 - the job is ending with its own error
            log.warning("checkpoint upload failed: %s", exc)
        finally:
            self._executor.shutdown()


def _manifest_entries(checkpoint: Checkpoint, local_dir: Path) -> list[dict]:
    """The manifest's file entries, each a path that stays inside the checkpoint's directory
    and inside `local_dir`."""
    manifest_uri = storage.join(checkpoint.uri, MANIFEST)
    entries = checkpoint.manifest.get("files", []) if isinstance(checkpoint.manifest, dict) else None
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("path"), str) and isinstance(e.get("size"), int)
            and isinstance(e.get("sha256"), str) for e in entries):
        raise InvalidInputError(f"checkpoint manifest {manifest_uri} is malformed: "
                                "'files' must list {path, size, sha256} objects")
    listed = [storage.StoredFile(e["path"], e["size"]) for e in entries]
    unsafe = object_keys.check_listing(listed, local_dir)
    if unsafe:
        file, reason = next(iter(unsafe.items()))
        raise object_keys.UnsafeKeyError(f"checkpoint manifest {manifest_uri} names the path "
                                         f"{object_keys.display_key(file.relative_path)!r}, which {reason}")
    return entries


def conflicts(checkpoint_config: dict, config: dict) -> list[str]:
    """The MODEL options in which a config differs from the one a checkpoint was trained with
    (config/run_identity.py: the same rule as for a completed run); both compared as recorded, i.e.
    redacted (a presigned --base-model keeps its key, loses its signature)."""
    return differing_model_fields(checkpoint_config, config)


class CheckpointPolicy:
    """When training saves a checkpoint: every `every_steps` steps, every `every_minutes` minutes
    of training, and at once when a stop is requested (SIGTERM). Never at the last step, where
    the finished model is saved instead. `clock` is seconds, monotonic (a fake one in tests)."""

    def __init__(self, *, every_steps: int = 0, every_minutes: float = 0.0, last_step: int,
                 clock: Callable[[], float] = time.monotonic):
        self.every_steps, self.every_minutes, self.last_step = every_steps, every_minutes, last_step
        self.clock = clock
        self.last_saved = clock()  # the start of training counts as the previous checkpoint

    @classmethod
    def from_config(cls, config, clock: Callable[[], float] = time.monotonic) -> CheckpointPolicy:
        return cls(every_steps=config.checkpoint_every, every_minutes=config.checkpoint_interval_minutes,
                   last_step=config.max_train_steps, clock=clock)

    def due(self, step: int, *, stop_requested: bool = False) -> bool:
        if stop_requested:
            return True
        if step >= self.last_step:
            return False
        by_steps = bool(self.every_steps) and step % self.every_steps == 0
        by_time = bool(self.every_minutes) and self.clock() - self.last_saved >= self.every_minutes * 60
        return by_steps or by_time

    def saved(self) -> None:
        """A checkpoint was just saved: the next timed one is `every_minutes` from now."""
        self.last_saved = self.clock()
