"""Transformer model shapes: frozen data from the catalog (``simserve/catalog/models``) or inline YAML.

Only what the step-time core needs: layer count, widths, attention heads and KV heads, FFN size and
gating, experts, vocabulary and context. Parameter counts are derived, not stored.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from . import resources
from .config.base import Frozen, load_validated, validate
from .errors import ScenarioError


class ModelSpec(Frozen):
    name: str
    hf_id: str | None = Field(default=None, description="Hugging Face repository the shapes come from")
    source: str = Field(default="inline", description="Where the numbers come from (config.json URL)")
    num_layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    num_heads: int = Field(ge=1)
    num_kv_heads: int = Field(ge=1, description="Equal to num_heads for MHA, fewer for GQA/MQA")
    head_dim: int | None = Field(default=None, ge=1, description="Defaults to hidden_size / num_heads")
    ffn_size: int = Field(ge=1, description="Intermediate size of one FFN (one expert for MoE)")
    ffn_gated: bool = Field(description="True for SwiGLU/GeGLU (three FFN matrices), false for two")
    vocab_size: int = Field(ge=1)
    max_context: int = Field(ge=1, description="max_position_embeddings")
    tied_embeddings: bool = False
    num_experts: int = Field(default=1, ge=1, description="FFN experts per layer; 1 for dense models")
    experts_per_token: int = Field(default=1, ge=1, description="Top-k routing")
    sliding_window: int | None = Field(default=None, ge=1)
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    attention_bias: bool = False

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.experts_per_token > self.num_experts:
            raise ValueError("experts_per_token must be <= num_experts")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be a multiple of num_heads, or give head_dim")
        return self

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_size

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_size

    @property
    def ffn_matrices(self) -> int:
        return 3 if self.ffn_gated else 2

    @property
    def attn_params_per_layer(self) -> int:
        return self.hidden_size * (self.q_size + 2 * self.kv_size) + self.q_size * self.hidden_size

    @property
    def expert_params(self) -> int:
        return self.ffn_matrices * self.hidden_size * self.ffn_size

    @property
    def params_per_layer(self) -> int:
        router = self.hidden_size * self.num_experts if self.num_experts > 1 else 0
        return self.attn_params_per_layer + self.num_experts * self.expert_params + router

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)

    @property
    def num_params(self) -> int:
        """Total parameters (linear layers and embeddings; norms and biases are negligible)."""
        return self.num_layers * self.params_per_layer + self.embedding_params

    @property
    def active_params(self) -> int:
        """Parameters touched per token (top-k experts for MoE)."""
        router = self.hidden_size * self.num_experts if self.num_experts > 1 else 0
        per_layer = self.attn_params_per_layer + self.experts_per_token * self.expert_params + router
        return self.num_layers * per_layer + self.embedding_params

    def kv_bytes_per_token(self, kv_dtype_bytes: float) -> float:
        """KV cache bytes for one token across all layers (K and V)."""
        return 2 * self.num_layers * self.kv_size * kv_dtype_bytes


def load_model(ref: str | dict, base: Path | None = None, where: str = "model") -> ModelSpec:
    """A catalog name, a path to a model YAML, or an inline mapping -> ModelSpec."""
    if isinstance(ref, dict):
        return validate(ModelSpec, ref, prefix=tuple(where.split(".")))
    if not isinstance(ref, str):
        raise ScenarioError(where, f"must be a catalog name, a file path or a mapping, got {ref!r}")
    path = resources.resolve("models", ref, base=base)
    if path is None:
        known = ", ".join(resources.bundled_names("models"))
        raise ScenarioError(where, f"unknown model '{ref}', known: {known} (or a path, or an inline mapping)")
    return load_validated(ModelSpec, path, "a model file")


def catalog_names() -> list[str]:
    return resources.bundled_names("models")
