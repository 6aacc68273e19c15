"""The `argen` command: train, eval, sample, complete, models, datasets.

Each subcommand is a `register(subparsers)` function that adds its parser and sets `func`; the
list `COMMANDS` holds the built-in ones and `COMMAND_MODULES` names other modules whose
`register(subparsers)` adds more (metrics, compression), so those live next to their code.

Exit codes: 0 ok, 2 bad usage or input (ValueError), 3 missing or corrupt file or checkpoint,
130 interrupted (train saves a checkpoint first), 1 anything unexpected. Errors print one line,
`argen: error: ...`, on stderr; `--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from argen.runs import (  # noqa: F401 - re-exported: the command modules' shared helpers live in argen.runs
    EXIT_ERROR,
    EXIT_FILE,
    EXIT_INTERRUPT,
    EXIT_OK,
    EXIT_USAGE,
    SEED_MAX,
    CheckpointError,
    Interrupted,
    load_run,
    run_dataset,
    run_description,
    say,
    seed_arg,
)
from argen.runs import add_device_argument as _add_device
from argen.runs import device_arg as _device
from argen.runs import is_main_process as _is_main_process

#: Modules contributing subcommands; each defines `register(subparsers) -> None`.
COMMAND_MODULES: list[str] = ["argen.compress.commands", "argen.metrics.commands", "argen.tokenizers.commands",
                              "argen.video_commands"]


def _add_sampling(p: argparse.ArgumentParser) -> None:
    from argen.fields import float_arg, int_arg

    p.add_argument("--seed", type=seed_arg(), default=0, help="random seed of the draw (default: 0)")
    p.add_argument("--temperature", type=float_arg(gt=0), default=None,
                   help="divide logits by this, > 0 (default: 1.0, or the model's declared default, e.g. lvt 0.9)")
    p.add_argument("--top-k", type=int_arg(ge=1), default=None,
                   help="keep the k most likely values per sub-pixel (default: all, or the model's, e.g. harp)")
    p.add_argument("--top-p", type=float_arg(gt=0, le=1), default=None,
                   help="nucleus sampling: keep the most likely mass p, in (0, 1]")
    p.add_argument("--steps", type=int_arg(ge=1), default=None,
                   help="network-call budget for models that sample in parallel (ARDM); default: one per dim")
    p.add_argument("--naive", action="store_true",
                   help="use the reference sampler (one full forward pass per step) instead of the model's own")
    p.add_argument("--cfg-scale", "--cfg", type=float_arg(ge=0), default=1.0,
                   help="classifier-free guidance scale, for models with a null condition (default: 1, none)")


def _labels(model: Any, n: int, klass: int | None) -> Any:
    """Conditions for n samples (`argen.conditioning.sample_conditions`): all `klass`, or 0..C-1 cycling."""
    from argen.conditioning import sample_conditions

    return sample_conditions(model.cond_spec, n, klass, device=model.device, option="--class")


def _sampling_config(model: Any, args: argparse.Namespace) -> Any:
    """The SamplingConfig of the sampling options (checked against what the model can do)."""
    import torch

    from argen.sampling.config import config_over_defaults

    config = config_over_defaults(getattr(model, "sampling_defaults", None),
                                  generator=torch.Generator().manual_seed(args.seed), temperature=args.temperature,
                                  top_k=args.top_k, top_p=args.top_p, naive=args.naive, progress=True,
                                  cfg_scale=args.cfg_scale)
    if config.cfg_scale != 1.0 and not model.capabilities.guidance:
        raise ValueError(f"--cfg-scale needs a model with a null (unconditional) input for classifier-free "
                         f"guidance; model {model.model_name!r} has none: expected --cfg-scale 1, given {args.cfg_scale}")
    return config


def _sample_options(model: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The model-declared sampling options of the command line (--steps), checked against the model."""
    opts: dict[str, Any] = {}
    if args.steps is not None:
        if not model.capabilities.parallel_steps:
            raise ValueError(f"--steps is for models that sample in parallel (e.g. ardm), given model {model.model_name!r}")
        opts["steps"] = args.steps
    return opts


def _generate(model: Any, x: Any, known: Any, cond: Any, args: argparse.Namespace) -> Any:
    """Sample (known=None) or complete with the model's own sampler, or the naive one with --naive."""
    config = _sampling_config(model, args)
    opts = _sample_options(model, args)
    if known is None:
        return model.sample(x.shape[0], cond, config, **opts)
    return model.complete(x, known, cond, config, **opts)


# ----- train ------------------------------------------------------------------------------------
def register_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train a model or a tokenizer on a dataset",
                       description="Train MODEL (or a tokenizer: vqvae, vqgan, fsq); the image shape, levels and "
                                   "classes come from the dataset. With --tokenizer RUN the model is a prior over "
                                   "that tokenizer's code grids (written once by `argen tokenize`).")
    p.add_argument("model", help="registered model or tokenizer name (see `argen models`)")
    p.add_argument("--tokenizer", default=None, metavar="RUN",
                   help="train MODEL as a prior over the codes of the tokenizer trained in RUN (default data: RUN's)")
    p.add_argument("--data", default=None, help="dataset name (see `argen datasets`; default: mnist)")
    p.add_argument("--data-root", default=None, help="folder holding the dataset files, where it needs one")
    p.add_argument("--steps", type=_train_option("steps"), default=None, help="optimizer steps (train.steps)")
    p.add_argument("--batch-size", type=_train_option("batch_size"), default=None,
                   help="examples per micro-batch per process (train.batch_size); a step takes train.grad_accum of them")
    p.add_argument("--lr", type=_train_option("lr"), default=None, help="peak learning rate (train.lr)")
    p.add_argument("--seed", type=_train_option("seed"), default=None,
                   help="seed of init, data order and training (train.seed)")
    p.add_argument("--out", default=None, help="run directory (default: runs/MODEL-DATA)")
    p.add_argument("--config", default=None, help='JSON or TOML file: {"model": {...}, "train": {...}}')
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override settings, e.g. model.hidden=64 train.lr=1e-3 train.grad_clip=none")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (starts fresh if there is none)")
    p.add_argument("--overwrite", action="store_true", help="start over in a run directory that holds a run")
    p.add_argument("--class-conditional", action="store_true", help="condition on the dataset's class labels")
    p.add_argument("--conditional", action="store_true",
                   help="condition on what the dataset pairs each item with: class labels, caption tokens "
                        "(mnist-captions), or a condition image encoded by the tokenizer (mnist-edges + iqvae)")
    _add_device(p)
    p.set_defaults(func=cmd_train)


