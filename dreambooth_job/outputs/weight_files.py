"""The weight files a run publishes, decided by the trained model itself: a denoiser that carries
LoRA adapters (`lora_adapters.has_lora`) publishes the adapters, any other the full pipeline. What the files
hold is the model family's (`ModelFamily.lora_format`, the single-file layout).

    written = write_outputs(pipeline, work / "output", OutputSettings(subject_id="dog-1", ...))
    written.files   # [OutputFile("lora/dog-1.safetensors", size, sha256), ...], relative paths

Layout under the output (docs/user-guide.md, "Output layout"), every weight file in `--save-precision`:

- full fine-tuning: `model/` (diffusers' `from_pretrained`); with `--export-single-file` also
  `<subject-id>.safetensors` in the family's original layout (A1111, ComfyUI, `from_single_file`):
  Stable Diffusion's / SDXL's whole checkpoint, FLUX.2 [klein]'s and FLUX.1's transformer in
  BFL's layout.
- LoRA: `lora/pytorch_lora_weights.safetensors` (diffusers' `load_lora_weights`; not for
  --lora-variant lokr, which diffusers' SD/SDXL loaders do not read: `generate` reads the LyCORIS
  file back instead, outputs/lora_readers.py) and
  `lora/<subject-id>.safetensors` (kohya-ss/LyCORIS keys as the family names them; A1111/ComfyUI),
  with the run in their headers;
  `--lora-merge` adds `model/`, the base with the adapters merged in, and `--export-single-file`
  the single file of that merged model.

The pipeline in memory is left as it was: the merge works on copies of the adapted modules, so
the evaluation that follows still samples base + adapter.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dreambooth_job import families
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.families import for_pipeline
from dreambooth_job.families.lora_mode import check_variant
from dreambooth_job.outputs import lora_writers, result
from dreambooth_job.outputs.export.precision import save_pretrained_precision
from dreambooth_job.outputs.export.single_file import save_single_file
from dreambooth_job.storage import places as storage
from dreambooth_job.training import lora_adapters

logger = logging.getLogger("dreambooth_job")

MODEL_DIR = "model"
LORA_DIR = "lora"


@dataclass
class OutputSettings:
    """What to write, from the config, and the run facts that go in the files' headers."""

    subject_id: str
    precision: str = "fp16"
    single_file: bool = False
    lora_merge: bool = False
    metadata: Mapping[str, str] = field(default_factory=dict)
    """Strings for the safetensors headers (base model fingerprint, identifier, class noun, steps)."""


@dataclass(frozen=True)
class OutputFile:
    path: str
    """Relative to the output prefix, '/'-separated."""
    size: int
    sha256: str


@dataclass
class WrittenOutputs:
    model: bool = False
    """Whether `model/` (a diffusers pipeline directory) was written."""
    lora: list[str] = field(default_factory=list)
    """The adapter files, relative paths; empty for full fine-tuning."""
    single_file: str | None = None
    files: list[OutputFile] = field(default_factory=list)
    """Every file written, with its size and sha256."""


def single_file_name(subject_id: str) -> str:
    """`<subject-id>.safetensors`, a plain file name whatever --subject-id holds (a tenant's value:
    `../x` or `a/b` must not leave the output)."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", subject_id).strip("-.") or "subject"
    return f"{stem}.safetensors"


def check_exportable(pipeline, *, single_file: bool, lora_text_encoders: bool = False,
                     lora_variant: str | None = None) -> None:
    """Refuse (exit 2) what the base model's family cannot publish: a --export-single-file its layout
    cannot give, text-encoder LoRA adapters its LoRA files do not hold (they would be trained,
    then lost), or a --lora-variant (None: not a LoRA run) they cannot hold. Called when the base
    model is loaded, not after hours of training."""
    family = for_pipeline(pipeline)
    if single_file:
        family.check_single_file(pipeline)
    if lora_variant is not None:
        check_variant(lora_variant, family)
    missing = set(family.trained_text_encoder_names()) - set(family.lora_format.components)
    if lora_text_encoders and missing:
        raise InvalidInputError(f"--train-text-encoder with --train-mode lora: {family.name}'s LoRA "
                                f"files hold no adapters of {', '.join(sorted(missing))}; drop "
                                "--train-text-encoder")


def write_outputs(pipeline, directory: Path, settings: OutputSettings) -> WrittenOutputs:
    """Write the run's weight files under `directory` (the local copy of --output)."""
    directory = Path(directory)
    written = WrittenOutputs()
    family = families.for_pipeline(pipeline)
    modules = family.lora_format.modules(pipeline)
    if lora_adapters.has_lora(next(iter(modules.values()))):  # the denoiser's adapters: a LoRA run
        written.lora = _write_lora(family, modules, directory, settings)
        if settings.lora_merge or settings.single_file:
            with _merged(pipeline, modules) as merged:
                _write_full(merged, directory, settings, written, model_dir=settings.lora_merge)
    else:
        _write_full(pipeline, directory, settings, written, model_dir=True)
    written.files = describe(directory)
    logger.info("outputs written: %s", ", ".join(f"{f.path} ({f.size} bytes)" for f in written.files
                                                 if f.path.endswith(".safetensors")))
    return written


