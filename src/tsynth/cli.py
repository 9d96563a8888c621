"""The ``tsynth`` command line: demo, fit, sample, evaluate, prepare, pretrain, serve.

Every command has ``--help`` with examples. Errors in the user's input print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .errors import TsynthError

if TYPE_CHECKING:
    from .data import SeriesSet

log = logging.getLogger("tsynth")


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=34)


# ---------------------------------------------------------------------- data options
def add_data_options(p: argparse.ArgumentParser) -> None:
    """Options that say how to read DATA and how to cut it into windows."""
    g = p.add_argument_group("reading DATA (.parquet, .csv, .jsonl; or hf:NAME_OR_PATH for datasets.load_dataset)")
    g.add_argument("--layout", default="auto", choices=["auto", "long", "wide", "records", "arrays"])
    g.add_argument("--id-col", help="long format: the series id column")
    g.add_argument("--time-col", help="long/wide format: the time stamp column")
    g.add_argument("--value-cols", help="comma-separated value columns (channels)")
    g.add_argument("--attribute-cols", help="comma-separated static attribute columns")
    g.add_argument("--orient", default="columns", choices=["columns", "rows"], help="wide format: a column or a row per series")
    g.add_argument("--freq", help="frequency alias (h, D, 15min) when it cannot be inferred")
    g.add_argument("--sort", action="store_true", help="sort unsorted time stamps instead of failing")
    g.add_argument("--fill", choices=["interpolate", "ffill", "zero"], help="fill missing time steps (reported)")
    g = p.add_argument_group("preparing series")
    g.add_argument("--offset", type=int, default=0, help="start of the fixed window (default 0)")
    g.add_argument("--length", type=int, help="cut a fixed window of this many steps (e.g. 100: the recipe's first 100 values)")
    g.add_argument("--stride", type=int, help="with --length: sliding windows every STRIDE steps instead of one window")
    g.add_argument("--drop-short", action="store_true", help="drop series shorter than the window (reported) instead of failing")
    g.add_argument("--zscore", action="store_true", help="standardise each series over its own steps")


def load_data(args: argparse.Namespace, path: str | None = None) -> "SeriesSet":
    """Read DATA with the command's data options and cut the requested windows."""
    from .data import SeriesSet, load_hf_dataset

    path = path or args.data
    split_list = lambda s: [x.strip() for x in s.split(",")] if s else None  # noqa: E731
    from .streaming import PartitionedSeries, is_partitioned

    if is_partitioned(path):  # a folder or glob of Parquet partitions: read as a stream, a partition at a time
        flags = [f for f, on in (("--length", args.length), ("--offset", args.offset), ("--stride", args.stride),
                                 ("--zscore", args.zscore)) if on]
        if flags:
            raise TsynthError(f"{path}: {flags[0]} does not apply to a partitioned data set (read a partition at a "
                              "time); window or standardise the series when writing the partitions")
        return PartitionedSeries(path, seed=getattr(args, "seed", 0) or 0, layout=args.layout, id_col=args.id_col,
                                 time_col=args.time_col, value_cols=split_list(args.value_cols),
                                 attribute_cols=split_list(args.attribute_cols), freq=args.freq, sort=args.sort,
                                 fill=args.fill, orient=args.orient)  # type: ignore[return-value]
    if path.startswith("hf:"):
        data = load_hf_dataset(path[3:], freq=args.freq)
    else:
        data = SeriesSet.read(path, layout=args.layout, id_col=args.id_col, time_col=args.time_col,
                              value_cols=split_list(args.value_cols), attribute_cols=split_list(args.attribute_cols),
                              freq=args.freq, sort=args.sort, fill=args.fill, orient=args.orient)
    if args.length and args.stride:
        data = data.sliding_windows(args.length, args.stride, drop_short=args.drop_short)
    elif args.length or args.offset:
        data = data.window(args.offset, args.length, drop_short=args.drop_short)
    if args.zscore:
        data = data.zscore()
    return data