def _train_option(name: str) -> Callable[[str], Any]:
    """argparse `type=` for option train.NAME, with the bounds `TrainConfig` declares for it."""
    import dataclasses
    import typing

    from argen.fields import field_bounds, float_arg, int_arg
    from argen.train.config import TrainConfig

    field = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    bounds, _ = field_bounds(field)
    if typing.get_type_hints(TrainConfig)[name] is float:
        return float_arg(ge=bounds.ge, gt=bounds.gt, le=bounds.le, lt=bounds.lt)
    return int_arg(ge=bounds.ge, gt=bounds.gt, le=bounds.le)


#: Model settings that the dataset decides (`argen train` sets them from it).
DATASET_DECIDES = ("image_shape", "video_shape", "levels")
#: Config fields of token-conditioned models that the dataset decides (its vocabulary and caption length).
TOKEN_CONDITION_FIELDS = ("cond_vocab", "cond_len")


def _check_dataset_settings(entry: Any, given: dict[str, Any], data: str, ds: Any, shape_key: str) -> None:
    """Refuse model.levels / model.image_shape / model.video_shape unless equal to the dataset's."""
    from argen.train.config import coerce_fields

    for key in DATASET_DECIDES:
        if key not in given:
            continue
        value = coerce_fields(entry.cls.config_class, {key: given[key]}, section="model")[key]
        if key == "levels":
            expected, what = ds.levels, f"{ds.levels} levels"
        else:
            expected = tuple(ds.shape) if key == shape_key else None
            what = f"shape {list(ds.shape)}"
        if value != expected:
            raise ValueError(f"model.{key} is decided by the dataset ({data!r} has {what}), given {given[key]!r}; "
                             "drop the setting or choose another --data")


def _data_slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip("_") or "data"


def trainable_entry(name: str, prior: bool = False) -> tuple[Any, str]:
    """The registry entry of a model or a tokenizer named `name`, and which of the two it is. A name
    both registries hold (iqvae: the tokenizer and its prior) is the model when trained as a `prior`
    (over --tokenizer), else the tokenizer."""
    from argen.registry import get_entry, list_models
    from argen.tokenizers import get_tokenizer_entry, list_tokenizers

    if name in list_tokenizers() and not (prior and name in list_models()):
        return get_tokenizer_entry(name), "tokenizer"
    if name in list_models():
        return get_entry(name), "model"
    raise ValueError(f"unknown model {name!r}; expected one of the models {list_models()} "
                     f"or the tokenizers {list_tokenizers()}")


def _trains_prior(args: argparse.Namespace) -> bool:
    """Whether `argen train` trains a prior over a tokenizer's codes: with --tokenizer, or on --resume of a
    run that holds one (its description names the tokenizer copied into it; unreadable: that copy's folder)."""
    if args.tokenizer:
        return True
    if not args.resume:
        return False
    run_dir = Path(args.out or f"runs/{args.model}-{_data_slug(args.data or 'mnist')}")
    try:
        return "tokenizer" in run_description(run_dir)
    except (OSError, ValueError, CheckpointError):  # the resume path below reports a broken run properly
        return (run_dir / "tokenizer").is_dir()


def create_trainable(name: str, prior: bool = False, **kwargs: Any) -> Any:
    """Build the model or tokenizer `name` (as `trainable_entry` resolves it) from its hyperparameters."""
    import argen
    from argen.tokenizers import create_tokenizer

    if trainable_entry(name, prior)[1] == "tokenizer":
        return create_tokenizer(name, **kwargs)
    return argen.create_model(name, **kwargs)


class _PriorOf:
    """The tokenizer a prior is trained over: where its codes are cached, its record in the run."""

    def __init__(self, tokenizer: Any, source_dir: Path, desc: dict[str, Any], record: dict[str, Any]) -> None:
        self.tokenizer, self.source_dir, self.record = tokenizer, source_dir, record
        self.data, self.data_root = desc.get("data"), desc.get("data_root")
        self.desc = desc

    def render(self, codes: Any) -> tuple[Any, int]:
        """Sample grids of the prior show decoded images (clips, over a video tokenizer)."""
        codes = codes.reshape(codes.shape[0], *self.tokenizer.code_shape)  # drop the prior's channel axis of a grid
        return self.tokenizer.decode(codes.to(next(self.tokenizer.parameters()).device)), self.tokenizer.levels

    def copy_into(self, run_dir: Path) -> None:
        """Save the tokenizer into the prior's run, so the run is whole wherever it is moved."""
        import argen

        target = run_dir / self.record["dir"]
        if target.resolve() == self.source_dir.resolve():
            return
        argen.save(self.tokenizer, target, step=self.desc.get("step"), data=self.data, data_root=self.data_root,
                   metrics=dict(self.desc.get("metrics") or {}), source=str(self.source_dir))


