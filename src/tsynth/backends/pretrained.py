"""Backend "pretrained": fine-tune a pretrained Hugging Face causal LM on the recipe's chat text with LoRA.

``base_model`` is a hub id, a local model directory or a ``.gguf`` file (loaded through transformers'
GGUF support, which needs the ``gguf`` package: ``pip install tsynth[pretrained]``); its tokenizer must
have a chat template. Each series becomes one conversation of the
:class:`~tsynth.codecs.chat.ChatCodec` (system prompt, user turn of conditions, assistant turn of
values) rendered with that template; the loss covers the assistant turn and its end-of-turn token
only. LoRA adapters (``peft``: ``lora_rank``, ``lora_alpha``, ``lora_dropout``, ``target_modules``)
are trained by the one training loop (:func:`tsynth.train.train_lm`: ``accelerate``, a validation
split of other items with early stopping, a checkpoint every epoch, resume). On a GPU the base
weights are loaded in bfloat16 (float16 where bfloat16 is unsupported), on a CPU in float32.

Memory is bounded before any weight is loaded (:func:`plan_memory`): the model is read on the ``meta``
device for its parameter count (a missing model, one that is not a causal LM or a GGUF architecture
transformers cannot read fails here), and a fit that cannot stay within ``max_memory`` (default: the
weights, plus as much again and at least 1 GiB for activations, on a CPU; 80 % of the free memory on a
GPU; never more than the memory free now) is refused. Within it, the plan picks how many rows a
micro-batch holds (gradients accumulate over the micro-batches of a batch) and how many decoder layers
recompute their activations in the backward pass (activation checkpointing, only where the activations
would not fit otherwise). The loss never materialises the logits of the whole batch: the output layer
runs on the answer positions only, :data:`HEAD_CHUNK` positions at a time, recomputed in the backward
pass. Rows are right-padded, so no attention mask is needed (causal attention never looks right). On
Linux with glibc, freed blocks of 1 MiB and more go back to the system at once (``mallopt``): without
it, freed activations stay in the process as fragments and the resident size grows far past what is
in use.

Sampling is batched and seeded and always valid: a :class:`~tsynth.codecs.grammar.TokenConstraint`
allows only tokens that keep the answer a prefix of ``{"<key>": [n1, ..., nL]}`` with exactly L finite
numbers, then the end-of-turn token. ``save`` writes ``model/``: the adapter (or, with ``merge=True``,
the merged weights, loadable with ``AutoModelForCausalLM`` alone) and the tokenizer; an adapter is
loaded back onto ``base_model`` as recorded in ``tsynth.json``.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import re
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..codecs.chat import DEFAULT_SYSTEM_PROMPT, ChatCodec
from ..codecs.grammar import AnswerGrammar, TokenConstraint
from ..data import SeriesSet
from ..devicememory import draw_within_memory
from ..errors import ConfigError, DataError, DeviceMemoryError
from ..sample import draw_tokens
from ..train import TrainConfig, train_device, train_lm
from .common import MIN_ITEMS_FOR_VALIDATION, data_schema, series_from_answers, text_sample_inputs

log = logging.getLogger("tsynth")

MODEL_DIR = "model"
DTYPES = ("auto", "float32", "bfloat16", "float16")
# training settings of TrainConfig that apply here, with LoRA defaults
TRAIN_DEFAULTS = dict(epochs=3, batch_size=8, learning_rate=2e-4, weight_decay=0.0, warmup_epochs=1, patience=2)
TRAIN_FIELDS = (*TRAIN_DEFAULTS, "seed", "time_limit_s")


@dataclass
class PretrainedOptions:
    """Base model, LoRA, chat codec, sampling and training settings (all recorded in ``tsynth.json``)."""

    base_model: str = ""
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    merge: bool = False
    dtype: str = "auto"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    user_fields: list[str] = field(default_factory=lambda: ["item_id"])
    series_key: str = "consumption"
    decimals: int = 3
    style: str = "integer"  # the chat codec's text style: "recipe" (the recipe's exact JSON), "compact", "integer"
    validation_fraction: float = 0.1
    temperature: float = 1.0
    sample_batch_size: int = 16
    max_memory: str | int | None = None   # bytes or "3G"/"512M" (binary units); None: see plan_memory
    train: TrainConfig = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if not self.base_model:
            raise ConfigError("the pretrained backend needs base_model (a Hugging Face id, a model directory or "
                              "a .gguf file)")
        if Path(self.base_model).exists():  # recorded absolute, so the model directory loads from anywhere
            self.base_model = str(Path(self.base_model).resolve())
        if self.lora_rank < 1 or self.lora_alpha <= 0 or not 0 <= self.lora_dropout < 1:
            raise ConfigError("lora_rank must be >= 1, lora_alpha > 0 and lora_dropout in [0, 1)")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.sample_batch_size < 1:
            raise ConfigError("sample_batch_size must be at least 1")
        if self.max_memory is not None:
            parse_memory(self.max_memory)
        if isinstance(self.target_modules, str) and self.target_modules != "all-linear":
            self.target_modules = [t.strip() for t in self.target_modules.split(",") if t.strip()]
        self.user_fields = list(self.user_fields)

    @classmethod
    def from_kwargs(cls, **kw: Any) -> "PretrainedOptions":
        own = {f.name for f in fields(cls)} - {"train"}
        unknown = set(kw) - own - set(TRAIN_FIELDS)
        if unknown:
            raise ConfigError(f"unknown option(s) for the pretrained backend: {', '.join(sorted(unknown))}")
        opts = cls(**{k: v for k, v in kw.items() if k in own})
        opts.train = TrainConfig(**{**TRAIN_DEFAULTS, **{k: v for k, v in kw.items() if k in TRAIN_FIELDS}})
        return opts

    def chat_codec(self) -> ChatCodec:
        return ChatCodec(system_prompt=self.system_prompt, user_fields=list(self.user_fields),
                         series_key=self.series_key, decimals=self.decimals, style=self.style)


class PretrainedLoRABackend:
    """See the module docstring."""

    name = "pretrained"

    def __init__(self, **options: Any) -> None:
        self.options = PretrainedOptions.from_kwargs(**options)
        self.codec: ChatCodec | None = None
        self.model: Any = None        # a transformers model (with LoRA adapters) once fitted or loaded
        self.tokenizer: Any = None
        self.end_id: int | None = None
        self.int_digits = 15
        self.conditions: list[dict[str, Any]] = []
        self.training: dict[str, Any] = {}
        self.schema: dict[str, Any] = {}
        self.last_sample_stats: dict[str, int] | None = None
        self._texts: list[str] | None = None

    # ------------------------------------------------------------------ fit
    def fit(self, train: SeriesSet, callback: Callable[[dict], None] | None = None,
            checkpoint_dir: str | Path | None = None, resume: bool = False, progress: bool = True) -> None:
        """Render ``train`` as chat text and train LoRA adapters on the assistant turns."""
        if len(train) == 0:
            raise DataError("no series to train on")
        o, cfg = self.options, self.options.train
        self.codec = o.chat_codec().fit(train)
        conds = self.codec.conditions(train)
        config, n_params = inspect_model(o.base_model)
        self.tokenizer = load_tokenizer(o.base_model)
        self.end_id = end_of_turn(self.tokenizer, self.codec, conds[0], train.series(0))
        validate = len(pd.unique(train.item_id)) >= MIN_ITEMS_FOR_VALIDATION and o.validation_fraction > 0
        if not validate:
            log.warning("fewer than %d items: no validation split, training for a fixed %d epochs",
                        MIN_ITEMS_FOR_VALIDATION, cfg.epochs)
        fit_set, valid_set = train.split(o.validation_fraction, seed=cfg.seed) if validate else (train, None)
        rows = encode_chats(self.tokenizer, self.codec, fit_set, self.end_id)
        valid_rows = encode_chats(self.tokenizer, self.codec, valid_set, self.end_id) if valid_set is not None else None
        longest = max(rows.shape[1], 0 if valid_rows is None else valid_rows.shape[1])
        limit = getattr(config, "max_position_embeddings", None)
        if limit and longest > limit:
            raise DataError(f"a conversation takes {longest} tokens but {o.base_model} reads at most {limit}: "
                            "cut shorter windows (--length) or use fewer decimals")
        dtype = _dtype(o.dtype)
        plan = plan_memory(config, n_params, dtype, min(cfg.batch_size, len(rows)), longest, o.max_memory,
                           o.base_model)
        log.info("memory: %s", plan.describe())
        return_freed_memory()
        model: Any = load_model(o.base_model, o.dtype)
        torch.manual_seed(cfg.seed)
        model = add_lora(model, o)
        set_checkpointing(model, plan.checkpoint_every)
        try:
            model, result = train_lm(model, rows, valid_rows, chat_loss(plan.micro_batch_tokens), [], cfg,
                                     Path(checkpoint_dir) if checkpoint_dir else None, resume, callback,
                                     progress=progress, micro_batches=micro_batches(plan.micro_batch_tokens))
        except DeviceMemoryError as e:
            # a step holds one micro-batch's activations at a time, sized by the plan's budget: a lower budget
            # makes smaller micro-batches where a smaller batch alone may not
            raise DeviceMemoryError(f"{e}; or a lower --max-memory than the {format_bytes(plan.budget)} this fit "
                                    f"planned for (micro-batches of up to {plan.micro_batch_rows} rows)") from None
        set_checkpointing(model, 0)
        answer_tokens = int((rows > 0).sum()) - len(rows)  # without each row's end-of-turn token
        self.training = {
            "train_series": len(fit_set), "valid_series": 0 if valid_set is None else len(valid_set),
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "trainable_parameters": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
            "tokens_per_value": round(answer_tokens / max(int(np.isfinite(fit_set.values).sum()), 1), 3),
            "tokens_per_conversation": round(float((rows != 0).sum(1).mean()), 1),
            "memory": plan.to_dict(),
            "seconds": result.seconds, "members": [asdict(result)],
        }
        self.model = model.merge_and_unload() if o.merge else model
        finite = np.abs(train.values[np.isfinite(train.values)]) * self.codec.scale
        self.int_digits = len(str(int(finite.max()))) + 1 if finite.size else 1  # room for 10x the largest value
        self.conditions = list({json.dumps(c, sort_keys=True): c for c in conds}.values())
        self.schema = data_schema(train)

    # ------------------------------------------------------------------ sample
    def sample(self, n: int, conditions: Sequence[dict] | None = None, temperature: float | None = None,
               top_p: float = 1.0, seed: int | None = 0, length: int | None = None, progress: bool = False) -> SeriesSet:
        """Draw ``n`` series; without ``conditions`` the user turns are drawn from the training ones."""
        from tqdm.auto import tqdm

        if self.model is None or self.codec is None or self.end_id is None:
            raise ConfigError("the model is not fitted")
        temperature = self.options.temperature if temperature is None else temperature
        length, rng, conds = text_sample_inputs(self.codec, n, conditions, self.conditions, temperature, top_p, seed,
                                                length)
        gen_seed = int(rng.integers(2**31))
        if self._texts is None:
            self._texts = token_texts(self.tokenizer, self.model.get_output_embeddings().weight.shape[0])
        c = self.codec
        grammar = AnswerGrammar(c.keys, length, 0 if c.style == "integer" else c.decimals, self.int_digits,
                                compact=c.style != "recipe")
        constraint = TokenConstraint(grammar, self._texts, self.end_id)
        prompts = [prompt_ids(self.tokenizer, self.codec, c) for c in conds]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.end_id

        def draw(step: int) -> list[str]:
            gen = torch.Generator().manual_seed(gen_seed)  # a draw again at a smaller batch size starts anew
            answers: list[str] = []
            for lo in tqdm(range(0, n, step), desc="sampling", disable=not progress, leave=False):
                answers += generate_answers(self.model, prompts[lo: lo + step], constraint, pad, temperature, top_p,
                                            gen)
            return answers

        answers = draw_within_memory(draw, min(n, self.options.sample_batch_size), "drawing answers")
        arrays = [self.codec.parse(a, length) for a in answers]
        self.last_sample_stats = {"requested": n, "parsed": n, "right_length": n, "retried": 0, "dropped": 0}
        return series_from_answers(arrays, conds, self.codec.channels)

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict[str, Any]:
        """What ``tsynth.json`` records: options (with the base model), codec, training figures."""
        return {"options": asdict(self.options), "codec": self.codec.to_dict() if self.codec else None,
                "end_id": self.end_id, "int_digits": self.int_digits, "conditions": self.conditions,
                "training": self.training, "schema": self.schema}

    def save(self, directory: Path) -> None:
        """``model/``: the LoRA adapter (merged weights with ``merge``) and the tokenizer."""
        self.model.save_pretrained(directory / MODEL_DIR)
        self.tokenizer.save_pretrained(directory / MODEL_DIR)

    @classmethod
    def load(cls, directory: Path, state: dict[str, Any]) -> "PretrainedLoRABackend":
        from transformers import AutoModelForCausalLM

        opts = dict(state["options"])
        train = opts.pop("train")
        self = cls(**opts, **{k: train[k] for k in TRAIN_FIELDS})
        d = directory / MODEL_DIR
        self.codec = ChatCodec.from_dict(state["codec"])
        self.end_id, self.int_digits, self.conditions = state["end_id"], state["int_digits"], state["conditions"]
        self.training, self.schema = state.get("training", {}), state.get("schema", {})
        self.tokenizer = load_tokenizer(str(d))
        if self.options.merge:
            model = AutoModelForCausalLM.from_pretrained(d, dtype=_dtype(self.options.dtype))
        else:
            from peft import PeftModel

            model = PeftModel.from_pretrained(load_model(self.options.base_model, self.options.dtype), d)
        self.model = model.to(train_device()).eval()
        return self


# ---------------------------------------------------------------------- base model and LoRA
def _dtype(name: str) -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _source(name: str) -> tuple[str, dict[str, Any]]:
    """``from_pretrained`` arguments: a ``.gguf`` file loads from its folder with ``gguf_file``."""
    p = Path(name)
    return (str(p.parent), {"gguf_file": p.name}) if p.suffix == ".gguf" else (name, {})


def load_tokenizer(name: str):
    """The tokenizer of ``name``; it must have a chat template."""
    from transformers import AutoTokenizer

    src, kw = _source(name)
    try:
        tok = AutoTokenizer.from_pretrained(src, **kw)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load the tokenizer of {name!r}: {e}") from None
    if not tok.chat_template:
        raise ConfigError(f"{name}: the tokenizer has no chat template; use an instruct/chat model (or set "
                          "chat_template in its tokenizer_config.json)")
    return tok


def _missing_path(name: str) -> bool:
    """Whether ``name`` is meant as a local file or folder (not a hub id) and is not there."""
    return not Path(name).exists() and (name.endswith(".gguf") or name.startswith((".", "/", "~"))
                                        or name.count("/") > 1 or "\\" in name)


def inspect_model(name: str) -> tuple[Any, int]:
    """The configuration and parameter count of the causal LM ``name``, read without its weights (on the
    ``meta`` device); a clear error where it is missing, unreadable or not a causal LM."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if _missing_path(name):
        raise ConfigError(f"base model {name!r}: no such file or folder")
    src, kw = _source(name)
    try:
        config = AutoConfig.from_pretrained(src, **kw)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"cannot load the model {name!r}: {str(e).splitlines()[0]}") from None
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except ValueError:
        raise ConfigError(f"{name} is a {type(config).__name__.removesuffix('Config')} model, not a causal "
                          "language model: choose a decoder-only chat model (e.g. SmolLM2-135M-Instruct)") from None
    return config, int(sum(p.numel() for p in model.parameters()))


