"""Sharing checkpoints through the Hugging Face Hub.

``push_run`` uploads a run's checkpoint (``best`` / ``last`` ``.safetensors`` + ``.json``,
unchanged), its ``config.yaml``, ``metrics.json`` and ``log.csv``, and a generated model card
(``README.md``). ``download_checkpoint`` turns ``hf-hub:owner/name[@revision]`` into a local
folder of huggingface_hub's cache, so that every place that takes a checkpoint path takes a
hub reference too (through :func:`mlrkit.engine.checkpoint.resolve_checkpoint`).

``huggingface_hub`` is imported only when one of these runs (``pip install 'mlrkit[hub]'``);
it reads the token (``hf auth login`` or ``HF_TOKEN``), the cache location (``HF_HOME`` /
``HF_HUB_CACHE``) and offline mode (``HF_HUB_OFFLINE=1``) from the environment as usual.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HUB_PREFIX = "hf-hub:"
# what a checkpoint folder needs on the hub; README, logs and reports are not downloaded
_CHECKPOINT_PATTERNS = ["*.safetensors", "*.json"]
# files of a run directory that travel with the checkpoint when present
_RUN_FILES = ("config.yaml", "metrics.json", "log.csv")
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
_SUMMARY_KEYS = ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")


@dataclass(frozen=True)
class HubRef:
    """A parsed ``hf-hub:owner/name[@revision]``."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return HUB_PREFIX + self.repo_id + (f"@{self.revision}" if self.revision else "")


def is_hub_ref(path: str | Path) -> bool:
    """Whether ``path`` names a hub checkpoint (``hf-hub:...``) rather than a local file."""
    return str(path).startswith(HUB_PREFIX)


def parse_hub_ref(ref: str | Path) -> HubRef:
    """``hf-hub:owner/name`` or ``hf-hub:owner/name@revision`` (branch, tag or commit)."""
    text = str(ref)
    if not text.startswith(HUB_PREFIX):
        raise ValueError(f"{text}: not a hub reference (expected {HUB_PREFIX}owner/name)")
    repo_id, at, revision = text[len(HUB_PREFIX):].partition("@")
    if not _REPO_ID.match(repo_id) or (at and not revision):
        raise ValueError(f"{text}: expected {HUB_PREFIX}owner/name or "
                         f"{HUB_PREFIX}owner/name@revision")
    return HubRef(repo_id, revision or None)


def _need_hub() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise ImportError("the Hugging Face Hub needs the huggingface_hub package "
                          "(pip install 'mlrkit[hub]')") from None
    return huggingface_hub