def _tokenizer_for_prior(source: str | None, run_dir: Path, point: Any, device: str) -> _PriorOf:
    """Load the tokenizer of `--tokenizer source` (or, resuming, the run's own copy) and check it."""
    from argen.checkpoint import weights_fingerprint

    stored = point.description().get("tokenizer") if point is not None else None
    where = Path(source) if source else run_dir / stored["dir"]
    tokenizer = load_run(where, _device(device))
    kind = getattr(type(tokenizer), "kind", "model")
    if kind != "tokenizer":
        raise ValueError(f"--tokenizer {str(where)!r} holds a {kind} model ({tokenizer.model_name!r}), expected a "
                         "tokenizer run (argen train vqvae|vqgan|fsq ...)")
    tokenizer.eval()
    fingerprint = weights_fingerprint(tokenizer)
    if stored is not None and stored.get("fingerprint") not in (None, fingerprint):
        raise ValueError(f"cannot resume over --tokenizer {str(where)!r}: its weights differ from those the run's prior "
                         "was trained over (start a new run with --out)")
    record = {"dir": "tokenizer", "name": tokenizer.model_name, "fingerprint": fingerprint,
              "source": str(stored["source"] if stored and not source else where)}
    return _PriorOf(tokenizer, where, run_description(where), record)


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from argen.checkpoint import CONFIG_FILE, EMA_FILE, WEIGHTS_FILE, CorruptCheckpointError
    from argen.data import load_dataset
    from argen.train import TrainConfig, Trainer, clear_run_dir, has_checkpoint, load_config_file, merge_configs, parse_overrides
    from argen.train import distributed as D
    from argen.train.config import coerce_fields
    from argen.train.trainer import RUN_FILES, SAMPLES_DIR, TENSORBOARD_DIR, objective_of, read_train_state

    prior = _trains_prior(args)  # a name both registries hold (iqvae) is the prior over --tokenizer or on its resume
    entry, kind = trainable_entry(args.model, prior=prior)  # unknown name: ValueError listing them
    if kind == "tokenizer" and (args.tokenizer or args.class_conditional or args.conditional):
        raise ValueError(f"{args.model!r} is a tokenizer: it takes none of --tokenizer, --class-conditional, "
                         "--conditional")
    layers = [load_config_file(args.config)] if args.config else []
    layers.append(parse_overrides(args.set))
    if not getattr(entry.cls, "weight_averaging", True) and "ema_decay" not in merge_configs(*layers)["train"]:
        # a model that declares averaged weights meaningless (tokenizers) trains without the default average
        layers.insert(0, {"train": {"ema_decay": None}})
    user_model = merge_configs(*layers)["model"]  # what the user set, without a resumed run's own
    flags = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}
    layers.append({"train": {k: v for k, v in flags.items() if v is not None}})

    run_dir = Path(args.out or f"runs/{args.model}-{_data_slug(args.data or 'mnist')}")
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out {str(run_dir)!r} is a file, expected a run directory (new or holding a run)")
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    resume = args.resume and has_checkpoint(run_dir)
    data, root, point = args.data, args.data_root, None
    if resume:
        try:  # a verified train_state.pt; config.json is only checked against it
            point = read_train_state(run_dir)
        except CorruptCheckpointError as e:
            raise CheckpointError(str(e)) from None
        desc = point.description()
        if desc.get("model") != args.model:
            raise ValueError(f"cannot resume {str(run_dir)!r} as {args.model!r}: it holds a {desc.get('model')!r} run")
        stored_model = coerce_fields(entry.cls.config_class, dict(desc.get("config") or {}), section="model")
        for layer in layers:
            given = coerce_fields(entry.cls.config_class, dict(layer.get("model") or {}), section="model")
            changed = sorted(k for k, v in given.items() if stored_model.get(k) != v)
            if changed:
                raise ValueError(f"model settings {changed} cannot change on --resume (the run has "
                                 f"{ {k: stored_model.get(k) for k in changed} }); start a new run with --out")
        if data is not None and desc.get("data") not in (None, data):
            raise ValueError(f"cannot resume on --data {data!r}: the run trained on {desc.get('data')!r}")
        if args.tokenizer and "tokenizer" not in desc:
            raise ValueError(f"cannot resume {str(run_dir)!r} over --tokenizer: it is a prior over pixels, not codes")
        data, root = desc.get("data") or data, root or desc.get("data_root")
        stored = {"model": dict(desc.get("config") or {}), "train": dict(desc.get("train") or {})}
        layers.insert(0, stored)
    else:
        existing = [n for n in RUN_FILES if (run_dir / n).exists()]
        if args.resume:
            kept = [n for n in (CONFIG_FILE, WEIGHTS_FILE, EMA_FILE) if (run_dir / n).exists()]
            if kept:  # a model checkpoint without the state to continue it: not ours to delete
                raise CheckpointError(f"cannot resume {str(run_dir)!r}: it holds {', '.join(kept)} but no "
                                      "train_state.pt to continue from; pass --overwrite to start over there")
            if existing or any((run_dir / n).exists() for n in (SAMPLES_DIR, TENSORBOARD_DIR)):
                say(f"argen: no checkpoint in {run_dir} (the earlier run stopped before its first checkpoint "
                    "was complete); removing its logs and starting a new run")
                if _is_main_process():
                    clear_run_dir(run_dir)
                existing = []
            else:
                say(f"argen: no checkpoint in {run_dir}; starting a new run")
        if existing and not args.overwrite:
            raise ValueError(f"run directory {str(run_dir)!r} already holds a run ({', '.join(existing)}); "
                             "pass --resume to continue it or --overwrite to start over")
        if existing and _is_main_process():
            clear_run_dir(run_dir)
    prior_of = None
    if args.tokenizer or (point is not None and "tokenizer" in point.description()):
        prior_of = _tokenizer_for_prior(args.tokenizer, run_dir, point, args.device)
        data, root = data or prior_of.data, root or prior_of.data_root
    data = data or "mnist"
    merged = merge_configs(*layers)
    train_cfg = TrainConfig.from_dict(merged["train"])

    def split(name: str) -> Any:
        if prior_of is None:
            return load_dataset(data, name, root=root, seed=train_cfg.seed)
        from argen.data.codes import code_dataset

        ds, made = code_dataset(prior_of.tokenizer, prior_of.source_dir, data, name, root=root, seed=train_cfg.seed,
                                progress=_is_main_process())
        if made:
            say(f"argen: encoded {data} {name} with the tokenizer ({len(ds)} code grids {tuple(ds.shape)}), "
                f"cached in {prior_of.source_dir}")
        return ds

    train_ds = split("train")
    try:
        test_ds = split("test")
    except (ValueError, FileNotFoundError) as e:
        say(f"argen: no test split for {data!r} ({e}); training without evaluation")
        test_ds = None

    model_kw = dict(merged["model"])
    given_classes = model_kw.pop("num_classes", None)
    spec = train_ds.cond_spec
    stored_tokens = bool(model_kw.get("cond_vocab"))  # a resumed token-conditioned run
    conditional = args.class_conditional or args.conditional or bool(given_classes) or stored_tokens
    if conditional and spec.kind != "class" and (args.class_conditional or given_classes):
        raise ValueError(f"--class-conditional needs a labelled dataset; {data!r} pairs its items with "
                         f"{spec.kind} conditions (use --conditional)" if spec.kind != "none" else
                         f"--class-conditional needs a labelled dataset, given {data!r} without labels")
    shape_key = "video_shape" if len(train_ds.shape) == 4 else "image_shape"
    config_fields = {f for f in entry.cls.config_class.__dataclass_fields__}
    takes = "video_shape" if "video_shape" in config_fields else "image_shape"
    if shape_key != takes:
        raise ValueError(f"model {args.model!r} takes {'images' if shape_key == 'video_shape' else 'video'}, "
                         f"given dataset {data!r} of shape {tuple(train_ds.shape)}")
    _check_dataset_settings(entry, user_model, data, train_ds, shape_key)
    for key in DATASET_DECIDES:
        model_kw.pop(key, None)  # these come from the dataset (a resumed run's stored values equal them)
    for key in TOKEN_CONDITION_FIELDS:
        model_kw.pop(key, None)  # decided by the dataset's captions / condition tokens
    if conditional and spec.kind == "none":
        raise ValueError(f"--conditional needs a dataset that pairs items with a condition, given {data!r} "
                         "without labels or conditions")
    if conditional and spec.kind == "class":
        if given_classes and given_classes != train_ds.num_classes:
            raise ValueError(f"model.num_classes must match the dataset's {train_ds.num_classes}, given {given_classes}")
    if conditional and spec.kind not in ("class", "none"):
        takes = getattr(entry.cls.config_class, "condition_kinds", ("class",))
        if spec.kind not in takes:
            hint = (" (a condition image is turned into tokens by a tokenizer that encodes it: train over "
                    "--tokenizer RUN of an iqvae tokenizer)" if spec.kind == "image" else "")
            raise ValueError(f"model {args.model!r} takes {' or '.join(takes)} conditions; dataset {data!r} pairs "
                             f"its items with {spec.kind} conditions{hint}")
    model_kw = coerce_fields(entry.cls.config_class, model_kw, section="model")
    model_kw.update({shape_key: tuple(train_ds.shape), "levels": train_ds.levels})
    if kind == "model":
        model_kw["num_classes"] = train_ds.num_classes if conditional and spec.kind == "class" else None
        if conditional and spec.kind == "tokens":
            model_kw.update({"cond_vocab": spec.vocab_size, "cond_len": spec.max_len})

    torch.manual_seed(train_cfg.seed)
    model = create_trainable(args.model, prior, **model_kw)
    if getattr(type(model), "uses_condition", False) and train_ds.cond_spec != model.condition_spec:
        # a tokenizer that encodes a condition with each image needs data that pairs them (mnist-edges)
        raise ValueError(f"{args.model!r} encodes each image with its condition, "
                         f"{model.condition_spec.expected('B')}; dataset {data!r} pairs its items with "
                         f"{train_ds.cond_spec.kind if train_ds.cond_spec.kind != 'none' else 'nothing'} "
                         "(e.g. --data mnist-edges)")
    extra: dict[str, Any] = {"data": data, "data_root": root}
    if conditional and train_ds.vocabulary is not None:
        extra["vocabulary"] = train_ds.vocabulary.to_dict()  # `argen sample --prompt` encodes with it
    render = None
    if prior_of is not None:
        extra["tokenizer"] = prior_of.record
        render = prior_of.render
        if _is_main_process():
            prior_of.copy_into(run_dir)
    try:
        trainer = Trainer(model, train_ds, train_cfg, run_dir=run_dir, eval_data=test_ds, device=args.device,
                          resume=point if point is not None else False, extra=extra, render=render)
    except CorruptCheckpointError as e:
        raise CheckpointError(str(e)) from None
    if trainer.resume_note:
        say(f"argen: {trainer.resume_note}")
    if trainer.finished:
        D.cleanup()
        test = trainer.metrics.get("test_bpd", trainer.metrics.get("test_psnr"))
        unit = "bits/dim" if "test_bpd" in trainer.metrics else "dB PSNR"
        say(f"argen: the run in {run_dir} already finished at step {trainer.step}"
            + (f" (test {test:.4f} {unit})" if isinstance(test, float) else "")
            + "; nothing to do (raise --steps to train further)")
        return EXIT_OK
    n_params = sum(p.numel() for p in model.parameters())
    say(f"argen: training {args.model} ({n_params:,} parameters) on {data} {tuple(train_ds.shape)} "
        f"with {train_ds.levels} levels, "
        f"device {trainer.device}, {trainer.dist.world_size} process(es); run directory {run_dir}"
        + (f" (resuming at step {trainer.step})" if resume else ""))
    try:
        metrics = trainer.fit()
    except KeyboardInterrupt:
        D.cleanup(wait=False)
        raise Interrupted(f"interrupted at step {trainer.step}; the last checkpoint is in {run_dir} "
                          "(continue with --resume)") from None
    except BaseException:
        D.cleanup(wait=False)  # the other ranks may not reach a barrier
        raise
    D.cleanup()
    summary = f"argen: done: {metrics['step']} steps"
    if objective_of(model) == "reconstruction":
        tested = ", ".join(f"{k[5:]} {v:.4g}" for k, v in metrics.items() if k.startswith("test_") and k != "test_n")
        say(summary + (f", test {tested} ({metrics.get('test_n')} examples)" if tested else "")
            + f"; checkpoint in {run_dir}")
        return EXIT_OK
    unit = "bits/token" if prior_of is not None else "bits/dim"
    if "train_bpd" in metrics:
        summary += f", train {metrics['train_bpd']:.4f} {unit}"
    if "test_bpd" in metrics:
        summary += f", test {metrics['test_bpd']:.4f} {unit} ({metrics.get('test_n')} examples"
        summary += ", exact)" if model.exact_likelihood else ", upper bound)"
    say(summary + f"; checkpoint in {run_dir}")
    return EXIT_OK


