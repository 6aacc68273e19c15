"""The trainer: one loop for every model, in one process or under torchrun.

It knows only the model contract (`loss`, `log_prob`, `sample`, `config`, `num_dims`): AdamW or
Adam, a step-indexed learning-rate schedule, gradient clipping, Polyak averaging, periodic
checkpoints, sample grids, test bits/dim, metrics.jsonl, TensorBoard and a tqdm bar in bits/dim.

Resuming is exact: the data order is a function of (seed, epoch, rank), the learning rate a
function of the step, and `train_state.pt` holds the weights, EMA, optimizer moments, the fp16
gradient scaler and every rank's RNG state at the checkpoint, so a killed run continued with
`resume=True` ends with the same weights as one that was never interrupted (bit for bit on the
CPU).

Bigger models: `precision` autocasts the training forward/loss (bf16, or fp16 with a gradient
scaler; weights, optimizer, EMA and evaluation stay fp32); `grad_accum` splits each step's batch
of batch_size * grad_accum examples (per process) into micro-batches whose gradients are summed,
with DDP's gradient all-reduce only on the last; `compile` runs the loss through torch.compile.
A model that declares training statistics (`has_training_stats`, e.g. ARDM's per-step losses)
returns them from `loss_and_stats`; the trainer sums them over micro-batches and ranks (one
all_reduce per step) and calls the model's `update_statistics` on every rank, so ranks agree.

What is trained is declared by the module's `objective` (class attribute): "likelihood" (the AR
models: loss in nats/dim, evaluation in exact bits/dim, sample grids) or "reconstruction" (the
tokenizers of `argen.tokenizers`): one optimizer per declared `optimizer_phases` (a VQ-GAN's
autoencoder and discriminator), the phases `training_phases(step)` names run in order on each
batch through `phase_loss(phase, x, step) -> (loss, stats)`, evaluation sums `eval_stats` over
the held-out data and reports `summarize` (MSE, PSNR, codebook usage), and the picture written
at the end shows reconstructions. Statistics with one value (0-d) are logged as sum/count.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import random
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from argen import checkpoint as ckpt
from argen.checkpoint import CONFIG_FILE, EMA_FILE, WEIGHTS_FILE, CorruptCheckpointError, atomic_write_bytes, save
from argen.conditioning import batch_condition, sample_conditions
from argen.device import resolve_device
from argen.metrics.bpd import bits_per_dim, evaluate_bpd
from argen.metrics.reconstruction import sum_eval_stats, summarize_stats
from argen.train import distributed as D
from argen.train.config import TrainConfig
from argen.train.ema import EMA
from argen.train.sampler import ResumableSampler
from argen.train.schedule import lr_at

STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"
SAMPLES_DIR = "samples"
TENSORBOARD_DIR = "tb"
#: Folders a run may hold besides its files: sample grids, TensorBoard events, and for runs over a
#: tokenizer's codes the tokenizer's copy ("tokenizer") and cached code grids ("codes").
RUN_DIRS = (SAMPLES_DIR, TENSORBOARD_DIR, "tokenizer", "codes")
STATE_FORMAT = "argen-train-state"
#: Version 2 adds "digest" (SHA-256 over the whole state), "extra" and "finished"; version 3 adds
#: "scaler" (the fp16 gradient scaler's state, None for fp32 and bf16).
STATE_VERSION = 3
#: Extra keyword arguments of `torch.compile` when `train.compile` is set (tests use a cheap backend).
COMPILE_OPTIONS: dict[str, Any] = {}
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Files a run directory may hold; `clear_run_dir` removes only these.
RUN_FILES = (CONFIG_FILE, WEIGHTS_FILE, EMA_FILE, STATE_FILE, METRICS_FILE, "eval.json")
#: Files only the trainer's main process writes: their stale temporaries are removed at a save or resume.
CHECKPOINT_FILES = (CONFIG_FILE, WEIGHTS_FILE, EMA_FILE, STATE_FILE, METRICS_FILE)


OBJECTIVES = ("likelihood", "reconstruction")


def uses_condition(model: nn.Module) -> bool:
    """Whether a reconstruction model declares that it trains on each batch's y too (the tokenizer
    class attribute `uses_condition`: IQ-VAE's edge maps); it then gets phase_loss(..., cond=y)."""
    return bool(getattr(type(model), "uses_condition", False))


def objective_of(model: nn.Module) -> str:
    """What `model` is trained for, from its declared class attribute `objective` (AR models:
    "likelihood"; tokenizers: "reconstruction")."""
    objective = getattr(type(model), "objective", "likelihood")
    if objective not in OBJECTIVES:
        raise TypeError(f"expected {type(model).__name__}.objective to be one of {OBJECTIVES}, given {objective!r}")
    return objective


def build_optimizer(model: nn.Module | Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (weight decay on tensors with dim >= 2 only, the nanoGPT rule) or Adam, over a
    module's parameters or a given list of them (one phase of a multi-optimizer model)."""
    source = model.parameters() if isinstance(model, nn.Module) else model
    params = [p for p in source if p.requires_grad]
    if not params:
        raise ValueError("expected a model with trainable parameters, given none")
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, betas=config.betas)
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=config.betas)