def load_model(name: str, dtype: str):
    """The causal LM ``name`` in ``dtype`` ("auto": bfloat16/float16 on a GPU, float32 on a CPU)."""
    from transformers import AutoModelForCausalLM

    src, kw = _source(name)
    try:
        return AutoModelForCausalLM.from_pretrained(src, dtype=_dtype(dtype), **kw)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load the causal LM {name!r}: {e}") from None


# ---------------------------------------------------------------------- memory
GiB = 1 << 30
# python, torch, transformers, the tokenizer and the C library's slack beside the weights and activations (the
# resident size of a CPU fit runs about this much above the other terms of the estimate)
RUNTIME_BYTES = GiB
HEAD_CHUNK = 256  # answer positions whose full-vocabulary logits exist at once
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": GiB, "t": 1 << 40}


def parse_memory(value: str | int) -> int:
    """Bytes of ``value``: an integer, or a number with a binary unit (``"3G"``, ``"512MiB"``, ``"1.5gb"``)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(value).lower())
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"max_memory must be a size such as 3G or 512M, got {value!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def format_bytes(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB / 4 else f"{n / (1 << 20):.0f} MiB"


def available_memory(on_gpu: bool) -> int | None:
    """Bytes still free for this process: the GPU's free memory, else the system's available memory (lower
    where a cgroup limit is closer); None where it cannot be read."""
    if on_gpu:
        return int(torch.cuda.mem_get_info()[0])
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        free = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            free = min(free, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return free


@dataclass
class MemoryPlan:
    """How a fit stays within ``budget`` bytes (recorded in ``tsynth.json`` under training.memory)."""

    budget: int
    weights: int
    micro_batch_rows: int
    micro_batch_tokens: int
    checkpoint_every: int  # 0: no activation checkpointing; n: every n-th decoder layer recomputes
    layers: int
    estimate: int
    source: str  # what set the budget

    def describe(self) -> str:
        ckpt = ("no activation checkpointing" if not self.checkpoint_every else
                f"activation checkpointing on {math.ceil(self.layers / self.checkpoint_every)} of {self.layers} layers")
        return (f"micro-batches of up to {self.micro_batch_rows} rows ({self.micro_batch_tokens} tokens), {ckpt}; "
                f"about {format_bytes(self.estimate)} of the {format_bytes(self.budget)} allowed ({self.source}), "
                f"{format_bytes(self.weights)} of it the weights")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.describe()}


def plan_memory(config, n_params: int, dtype: torch.dtype, batch: int, row_tokens: int,
                max_memory: str | int | None, name: str = "the base model") -> MemoryPlan:
    """Micro-batch size and activation checkpointing that keep a LoRA fit within its memory budget.

    The estimate counts, per token of a micro-batch, the activations a decoder layer keeps for the backward
    pass (about 18 hidden-size and 6 intermediate-size vectors) in each layer that keeps them, one
    hidden-size vector in each checkpointed layer plus one layer's worth while it recomputes; on top of
    it the weights, the runtime (on a CPU) and the output layer's chunk of logits. Plans with less
    recomputation come first, then the most rows. A budget that not even one row with every layer
    checkpointed fits, or weights that do not fit the free memory, are refused before loading anything.
    """
    on_gpu = train_device() == "cuda"
    size = torch.finfo(dtype).bits // 8
    text = getattr(config, "get_text_config", lambda: config)()
    hidden = int(getattr(text, "hidden_size", 0) or getattr(text, "n_embd", 0) or 1024)
    inter = int(getattr(text, "intermediate_size", 0) or 4 * hidden)
    layers = int(getattr(text, "num_hidden_layers", 0) or getattr(text, "n_layer", 0) or 12)
    vocab = int(getattr(text, "vocab_size", 0) or 50000)
    weights = n_params * size
    fixed = weights + (0 if on_gpu else RUNTIME_BYTES) + HEAD_CHUNK * vocab * 4 * 3
    free = available_memory(on_gpu)
    if max_memory is not None:
        budget, source = parse_memory(max_memory), "max_memory"
    elif on_gpu:
        budget, source = int(0.8 * (free or 0)), "80 % of the free GPU memory"
    else:
        budget, source = fixed + max(GiB, weights), "default: the weights, and as much again (at least 1 GiB)"
    if free is not None and budget > free:
        budget, source = free, "the memory free now"
    loading = fixed + (weights if name.endswith(".gguf") else 0)  # a GGUF file is de-quantised into a copy
    if free is not None and loading > free:
        raise ConfigError(f"{name}: {n_params / 1e6:,.0f}M parameters take {format_bytes(weights)} in {dtype} "
                          f"(about {format_bytes(loading)} to load and train), but only {format_bytes(free)} of "
                          f"{'GPU ' if on_gpu else ''}memory is free: choose a smaller model or free memory")
    full, kept = size * (18 * hidden + 6 * inter), size * hidden

    def need(rows: int, k: int) -> int:
        return fixed + rows * row_tokens * ((layers - k) * full + k * kept + (full if k else 0))

    for every in [0, *range(layers, 0, -1)]:
        k = math.ceil(layers / every) if every else 0
        if every and every < layers and math.ceil(layers / (every + 1)) == k:
            continue  # the same number of checkpointed layers as a larger step
        if need(1, k) <= budget:
            rows = max(r for r in range(1, batch + 1) if need(r, k) <= budget)
            return MemoryPlan(budget, weights, rows, rows * row_tokens, every, layers, need(rows, k), source)
    raise ConfigError(f"{name}: training on conversations of {row_tokens} tokens needs about "
                      f"{format_bytes(need(1, layers))} even one row at a time with every layer checkpointed, more "
                      f"than the {format_bytes(budget)} allowed ({source}): raise --max-memory, use fewer decimals or "
                      "shorter windows (--length), or a smaller model")


def return_freed_memory() -> None:
    """Have glibc return freed blocks of 1 MiB and more to the system at once (see the module docstring)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 1 << 20)
        except (OSError, AttributeError):  # another C library: its own policy stays
            pass


