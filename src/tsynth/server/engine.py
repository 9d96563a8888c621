"""Chat completions of ``tsynth serve``: fine-tuned models loaded on demand, sampled, rendered as text.

A completion reads the last user message as the JSON object of conditions (``{"item_id": "MT_001"}``;
``{}`` samples unconditionally), draws ``n`` series from the model's synthesizer (the local backend, or
the pretrained backend's LoRA model with its always-valid constrained decoding) with the request's
temperature, top_p and seed, and renders each with the model's chat codec (the format of its training
file). The system prompt is not interpreted; ``temperature=0`` and ``top_p=0`` mean near-greedy (the
sampler needs them positive), and without a ``seed`` each request draws a fresh one. Torch runs on one
thread and generations take turns (``slots`` at a time): small models gain nothing from intra-op
threads, and on a shared CPU a second thread only adds contention.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

from ..codecs.chat import ChatCodec
from .store import Store


@dataclass
class LoadedModel:
    """A fitted synthesizer, the chat codec of its training file and its longest training series."""

    synthesizer: Any
    codec: ChatCodec
    max_length: int


class ModelPool:
    """Fine-tuned models kept in memory (least recently used beyond ``capacity`` are dropped)."""

    def __init__(self, store: Store, capacity: int = 4, slots: int = 1) -> None:
        self.store, self.capacity = store, capacity
        self.loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self.load_lock = threading.Lock()
        self.slots = threading.Semaphore(slots)

    def get(self, model_id: str) -> LoadedModel | None:
        """The model registered under ``model_id`` (None when there is none)."""
        with self.load_lock:
            if model_id in self.loaded:
                self.loaded.move_to_end(model_id)
                return self.loaded[model_id]
            found = self.store.model(model_id)
            if found is None:
                return None
            model = _load(self.store, found[1])
            self.loaded[model_id] = model
            while len(self.loaded) > self.capacity:
                self.loaded.popitem(last=False)
            return model

    def forget(self, model_id: str) -> None:
        with self.load_lock:
            self.loaded.pop(model_id, None)

    def generate(self, model: LoadedModel, conditions: dict[str, Any], n: int, temperature: float, top_p: float,
                 seed: int | None, length: int | None) -> list[str]:
        """``n`` answers: series drawn under ``conditions``, rendered by the model's codec."""
        seed = secrets.randbelow(2**31) if seed is None else seed
        with self.slots:
            out = model.synthesizer.sample(n, conditions=dict(conditions), temperature=max(temperature, 1e-3),
                                           top_p=max(top_p, 1e-9), seed=seed, length=length)
        return [model.codec.render(out.series(i)) for i in range(len(out))]


def _load(store: Store, info: dict[str, Any]) -> LoadedModel:
    """A model directory, with a checkpoint's weights in place of the final ones where given (a pretrained
    model's checkpoint holds its LoRA adapter weights only)."""
    import torch
    from safetensors.torch import load_file
    from transformers.utils import logging as hf_logging

    from ..synthesizer import Synthesizer

    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()
    syn = Synthesizer.load(store.root / info["path"])
    if info.get("weights"):
        stored: Callable[[str], bool]
        if syn.backend_name == "pretrained":
            from ..backends.pretrained import adapter_weight

            net, stored = syn.backend.model, adapter_weight
        else:
            net, stored = syn.backend.models[0], lambda k: k != "lm_head.weight"  # the tied output layer is not stored
        missing, unexpected = net.load_state_dict(load_file(store.root / info["weights"]), strict=False)
        misfits = [k for k in missing if stored(k)] + unexpected
        if misfits:
            raise RuntimeError(f"checkpoint {info['weights']} does not fit its model ({misfits[:3]})")
    return LoadedModel(syn, ChatCodec.from_dict(info["codec"]), info["max_length"])
