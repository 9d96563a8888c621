"""The model artifact: a directory holding ``tsynth.json`` plus whatever the backend saves
(``model/`` with Hugging Face weights and tokenizer for the local backend, or a remote model id).

``tsynth.json`` records the format version, the backend, codec and scaler settings, the data schema,
training figures and privacy accounting. Directories are written atomically: everything goes to a
temporary sibling that replaces the target only once complete.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from .errors import ArtifactError

FORMAT_VERSION = 1
MANIFEST = "tsynth.json"


def write_artifact(path: str | os.PathLike, manifest: dict[str, Any], write_files: Callable[[Path], None]) -> Path:
    """Create the directory ``path`` atomically: ``write_files(tmp_dir)`` then ``tsynth.json``, then rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not (target / MANIFEST).exists() and any(target.iterdir()):
        raise ArtifactError(f"{target}: exists and is not a tsynth model directory; refusing to overwrite it")
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write_files(tmp)
        doc = {"format_version": FORMAT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               **manifest}
        (tmp / MANIFEST).write_text(json.dumps(doc, indent=2, default=_json_default))
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``tsynth.json`` of a model directory."""
    p = Path(path)
    f = p / MANIFEST
    if not f.exists():
        raise ArtifactError(f"{p}: not a tsynth model directory (no {MANIFEST})")
    try:
        doc = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{f}: not valid JSON ({getattr(e, 'msg', e)})") from None
    except OSError as e:
        raise ArtifactError(f"{f}: cannot read it ({e.strerror or e})") from None
    if not isinstance(doc, dict):
        raise ArtifactError(f"{f}: expected a JSON object, got {type(doc).__name__}")
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{p}: model format version {version!r}; this tsynth reads version {FORMAT_VERSION} "
                            "(re-fit the model with this version)")
    if "backend" not in doc:
        raise ArtifactError(f"{f}: no 'backend' field")
    missing = [k for k in REQUIRED_FIELDS.get(doc["backend"], ()) if not isinstance(doc.get(k), dict)]
    if missing:
        raise ArtifactError(f"{f}: no {', '.join(repr(k) for k in missing)} (the file is incomplete or damaged; "
                            "fit the model again)")
    _check_weights(p, doc)
    return doc


REQUIRED_FIELDS = {"local": ("options", "codec"), "pretrained": ("options", "codec"), "openai": ("options", "codec")}
WEIGHT_FILES = ("config.json", "adapter_config.json")


def _check_weights(p: Path, doc: dict[str, Any]) -> None:
    """The weights folders ``tsynth.json`` speaks of are there (``model/``, ``model_1/``...): a missing one is
    an incomplete copy, and loading it would read the folder name as a Hugging Face hub id."""
    if doc["backend"] not in ("local", "pretrained"):
        return
    members = doc.get("members", 1) if doc["backend"] == "local" else 1
    if not isinstance(members, int) or members < 1:
        raise ArtifactError(f"{p / MANIFEST}: 'members' must be a positive integer, got {members!r}")
    for k in range(members):
        d = p / ("model" if k == 0 else f"model_{k}")
        if not any((d / name).is_file() for name in WEIGHT_FILES):
            raise ArtifactError(f"{p}: the weights folder {d.name}/ is missing or empty (tsynth.json records "
                                f"{members} model(s)); the model directory is incomplete: copy it whole, or fit again")


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)