def set_checkpointing(model, every: int) -> None:
    """Activation checkpointing on every ``every``-th decoder layer of ``model`` (0: off)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if every and base.supports_gradient_checkpointing:
        base.activation_checkpointing_enable({"use_reentrant": False}, every_n_layers=every)
    elif getattr(base, "is_activation_checkpointing", False):
        base.activation_checkpointing_disable()


def micro_batches(max_tokens: int) -> Callable[[torch.Tensor], list[tuple[torch.Tensor, float]]]:
    """``split(rows)``: consecutive groups of rows of :func:`encode_chats` whose padded size (rows x the
    longest) stays within ``max_tokens`` (one row at least), each with its share of the batch's answer
    tokens, so that the shares times the groups' mean losses sum to the batch's mean loss."""

    def split(rows: torch.Tensor) -> list[tuple[torch.Tensor, float]]:
        lengths = (rows != 0).sum(1).tolist()
        answers = (rows > 0).sum(1).tolist()
        total = max(sum(answers), 1)
        parts, start, longest = [], 0, 0
        for i, n in enumerate(lengths):
            if i > start and max(longest, n) * (i + 1 - start) > max_tokens:
                parts.append((start, i))
                start, longest = i, 0
            longest = max(longest, n)
        parts.append((start, len(lengths)))
        return [(rows[a:b], sum(answers[a:b]) / total) for a, b in parts]

    return split


def adapter_weight(name: str) -> bool:
    """Whether a state-dict key of the LoRA-wrapped model is an adapter weight (the only ones trained)."""
    return "lora_" in name


def add_lora(model, o: PretrainedOptions):
    """``model`` wrapped with fresh LoRA adapters on ``o.target_modules`` (names of linear layers)."""
    from peft import LoraConfig, get_peft_model

    if o.target_modules != "all-linear":
        linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        unknown = [t for t in o.target_modules if not any(n == t or n.endswith("." + t) for n in linear)]
        if unknown or not o.target_modules:
            raise ConfigError(f"target module(s) {unknown} are not linear layers of {o.base_model} "
                              f"(its linear layers: {', '.join(sorted({n.split('.')[-1] for n in linear}))})")
    config = LoraConfig(r=o.lora_rank, lora_alpha=o.lora_alpha, lora_dropout=o.lora_dropout,
                        target_modules=o.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


# ---------------------------------------------------------------------- chat text <-> token rows
def prompt_ids(tok, codec: ChatCodec, conditions: dict[str, Any]) -> list[int]:
    """Token ids of the system and user turns up to the opening of the assistant turn."""
    text = tok.apply_chat_template(codec.prompt(conditions), add_generation_prompt=True, tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


def end_of_turn(tok, codec: ChatCodec, conditions: dict[str, Any], values: np.ndarray) -> int:
    """The token the chat template closes the assistant turn with (the end-of-sequence token otherwise)."""
    prompt = tok.apply_chat_template(codec.prompt(conditions), add_generation_prompt=True, tokenize=False)
    answer = codec.render(values)
    full = tok.apply_chat_template(codec.prompt(conditions) + [{"role": "assistant", "content": answer}],
                                   tokenize=False)
    if not full.startswith(prompt + answer):
        raise ConfigError("the chat template does not render the assistant turn after the generation prompt "
                          "as it is; tsynth cannot tell the answer's tokens")
    special = set(tok.all_special_ids)
    tail = [t for t in tok(full[len(prompt + answer):], add_special_tokens=False)["input_ids"] if t in special]
    end = tail[0] if tail else tok.eos_token_id
    if end is None:
        raise ConfigError("the tokenizer has neither an end-of-turn token in its chat template nor an eos token")
    return int(end)


def encode_chats(tok, codec: ChatCodec, data: SeriesSet, end_id: int) -> np.ndarray:
    """One row per series: token ``i`` stored as ``i + 1`` where the loss applies (the answer and the end
    token), ``-(i + 1)`` in the prompt, ``0`` as right padding."""
    rows = []
    for k, cond in enumerate(codec.conditions(data)):
        answer = tok(codec.render(data.series(k)), add_special_tokens=False)["input_ids"] + [end_id]
        rows.append([-(i + 1) for i in prompt_ids(tok, codec, cond)] + [i + 1 for i in answer])
    out = np.zeros((len(rows), max(map(len, rows))), dtype=np.int64)
    for k, r in enumerate(rows):
        out[k, : len(r)] = r
    return out


def chat_loss(max_tokens: int) -> Callable:
    """``loss(model, rows, reduction)``: next-token cross-entropy on the answer tokens of rows of
    :func:`encode_chats`; with ``reduction="none"`` (validation) the mean of each row, without gradients,
    in groups of at most ``max_tokens`` padded tokens."""

    def loss(model, rows: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if reduction == "none":
            with torch.no_grad():
                sums, counts = zip(*(answer_nll(model, part) for part, _ in micro_batches(max_tokens)(rows)))
            return torch.cat(sums) / torch.cat(counts).clamp(min=1)
        nll, count = answer_nll(model, rows)
        return nll.sum() / count.sum().clamp(min=1)

    return loss


def answer_nll(model, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of :func:`encode_chats`, the summed next-token negative log-likelihood of its answer tokens and
    their count. The decoder runs once; the output layer runs on the answer positions only, ``HEAD_CHUNK`` at
    a time and recomputed in the backward pass, so full-vocabulary logits of the batch never exist."""
    rows = rows[:, : int((rows != 0).sum(1).max())]
    ids = (rows.abs() - 1).clamp(min=0)
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = lm.get_decoder()(input_ids=ids[:, :-1], use_cache=False).last_hidden_state  # right padding: causal needs no mask
    trained = rows[:, 1:] > 0
    h, targets = hidden[trained], ids[:, 1:][trained]
    head, cap = lm.get_output_embeddings(), getattr(lm.config, "final_logit_softcapping", None)
    parts = [checkpoint(_head_nll, head, h[i: i + HEAD_CHUNK], targets[i: i + HEAD_CHUNK], cap, use_reentrant=False)
             if torch.is_grad_enabled() else _head_nll(head, h[i: i + HEAD_CHUNK], targets[i: i + HEAD_CHUNK], cap)
             for i in range(0, len(h), HEAD_CHUNK)]
    nll = torch.cat(parts) if parts else h.new_zeros(0, dtype=torch.float32)
    owner = trained.nonzero()[:, 0]
    return nll.new_zeros(len(rows)).index_add(0, owner, nll), trained.sum(1)