def _write_full(pipeline, directory: Path, settings: OutputSettings, written: WrittenOutputs, *,
                model_dir: bool) -> None:
    if model_dir:
        save_pretrained_precision(pipeline, directory / MODEL_DIR, settings.precision)
        written.model = True
    if settings.single_file:
        name = single_file_name(settings.subject_id)
        save_single_file(pipeline, directory / name, family=for_pipeline(pipeline), dtype=settings.precision,
                         metadata=dict(settings.metadata))
        written.single_file = name


def _write_lora(family, modules, directory: Path, settings: OutputSettings) -> list[str]:
    """The adapters in diffusers' and in kohya's format, as the family writes them; the text
    encoders' when they have any. The diffusers file only for an adapter kind diffusers' loader
    reads for the family (LoKr: the kohya/LyCORIS file alone)."""
    lora_dir = directory / LORA_DIR
    files = []
    variant = lora_adapters.adapter_variant(lora_adapters.lora_config(next(iter(modules.values()))))
    if variant in family.lora_format.diffusers_variants:
        files.append(lora_writers.save_lora_diffusers(
            lora_dir, family, modules, dtype=settings.precision, metadata=settings.metadata))
    files.append(lora_writers.save_lora_kohya(
        lora_dir / single_file_name(settings.subject_id), family, modules,
        dtype=settings.precision, metadata=settings.metadata))
    return [p.relative_to(directory).as_posix() for p in files]


class _merged:
    """The pipeline with merged copies of its adapted modules in place of the adapted ones, for
    the duration of the block; the originals (adapters and all) are put back afterwards."""

    def __init__(self, pipeline, modules):
        self.pipeline = pipeline
        self.originals = {name: module for name, module in modules.items() if lora_adapters.has_lora(module)}

    def __enter__(self):
        for name, module in self.originals.items():
            # A copy: merging is in place, and the run samples and evaluates base + adapter after.
            setattr(self.pipeline, name, lora_adapters.merge_lora(copy.deepcopy(module)))
        return self.pipeline

    def __exit__(self, *exc) -> None:
        for name, module in self.originals.items():
            setattr(self.pipeline, name, module)


def record(outputs, written: WrittenOutputs, output_uri: str) -> None:
    """Fill result.json's `outputs` (a result.Outputs) with what was written, as URIs under
    `output_uri`."""

    outputs.model = storage.join(output_uri, MODEL_DIR) if written.model else None
    outputs.lora = [storage.join(output_uri, p) for p in written.lora] or None
    outputs.single_file = storage.join(output_uri, written.single_file) if written.single_file else None
    outputs.files = [result.OutputFile(f.path, f.size, f.sha256) for f in written.files]


def describe(directory: Path) -> list[OutputFile]:
    """Every file under `directory` with its size and sha256, sorted by path."""
    directory = Path(directory)
    files = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        files.append(OutputFile(path.relative_to(directory).as_posix(), path.stat().st_size, digest))
    return files


def header_metadata(*, base_fingerprint: str, identifier: str, class_noun: str, steps: int,
                    subject_id: str, precision: str, version: str) -> dict[str, str]:
    """The run facts every published safetensors header carries (rank and alpha are added by the
    LoRA writers from the adapters). No source URI: a presigned base model URL would leak."""
    return {"dreambooth_job.version": version, "base_model_fingerprint": base_fingerprint,
            "identifier": identifier, "class_noun": class_noun, "steps": str(steps),
            "subject_id": subject_id, "save_precision": precision}