# ----- eval -------------------------------------------------------------------------------------
def register_eval(sub: Any) -> None:
    p = sub.add_parser("eval", help="exact bits/dim of a trained model on a dataset split")
    p.add_argument("run", help="run directory written by `argen train`")
    p.add_argument("--data", default=None, help="dataset (default: the one the run trained on)")
    p.add_argument("--data-root", default=None, help="folder holding the dataset files, where it needs one")
    p.add_argument("--split", default="test", help="train or test (default: test)")
    from argen.fields import int_arg

    p.add_argument("--batch-size", type=int_arg(ge=1), default=100, help="examples per forward pass (default: 100)")
    p.add_argument("--max-examples", type=int_arg(ge=1), default=None, help="evaluate the first N examples only")
    p.add_argument("--orders", type=int_arg(ge=1), default=None, metavar="N",
                   help="models that generate in any order (lmconv): average the likelihood over N orders")
    _add_device(p)
    from argen.metrics.commands import add_eval_arguments

    add_eval_arguments(p)
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader, Subset

    from argen.checkpoint import atomic_write_json
    from argen.metrics.bpd import evaluate_bpd

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, given {args.batch_size}")
    if args.max_examples is not None and args.max_examples < 1:
        raise ValueError(f"--max-examples must be >= 1, given {args.max_examples}")
    from argen.metrics.commands import eval_sample_metrics, prepare_eval_sample_metrics

    device = _device(args.device)
    model = load_run(args.run, device)
    desc = run_description(args.run)
    full = run_dataset(desc, args.data, args.data_root, args.split, model)
    ds = full if args.max_examples is None else Subset(full, range(min(len(full), args.max_examples)))
    if getattr(type(model), "objective", "likelihood") == "reconstruction":  # tokenizers, frame predictors
        if args.sample_metrics or args.orders is not None:
            raise ValueError(f"{model.model_name!r} has no likelihood to sample from or orders: expected no "
                             "--sample-metrics / --orders (it is evaluated by reconstruction)")
        record = {"data": args.data or desc.get("data"), "split": args.split, "step": desc.get("step"),
                  "reconstruction": reconstruction_metrics(model, ds, args.batch_size, device)}
        print(f"{record['data']} {args.split}: " + format_reconstruction(record["reconstruction"]))
        atomic_write_json(Path(args.run) / "eval.json", record)
        return EXIT_OK
    networks = prepare_eval_sample_metrics(args, device)  # bad --sample-* options fail before evaluating
    log_prob, orders = None, None
    if args.orders is not None:
        if not model.capabilities.order_ensembles:
            raise ValueError(f"--orders needs a model that generates in any order (lmconv), given {model.model_name!r}")
        orders = model.eval_orders(args.orders)
        log_prob = lambda x, cond: model.log_prob_ensemble(x, orders, cond=cond)  # noqa: E731
        print(f"averaging the likelihood over {len(orders)} orders: "
              + ", ".join(f"{name}:{variant}" for name, variant in orders))
    result = evaluate_bpd(model, DataLoader(ds, batch_size=args.batch_size), device=device, progress=True,
                          log_prob=log_prob)
    if not (math.isfinite(result["bpd"]) and math.isfinite(result["nats"])):
        raise CheckpointError(f"the checkpoint produced non-finite log-likelihoods ({result['bpd']} bits/dim over "
                              f"{result['n']} examples): its weights are corrupt or overflow; nothing was recorded")
    exact = bool(model.exact_likelihood)
    record = {"data": args.data or desc.get("data"), "split": args.split, "bpd": result["bpd"],
              "nats": result["nats"], "n": result["n"], "exact": exact, "step": desc.get("step"),
              "weights": "ema" if _weights_file(args.run) == "ema.safetensors" else "model",
              "orders": [f"{name}:{variant}" for name, variant in orders] if orders else None}
    unit = getattr(type(model), "likelihood_unit", "dim")
    if unit == "token":  # a two-stage model: the prior's likelihood of the codes, and the tokenizer's ceiling
        record["bits_per_token"] = record["bpd"]
        record["tokens"] = model.num_dims
        record["tokenizer_reconstruction"] = reconstruction_metrics(model.tokenizer, ds, args.batch_size, device)
        print(f"{record['data']} {args.split}: {result['bpd']:.4f} bits/token, {result['nats']:.2f} nats/image over "
              f"{model.num_dims} tokens of {result['n']} images (the prior's exact likelihood of the tokenizer's codes, "
              "not a likelihood of the pixels)")
        print("  tokenizer: " + format_reconstruction(record["tokenizer_reconstruction"]))
    else:
        kind = "exact likelihood" if exact else "upper bound: this model's likelihood is a bound"
        print(f"{record['data']} {args.split}: {result['bpd']:.4f} bits/dim, {result['nats']:.2f} nats/example "
              f"over {result['n']} examples ({kind})")
    quality = eval_sample_metrics(model, args, full, split=args.split, batch_size=args.batch_size, networks=networks)
    if quality is not None:
        record["sample_metrics"] = quality
        print(format_quality(quality))
    atomic_write_json(Path(args.run) / "eval.json", record)
    return EXIT_OK


