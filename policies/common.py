"""Pieces every policy kind shares: the strict base model, metadata, durations, secret references.

Models are strict (``"3"`` is not a number, ``yes`` is not a boolean) and forbid unknown fields,
so a typo is an error with a did-you-mean rather than a setting silently ignored. YAML spells
fields in camelCase, Kubernetes-style; Python uses snake_case through aliases.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic.alias_generators import to_camel

from fedge import durations
from fedge.bounded import InputError, read_capped_text
from fedge.errors import UsageError
from fedge.logs import register_secret

__all__ = [
    "API_VERSION",
    "DNS_NAME",
    "PROVIDERS",
    "TOPIC_SAFE_ID",
    "Duration",
    "Enforcement",
    "LabelSelector",
    "Metadata",
    "Provider",
    "SecretRef",
    "Spec",
    "parse_duration",
]

API_VERSION = "fedge/v1"
DNS_NAME = r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$"
# Device and fleet ids become MQTT topic levels: no '/', '+', '#', and nothing a broker ACL
# pattern could misread.
TOPIC_SAFE_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class Spec(BaseModel):
    """Base of every policy model: strict, no unknown fields, camelCase in YAML."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
    )


MAX_DURATION_S = 10 * 365 * 86400


def parse_duration(value: Any) -> Any:
    """``90``, ``"90s"``, ``"10m"``, ``"1h30m"``, ``"500ms"`` -> seconds (float), in the one
    grammar of :mod:`fedge.durations`.

    Anything else is passed on unchanged so the strict float check reports it.
    """
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return durations.parse_duration(value)
    return value


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    # Finite and at most ten years: `.inf` or 1e30 seconds once crashed the threads that sleep it.
    Field(gt=0, le=MAX_DURATION_S, allow_inf_nan=False),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_DURATION_S},
                {"type": "string", "pattern": durations.CANONICAL_PATTERN},
            ],
            "description": "seconds, or a duration such as 30s, 10m, 1h30m",
        }
    ),
]


class Metadata(Spec):
    name: str = Field(pattern=DNS_NAME, description="lowercase letters, digits, '-' and '.'")
    labels: dict[str, str] = Field(default_factory=dict)


class LabelSelector(Spec):
    """Kubernetes-style selector: every ``matchLabels`` pair must be present (empty selects all)."""

    match_labels: dict[str, str] = Field(default_factory=dict)

    def matches(self, labels: dict[str, str]) -> bool:
        return all(labels.get(key) == value for key, value in self.match_labels.items())


class SecretRef(Spec):
    """Where a secret lives: an environment variable or a file. Never the secret itself."""

    env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    file: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env or file")
        return self

    def resolve(
        self, *, base_dir: str | os.PathLike[str] | None = None, field: str = "secretRef"
    ) -> str:
        """Read the secret now (at use, not at load) and register it for log redaction.

        ``field`` is the reference's own name in its document (``keyRef``, ``passwordRef``...),
        so an error quotes the field actually at fault.
        """
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise UsageError(f"{field}: environment variable {self.env} is not set")
        else:
            assert self.file is not None  # noqa: S101 - guaranteed by _exactly_one
            path = Path(self.file)
            if base_dir is not None and not path.is_absolute():
                path = Path(base_dir) / path
            try:
                value = read_capped_text(path, limit=_MAX_SECRET_FILE, what="a secret").rstrip(
                    "\r\n"
                )
            except InputError as exc:
                raise UsageError(f"{field}: cannot read {path} ({exc.reason})") from exc
        register_secret(value)
        return value


_MAX_SECRET_FILE = 64 << 10  # a password or an account key, never more

Enforcement = Literal["Enforce", "Audit"]
Provider = Literal["s3", "azure-blob", "local"]
PROVIDERS: tuple[Provider, ...] = ("s3", "azure-blob", "local")