def add_local_options(p: argparse.ArgumentParser) -> None:
    """Options of the local backend's model and training."""
    g = p.add_argument_group("local backend")
    g.add_argument("--preset", default="tiny", choices=["tiny", "small", "base"], help="model size (default tiny)")
    g.add_argument("--epochs", type=int, help="maximum epochs (early stopping on a validation split of the items)")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--learning-rate", type=float)
    g.add_argument("--time-limit", dest="time_limit_s", type=float, metavar="SECONDS",
                   help="train for about this long at most, all models together: each gets its share (models train "
                        "as many at a time as there are cores), its steps (and the lr schedule) cut to what fits at "
                        "the pace so far, planned again as the pace settles, validation included; without "
                        "--ensemble, fewer models are trained when one epoch of each would not fit, and models that "
                        "cannot finish one epoch train without dropout; not with DP")
    g.add_argument("--n-bins", type=int, help="value bins (default 256)")
    g.add_argument("--smoothing", type=float, metavar="BINS",
                   help="label smoothing: each value target spread over a Gaussian of this many bins (default: per "
                        "channel half its median step, at most 2; a fixed 2 under DP)")
    g.add_argument("--binning", choices=["quantile", "uniform"])
    g.add_argument("--point-mass-series", type=int, metavar="N",
                   help="a value that at least N training items hold (integer counts, zeros, a sensor's resolution; "
                        "windows of one item count once) is sampled exactly, not spread over its bin; 0: never "
                        "(default 10; 0 under DP)")
    g.add_argument("--scaling", choices=["auto", "global", "series", "none"],
                   help="global standardisation, or per-series scale with a level token (auto: by the data)")
    g.add_argument("--conditions", help="comma-separated condition fields (item_id, attributes, hour, dayofweek, month); "
                                        "'none' for none; default: attributes and varying calendar fields")
    g.add_argument("--codec", choices=["auto", "step", "token"],
                   help="'step': one position per time step (series of any length, many channels, gaps; the default "
                        "without a prior); 'token': one token per value (what priors are; the default with --prior and "
                        "for windows of at most 32 steps and 1,024 values)")
    g.add_argument("--context", type=int, metavar="STEPS",
                   help="step model: time steps the model sees at once (default about 4 days of the data's steps, at "
                        "most the longest series); longer series train on windows at random offsets")
    g.add_argument("--ensemble", type=int, help="train N models with different seeds and average them when sampling "
                                                "(default 6; 24 when fine-tuning a prior without DP; 1 under DP)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--prior", help="start from a public prior: 'default' (shipped: general public series), 'load' "
                                   "(shipped: electric load profiles, for energy-consumption data), a directory "
                                   "written by `tsynth pretrain`, 'none', or 'auto' (default: by --domain; else the "
                                   "load prior for hourly one-channel data, with or without DP, and for the rest none "
                                   "without DP, the default prior under DP)")
    g.add_argument("--domain", help="what the data is, e.g. electricity, energy, gas, finance, weather (public: it only "
                                    "picks a prior under --prior auto; electricity/energy/load/power/smart-meter/"
                                    "utility/heat/gas take the load prior; any other is said, and the data trains from "
                                    "scratch, or from the default prior under DP)")
    g.add_argument("--trainable", choices=["all", "bitfit", "bitfit+positions", "bitfit+positions+embeddings"],
                   help="which parameters to train (default all; bitfit = biases and LayerNorm only)")
    g = p.add_argument_group("differential privacy (local backend; the unit of privacy is the item)")
    g.add_argument("--dp-epsilon", type=float, help="train with DP-SGD to this epsilon (e.g. 8)")
    g.add_argument("--dp-delta", type=float, help="delta (default min(1e-5, 0.1/number of items))")
    g.add_argument("--dp-max-grad-norm", type=float, help="per-item gradient clipping norm (default 1.0)")
    g.add_argument("--dp-profile-share", type=float, help="share of epsilon spent on releasing the per-step mean "
                   "profile (default 0.25); 0 with a prior pretrained on public data of your own domain")
    g.add_argument("--value-range", help="LO,HI: public bounds of the values under DP, written --value-range=-5,5 "
                                         "(the default; values outside are clipped and counted)")
    g = p.add_argument_group("local backend, pretrained mode: LoRA fine-tuning of a chat LM on the chat text")
    g.add_argument("--base-model", help="Hugging Face id, model directory or .gguf file of a causal LM with a chat template")
    g.add_argument("--lora-rank", type=int, help="LoRA rank (default 8)")
    g.add_argument("--lora-alpha", type=float, help="LoRA alpha (default 16)")
    g.add_argument("--target-modules", help="comma-separated linear layers to adapt (default all-linear)")
    g.add_argument("--merge", action="store_true", help="save merged weights instead of the adapter")
    g.add_argument("--text-style", choices=["integer", "compact", "recipe"],
                   help="how the values are written in the chat text: 'integer' (default: values x 10^decimals, no "
                        "spaces, ~4 tokens a value), 'compact' (no spaces), 'recipe' (the recipe's exact JSON, ~7)")
    g.add_argument("--max-memory", metavar="SIZE",
                   help="memory the fit may use, e.g. 3G or 512M (default on a CPU: the weights and as much again, at "
                        "least 1 GiB more); micro-batches and activation checkpointing are chosen to fit it")


def local_options(args: argparse.Namespace) -> dict[str, Any]:
    """The local backend keywords set on the command line."""
    names = ["preset", "epochs", "batch_size", "learning_rate", "n_bins", "binning", "point_mass_series", "scaling",
             "ensemble", "seed", "dp_epsilon", "dp_delta", "dp_max_grad_norm", "dp_profile_share", "prior", "trainable",
             "domain", "time_limit_s", "smoothing", "codec", "context"]
    opts = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    if getattr(args, "value_range", None):
        try:
            lo, hi = (float(x) for x in args.value_range.split(","))
        except ValueError:
            raise TsynthError(f"--value-range expects LO,HI, got {args.value_range!r}") from None
        opts["value_range"] = (lo, hi)
    if getattr(args, "conditions", None):
        opts["conditions"] = [] if args.conditions == "none" else [c.strip() for c in args.conditions.split(",")]
    return opts


# ---------------------------------------------------------------------- commands
def cmd_demo(args: argparse.Namespace) -> int:
    """The whole flow on ItalyPowerDemand: load, split, fit, sample, evaluate, report."""
    from .data import load_demo
    from .evaluate import evaluate_to_dir
    from .synthesizer import Synthesizer

    out = Path(args.output)
    t0 = time.time()
    data = load_demo()
    train, holdout = data.split(0.2, seed=args.seed)
    print(f"[1/5] loaded ItalyPowerDemand (aeon): {data}")
    print(f"[2/5] split by item: {len(train)} train, {len(holdout)} holdout days")
    opts = {"seed": args.seed, **({"epochs": args.epochs} if args.epochs else {}),
            **({"ensemble": args.ensemble} if args.ensemble else {})}
    syn = Synthesizer("local", **opts).fit(train, progress=not args.quiet)
    model_dir = syn.save(out / "model")
    tr = syn.info["training"]
    print(f"[3/5] trained the local model ({tr['parameters']:,} parameters, "
          f"{sum(m['epochs_run'] for m in tr['members'])} epochs, {tr['seconds']:.0f} s) -> {model_dir}")
    synthetic = syn.sample(args.n or len(train), seed=args.seed, progress=not args.quiet)
    synthetic_path = synthetic.write(out / "synthetic.parquet")
    print(f"[4/5] sampled {len(synthetic)} synthetic days -> {synthetic_path}")
    ev = evaluate_to_dir(train, synthetic, holdout, out, label="season", seed=args.seed,
                         title="tsynth demo: ItalyPowerDemand", fast=args.quick, extra=model_details(model_dir))
    print(f"[5/5] evaluated -> {out / 'metrics.json'} and {out / 'report.html'}")
    print_verdict(ev)
    print(f"done in {time.time() - t0:.0f} s. Open {out / 'report.html'} in a browser.")
    return 0