def reconstruction_metrics(model: Any, ds: Any, batch_size: int, device: Any) -> dict[str, float]:
    """The model's `summarize` of its `eval_stats` over `ds` (MSE, PSNR, codebook usage, ...)."""
    from torch.utils.data import DataLoader

    from argen.metrics.reconstruction import sum_eval_stats, summarize_stats

    return summarize_stats(model, *sum_eval_stats(model, DataLoader(ds, batch_size=batch_size), device, progress=True))


def format_reconstruction(metrics: dict[str, float]) -> str:
    parts = [f"PSNR {metrics['psnr']:.2f} dB" if "psnr" in metrics else None,
             f"MSE {metrics['mse']:.5f}" if "mse" in metrics else None,
             f"codebook usage {100 * metrics['usage']:.1f}%" if "usage" in metrics else None,
             f"perplexity {metrics['perplexity']:.1f}" if "perplexity" in metrics else None]
    return ", ".join(p for p in parts if p) + f" over {metrics.get('n')} images (reconstruction)"


def format_quality(quality: dict[str, Any]) -> str:
    """Sample metrics as readable lines (eval.json keeps every value)."""
    lines = [f"sample quality of {quality.get('n')} samples vs {quality.get('reference_n', '?')} real ones "
             f"({quality.get('features', '')})"]
    for key, value in quality.items():
        if key in ("n", "reference_n", "features", "is_network") or key.startswith("confident_share"):
            continue
        if key.startswith("class_shares") and isinstance(value, list):
            lines.append(f"  {key}: " + " ".join(f"{c}:{100 * v:.0f}%" for c, v in enumerate(value)))
        elif key.startswith("class_accuracy_") and isinstance(value, float):
            lines.append(f"  {key} (samples the classifier gives the class they were drawn for): {100 * value:.1f}%")
        elif key.startswith("confidence_") and isinstance(value, float):
            share = quality.get(key.replace("confidence_", "confident_share_"))
            extra = f" ({100 * share:.1f}% of samples above 0.9)" if isinstance(share, float) else ""
            lines.append(f"  {key} (mean top-class probability): {value:.3f}{extra}")
        elif isinstance(value, float):
            lines.append(f"  {key}: {value:.4g}")
        else:
            lines.append(f"  {key}: {value}")
    return "\n".join(lines)