def check_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `precision` on `device`; ValueError naming both when unsupported.

    Autocast can quietly disable itself (with a warning) for a dtype a device lacks, so the check
    runs one small matmul under it and looks at the result's dtype.
    """
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return None
    problem = None
    if not torch.amp.is_autocast_available(device.type):
        problem = "autocast is not available there"
    elif device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        problem = "the GPU has no bfloat16 support"
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with torch.autocast(device.type, dtype=dtype):
                    a = torch.ones(2, 2, device=device)
                    out = a @ a
            if out.dtype != dtype:
                problem = f"autocast computed in {out.dtype} instead"
        except (RuntimeError, TypeError, ValueError) as e:
            problem = f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"
    if problem is not None:
        raise ValueError(f"train.precision={precision!r} ({dtype}) is not supported on device {str(device)!r} "
                         f"({problem}): expected a precision this device supports ('fp32' always is), "
                         f"given {precision!r}")
    return dtype


def has_checkpoint(run_dir: str | os.PathLike[str]) -> bool:
    """True when `run_dir` holds a training state to resume from (`read_train_state` checks it)."""
    return (Path(run_dir) / STATE_FILE).is_file()


# ----- the checkpoint set on disk ----------------------------------------------------------------
# A save writes, each file atomically (temporary file, fsync, rename):
#   1. train_state.pt   everything needed to resume, with a SHA-256 digest over its own contents
#   2. model.safetensors, 3. ema.safetensors   the weights to evaluate and sample with
#   4. config.json      the commit record: the description plus the checksum of each file above
# A kill after any prefix of these leaves either the previous complete set (nothing renamed yet)
# or a train_state.pt that is newer than config.json. Resuming reads train_state.pt, verifies its
# digest, and accepts it; when config.json is missing or does not record exactly these files
# (the interrupted case), the trainer rewrites weights and config.json from the state before it
# trains, so the set is consistent again. A state that fails its digest or cannot be read is
# corrupt (CorruptCheckpointError), never silently used.
def _feed(h: Any, obj: Any) -> None:
    """Hash plain data (dicts, lists, tensors, scalars) canonically, independent of dict order."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)};".encode())
        for key in sorted(obj, key=repr):
            _feed(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)};".encode())
        for item in obj:
            _feed(h, item)
    elif obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    else:
        raise TypeError(f"training state holds a {type(obj).__name__}, expected plain data and tensors")