def print_plan(event: dict) -> None:
    """The fit's plan, printed before training."""
    stop = f"early stopping, cap {event['epochs_cap']}" if event["early_stopping"] else "fixed"
    line = (f"plan: {event['models']} {event['model']} model{'s' * (event['models'] > 1)}, {event['workers']} at a time, "
            f"about {event['expected_epochs']} epochs each ({stop}) of {event['train_rows']} rows")
    if event.get("epoch_s") is not None:
        line += f"; {event['epoch_s']:.1f} s per epoch, about {event['expected_s'] / 60:.1f} min"
    if event.get("time_limit_s"):
        line += f" (time limit {event['time_limit_s']:.0f} s)"
    print(line, flush=True)


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit a backend on DATA and write a model directory."""
    from .data import SeriesSet
    from .distributed import is_main_process, launch, world_size
    from .synthesizer import Synthesizer

    if getattr(args, "processes", None) is not None and world_size() == 1:
        if args.processes < 1 or args.backend != "local" or args.base_model:
            raise TsynthError("--processes needs a positive number of processes and the local backend's own model")
        if args.processes > 1:  # N copies of this command, data-parallel (as accelerate launch runs it)
            status, message = launch(without_option(args.argv, "--processes"), args.processes)
            if message:
                print(f"tsynth: {message}", file=sys.stderr)
            return status
    main_process = is_main_process()
    data = load_data(args)
    if main_process:
        print(f"data: {data}")
    if args.backend == "local":
        if isinstance(data, SeriesSet):
            few_series_hint(args, data)
        if args.base_model:
            lora = {k: getattr(args, k) for k in ("lora_rank", "lora_alpha", "target_modules", "max_memory")
                    if getattr(args, k)}
            lora.update({"style": args.text_style} if args.text_style else {})
            opts = {k: v for k, v in local_options(args).items()
                    if k in ("epochs", "batch_size", "learning_rate", "seed", "time_limit_s")}
            syn = Synthesizer("pretrained", base_model=args.base_model, merge=args.merge, **lora, **opts)
        else:
            syn = Synthesizer("local", **local_options(args))
        ckpt = Path(args.checkpoint_dir) if args.checkpoint_dir else Path(args.output).with_name(Path(args.output).name + ".checkpoints")
        if args.dry_run:
            if args.base_model or not isinstance(data, SeriesSet):
                raise TsynthError("--dry-run plans the local model's fit of a data file (not --base-model or a stream)")
            syn.fit(data, on_plan=print_plan, progress=False, dry_run=True)
            return 0
        syn.fit(data, checkpoint_dir=ckpt, resume=args.resume, progress=True,
                **({"on_plan": print_plan} if not args.base_model and isinstance(data, SeriesSet) else {}))
        if not main_process:  # data-parallel: the main process writes the model directory, once
            return 0
    else:
        syn = fit_openai(args, data)
    path = syn.save(args.output)
    print(f"model written to {path}")
    if (syn.info.get("training") or {}).get("memory"):
        print(f"memory: {syn.info['training']['memory']['summary']}")
    if args.backend == "local" and not args.keep_checkpoints:
        from .outputs import discard_checkpoints

        discard_checkpoints(ckpt)
    tr = syn.info.get("training") or {}
    if syn.info.get("privacy"):
        print("privacy: " + syn.info["privacy"]["guarantee"])
    if tr.get("members"):
        for k, m in enumerate(tr["members"]):
            loss = (f"best validation loss {min(m['valid_loss']):.4f}" if m["valid_loss"] else
                    f"last training loss {m['train_loss'][-1]:.4f} (no validation split)" if m.get("train_loss") else
                    "no validation split")
            print(f"  member {k}: {m['epochs_run']} epochs (best {m['best_epoch']}), {loss}, {m['seconds']:.0f} s")
    return 0


def without_option(argv: Sequence[str], flag: str) -> list[str]:
    """``argv`` less ``flag VALUE`` / ``flag=VALUE``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def few_series_hint(args: argparse.Namespace, data: "SeriesSet") -> None:
    """Refuse too few series for the local model, naming the windowing flags that make more of them."""
    from .backends.local import MIN_SERIES

    if not args.base_model and len(data) < MIN_SERIES and not args.stride:
        raise TsynthError(f"{args.data}: {len(data)} series, too few to learn from (the local backend needs at least "
                          f"{MIN_SERIES}): cut long series into windows with --length L --stride S "
                          "(e.g. --length 24 --stride 1)")


def fit_openai(args: argparse.Namespace, data: "SeriesSet"):
    """``tsynth fit DATA --backend openai``: the work directory (files, job state) is ``OUTPUT.openai``."""
    from .synthesizer import Synthesizer

    def auto(value, kind):
        return None if value is None else "auto" if str(value) == "auto" else kind(value)

    options = {"model": args.model, "n_epochs": auto(args.n_epochs, int), "batch_size": auto(args.batch_size, int),
               "learning_rate_multiplier": auto(args.learning_rate_multiplier, float), "suffix": args.suffix,
               "seed": args.seed, "base_url": args.base_url}
    syn = Synthesizer("openai", api_key=args.api_key, **{k: v for k, v in options.items() if v is not None})
    out = Path(args.output)
    syn.fit(data, work_dir=out.with_name(out.name + ".openai"), job_id=args.job_id, progress=True,
            notify=lambda message: print(message, flush=True))
    return syn