# ----- sample -----------------------------------------------------------------------------------
#: Lossless image formats the grid writer (imageio) supports; the suffix of -o picks one.
IMAGE_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".ppm")


def check_image_output(path: str | os.PathLike[str], option: str = "-o", video: bool | None = False) -> Path:
    """Check an output path before sampling: a lossless image format (`video=True`: .gif or .mp4,
    `video=None`: either, for a check before the model is loaded), not a folder, in a folder that exists.

    An existing file is fine (it is replaced atomically once the grid or clip is ready).
    """
    from argen.data.video_io import VIDEO_SUFFIXES, check_video_path
    from argen.metrics.commands import check_output_file

    out = Path(path)
    check_output_file(out, option)
    suffix = out.suffix.lower()
    if video or (video is None and suffix in VIDEO_SUFFIXES):
        return check_video_path(out, option)
    if suffix not in IMAGE_SUFFIXES:
        also = f" (a video model writes {', '.join(VIDEO_SUFFIXES)})" if video is None else ""
        raise ValueError(f"{option} {str(out)!r}: expected a lossless image file ending in "
                         f"{', '.join(IMAGE_SUFFIXES)}{also}, given suffix {out.suffix or '(none)'!r}")
    return out


def _is_video(model: Any) -> bool:
    return len(model.data_shape) == 4


def _write_output(x: Any, model: Any, output: Path, nrow: int | None) -> str:
    """Images: a grid; video: a GIF/MP4 (clips tiled `nrow` per row) and a PNG strip beside it."""
    from argen.data.images import save_grid
    from argen.data.video_io import strip_path, write_strip, write_video

    if not _is_video(model):
        return str(save_grid(x, model.levels, output, nrow=nrow))  # atomic: temporary file, then rename
    write_video(x, model.levels, output, nrow=nrow)
    return f"{output} (strip of frames: {write_strip(x, model.levels, strip_path(output))})"


def _check_image_levels(model: Any) -> None:
    """Refuse, before any sampling, a model whose data is not pixels (the output is an image grid)."""
    from argen.data.images import MAX_IMAGE_LEVELS

    if getattr(type(model), "kind", "model") == "tokenizer":
        raise ValueError(f"{model.model_name!r} is a tokenizer: it draws no samples; train a prior over its codes "
                         "(argen train token_gpt --tokenizer RUN) and sample that run")
    if model.levels > MAX_IMAGE_LEVELS:
        raise ValueError(f"the output is an image, which takes at most {MAX_IMAGE_LEVELS} levels; this model has "
                         f"{model.levels} (a token grid is not an image: sample it through the Python API)")


def register_sample(sub: Any) -> None:
    from argen.fields import int_arg

    p = sub.add_parser("sample", help="draw samples from a trained model into an image grid (video: a GIF + PNG strip)")
    p.add_argument("run", help="run directory written by `argen train`")
    p.add_argument("-n", "--num", type=int_arg(ge=1), default=64, help="number of samples (default: 64)")
    p.add_argument("-o", "--output", default=None,
                   help=f"output image, one of {', '.join(IMAGE_SUFFIXES)}; for a video model .gif (or .mp4 with "
                        "imageio-ffmpeg), with a PNG strip of frames beside it; an existing file is replaced "
                        "atomically (default: samples.png, or samples.gif for video)")
    p.add_argument("--class", dest="klass", type=int_arg(ge=0), default=None, metavar="K",
                   help="class label for every sample (class-conditional models; default: cycle 0..C-1)")
    p.add_argument("--nrow", type=int_arg(ge=1), default=None, help="images per grid row (video: clips per row)")
    p.add_argument("--prompt", default=None, metavar="TEXT",
                   help='caption for every sample, for text-conditioned models (e.g. "a green two on a black '
                        'background"); words outside the run\'s vocabulary are refused')
    p.add_argument("--condition", default=None, metavar="IMAGE",
                   help="condition image for every sample (e.g. an edge map PNG), for image-conditioned models; "
                        "its size must be the model's; values 0..L-1, or 8-bit values scaled to the L levels")
    p.add_argument("--rerank", type=int_arg(ge=1), default=None, metavar="K",
                   help="draw K candidates per sample and keep the one the model scores best (see "
                        "argen.sampling.rerank; default: no reranking)")
    _add_sampling(p)
    _add_device(p)
    p.set_defaults(func=cmd_sample)


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    if args.num < 1:
        raise ValueError(f"-n must be >= 1, given {args.num}")
    output = check_image_output(args.output or "samples.png", video=None)  # before sampling, not after
    model = load_run(args.run, _device(args.device)).eval()
    _check_image_levels(model)
    if args.output is None and _is_video(model):
        output = Path("samples.gif")
    output = check_image_output(output, video=_is_video(model))
    cond = _sample_condition(model, args)
    if args.rerank is not None and args.rerank > 1:
        from argen.sampling.rerank import rerank_sample

        config = _sampling_config(model, args)
        # contrastive (PMI against the null condition) where the model has one, else the likelihood
        score = "pmi" if cond is not None and model.capabilities.guidance else "likelihood"
        x = rerank_sample(model, args.num, cond, args.rerank, config, score=score, **_sample_options(model, args))
    else:
        x0 = torch.zeros((args.num, *model.data_shape), dtype=torch.long, device=model.device)
        x = _generate(model, x0, None, cond, args)
    print(f"argen: wrote {args.num} samples to {_write_output(x.cpu(), model, output, args.nrow)}")
    return EXIT_OK