def download_checkpoint(ref: str | Path) -> Path:
    """Fetch the checkpoint files of ``hf-hub:owner/name[@revision]`` into huggingface_hub's
    cache (or find them there when offline) and return that local snapshot folder."""
    from .engine.checkpoint import CheckpointError

    hub = _need_hub()
    from huggingface_hub import errors

    parsed = parse_hub_ref(ref)
    try:
        folder = hub.snapshot_download(parsed.repo_id, revision=parsed.revision,
                                       allow_patterns=_CHECKPOINT_PATTERNS,
                                       library_name="mlrkit")
    except errors.RevisionNotFoundError:
        raise CheckpointError(f"{parsed}: the repository has no revision "
                              f"{parsed.revision!r} on the hub") from None
    except (errors.RepositoryNotFoundError, errors.GatedRepoError):
        raise CheckpointError(f"{parsed}: no such repository on the hub, or it is private or "
                              "gated and this machine is not logged in (`hf auth login` or "
                              "HF_TOKEN)") from None
    except errors.LocalEntryNotFoundError as e:
        from huggingface_hub import constants

        if constants.is_offline_mode():
            why = "offline mode is on (HF_HUB_OFFLINE=1)"
        else:
            cause = e.__cause__
            why = "the hub could not be reached" + (f" ({type(cause).__name__})" if cause else "")
        raise CheckpointError(f"{parsed}: not in the local Hugging Face cache "
                              f"({constants.HF_HUB_CACHE}) and {why}; download it once "
                              "with network access") from None
    except errors.HfHubHTTPError as e:
        raise CheckpointError(f"{parsed}: the hub answered {_first_line(e)}") from None
    path = Path(folder)
    if not any((path / f"{stem}.safetensors").exists() for stem in ("best", "last")):
        raise CheckpointError(f"{parsed}: the repository holds no best.safetensors or "
                              "last.safetensors (not an mlrkit checkpoint)")
    return path


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ------------------------------------------------------------------------------- upload
def _pct(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    return "-" if math.isnan(v) else f"{100 * v:.2f}"


def model_card(meta: dict[str, Any], repo_id: str, checkpoint: str = "best") -> str:
    """The ``README.md`` of a pushed run: method, backbone, labels with their thresholds,
    validation metrics of the checkpoint, the config, and how to use it."""
    import yaml

    from .engine.evaluation import describe_split

    cfg = meta.get("config", {})
    model = cfg.get("model", {})
    data = cfg.get("data", {})
    names = list(meta.get("label_names", []))
    thresholds = list(meta.get("thresholds", [])) or [None] * len(names)
    method, backbone = meta.get("method") or model.get("name", "?"), model.get("backbone", "?")
    front = {"library_name": "mlrkit", "pipeline_tag": "image-classification",
             "tags": ["mlrkit", "multi-label-image-classification", str(method)]}
    metrics = meta.get("metrics") or {}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
             f"# {repo_id.split('/')[-1]}", "",
             f"A multi-label image classifier trained with mlrkit: method **{method}** on "
             f"backbone **{backbone}**, {len(names)} labels.", "",
             "| | |", "| --- | --- |",
             f"| method | `{method}` |", f"| backbone | `{backbone}` |",
             f"| image size | {data.get('image_size', '?')} |",
             f"| label embeddings | {_code(model.get('label_embeddings'))} |",
             f"| label graph | {_code(model.get('label_graph'))} |",
             f"| checkpoint | `{checkpoint}` (epoch {meta.get('epoch', '?')}, "
             f"{meta.get('weights', 'model')} weights) |",
             f"| mlrkit version | {meta.get('mlrkit_version', meta.get('version', '?'))} |", ""]
    split = describe_split(data["val"]) if isinstance(data.get("val"), dict) else ""
    keys = [k for k in _SUMMARY_KEYS if k in metrics]
    lines += ["## Metrics", ""]
    if keys:
        lines += [f"On the validation split{f' `{split}`' if split else ''}, at the epoch "
                  "this checkpoint was saved (percent):", "",
                  "| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys),
                  "| " + " | ".join(_pct(metrics[k]) for k in keys) + " |", ""]
    else:
        lines += ["No validation metrics were recorded with this checkpoint.", ""]
    lines += ["## Labels", "",
              f"Thresholds: {meta.get('thresholds_from', 'as stored in the checkpoint')}.", "",
              "| # | label | threshold |", "| --- | --- | --- |"]
    lines += [f"| {i} | {n} | {'-' if t is None else f'{float(t):.3f}'} |"
              for i, (n, t) in enumerate(zip(names, thresholds))]
    ref = f"{HUB_PREFIX}{repo_id}"
    lines += ["", "## Use", "", "With mlrkit and its `hub` extra installed:", "", "```bash",
              f"mlrkit predict --checkpoint {ref} photo.jpg", "```", "", "```python",
              "from mlrkit import Predictor", "",
              f'pred = Predictor.from_checkpoint("{ref}")',
              'print(pred.predict(["photo.jpg"])[0].labels)', "```", "",
              "## Config", "", "The training config as stored in the checkpoint:", "",
              "```yaml", yaml.safe_dump(cfg, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


def _code(value: Any) -> str:
    return "none" if value in (None, "") else f"`{value}`"


def stage_run(run_dir: str | Path, folder: str | Path, repo_id: str) -> list[Path]:
    """Copy what ``push_run`` uploads into ``folder``: the checkpoint of ``run_dir`` (``best``,
    else ``last``, or the ``.safetensors`` file given) byte for byte, the run's config, metrics
    and log, and a model card ``README.md``. Return the files written."""
    from .engine.checkpoint import CheckpointError, resolve_checkpoint

    if is_hub_ref(run_dir):
        raise CheckpointError(f"{run_dir}: push takes a local run directory")
    weights = resolve_checkpoint(run_dir)
    meta_path = weights.with_suffix(".json")
    if not meta_path.exists():
        raise CheckpointError(f"{meta_path}: checkpoint metadata missing")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_path}: unreadable metadata ({e})") from None
    for key in ("label_names", "config"):
        if key not in meta:
            raise CheckpointError(f"{meta_path}: no {key!r} field; not an mlrkit checkpoint")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for src in (weights, meta_path, *(weights.parent / n for n in _RUN_FILES)):
        if src.exists():
            written.append(Path(shutil.copyfile(src, out / src.name)))
    card = out / "README.md"
    card.write_text(model_card(meta, repo_id, weights.stem), encoding="utf-8")
    return [*written, card]


def push_run(run_dir: str | Path, repo_id: str, revision: str | None = None,
             private: bool = False, commit_message: str | None = None,
             token: str | None = None) -> str:
    """Upload a run (see :func:`stage_run`) to the model repository ``repo_id``, created if
    missing (``private`` applies then); ``revision`` is a branch, created from the default
    branch if missing. Return the URL of the commit."""
    if not _REPO_ID.match(repo_id):
        raise ValueError(f"{repo_id}: expected a repository id owner/name (letters, digits, "
                         "'-', '_', '.')")
    hub = _need_hub()
    api = hub.HfApi(token=token, library_name="mlrkit")
    with tempfile.TemporaryDirectory(prefix="mlrkit-push-") as tmp:
        files = stage_run(run_dir, tmp, repo_id)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            repo_id=repo_id, folder_path=tmp, revision=revision, repo_type="model",
            commit_message=commit_message or f"mlrkit push of {Path(run_dir).name} "
            f"({files[0].stem} checkpoint)")
    return str(getattr(info, "commit_url", info))


__all__ = ["HUB_PREFIX", "HubRef", "download_checkpoint", "is_hub_ref", "model_card",
           "parse_hub_ref", "push_run", "stage_run"]