def parse_conditions(items: Sequence[str] | None) -> dict[str, str] | None:
    """``["item_id=MT_010", "season=winter"]`` -> dict; a malformed item is an error."""
    if not items:
        return None
    out = {}
    for it in items:
        if "=" not in it:
            raise TsynthError(f"--condition expects FIELD=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def cmd_sample(args: argparse.Namespace) -> int:
    """Sample series from a model directory and write them."""
    from .synthesizer import Synthesizer

    from .backends.openai import SampleError

    if args.backend == "fewshot":
        synthetic, stats = sample_fewshot(args)
    else:
        syn = Synthesizer.load(args.model_dir)
        check_condition_fields(syn, parse_conditions(args.condition), args.model_dir)
        if args.tilt is False and syn.backend_name != "local":
            raise TsynthError(f"--no-tilt: the model in {args.model_dir} is a {syn.backend_name} model; only a local "
                              "model trained under DP draws from a tilt")
        if args.engine:
            return sample_partitioned(syn, args)
        if args.n > STREAM_FROM and not args.guard:
            return sample_streamed(syn, args)
        try:
            synthetic = syn.sample(args.n, conditions=parse_conditions(args.condition), temperature=args.temperature,
                                   top_p=args.top_p, seed=args.seed, progress=True, **series_options(args))
        except SampleError as e:  # openai backend: the API failed part-way; keep what it produced
            keep_partial_output(e, args.output)
            raise
        stats = getattr(syn.backend, "last_sample_stats", None)
        if args.guard:
            synthetic = guarded_sample(syn, synthetic, args)
    path = synthetic.write(args.output)
    print(f"wrote {len(synthetic)} series to {path}")
    write_validity(stats, path)
    return 0


def series_options(args: argparse.Namespace) -> dict[str, Any]:
    """The --length, --start, --gaps and --no-tilt of `tsynth sample` that were given."""
    return {k: getattr(args, k) for k in ("length", "start", "gaps", "tilt") if getattr(args, k, None) is not None}


def check_condition_fields(syn, conditions: dict[str, str] | None, model_dir: str) -> None:
    """Refuse a --condition field the model was not trained on (it would be ignored)."""
    codec = getattr(syn.backend, "codec", None)
    if not conditions or codec is None:
        return
    fields = ([f.name for f in codec.fields if not f.hidden] if hasattr(codec, "fields")
              else list(getattr(codec, "user_fields", [])))
    unknown = [k for k in conditions if k not in fields and k != "start"]
    if unknown:
        raise TsynthError(f"--condition {unknown[0]}=...: the model in {model_dir} has no condition field "
                          f"{unknown[0]!r} (its fields: {', '.join(fields) or 'none'})")


STREAM_FROM = 4096  # series: a larger sample is drawn in chunks of this many and streamed to disk
PROBE = 256  # series in the first chunk, whose time gives the estimate


def sample_streamed(syn, args: argparse.Namespace) -> int:
    """Draw ``args.n`` series chunk by chunk (chunk k seeded from the seed and k), say how long it will take
    from the first chunk's pace, and stream them into ``args.output`` (renamed into place once complete)."""
    import numpy as np
    from tqdm.auto import tqdm

    from .outputs import SeriesStream

    stream, done, k, stats = SeriesStream(args.output), 0, 0, {}
    bar = tqdm(total=args.n, desc="sampling", unit="series", leave=False)
    try:
        while done < args.n:
            size = min(PROBE if k == 0 else STREAM_FROM, args.n - done)
            seed = int(np.random.SeedSequence([args.seed & 0xFFFFFFFF, k]).generate_state(1)[0])
            t0 = time.time()
            part = syn.sample(size, conditions=parse_conditions(args.condition), temperature=args.temperature,
                              top_p=args.top_p, seed=seed, progress=False, **series_options(args))
            if k == 0:
                rest = (args.n - size) * (time.time() - t0) / size
                print(f"sampling {args.n:,} series takes about {_duration(rest)} more at this pace ({size} in "
                      f"{time.time() - t0:.1f} s); they are streamed to {args.output}", flush=True)
            for i, x in enumerate(part.item_id):  # unconditional ids count on across chunks
                if x == f"synthetic_{i}":
                    part.item_id[i] = f"synthetic_{done + i}"
            stream.write(part)
            for key, v in (getattr(syn.backend, "last_sample_stats", None) or {}).items():
                stats[key] = stats.get(key, 0) + v
            done, k = done + size, k + 1
            bar.update(size)
        path = stream.close()
    except BaseException:
        stream.abort()
        raise
    finally:
        bar.close()
    print(f"wrote {done} series to {path}")
    write_validity(stats, path)
    return 0


def sample_partitioned(syn, args: argparse.Namespace) -> int:
    """``tsynth sample MODEL -n N -o FOLDER --engine local|ray``: a partitioned Parquet data set, batch by batch."""
    from tqdm.auto import tqdm

    bar = tqdm(total=args.n, desc=f"sampling ({args.engine})", unit="series", leave=False)

    def on_event(event: dict) -> None:
        if event["type"] == "batch":
            bar.update(event["series"])
        elif event["type"] == "worker lost":
            print(f"a Ray worker died while drawing batch {event['batch']}: its batches are drawn again", flush=True)

    try:
        figures = syn.sample(args.n, conditions=parse_conditions(args.condition), temperature=args.temperature,
                             top_p=args.top_p, seed=args.seed, output=args.output, engine=args.engine,
                             batch_size=args.sample_batch or 4096, resume=args.resume, overwrite=args.overwrite,
                             workers=args.workers, on_event=on_event, **series_options(args))
    finally:
        bar.close()
    print(f"wrote {figures['series']} series in {figures['batches']} partitions to {args.output} "
          f"({figures['drawn']} drawn now, {figures['already_there']} already there; {figures['seconds']:.0f} s)")
    return 0


def _duration(seconds: float) -> str:
    """``3 h 12 min``, ``4 min``, ``20 s``."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    return f"{int(seconds // 60)} min" if seconds >= 60 else f"{seconds:.0f} s"


def write_validity(stats: dict | None, path: Path) -> None:
    """Print a text backend's validity counts and write them beside the output (OUT.validity.json)."""
    if stats:
        print("validity: " + json.dumps(stats))
        Path(str(path) + ".validity.json").write_text(json.dumps(stats, indent=2))


def sample_fewshot(args: argparse.Namespace) -> tuple["SeriesSet", dict[str, int] | None]:
    """``tsynth sample --backend fewshot --model M --shots K DATA``: the series produced are written even
    when the API fails part-way."""
    from .backends.fewshot import DEFAULT_MODEL, FewShotBackend
    from .backends.openai import SampleError

    backend = FewShotBackend(api_key=args.api_key, model=args.model or DEFAULT_MODEL, shots=args.shots,
                             base_url=args.base_url)
    backend.fit(load_data(args, args.model_dir))
    conditions = parse_conditions(args.condition)
    try:
        out = backend.sample(args.n, conditions=None if conditions is None else [conditions] * args.n,
                             temperature=args.temperature, top_p=args.top_p, seed=args.seed, progress=True)
    except SampleError as e:
        keep_partial_output(e, args.output)
        raise
    c = backend.last_row_counts or {}
    print(f"rows: {c.get('copies', 0)} copies of a training series, {c.get('malformed', 0)} malformed, "
          f"{c.get('short', 0)} short, {c.get('long', 0)} long")
    return out, backend.last_sample_stats


def keep_partial_output(error, output: str) -> None:
    """Write what a sampling that failed part-way produced (see ``backends.openai.keep_partial``) and say so."""
    from .backends.openai import keep_partial

    path = keep_partial(error, output)
    if path is not None:
        print(f"kept the {len(error.partial)} series produced in {path}")


GUARD_ROUNDS = 5


def guarded_sample(syn, synthetic: "SeriesSet", args: argparse.Namespace) -> "SeriesSet":
    """Apply the memorization guard and draw again (new seeds) for the dropped series, up to GUARD_ROUNDS."""
    from .data import SeriesSet
    from .privacy import memorization_guard

    train = load_data(args, args.guard)
    holdout = load_data(args, args.guard_holdout) if args.guard_holdout else None
    kept, report = memorization_guard(synthetic, train, holdout, args.guard_percentile)
    parts, dropped = [kept], report["dropped"]
    for k in range(1, GUARD_ROUNDS + 1):
        missing = args.n - sum(len(p) for p in parts)
        if missing <= 0:
            break
        more = syn.sample(missing, conditions=parse_conditions(args.condition), temperature=args.temperature,
                          top_p=args.top_p, seed=args.seed + 1000 * k, **series_options(args))
        more, r = memorization_guard(more, train, holdout, args.guard_percentile)
        parts.append(more)
        dropped += r["dropped"]
    out = SeriesSet.concat(parts)
    print(f"memorization guard: dropped {dropped} series closer than {report['threshold']:.4g} to a training series "
          f"({report['threshold_source']}); kept {len(out)} of {args.n} asked. {report['caveat']}.")
    return out


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate synthetic series against train (and a holdout) and write metrics.json + report.html."""
    from .data import SeriesSet
    from .evaluate import evaluate_to_dir

    train = load_data(args, args.train)
    synthetic = load_data(args, args.synthetic)
    holdout = load_data(args, args.holdout) if args.holdout else None
    evaluation = None
    if args.subsample:  # a seeded subsample of each set, repeated for confidence intervals
        from .evalscale import evaluate_subsampled

        evaluation, sets = evaluate_subsampled(train, synthetic, holdout, size=args.subsample, repeats=args.repeats,
                                               seed=args.seed, validity=read_validity(args.validity) if args.validity
                                               else None, label=args.label, freq=args.freq, subwindow=args.subwindow)
        train, synthetic, holdout = sets["train"], sets["synthetic"], sets.get("holdout")
        info = evaluation.summary["subsample"]
        print(f"evaluated on {args.subsample:,} series of each set ({', '.join(f'{k} of {v:,}' for k, v in info['sets'].items())}), "
              f"seed {args.seed}, {args.repeats} repeat(s)")
        for key, (lo, hi) in info.get("ci95", {}).items():
            print(f"  {key:<20} 95 % CI [{lo:.3f}, {hi:.3f}]")
    elif not all(isinstance(s, SeriesSet) for s in (train, synthetic, holdout) if s is not None):
        raise TsynthError("a partitioned data set is evaluated on a subsample: give --subsample N (e.g. 5000)")
    validity = read_validity(args.validity) if args.validity else None
    extra = model_details(args.model) if args.model else None
    if extra is not None and holdout is not None and extra["backend"] == "local":
        from .privacy import likelihood_mia
        from .synthesizer import Synthesizer

        audit = likelihood_mia(Synthesizer.load(args.model), train, holdout, seed=args.seed)
        key = "membership inference, model likelihood (AUC, 0.5 ideal)"
        extra[key] = audit["reason"] if audit["auc"] is None else round(audit["auc"], 3)
        if audit["left_out"]:
            extra[key + ", holdout series left out (beyond the training range)"] = audit["left_out"]
    ev = evaluate_to_dir(train, synthetic, holdout, args.output, validity=validity, label=args.label, seed=args.seed,
                         extra=extra, freq=args.freq, subwindow=args.subwindow, evaluation=evaluation)
    print_verdict(ev)
    print(f"wrote {Path(args.output) / 'metrics.json'} and {Path(args.output) / 'report.html'}")
    return 0


def model_details(model_dir: str | Path) -> dict[str, Any]:
    """What the report says about the model: backend, training figures and the privacy guarantee."""
    from .artifact import read_manifest

    doc = read_manifest(model_dir)
    training = doc.get("training") or {}
    privacy = doc.get("privacy")
    return {
        "model directory": str(model_dir), "backend": doc["backend"],
        "ensemble members": doc.get("members"), "parameters per member": training.get("parameters"),
        "training seconds": training.get("seconds"),
        "differential privacy": privacy["guarantee"] if privacy else
        "none: no formal guarantee; the distance and membership-inference figures are the only privacy evidence",
    }


def print_verdict(ev) -> None:
    """The evaluation's verdict table, one figure a line."""
    rows = ev.to_dict()["summary"].get("verdict", [])
    for r in rows:
        mark = {"pass": "ok  ", "warn": "WARN"}.get(r["status"], "    ")
        value, ideal, yard = (_short(r.get(k)) for k in ("value", "ideal", "holdout"))
        print(f"  {mark} {r['figure']:<34} {value:>9}  (ideal {ideal}, holdout {yard})")
    tells = ev.fidelity.get("tells")
    if tells and tells["most_telling"]:
        family = tells["most_telling"]
        ref = ev.holdout_reference.get("tells", {}).get("families", {}).get(family, {})
        print(f"  what tells them apart most: {family} (disc_gbm {_short(tells['families'][family]['disc_gbm'])}, "
              f"holdout {_short(ref.get('disc_gbm'))}; the report lists every feature family)")


def _short(v: Any) -> str:
    """A figure for the terminal: floats to 3 decimals, None as '-'."""
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def cmd_prepare(args: argparse.Namespace) -> int:
    """Write OpenAI chat-format training files (train.jsonl, validation.jsonl)."""
    from .backends.openai import prepare_files
    from .codecs.chat import ChatCodec, tokens_per_value

    fields_ = [f.strip() for f in args.user_fields.split(",") if f.strip()] if args.user_fields else []
    codec = ChatCodec(**({"system_prompt": args.system_prompt} if args.system_prompt else {}),
                      user_fields=fields_, series_key=args.series_key, decimals=args.decimals)
    data = load_data(args)
    report = prepare_files(data, args.output, codec, args.validation_fraction, args.seed, args.model)
    print(report.summary())
    dense = ChatCodec(series_key=args.series_key, decimals=args.decimals, style="integer").fit(data)
    print(f"tokens per value (estimated): {tokens_per_value(codec, data):.1f} in these files (the recipe's JSON); "
          f"{tokens_per_value(dense, data):.1f} as integers at the data's resolution, the text that tsynth fit "
          "--base-model trains open models on")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Pretrain a prior on public corpora and write it as a model directory with its corpus manifest."""
    import shlex

    from .pretrain import pretrain

    lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else None
    opts = {k: getattr(args, k) for k in ("preset", "epochs", "batch_size", "learning_rate")
            if getattr(args, k, None) is not None}
    argv = sys.argv[1:]   # recorded in the prior's manifest so that it can be rebuilt
    command = "tsynth " + shlex.join(argv[argv.index("pretrain"):]) if "pretrain" in argv else None
    out = pretrain(args.corpus, args.output, **({"lengths": lengths} if lengths else {}), max_windows=args.max_windows,
                   seed=args.seed, progress=not args.quiet, command=command, **opts)
    doc = json.loads((out / "tsynth.json").read_text())
    corpus, tr = doc["corpus"], doc["training"]
    for src in corpus["sources"]:
        print(f"  {src['name']:<14} {src['windows']:>6} windows from {src['series']:>5} series  ({src['licence']})")
    best = tr["members"][0]
    print(f"pretrained on {corpus['windows']} windows of {corpus['lengths']} steps: {tr['parameters']:,} parameters, "
          f"{best['epochs_run']} epochs, best validation loss {min(best['valid_loss'] or [float('nan')]):.3f}, "
          f"{tr['seconds']:.0f} s -> {out}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the OpenAI-compatible local server."""
    from .server.app import serve_from_cli

    return serve_from_cli(args)


# ---------------------------------------------------------------------- checks before any work
OUTPUT_FILES = {"evaluate": ("metrics.json", "report.html"), "prepare": ("train.jsonl", "validation.jsonl"),
                "demo": ("model", "synthetic.parquet", "metrics.json", "report.html")}


def check_request(args: argparse.Namespace) -> None:
    """Refuse now what would otherwise fail only after the work: every output path (format, a writable folder,
    what is there: an existing output only with --overwrite), the sampling settings and the --validity file."""
    import math

    from .outputs import check_model_dir, check_output_dir, check_output_file

    overwrite = getattr(args, "overwrite", False)
    if args.command in ("fit", "pretrain"):
        check_model_dir(args.output, "-o", overwrite)
    elif args.command == "sample":
        if args.engine:  # a folder of partitions: checked against what it holds once the request is known
            if Path(args.output).is_file():
                raise TsynthError(f"-o {args.output}: is a file; with --engine the output is a folder of Parquet "
                                  "partitions")
            if args.guard:
                raise TsynthError("--guard works on one output file: drop --engine, or guard the partitions one by one")
            if args.sample_batch is not None and args.sample_batch < 1:
                raise TsynthError(f"--batch-size must be at least 1, got {args.sample_batch}")
        else:
            check_output_file(args.output, "-o", overwrite)
            if args.resume:
                raise TsynthError("--resume continues a sample into a folder of partitions: give --engine")
        if args.n < 1:
            raise TsynthError(f"-n must be at least 1, got {args.n}")
        if args.temperature is not None and not (math.isfinite(args.temperature) and args.temperature > 0):
            raise TsynthError(f"--temperature must be a positive number, got {args.temperature}")
        if not 0 < args.top_p <= 1:
            raise TsynthError(f"--top-p must lie in (0, 1], got {args.top_p}")
        parse_conditions(args.condition)
    elif args.command in OUTPUT_FILES:
        check_output_dir(args.output, OUTPUT_FILES[args.command], "-o", overwrite)
    if getattr(args, "validity", None):
        read_validity(args.validity)


def read_validity(path: str) -> dict[str, int]:
    """The validity counts that `tsynth sample` writes (OUT.validity.json), checked."""
    from .evaluate import validity_shares

    try:
        counts = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise TsynthError(f"--validity {path}: cannot read it ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TsynthError(f"--validity {path}: not a JSON file ({getattr(e, 'msg', e)})") from None
    if not isinstance(counts, dict):
        raise TsynthError(f"--validity {path}: expected a JSON object of counts, as `tsynth sample` writes to "
                          "OUT.validity.json")
    try:
        validity_shares(counts)
    except TsynthError as e:
        raise TsynthError(f"--validity {path}: {e}") from None
    return counts


# ---------------------------------------------------------------------- parser
EXAMPLES = {
    "demo": """examples:
  tsynth demo                       # ItalyPowerDemand: fit, sample, evaluate; outputs in ./tsynth-demo
  tsynth demo -o /tmp/demo --epochs 20""",
    "fit": """examples:
  tsynth fit electricity.parquet --length 100 -o model            # the recipe's first 100 hours per client
  tsynth fit electricity.parquet --length 100 -o model --dry-run  # say the plan (models, epochs, minutes), train nothing
  tsynth fit meters.csv --id-col meter --time-col ts --value-cols kwh -o model --preset small
  tsynth fit stocks.csv --layout wide --length 24 --stride 1 -o model
  tsynth fit meters.parquet -o model --context 168          # whole long series (NaN gaps allowed), a week of context
  tsynth fit energy.csv --layout wide --length 24 --stride 1 -o model --time-limit 600   # training <= ~10 min in all
  tsynth fit electricity.parquet --length 100 --zscore -o model --dp-epsilon 8    # item-level DP-SGD
  tsynth fit meters.parquet --length 100 -o model --domain electricity   # from the shipped load prior
  tsynth fit meters.parquet -o model --processes 2 --ensemble 1     # data-parallel in 2 processes
  tsynth fit meters/ -o model --ensemble 1          # a folder (or 'meters/*.parquet') of partitions, streamed
  accelerate launch --num_processes 8 -m tsynth.cli fit meters.parquet -o model --ensemble 1   # 8 GPUs
  tsynth fit data.parquet --length 24 -o model --base-model HuggingFaceTB/SmolLM2-135M-Instruct --lora-rank 8
  tsynth fit data.parquet -o model --base-model SmolLM2-135M-Instruct.Q4_1.gguf --max-memory 3G --epochs 1
  tsynth fit data.parquet --length 100 -o model --backend openai --model gpt-4o-mini-2024-07-18 \\
      --n-epochs 10 --batch-size 2 --learning-rate-multiplier 2 --suffix elec""",
    "sample": """examples:
  tsynth sample model -n 1000 -o synthetic.parquet
  tsynth sample model -n 10 -o mt010.csv --condition item_id=MT_010 --temperature 1.1
  tsynth sample model -n 100 --length 8760 --start 2015-01-01 --gaps none -o year.parquet   # a year of hours
  tsynth sample model -n 1000 -o synthetic.parquet --guard train.parquet --guard-holdout holdout.parquet
  tsynth sample model -n 10000000 -o synthetic/ --engine ray       # Ray workers ($RAY_ADDRESS or a local cluster)
  tsynth sample model -n 10000000 -o synthetic/ --engine ray --resume   # continue an interrupted run
  tsynth sample model -n 1000000 -o synthetic/ --engine local --batch-size 8192   # partitions, in this process
  tsynth sample --backend fewshot --model gpt-4o-mini --shots 10 data.parquet -n 50 -o fewshot.jsonl""",
    "evaluate": """examples:
  tsynth evaluate --train train.parquet --synthetic synthetic.parquet --holdout holdout.parquet -o report/
  tsynth evaluate --train train.csv --synthetic syn.csv --id-col item_id --time-col timestamp -o report/
  tsynth evaluate --train meters/ --synthetic synthetic/ -o report/ --subsample 5000 --repeats 5   # large sets""",
    "prepare": """examples:
  tsynth prepare electricity.parquet --length 100 -o openai_files/
  tsynth prepare data.parquet -o files/ --series-key load --decimals 2 --user-fields item_id,region""",
    "pretrain": """examples:
  tsynth pretrain --corpus acsf1 tmy weather taylor kernelsynth -o my-prior      # the shipped prior's sources
  tsynth pretrain --corpus kernelsynth public_load.parquet -o prior --lengths 24,96 --epochs 10
  tsynth fit data.parquet --length 100 -o model --prior my-prior --dp-epsilon 8""",
    "serve": """examples:
  tsynth serve                                   # http://127.0.0.1:8000/v1, state in ./tsynth-server
  tsynth serve --port 9000 --data-dir /srv/tsynth --api-key secret
  tsynth serve --models-dir /srv/base-models --max-storage 20G   # LoRA on the models in that folder only""",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(prog="tsynth", description=__doc__, formatter_class=_formatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, epilog=EXAMPLES[name], formatter_class=_formatter)
        p.set_defaults(func=func)
        if name != "serve":
            p.add_argument("--overwrite", action="store_true", help="replace an existing output (refused without it)")
        return p

    p = command("demo", cmd_demo, "Run the whole flow on the bundled real data set (ItalyPowerDemand)")
    p.add_argument("-o", "--output", default="tsynth-demo", help="output directory (default ./tsynth-demo)")
    p.add_argument("--epochs", type=int, help="cap the training epochs (smaller = faster, worse)")
    p.add_argument("--ensemble", type=int, help="models in the ensemble (default 6; 1 = fastest)")
    p.add_argument("-n", type=int, help="synthetic days to sample (default: as many as train)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="skip the slow evaluation parts (for smoke tests)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = command("fit", cmd_fit, "Fit a generator on DATA and write a model directory")
    p.add_argument("data", help="data file, hf:NAME_OR_PATH, or a folder or glob of Parquet partitions (read as a stream)")
    p.add_argument("-o", "--output", required=True, help="model directory to write")
    p.add_argument("--backend", default="local", choices=["local", "openai"])
    p.add_argument("--checkpoint-dir", help="where per-epoch checkpoints go (default OUTPUT.checkpoints)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted fit from its last checkpoint")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep the checkpoints once the model is written (default: removed)")
    p.add_argument("--dry-run", action="store_true",
                   help="local backend: read the data, time a few training steps and print the plan (models, "
                        "expected epochs, minutes); train and write nothing")
    p.add_argument("--processes", type=int, metavar="N",
                   help="local backend: train data-parallel in N processes on this machine, each on its share of "
                        "every batch (the batch stays the global one); the same as `accelerate launch "
                        "--num_processes N -m tsynth.cli fit ...`, which also runs it on several GPUs or nodes "
                        "(docs/scale-out.md)")
    add_data_options(p)
    add_local_options(p)
    g = p.add_argument_group("openai backend")
    g.add_argument("--model", help="base model to fine-tune")
    g.add_argument("--n-epochs", help="epochs or auto")
    g.add_argument("--learning-rate-multiplier", help="multiplier or auto")
    g.add_argument("--suffix", help="suffix of the fine-tuned model name")
    g.add_argument("--job-id", help="re-attach to a running fine-tuning job")
    g.add_argument("--base-url", help="API base URL (default $OPENAI_BASE_URL or OpenAI)")
    g.add_argument("--api-key", help="API key (default $OPENAI_API_KEY)")

    p = command("sample", cmd_sample, "Sample synthetic series from a model directory")
    p.add_argument("model_dir", help="model directory (or, with --backend fewshot, the DATA file of examples)")
    p.add_argument("-n", type=int, required=True, help="number of series")
    p.add_argument("-o", "--output", required=True, help="output file (.parquet, .csv, .jsonl)")
    p.add_argument("--condition", action="append", help="FIELD=VALUE, repeatable (e.g. item_id=MT_010)")
    p.add_argument("--temperature", type=float, help="sampling temperature (default: the model's)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--start", metavar="TIMESTAMP",
                   help="first time stamp of every series (e.g. 2015-01-01); default: drawn from the training starts")
    p.add_argument("--gaps", choices=["keep", "none"],
                   help="step model: reproduce missing readings as the data has them (keep, the default) or draw none")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-tilt", dest="tilt", action="store_false", default=None,
                   help="a model trained under DP: draw plainly, not from its tilt toward the released per-step mean "
                        "(docs/privacy.md)")
    p.add_argument("--backend", choices=["model", "fewshot"], default="model",
                   help="fewshot: prompt MODEL with example rows from the DATA file instead of a fine-tuned model")
    g = p.add_argument_group("large samples: a folder of Parquet partitions, one per batch (docs/scale-out.md)")
    g.add_argument("--engine", choices=["local", "ray"],
                   help="write -o as a partitioned Parquet data set, batch by batch: in this process (local) or on "
                        "a Ray cluster (ray: $RAY_ADDRESS, else a local cluster of --workers CPUs); each worker loads "
                        "the model once")
    g.add_argument("--batch-size", dest="sample_batch", type=int, metavar="N",
                   help="series per partition with --engine (default 4096)")
    g.add_argument("--workers", type=int, metavar="N", help="--engine ray: workers (default: the cluster's CPUs)")
    g.add_argument("--resume", action="store_true",
                   help="--engine: continue the same request into -o, keeping the partitions already written")
    p.add_argument("--model", help="fewshot: the chat model")
    p.add_argument("--shots", type=int, default=10, help="fewshot: example rows per prompt")
    p.add_argument("--base-url")
    p.add_argument("--api-key")
    g = p.add_argument_group("memorization guard (a heuristic, not a guarantee)")
    g.add_argument("--guard", metavar="TRAIN", help="drop series closer to a series of TRAIN (the training data) than "
                                                    "the holdout's --guard-percentile distance, and draw replacements")
    g.add_argument("--guard-holdout", metavar="HOLDOUT", help="real series the model never saw (sets the threshold; "
                                                              "default: train's leave-one-out distances)")
    g.add_argument("--guard-percentile", type=float, default=5.0, help="percentile of the reference distances (default 5)")
    add_data_options(p)
    for action in p._actions:  # --length also sets the length of the series drawn
        if action.dest == "length":
            action.help = ("steps per sampled series (default: the training length; a step model draws any length, "
                           "e.g. 8760); the fewshot DATA and --guard files are cut to it too")

    p = command("evaluate", cmd_evaluate, "Evaluate synthetic data: fidelity, utility, privacy; writes metrics.json + report.html")
    p.add_argument("--train", required=True)
    p.add_argument("--synthetic", required=True)
    p.add_argument("--holdout", help="real series not used in training (enables the privacy figures)")
    p.add_argument("--validity", help="validity counts JSON written by `tsynth sample` for text backends")
    p.add_argument("--label", help="attribute to use for the classification utility")
    p.add_argument("--model", help="the model directory that made SYNTHETIC (its privacy accounting goes into the report)")
    p.add_argument("--subwindow", type=int, metavar="STEPS", help="long series: steps of the sub-windows scored by the "
                                                                 "discriminative score (default a week of the data's steps)")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subsample", type=int, metavar="N",
                   help="large sets: score N series drawn uniformly (seeded by --seed) from each set; needed for a "
                        "folder or glob of Parquet partitions, which is sampled as a stream")
    p.add_argument("--repeats", type=int, default=1, metavar="R",
                   help="with --subsample: R subsamples (seeds SEED..SEED+R-1) give 95 %% confidence intervals of "
                        "the headline figures (metrics.json summary.subsample)")
    p.set_defaults(data=None)
    add_data_options(p)

    p = command("prepare", cmd_prepare, "Write OpenAI chat-format fine-tuning files from DATA")
    p.add_argument("data")
    p.add_argument("-o", "--output", required=True, help="output directory for train.jsonl and validation.jsonl")
    p.add_argument("--system-prompt")
    p.add_argument("--series-key", default="consumption")
    p.add_argument("--decimals", type=int, default=3)
    p.add_argument("--user-fields", default="item_id", help="comma-separated fields of the user turn")
    p.add_argument("--validation-fraction", type=float, default=0.1)
    p.add_argument("--model", default="gpt-4o-mini-2024-07-18", help="for the token limit and cost estimate")
    p.add_argument("--seed", type=int, default=0)
    add_data_options(p)

    p = command("pretrain", cmd_pretrain, "Pretrain a public prior for the local backend on public corpora")
    p.add_argument("--corpus", nargs="+", required=True,
                   help="source names (see tsynth.corpus.SOURCES: acsf1, tmy, weather, taylor, kernelsynth...) or data files")
    p.add_argument("-o", "--output", required=True, help="prior directory to write")
    p.add_argument("--lengths", help="comma-separated window lengths (default 24,48,96,168)")
    p.add_argument("--max-windows", type=int, default=20000, help="windows in all, shared equally by the sources")
    p.add_argument("--preset", choices=["tiny", "small", "base"], help="model size (default tiny: the local default)")
    p.add_argument("--epochs", type=int, help="maximum epochs (default 30, early stopping)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = command("serve", cmd_serve, "Run the local OpenAI-compatible fine-tuning and chat server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--data-dir", default="tsynth-server")
    p.add_argument("--api-key", help="require this bearer key (default $TSYNTH_API_KEY; an empty key is refused)")
    p.add_argument("--models-dir", help="Hugging Face base models jobs may fine-tune with LoRA: each model folder or "
                                        ".gguf file in this folder, named by its file name (none by default)")
    p.add_argument("--base-model", action="append", metavar="NAME_OR_PATH",
                   help="allow this Hugging Face model (a path or hub id, named exactly so in jobs); repeatable")
    p.add_argument("--max-storage", metavar="SIZE", help="storage quota of the data directory (e.g. 20G): uploads "
                                                         "past it are refused")
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that every ``finally`` runs: child processes are stopped and
    temporary files removed on the way out, as on Ctrl-C."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tsynth`` console script."""
    import signal

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what --processes runs again in each process
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="tsynth: %(message)s")
    previous = None
    if args.command != "serve":  # uvicorn handles the server's signals
        try:
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
        except ValueError:  # not the main thread: no handler
            pass
    try:
        check_request(args)
        return args.func(args)
    except TsynthError as e:
        message = " ".join(line.strip() for line in str(e).splitlines())  # one line, whatever a library said
        print(f"tsynth: error: {message}", file=sys.stderr)
        return 2
    except Terminated:
        print("tsynth: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("tsynth: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