def _sample_condition(model: Any, args: argparse.Namespace) -> Any:
    """The `cond` of `argen sample`: --class labels, a --prompt's tokens or a --condition image, per the
    model's `cond_spec`; any other combination is refused before sampling."""
    spec = model.cond_spec
    given = [name for name, v in (("--class", args.klass), ("--prompt", args.prompt), ("--condition", args.condition))
             if v is not None]
    if len(given) > 1:
        raise ValueError(f"expected at most one of --class, --prompt, --condition, given {', '.join(given)}")
    if args.prompt is not None:
        if spec.kind != "tokens":
            raise ValueError(f"--prompt needs a text-conditioned model; {model.model_name!r} takes "
                             f"{spec.kind if spec.kind != 'none' else 'no'} conditions")
        from argen.text import Vocabulary

        record = run_description(args.run).get("vocabulary")
        if record is None:
            raise ValueError(f"the run {args.run!r} records no vocabulary (it was not trained on captions), so a "
                             "--prompt cannot be encoded")
        tokens = Vocabulary.from_dict(record).batch([args.prompt], int(spec.max_len))
        return tokens.expand(args.num, -1).contiguous().to(model.device)
    if args.condition is not None:
        if spec.kind != "image":
            raise ValueError(f"--condition needs an image-conditioned model; {model.model_name!r} takes "
                             f"{spec.kind if spec.kind != 'none' else 'no'} conditions")
        c = read_condition_image(args.condition, spec)
        return c.unsqueeze(0).expand(args.num, *c.shape).contiguous().to(model.device)
    if spec.kind in ("tokens", "image") and args.cfg_scale != 1.0:
        raise ValueError(f"--cfg-scale needs a condition to guide towards: pass "
                         f"{'--prompt' if spec.kind == 'tokens' else '--condition'}")
    if spec.kind in ("tokens", "image") and args.klass is None and not model.capabilities.guidance:
        # cond=None is then an input the model never trained on (no condition dropout): refuse, don't draw noise
        raise ValueError(f"model {model.model_name!r} is conditioned on {spec.kind} and has no trained unconditional "
                         f"input (no classifier-free guidance), so it cannot sample without a condition: expected "
                         f"{'--prompt' if spec.kind == 'tokens' else '--condition'}, given none")
    return _labels(model, args.num, args.klass) if spec.kind in ("class", "none") or args.klass is not None else None


def read_condition_image(path: str, spec: Any) -> Any:
    """A condition image file as a (C, H, W) long tensor in [0, spec.levels): checked against the spec's
    shape; 8-bit values are scaled down to the levels (v * L // 256) unless they already lie below L."""
    import numpy as np
    import torch

    from argen.data.images import read_image

    a = read_image(path)  # (H, W) or (H, W, C) uint8; unreadable files raise ValueError / FileNotFoundError
    a = a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0)
    want = tuple(spec.image_shape)
    if tuple(a.shape) != want:
        raise ValueError(f"--condition {path!r}: expected an image of shape (C, H, W) = {want}, given {tuple(a.shape)}")
    levels = int(spec.levels)
    if int(a.max()) >= levels:
        a = a.astype(np.int64) * levels // 256
    return torch.from_numpy(a.astype(np.int64))


# ----- complete ---------------------------------------------------------------------------------
MASKS = ("top-half", "bottom-half", "left-half", "right-half", "center", "random", "future")