def _head_nll(head, h: torch.Tensor, targets: torch.Tensor, cap: float | None) -> torch.Tensor:
    logits = head(h).float()
    if cap:  # Gemma-style soft-capped logits
        logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(logits, targets, reduction="none")


# ---------------------------------------------------------------------- constrained generation
def token_texts(tok, vocab_size: int) -> list[str]:
    """The text each token id adds after other text ("" for special tokens and ids past the tokenizer).

    Each token is decoded after a fixed one, so tokenizers that drop a leading space at the start of a
    text (SentencePiece) still give the token's space."""
    head_ids = tok("0", add_special_tokens=False)["input_ids"]
    head = tok.decode(head_ids, clean_up_tokenization_spaces=False)
    n = min(len(tok), vocab_size)
    decoded = tok.batch_decode([head_ids + [i] for i in range(n)], clean_up_tokenization_spaces=False)
    special = set(tok.all_special_ids)
    texts = ["" if i in special or not t.startswith(head) else t[len(head):] for i, t in enumerate(decoded)]
    return texts + [""] * (vocab_size - n)


@torch.no_grad()
def generate_answers(model, prompts: list[list[int]], constraint: TokenConstraint, pad_id: int,
                     temperature: float, top_p: float, gen: torch.Generator) -> list[str]:
    """The answers to a batch of prompts (left-padded), each drawn under ``constraint`` until its end token."""
    device = next(model.parameters()).device
    b, width = len(prompts), max(map(len, prompts))
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    mask = torch.zeros((b, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    states = [constraint.grammar.start] * b
    texts, done = [""] * b, [False] * b
    cache, step = None, ids
    while not all(done):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -step.shape[1]:]
        out = model(input_ids=step.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                    cache=cache, use_cache=True, logits_to_keep=1)
        cache = out.cache
        logits = out.logits[:, -1].float().cpu()
        logits = logits.masked_fill(~constraint.mask(states, logits.shape[-1]), float("-inf"))
        draw = draw_tokens(torch.softmax(logits / temperature, dim=-1), top_p, gen)
        for i, t in enumerate(draw.tolist()):
            if t == constraint.end_id:
                done[i] = True
            elif not done[i]:
                states[i] = constraint.advance(states[i], t)
                texts[i] += constraint.texts[t]
        step = draw[:, None]
        mask = torch.cat([mask, torch.ones((b, 1), dtype=torch.long)], dim=1)
    return texts