def state_digest(state: dict[str, Any]) -> str:
    """SHA-256 over a training state without its "digest" entry."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != "digest"})
    return h.hexdigest()


def _check_state(state: Any, path: Path) -> dict[str, Any]:
    """Raise CorruptCheckpointError naming `path` unless `state` is a well-formed training state."""
    def bad(what: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"corrupt checkpoint: {path} {what}")

    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise bad("is not an argen training state")
    version = state.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= STATE_VERSION:
        raise bad(f"has format_version {version!r}, expected 1 to {STATE_VERSION}")
    kinds: list[tuple[str, tuple[type, ...]]] = [
        ("step", (int,)), ("model_name", (str, type(None))), ("model_config", (dict,)), ("train_config", (dict,)),
        ("model", (dict,)), ("ema", (dict, type(None))), ("optimizer", (dict,)), ("rng", (list, type(None))),
        ("world_size", (int,)), ("metrics", (dict, type(None))),
    ]
    if version >= 2:
        kinds += [("digest", (str,)), ("extra", (dict,)), ("finished", (bool,))]
    if version >= 3:
        kinds += [("scaler", (dict, type(None)))]
    for key, types in kinds:
        if key not in state:
            raise bad(f"lacks {key!r}")
        if not isinstance(state[key], types) or (isinstance(state[key], bool) and bool not in types):
            raise bad(f"has {key} of type {type(state[key]).__name__}, expected {' or '.join(t.__name__ for t in types)}")
    if state["step"] < 0:
        raise bad(f"has step {state['step']}, expected >= 0")
    if not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise bad("holds model weights that are not tensors")
    if version >= 2 and state_digest(state) != state["digest"]:
        raise bad("fails its SHA-256 check (the file was changed or damaged after it was written)")
    return state


@dataclasses.dataclass
class ResumePoint:
    """A verified training state and what resuming from it involves.

    `export_needed`: the weights files and config.json do not (all) belong to this state, because
    a save was interrupted after train_state.pt; the trainer rewrites them from the state.
    `note`: one line for the user saying so (None when the set was complete). `stored`: the
    run's config.json description when there is a well-formed one.
    """

    state: dict[str, Any]
    path: Path
    export_needed: bool = False
    note: str | None = None
    stored: dict[str, Any] | None = None

    @property
    def step(self) -> int:
        return int(self.state["step"])

    def description(self) -> dict[str, Any]:
        """What the run is: model name and config, train settings, dataset (from the state itself)."""
        extra = dict(self.state.get("extra") or {})
        if "extra" not in self.state and self.stored:  # a version 1 state: the dataset is in config.json
            extra = {k: self.stored[k] for k in ("data", "data_root") if k in self.stored}
        return {"model": self.state["model_name"], "config": dict(self.state["model_config"]),
                "train": dict(self.state["train_config"]), "step": self.step,
                "finished": bool(self.state.get("finished", False)), **extra}


def read_state_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and verify one train_state.pt (format, types and, from version 2, its digest)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"nothing to resume: no {path.name} in {str(path.parent)!r}") from None
    return _parse_state(data, path)


def _parse_state(data: bytes, path: Path) -> dict[str, Any]:
    if not data:
        raise CorruptCheckpointError(f"corrupt checkpoint: {path} is empty")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, bad pickle, ...: all mean a damaged file
        raise CorruptCheckpointError(
            f"corrupt checkpoint: cannot read {path} ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    return _check_state(state, path)


def read_train_state(run_dir: str | os.PathLike[str]) -> ResumePoint:
    """The training state of `run_dir` and whether the rest of its checkpoint set belongs to it.

    Raises FileNotFoundError when there is no train_state.pt and CorruptCheckpointError when it,
    or config.json, is damaged or malformed. Read-only: safe on every rank at once.
    """
    run_dir = Path(run_dir)
    path = run_dir / STATE_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"nothing to resume: no {STATE_FILE} in {str(run_dir)!r}") from None
    state = _parse_state(data, path)
    problem = None
    try:
        desc = ckpt.read_description(run_dir)
    except FileNotFoundError:
        desc, problem = None, f"{CONFIG_FILE} is missing"
    if desc is not None:
        files = desc.get(ckpt.FILES_KEY)
        if files is None:
            if state["format_version"] >= 2:
                problem = f"{CONFIG_FILE} records no checksums"
        elif files.get(STATE_FILE) != ckpt.file_record(data):
            problem = f"{CONFIG_FILE} belongs to the save of step {desc.get('step')}"
        else:
            for name in sorted(files):
                if name == STATE_FILE:
                    continue
                try:
                    ckpt.read_verified(run_dir, name, desc)
                except (FileNotFoundError, CorruptCheckpointError):
                    problem = f"{name} does not match {CONFIG_FILE}"
                    break
    note = None
    if problem is not None:
        note = (f"the checkpoint of step {state['step']} in {run_dir} was not completely written ({problem}; "
                f"an interrupted save?): resuming from {STATE_FILE} and rewriting the weights and {CONFIG_FILE}")
    return ResumePoint(state=state, path=path, export_needed=problem is not None, note=note, stored=desc)


def clear_run_dir(run_dir: str | os.PathLike[str]) -> None:
    """Remove the files a previous run wrote (and nothing else) so a new run can start there."""
    import shutil

    run_dir = Path(run_dir)
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    ckpt.remove_stale_temporaries(run_dir, RUN_FILES)
    for name in RUN_DIRS:
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)


def _rng_state(device: torch.device) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


class _InterruptFlag:
    """Turns the first Ctrl-C into a flag the loop checks between steps (a clean checkpoint);
    a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> "_InterruptFlag":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("argen: stopping after this step to save a checkpoint (Ctrl-C again to abort now)")

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class Trainer:
    """Train `model` on `train_data` (a Dataset of (x, y) pairs) as `config` says.

    `run_dir` receives checkpoints and logs (None: train in memory only). With `resume=True` the
    trainer continues from `run_dir/train_state.pt` (or pass the `ResumePoint` that
    `read_train_state` returned, to read it only once); `resume_note` then says whether the last
    save had been interrupted and was completed, and `finished` whether the run had already ended
    (its `fit` is then a no-op). `extra` is stored in `config.json` and `train_state.pt` next to
    the model description (the CLI records the dataset name there). `render` turns samples into the
    (pixels, levels) that sample grids show: a prior over a tokenizer's codes passes its decoder.
    """

    def __init__(self, model: nn.Module, train_data: Dataset, config: TrainConfig | None = None, *,
                 run_dir: str | os.PathLike[str] | None = None, eval_data: Dataset | None = None,
                 device: str | torch.device | None = "auto", resume: bool | ResumePoint = False,
                 extra: dict[str, Any] | None = None,
                 render: Callable[[Tensor], tuple[Tensor, int]] | None = None) -> None:
        self.config = config = config or TrainConfig()
        config.validate()
        self.device = resolve_device(device)
        self.dist = D.setup(self.device)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.extra = dict(extra or {})
        self.render = render
        self.train_data, self.eval_data = train_data, eval_data
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True

        # Training randomness (dropout, ...) differs per rank; model weights are made equal by DDP.
        torch.manual_seed(config.seed + self.dist.rank)
        random.seed(config.seed + self.dist.rank)
        np.random.seed((config.seed + self.dist.rank) % 2**32)

        self.autocast_dtype = check_precision(config.precision, self.device)
        self.model = model.to(self.device).train()
        self.objective = objective_of(self.model)
        self.with_stats = D.has_training_stats(self.model)  # update_statistics after each step
        phases = tuple(self.model.optimizer_phases) if self.objective == "reconstruction" else ("model",)
        if not phases or phases[0] != "model" or len(set(phases)) != len(phases):
            raise TypeError(f"expected {type(self.model).__name__}.optimizer_phases to start with 'model' and "
                            f"name each phase once, given {phases!r}")
        # parameters a phase does not use (a discriminator before disc_start) must not stall DDP
        config_unused = config.find_unused_parameters or len(phases) > 1
        # loss_module: LossModule(model), DDP-wrapped when distributed (its no_sync() is used for
        # gradient accumulation); loss_fn: the same, through torch.compile when asked. Checkpoints
        # always save self.model, the plain module.
        self.loss_module = D.wrap_for_training(self.model, self.device, self.dist, config_unused)
        self.loss_fn = torch.compile(self.loss_module, **COMPILE_OPTIONS) if config.compile else self.loss_module
        # fp16 gradients can underflow: scale the loss (disabled, a no-op, for fp32 and bf16)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.optimizers = {phase: build_optimizer(self._phase_parameters(phase), config) for phase in phases}
        self.optimizer = self.optimizers["model"]
        # 0-d training statistics summed since the last log line, on the device (read when logged,
        # so a step never waits for them): {name: (sum, count)}
        self._logged_stats: D.Stats = {}
        # a model may declare that averaged weights mean nothing (a tokenizer: averaged encoder
        # weights would not match the codebook buffers, which follow the live encoder)
        averaging = getattr(type(self.model), "weight_averaging", True)
        if config.ema_decay is not None and not averaging and self.dist.is_main:
            warnings.warn(f"{type(self.model).__name__} declares weight_averaging = False: train.ema_decay "
                          f"{config.ema_decay} is ignored", stacklevel=2)
        self.ema = EMA(self.model, config.ema_decay, config.ema_warmup) \
            if config.ema_decay is not None and averaging else None
        self.step = 0
        self.metrics: dict[str, Any] = {}
        self._last_saved_step: int | None = None
        self._in_update = False
        # between the start of a step and its update: a save on interrupt then stores the RNG
        # state of the step's start (`_step_rng`), since the partial step has already drawn from it
        self._in_step = False
        self._step_rng: dict[str, Any] | None = None
        self._finished = False  # set once fit() has evaluated and saved at the end
        self.resume_note: str | None = None

        # The loader yields one optimizer step's examples (batch_size * grad_accum per process),
        # which train_step splits into micro-batches: the data order, epochs and resume positions
        # are those of an un-accumulated run with batch_size * grad_accum.
        step_batch = config.batch_size * config.grad_accum
        self.sampler = ResumableSampler(len(train_data), step_batch, self.dist.rank, self.dist.world_size,
                                        seed=config.seed)
        self.steps_per_epoch = self.sampler.steps_per_epoch
        # A private generator keeps the DataLoader from drawing on the global RNG at each epoch,
        # which would shift the dropout stream between a resumed and an uninterrupted run.
        self.loader = DataLoader(
            train_data, batch_size=step_batch, sampler=self.sampler, drop_last=True,
            num_workers=config.num_workers, pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(config.seed),
        )
        self._writer: Any = None
        self._writer_ready = False
        if resume:
            if self.run_dir is None:
                raise ValueError("resume needs a run_dir")
            if self.is_main:
                ckpt.remove_stale_temporaries(self.run_dir, CHECKPOINT_FILES)
            point = resume if isinstance(resume, ResumePoint) else read_train_state(self.run_dir)
            self.load_state(point)
            if point.export_needed:
                self.save_checkpoint()  # complete the interrupted save from the state just read
            self.resume_note = point.note

    # ----- properties ----------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def finished(self) -> bool:
        """True when the run has reached `config.steps` and completed its end-of-training work."""
        return self._finished and self.step >= self.config.steps

    @property
    def eval_model(self) -> nn.Module:
        """The weights to evaluate and sample with: the Polyak average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def _cond(self, y: Tensor | None) -> Tensor | None:
        """The batch's conditioning input goes to the model only when its `cond_spec` declares one
        (`argen.conditioning.batch_condition`), or always to a tokenizer that declares
        `uses_condition` (IQ-VAE encodes the edge map with the image)."""
        if not uses_condition(self.model):
            y = batch_condition(self.model.cond_spec, y)
        return None if y is None else y.to(self.device, non_blocking=True)

    # ----- the loop ------------------------------------------------------------------------
    def _autocast(self) -> Any:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _full_precision(self) -> Any:
        """fp32 even inside a caller's autocast region: evaluation (exact bits/dim) and sampling."""
        if not torch.amp.is_autocast_available(self.device.type):
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, enabled=False)

    def _phase_parameters(self, phase: str) -> list[nn.Parameter]:
        if self.objective == "likelihood":
            return list(self.model.parameters())
        return list(self.model.phase_parameters(phase))

    def _active_phases(self) -> tuple[str, ...]:
        if self.objective == "likelihood":
            return ("model",)
        phases = tuple(self.model.training_phases(self.step))
        unknown = [p for p in phases if p not in self.optimizers]
        if not phases or unknown or phases[0] != "model" or len(set(phases)) != len(phases):
            raise TypeError(f"expected {type(self.model).__name__}.training_phases({self.step}) to start with 'model' "
                            f"and name each of {tuple(self.optimizers)} at most once, given {phases!r}")
        return phases

    def train_step(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """One optimizer update on the batch (x, y); returns the detached loss and the gradient norm.

        The loss is in nats/dim for a likelihood model, the "model" phase's loss for a
        reconstruction model. The batch is split into micro-batches of `batch_size` (the loader
        yields batch_size * grad_accum examples); each micro-batch's loss, divided by their number,
        is backpropagated (through the gradient scaler under fp16), DDP all-reducing gradients only
        on the last. Each active phase does this with its own optimizer, in order. Training
        statistics of the micro-batches and phases are summed, all-reduced over ranks once, and
        given to the model's `update_statistics` after the optimizer steps. The returned loss is
        the mean over the micro-batches.
        """
        x = x.to(self.device, non_blocking=True)
        cond = self._cond(y)
        self._step_rng = _rng_state(self.device)
        self._in_step = True
        if x.shape[0] == 0:
            raise ValueError(f"expected a batch of at least one example, given shape {tuple(x.shape)}")
        lr = lr_at(self.step, self.config)
        xs = x.split(self.config.batch_size)
        conds = cond.split(self.config.batch_size) if cond is not None else [None] * len(xs)
        n = len(xs)
        stats: D.Stats = {}
        reported: tuple[Tensor, Tensor | None] | None = None
        # a reconstruction model's phase_loss always returns (loss, stats): its logs at least
        paired = self.with_stats or self.objective == "reconstruction"
        method = "loss_and_stats" if self.objective == "likelihood" else "phase_loss"
        for phase in self._active_phases():
            optimizer = self.optimizers[phase]
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            total = torch.zeros((), device=self.device)
            phase_stats: D.Stats | None = None
            for i, (xi, ci) in enumerate(zip(xs, conds)):
                with D.no_sync(self.loss_module, skip=i < n - 1):
                    with self._autocast():
                        out = self.loss_fn(xi, ci) if self.objective == "likelihood" else self.loss_fn(xi, ci, phase, self.step)
                    if paired:
                        if not (isinstance(out, tuple) and len(out) == 2):
                            raise TypeError(f"expected {type(self.model).__name__} to return (loss, stats) from its "
                                            f"training loss, given a {type(out).__name__}")
                        loss, micro_stats = out
                        phase_stats = D.add_stats(phase_stats, D.check_stats(micro_stats, type(self.model).__name__,
                                                                               method))
                    else:
                        loss = out
                    self.scaler.scale(loss / n if n > 1 else loss).backward()
                total = total + loss.detach().float()
            if n > 1:
                total = total / n
            if self.scaler.is_enabled():
                self.scaler.unscale_(optimizer)  # clip (and report) the true gradient norm
            grad_norm = None
            if self.config.grad_clip is not None:
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    [p for g in optimizer.param_groups for p in g["params"]], self.config.grad_clip)
            clash = sorted(set(stats) & set(phase_stats or {}))
            if clash:
                raise ValueError(f"expected distinct statistic names in each training phase, given {clash} twice")
            stats.update(phase_stats or {})
            self._in_update = True  # from here until the step count moves, the state is mid-update
            if self.scaler.is_enabled():
                self.scaler.step(optimizer)  # skipped when the scaled gradients overflowed
            else:
                optimizer.step()
            if reported is None:
                reported = (total, grad_norm)
        if self.scaler.is_enabled():
            self.scaler.update()
        if stats:
            stats = D.all_reduce_stats(stats)  # every rank runs this: one collective per step
            for name, (s_, c_) in stats.items():
                if s_.dim() == 0:  # names may come and go between steps (a discriminator's from disc_start)
                    old = self._logged_stats.get(name)
                    self._logged_stats[name] = (s_, c_) if old is None else (old[0] + s_, old[1] + c_)
            if self.with_stats:
                self.model.update_statistics(stats)
        if self.ema is not None:
            self.ema.update(self.model)  # copies buffers too: the updated statistics
        self.step += 1
        self._in_update = self._in_step = False
        assert reported is not None
        total, grad_norm = reported
        return total, (grad_norm.detach() if grad_norm is not None else None)

    def _time_is_up(self, elapsed: float, limit: float) -> bool:
        """True once `limit` seconds have passed; under DDP every rank follows rank 0's clock."""
        up = float(elapsed >= limit) if self.is_main else 0.0
        if self.dist.enabled:
            up = D.all_reduce_sum([up], self.device)[0]
        return up > 0

    def fit(self) -> dict[str, Any]:
        """Train up to `config.steps`, then evaluate, checkpoint and sample; returns the metrics.

        Ctrl-C (SIGINT) stops at the next step boundary after writing a checkpoint, then raises
        KeyboardInterrupt.
        """
        cfg = self.config
        if self.finished:  # a resumed run that had ended: evaluating again would log a duplicate
            return dict(self.metrics, step=self.step)
        self._finished = False
        if self.is_main and self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=cfg.steps, initial=min(self.step, cfg.steps), desc="train", unit="step",
                   disable=not (cfg.progress and self.is_main), dynamic_ncols=True)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        norm_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        count, t_last = 0, time.perf_counter()
        clock = time.process_time if cfg.time_clock == "cpu" else time.perf_counter
        t_start, out_of_time = clock(), False
        try:
            with _InterruptFlag() as interrupt:
                while self.step < cfg.steps and not out_of_time:
                    epoch, start = divmod(self.step, self.steps_per_epoch)
                    self.sampler.set_position(epoch, start)
                    if hasattr(self.train_data, "set_epoch"):
                        self.train_data.set_epoch(epoch)  # dynamic binarization redraws per epoch
                    for x, y in self.loader:
                        loss, grad_norm = self.train_step(x, y)
                        loss_sum += loss.double()
                        if grad_norm is not None:
                            norm_sum += grad_norm.double()
                        count += 1
                        bar.update(1)
                        if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                            now = time.perf_counter()
                            self._log_train(bar, loss_sum, norm_sum, count, now - t_last)
                            loss_sum.zero_(), norm_sum.zero_()
                            count, t_last = 0, now
                        self._periodic()
                        if self._interrupt_requested(interrupt):
                            # every rank is at this boundary, so the full (collective) save works
                            if self.run_dir is not None and self._last_saved_step != self.step:
                                self.save_checkpoint()
                            raise KeyboardInterrupt
                        if self.step >= cfg.steps:
                            break
                        if cfg.time_limit is not None and self._time_is_up(clock() - t_start, cfg.time_limit):
                            out_of_time = True
                            if self.is_main and cfg.progress:
                                tqdm.write(f"time limit of {cfg.time_limit:g} {cfg.time_clock} seconds reached at step {self.step}")
                            break
        except KeyboardInterrupt:
            bar.close()
            self._save_on_interrupt()
            raise
        finally:
            bar.close()
        if self.eval_data is not None:
            if self.run_dir is not None and self._last_saved_step != self.step:
                self.save_checkpoint()  # before the final eval, so an interrupt there loses nothing
            self.evaluate_and_log()
        self._finished = True
        if self.run_dir is not None:
            self.save_checkpoint()  # with the test metrics in config.json, marked finished
        if cfg.sample_every is not None and self.run_dir is not None:
            self.sample_grid()
        self._close_writer()
        return dict(self.metrics, step=self.step)

    def _interrupt_requested(self, interrupt: _InterruptFlag) -> bool:
        # Every rank must stop at the same step, so the flag is agreed on over the group.
        if not self.dist.enabled:
            return interrupt.requested
        return D.all_reduce_sum([float(interrupt.requested)], self.device)[0] > 0

    def _save_on_interrupt(self) -> None:
        """Checkpoint the last whole step, unless the interrupt landed inside an update."""
        if self.run_dir is None or self._in_update or self._last_saved_step == self.step:
            return
        try:
            self.save_checkpoint(gather_rng=False)
        except Exception as e:  # the interrupt is the news; a failed save must not hide it
            warnings.warn(f"could not save a checkpoint on interrupt: {e}", stacklevel=2)

    def _periodic(self) -> None:
        cfg, s = self.config, self.step
        if cfg.eval_every and s % cfg.eval_every == 0 and s < cfg.steps and self.eval_data is not None:
            self.evaluate_and_log()
        if self.run_dir is None or s >= cfg.steps:
            return  # the end of fit() checkpoints and samples once
        if s % cfg.checkpoint_every == 0:
            self.save_checkpoint()
        if cfg.sample_every and s % cfg.sample_every == 0:
            self.sample_grid()

    # ----- logging -------------------------------------------------------------------------
    def _log_train(self, bar: Any, loss_sum: Tensor, norm_sum: Tensor, count: int, seconds: float) -> None:
        totals = D.all_reduce_sum([float(loss_sum), float(norm_sum)], self.device)
        world = self.dist.world_size
        nats = totals[0] / (count * world)
        if not math.isfinite(nats):
            raise FloatingPointError(f"training loss is {nats} at step {self.step}; lower train.lr or set train.grad_clip")
        record: dict[str, Any] = {"step": self.step}
        if self.objective == "likelihood":
            record["train_bpd"] = float(bits_per_dim(-nats, 1))
        else:
            record["train_loss"] = nats
        for name, (total, n) in sorted(self._logged_stats.items()):
            if float(n) > 0:
                record[f"train_{name}"] = float(total) / float(n)
        self._logged_stats = {}
        record.update({
            "lr": lr_at(self.step - 1, self.config),
            "examples_per_s": count * self.config.batch_size * self.config.grad_accum * world / max(seconds, 1e-9),
        })
        if self.config.grad_clip is not None:
            record["grad_norm"] = totals[1] / (count * world)
        if self.objective == "likelihood":
            self.metrics["train_bpd"] = record["train_bpd"]
            bar.set_postfix(bpd=f"{record['train_bpd']:.4f}", lr=f"{record['lr']:.2e}")
        else:
            self.metrics["train_loss"] = record["train_loss"]
            bar.set_postfix(loss=f"{record['train_loss']:.4f}", lr=f"{record['lr']:.2e}")
        self.log(record)

    def log(self, record: dict[str, Any]) -> None:
        """Append one record to metrics.jsonl and TensorBoard (main process, with a run_dir)."""
        if not self.is_main or self.run_dir is None:
            return
        with open(self.run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        writer = self._tensorboard()
        if writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    writer.add_scalar(key.replace("_", "/", 1), value, record["step"])

    def _tensorboard(self) -> Any:
        if not self._writer_ready:
            self._writer_ready = True
            if self.config.tensorboard and self.is_main and self.run_dir is not None:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step drops events a killed run logged after the checkpoint we resumed from
                self._writer = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR), purge_step=self.step or None)
        return self._writer

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer, self._writer_ready = None, False

    # ----- evaluation and samples ----------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, data: Dataset | None = None, max_examples: int | None = -1) -> dict[str, Any]:
        """Exact bits/dim of the evaluation weights on the first `max_examples` of `data`.

        Examples are split over ranks and the totals summed, so every rank returns the same
        number. `max_examples=-1` means `config.eval_examples`.
        """
        data = data if data is not None else self.eval_data
        if data is None:
            raise ValueError("expected evaluation data, given none")
        limit = self.config.eval_examples if max_examples == -1 else max_examples
        n = len(data) if limit is None else min(len(data), limit)
        shard = Subset(data, range(self.dist.rank, n, self.dist.world_size))
        if self.objective == "reconstruction":
            return self._evaluate_reconstruction(shard)
        total, count = 0.0, 0
        if len(shard):
            loader = DataLoader(shard, batch_size=self.config.eval_batch_size, shuffle=False,
                                num_workers=self.config.num_workers)
            with self._full_precision():  # exact bits/dim: fp32, whatever the training precision
                result = evaluate_bpd(self.eval_model, loader, device=self.device)
            total, count = result["nats"] * result["n"], result["n"]
        total, count = D.all_reduce_sum([total, float(count)], self.device)
        if count == 0:
            raise ValueError("expected at least one evaluation example, given none")
        nats = total / count
        return {"bpd": float(bits_per_dim(-nats, self.model.num_dims)), "nats": nats, "n": int(count)}

    def _evaluate_reconstruction(self, shard: Dataset) -> dict[str, Any]:
        """The model's `summarize` of its `eval_stats` summed over the shards of every rank."""
        model = self.eval_model
        loader = DataLoader(shard, batch_size=self.config.eval_batch_size, shuffle=False,
                            num_workers=self.config.num_workers) if len(shard) else [
            (torch.zeros((0, *model.data_shape), dtype=torch.long), None)]  # an empty shard still joins the all-reduce
        with self._full_precision():
            stats, examples = sum_eval_stats(model, loader, self.device)
        assert stats is not None
        stats = D.all_reduce_stats(stats)
        return summarize_stats(model, stats, int(D.all_reduce_sum([float(examples)], self.device)[0]))

    def evaluate_and_log(self) -> dict[str, Any]:
        result = self.evaluate()
        if self.objective == "reconstruction":
            self.metrics.update({f"test_{k}": v for k, v in result.items()})
            self.log({"step": self.step, **{f"test_{k}": v for k, v in result.items() if k != "n"}})
            if self.is_main and self.config.progress:
                tqdm.write(f"step {self.step}: test " + ", ".join(f"{k} {v:.4g}" for k, v in result.items() if k != "n")
                           + f" ({result['n']} examples)")
            return result
        self.metrics.update(test_bpd=result["bpd"], test_nats=result["nats"], test_n=result["n"])
        self.log({"step": self.step, "test_bpd": result["bpd"], "test_nats": result["nats"]})
        if self.is_main and self.config.progress:
            tqdm.write(f"step {self.step}: test bits/dim {result['bpd']:.4f} ({result['n']} examples)")
        return result

    @torch.no_grad()
    def sample_grid(self) -> Path | None:
        """Write `samples/step_XXXXXXX.png` from the evaluation weights (main process only).

        A private generator seeded by `config.seed` leaves the training RNG untouched.
        """
        if not self.is_main or self.run_dir is None:
            return None
        from argen.data.images import MAX_IMAGE_LEVELS, save_grid

        model = self.eval_model
        if model.levels > MAX_IMAGE_LEVELS and self.render is None:
            return None  # a token grid is not an image: nothing to show
        n, nrow = self.config.num_samples, None
        if self.objective == "reconstruction":
            x, nrow = self._reconstructions(model, n)
        else:
            if model.cond_spec.kind in ("class", "none"):
                cond = sample_conditions(model.cond_spec, n, device=self.device)
            else:  # captions / condition tokens: those of the first held-out items (a null one may be untrained)
                data = self.eval_data if self.eval_data is not None else self.train_data
                n = max(1, min(n, len(data)))
                cond = torch.stack([torch.as_tensor(data[i][1]) for i in range(n)]).to(self.device)
            generator = torch.Generator().manual_seed(self.config.seed)
            with self._full_precision():
                x = model.sample(n, cond, generator=generator)
        levels = model.levels
        if self.render is not None:
            with torch.no_grad(), self._full_precision():
                x, levels = self.render(x)
        path = self.run_dir / SAMPLES_DIR / f"step_{self.step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_grid(x.cpu(), levels, path, nrow=nrow)
        return path

    def _reconstructions(self, model: nn.Module, n: int) -> tuple[Tensor, int]:
        """Rows of held-out images (training images without a test split), each followed by its
        reconstruction row: what a tokenizer's picture shows instead of samples."""
        data = self.eval_data if self.eval_data is not None else self.train_data
        half = max(1, min(n // 2, len(data)))
        x = torch.stack([torch.as_tensor(data[i][0]) for i in range(half)]).to(self.device)
        was_training = model.training
        model.eval()
        with self._full_precision():
            rec = model.reconstruct(x)
        model.train(was_training)
        row = max(1, min(8, half))
        half -= half % row  # whole rows only
        pairs = [t for i in range(0, half, row) for t in (x[i:i + row], rec[i:i + row])]
        return torch.cat(pairs), row

    # ----- checkpoints ---------------------------------------------------------------------
    def save_checkpoint(self, gather_rng: bool = True) -> None:
        """Write train_state.pt (everything to resume), the safetensors weights, then config.json.

        The resume file holds its own copy of the weights and a digest of itself, and config.json
        (written last) records the checksum of every file, so a kill between the writes never
        pairs weights of one step with optimizer moments of another (see `read_train_state`).
        Non-finite weights are refused before anything is written. `gather_rng=False` skips the
        collective (used on interrupt, when other ranks may be gone): ranks other than 0 then
        reseed deterministically on resume. Saved in the middle of a step (an interrupt before its
        update), the RNG state is the one of the step's start, which the resumed run redoes.
        """
        rng = self._step_rng if self._in_step and self._step_rng is not None else _rng_state(self.device)
        rngs = D.all_gather_object(rng) if gather_rng else [rng] + [None] * (self.dist.world_size - 1)
        if self.is_main and self.run_dir is not None:
            # never replace a good checkpoint with diverged weights
            ckpt.check_finite(self.model, "model")
            if self.ema is not None:
                ckpt.check_finite(self.ema.module, "EMA model")
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.remove_stale_temporaries(self.run_dir, CHECKPOINT_FILES)
            state = {
                "format": STATE_FORMAT,
                "format_version": STATE_VERSION,
                "step": self.step,
                "model_name": getattr(self.model, "model_name", None),
                "model_config": self.model.config.to_dict(),
                "train_config": self.config.to_dict(),
                "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "optimizer": self.optimizer.state_dict(),
                # the other phases' optimizers (a VQ-GAN's discriminator); absent for one optimizer
                **({"optimizers": {k: o.state_dict() for k, o in self.optimizers.items() if k != "model"}}
                   if len(self.optimizers) > 1 else {}),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "rng": rngs,
                "world_size": self.dist.world_size,
                "metrics": dict(self.metrics),
                "extra": dict(self.extra),
                "finished": self._finished,
            }
            state["digest"] = state_digest(state)
            buffer = io.BytesIO()
            torch.save(state, buffer)
            # the order is the protocol ("the checkpoint set on disk" above): state, weights, config.json
            record = ckpt.atomic_write_bytes(self.run_dir / STATE_FILE, buffer.getvalue())
            save(self.model, self.run_dir, step=self.step, ema=self.ema.module if self.ema is not None else None,
                 files={STATE_FILE: record}, train=self.config.to_dict(), metrics=dict(self.metrics), **self.extra)
        self._last_saved_step = self.step

    def load_state(self, source: str | os.PathLike[str] | ResumePoint) -> None:
        """Restore weights, EMA, optimizer, step and RNG from a train_state.pt (or a ResumePoint).

        A damaged or malformed file raises CorruptCheckpointError (a ValueError).
        """
        if isinstance(source, ResumePoint):
            state, path = source.state, source.path
        else:
            path = Path(source)
            state = read_state_file(path)
        name = getattr(self.model, "model_name", None)
        if state["model_name"] != name or state["model_config"] != self.model.config.to_dict():
            raise ValueError(
                f"cannot resume: {path} holds model {state['model_name']!r} with config {state['model_config']}, "
                f"given model {name!r} with config {self.model.config.to_dict()}"
            )
        part = "model weights"
        try:
            self.model.load_state_dict(state["model"])
            if self.ema is not None:
                part = "EMA weights"
                if state["ema"] is not None:
                    self.ema.load_state_dict(state["ema"])
                else:  # EMA switched on at resume: start the average from the current weights
                    self.ema = EMA(self.model, self.config.ema_decay, self.config.ema_warmup)
            part = "optimizer state"
            self.optimizer.load_state_dict(state["optimizer"])
            for phase, optimizer in self.optimizers.items():
                if phase != "model":
                    optimizer.load_state_dict(state["optimizers"][phase])
            part = "gradient scaler state"
            if self.scaler.is_enabled() and state.get("scaler"):  # else fp16 switched on at resume: a fresh scale
                self.scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise CorruptCheckpointError(f"corrupt checkpoint: {path} holds {part} that do not fit the model "
                                         f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
        self._finished = bool(state.get("finished", False))
        self.step = int(state["step"])
        self.metrics = dict(state.get("metrics") or {})
        self._last_saved_step = self.step
        rngs = state.get("rng") or []
        mine = rngs[self.dist.rank] if state.get("world_size") == self.dist.world_size and self.dist.rank < len(rngs) else None
        if mine is not None:
            try:
                _set_rng_state(mine, self.device)
            except (KeyError, TypeError, RuntimeError) as e:
                raise CorruptCheckpointError(f"corrupt checkpoint: {path} holds a malformed RNG state ({e})") from None
        else:
            if self.dist.is_main:
                warnings.warn("the saved RNG state does not cover this process; reseeding (resume is not bit-exact)", stacklevel=2)
            torch.manual_seed(self.config.seed + 1000003 * self.step + self.dist.rank)
        if self.is_main and self.run_dir is not None:
            self._truncate_metrics(self.step)

    def _truncate_metrics(self, step: int) -> None:
        """Drop metrics a killed run logged after the checkpoint we resume from."""
        path = self.run_dir / METRICS_FILE
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the kill
            if isinstance(record, dict) and isinstance(record.get("step", 0), (int, float)) \
                    and record.get("step", 0) <= step:
                kept.append(line)
        atomic_write_bytes(path, ("\n".join(kept) + "\n" if kept else "").encode())


def train(model: nn.Module, train_data: Dataset, config: TrainConfig | None = None, **kwargs: Any) -> dict[str, Any]:
    """Convenience: `Trainer(model, train_data, config, **kwargs).fit()`."""
    return Trainer(model, train_data, config, **kwargs).fit()