def hidden_mask(kind: str, n: int, spatial: Sequence[int], seed: int = 0) -> Any:
    """(n, *spatial) bool, True where pixels are hidden (to be filled); the last two dims are H, W.

    For video positions (T, H, W) the spatial masks hide the same region of every frame, and
    `future` hides every frame after the first half (t >= T // 2; at least the last frame), the
    prediction protocol as a completion.
    """
    import torch

    *lead, h, w = spatial
    if kind == "future":
        if len(spatial) != 3:
            raise ValueError(f"--mask future hides the later frames of a video; expected positions (T, H, W), "
                             f"given {tuple(spatial)} (an image model)")
        t = spatial[0]
        frames = torch.arange(t) >= min(t // 2, t - 1) if t > 1 else torch.ones(1, dtype=torch.bool)
        return frames.view(1, t, 1, 1).expand(n, t, h, w).clone()
    rows = torch.arange(h)[:, None].expand(h, w)
    cols = torch.arange(w)[None, :].expand(h, w)
    if kind == "top-half":
        m = rows < h // 2
    elif kind == "bottom-half":
        m = rows >= h // 2
    elif kind == "left-half":
        m = cols < w // 2
    elif kind == "right-half":
        m = cols >= w // 2
    elif kind == "center":
        m = (rows >= h // 4) & (rows < h - h // 4) & (cols >= w // 4) & (cols < w - w // 4)
    elif kind == "random":
        g = torch.Generator().manual_seed(seed)
        return torch.rand((n, *spatial), generator=g) < 0.5
    else:
        raise ValueError(f"expected --mask in {MASKS}, given {kind!r}")
    return m.expand(n, *lead, h, w).clone()


def register_complete(sub: Any) -> None:
    from argen.fields import int_arg

    p = sub.add_parser("complete", help="fill in hidden parts of test images (grid: original, masked, completed); "
                                        "video: a GIF + PNG strip")
    p.add_argument("run", help="run directory written by `argen train`")
    p.add_argument("--mask", required=True, choices=MASKS,
                   help="the region to hide and fill in (video: the region in every frame; future: the frames after "
                        "the first half)")
    p.add_argument("-n", "--num", type=int_arg(ge=1), default=8, help="number of images (default: 8)")
    p.add_argument("-o", "--output", default=None,
                   help=f"output image, one of {', '.join(IMAGE_SUFFIXES)}; for a video model .gif (or .mp4), each "
                        "row one clip: original | masked | completed, with a PNG strip beside it; an existing file is "
                        "replaced atomically (default: completions.png, or completions.gif for video)")
    p.add_argument("--data", default=None, help="dataset (default: the one the run trained on)")
    p.add_argument("--data-root", default=None, help="folder holding the dataset files, where it needs one")
    p.add_argument("--split", default="test", help="split the images come from (default: test)")
    _add_sampling(p)
    _add_device(p)
    p.set_defaults(func=cmd_complete)


def cmd_complete(args: argparse.Namespace) -> int:
    import torch

    from argen.conditioning import batch_condition
    from argen.data.images import save_grid

    if args.num < 1:
        raise ValueError(f"-n must be >= 1, given {args.num}")
    output = check_image_output(args.output or "completions.png", video=None)  # before sampling, not after
    model = load_run(args.run, _device(args.device)).eval()
    _check_image_levels(model)
    video = _is_video(model)
    objective = getattr(type(model), "objective", "likelihood")
    if objective != "likelihood":
        raise ValueError(f"{model.model_name!r} has no likelihood to complete with (objective {objective!r}); "
                         "expected a likelihood model" + (" (frame predictors: argen predict)" if video else ""))
    if args.output is None and video:
        output = Path("completions.gif")
    output = check_image_output(output, video=video)
    shape = tuple(model.data_shape)
    positions = (*shape[:-3], *shape[-2:])  # (H, W) or (T, H, W): the known mask's shape
    hidden_mask(args.mask, 1, positions, args.seed)  # a video-only mask on an image model: refused before work
    ds = run_dataset(run_description(args.run), args.data, args.data_root, args.split, model)
    n = min(args.num, len(ds))
    items = [ds[i] for i in range(n)]
    x = torch.stack([it[0] for it in items]).to(model.device)
    y = torch.stack([it[1] for it in items]).to(model.device)
    cond = batch_condition(model.cond_spec, y)
    hidden = hidden_mask(args.mask, n, positions, args.seed).to(model.device)
    completed = _generate(model, x, ~hidden, cond, args)
    fill = (model.levels - 1) // 2  # hidden pixels show as mid grey (black for binary data)
    masked = x.masked_fill(hidden.unsqueeze(-3), fill)
    if video:  # each clip's original, masked and completed versions side by side
        both = torch.stack([x, masked, completed], 1).flatten(0, 1).cpu()
        path = _write_output(both, model, output, 3)
        print(f"argen: wrote {n} completions ({args.mask} hidden) to {path}: each row original | masked | completed")
        return EXIT_OK
    grid = torch.cat([x, masked, completed]).cpu()
    path = save_grid(grid, model.levels, output, nrow=n)  # atomic: temporary file, then rename
    print(f"argen: wrote {n} completions ({args.mask} hidden) to {path}: rows are original, masked, completed")
    return EXIT_OK


# ----- models / datasets ------------------------------------------------------------------------
def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def register_models(sub: Any) -> None:
    p = sub.add_parser("models", help="list registered models and tokenizers")
    p.set_defaults(func=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    from argen.registry import get_entry, list_models

    rows = []
    for name in list_models():
        e = get_entry(name)
        rows.append([name, "exact" if getattr(e.cls, "exact_likelihood", True) else "bound", e.modality, e.description])
    print(_table(rows, ["name", "likelihood", "data", "description"]))
    from argen.tokenizers import get_tokenizer_entry, list_tokenizers

    rows = [[name, get_tokenizer_entry(name).modality, get_tokenizer_entry(name).description] for name in list_tokenizers()]
    print("\ntokenizers (argen train NAME, then argen train PRIOR --tokenizer RUN; a video tokenizer's prior is a video "
          "model):")
    print(_table(rows, ["name", "data", "description"]))
    return EXIT_OK


def register_datasets(sub: Any) -> None:
    p = sub.add_parser("datasets", help="list datasets and whether their files are available")
    p.set_defaults(func=cmd_datasets)


def cmd_datasets(args: argparse.Namespace) -> int:
    from argen.data import list_datasets

    rows = []
    for d in list_datasets():
        shape = "x".join(str(v) for v in d.shape) if d.shape else "?"
        rows.append([d.name, shape, str(d.levels), str(d.num_classes or "-"), "yes" if d.available else "no",
                     d.description + (f" [{d.location}]" if d.location else "")])
    print(_table(rows, ["name", "shape", "levels", "classes", "available", "description"]))
    return EXIT_OK


COMMANDS: list[Callable[[Any], None]] = [
    register_train, register_eval, register_sample, register_complete, register_models, register_datasets,
]


# ----- entry point ------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error format of the rest of the CLI (exit 2 = usage)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"argen: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from argen import __version__

    parser = _Parser(prog="argen", description="Autoregressive image and video generation.")
    parser.add_argument("--version", action="version", version=f"argen {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--threads", default="auto", type=_threads_arg,
                        help="CPU threads: a count, or auto (the idle cores; default)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for register in COMMANDS:
        register(sub)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    # --debug is also accepted after the subcommand
    for p in sub.choices.values():
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.add_argument("--threads", type=_threads_arg, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _threads_arg(text: str) -> str:
    if text != "auto" and not (text.isdigit() and int(text) >= 1):
        raise argparse.ArgumentTypeError(f"expected auto or a count >= 1, given {text!r}")
    return text


def _weights_file(run: str) -> str:
    from argen.checkpoint import weights_file

    return weights_file(run, run_description(run))


def _fail(code: int, message: str) -> int:
    print(f"argen: error: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script passes it to sys.exit)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors
        return int(e.code or 0) if not isinstance(e.code, str) else EXIT_USAGE
    import torch

    from argen.checkpoint import CorruptCheckpointError  # a ValueError, but a file problem: exit 3
    from argen.device import choose_threads

    torch.set_num_threads(choose_threads(args.threads))

    try:
        return int(args.func(args) or 0)
    except Interrupted as e:
        return _fail(EXIT_INTERRUPT, str(e)) if not args.debug else _reraise(EXIT_INTERRUPT)
    except KeyboardInterrupt:
        return _fail(EXIT_INTERRUPT, "interrupted") if not args.debug else _reraise(EXIT_INTERRUPT)
    except (FileNotFoundError, CheckpointError, CorruptCheckpointError, IsADirectoryError, PermissionError) as e:
        return _reraise(EXIT_FILE) if args.debug else _fail(EXIT_FILE, _message(e))
    except (ValueError, ImportError) as e:  # bad input, or an optional dependency that is absent
        return _reraise(EXIT_USAGE) if args.debug else _fail(EXIT_USAGE, _message(e))
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence
        if args.debug:
            return _reraise(EXIT_ERROR)
        return _fail(EXIT_ERROR, f"unexpected {type(e).__name__}: {_message(e)} (run with --debug for the traceback)")


def _message(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, OSError) and e.filename and e.strerror:
        text = f"{e.strerror}: {e.filename}"
    return " ".join(text.split())  # one line


def _reraise(code: int) -> int:
    traceback.print_exc()
    return code


if __name__ == "__main__":
    sys.exit(main())
