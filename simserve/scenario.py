"""A scenario file: what to simulate. Loaded strictly into frozen config, then resolved against the
hardware profile and model catalog into everything the engine needs (or a ScenarioError)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from . import policies
from .config.base import Frozen, fmt_value, set_path, validate
from .config.yamlio import load_file, loads
from .cost.memory import MemoryPlan, plan_memory, plan_pipeline_memory, stage_fits
from .cost.step import Precision
from .engine.admission import AdmissionConfig
from .engine.failures import FailuresConfig
from .errors import ScenarioError
from .hardware import HardwareProfile, load_profile
from .model import ModelSpec, load_model
from .quantization import ActivationDtype, KVDtype, WeightDtype, check_precision
from .workload.config import WorkloadConfig


class PrecisionConfig(Frozen):
    """Weight/activation quantization and KV precision; the pairs allowed are simserve.quantization.SCHEMES."""

    weights: WeightDtype = Field("bf16", description="Storage dtype of the weights (int4: GPTQ/AWQ, fp4: NVFP4)")
    activations: ActivationDtype = Field("bf16", description="Compute dtype of the GEMMs; the hardware must have it")
    kv_cache: KVDtype = Field("bf16", description="Storage dtype of the KV cache")


class DisaggregationConfig(Frozen):
    """Separate prefill and decode pools (Splitwise/DistServe): prompts run on one, decodes on the other,
    and each request's prompt KV crosses ``link`` in between."""

    prefill_replicas: int = Field(ge=1, description="Replicas that run prompts and sample the first token")
    decode_replicas: int = Field(ge=1, description="Replicas that receive the prompt KV and generate the other tokens")
    link: Literal["intra_node", "inter_node"] = Field(
        "inter_node", description="The hardware's interconnect link the KV is sent over")
    prefill_router: policies.ROUTERS.union() | None = Field(
        None, description="How arrivals are spread over the prefill pool; default: deployment.router")
    decode_router: policies.ROUTERS.union() | None = Field(
        None, description="How prefilled requests are spread over the decode pool; default: deployment.router")


PositiveInt = Annotated[int, Field(ge=1)]


class DeploymentConfig(Frozen):
    tensor_parallel: PositiveInt | Literal["auto"] = Field(
        1, description="Devices per pipeline stage sharing every layer; auto: derived from memory capacity "
        "(with pipeline_parallel, the fewest devices that hold the model and its KV)")
    pipeline_parallel: PositiveInt | Literal["auto"] = Field(
        1, description="Pipeline stages per replica, each on tensor_parallel devices holding a contiguous share "
        "of the layers; auto: the fewest stages whose devices hold their weights and the KV of "
        "scheduler.max_num_seqs sequences of max_model_len tokens (SRAM accelerators)")
    @field_validator("tensor_parallel", "pipeline_parallel", mode="before")
    @classmethod
    def _int_or_auto(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError(f"must be an integer >= 1 or 'auto', got {fmt_value(value)}")

    expert_parallel: int = Field(
        1, ge=1, description="MoE only: devices the experts of each MoE layer are spread over, num_experts / "
        "expert_parallel whole experts each; 1 (every expert split over tensor_parallel) or tensor_parallel "
        "(EP reuses the tensor-parallel devices, as vLLM's enable_expert_parallel)")
    moe_load_imbalance: float = Field(
        1.0, ge=1, le=1e3, description="With expert_parallel > 1: token-expert pairs of the busiest device over "
        "the mean (1: uniform routing); scales its expert kernels, which every step waits for")
    replicas: int = Field(1, ge=1, description="Identical copies of the model behind the router")
    router: policies.ROUTERS.union() = Field(default_factory=lambda: policies.ROUTERS.default("round_robin"),
                                              description="How requests are spread over replicas")
    disaggregation: DisaggregationConfig | None = Field(
        None, description="Prefill and decode on separate replicas; replicas is then their sum")


class OffloadConfig(Frozen):
    """Where prefix blocks evicted from the device go, and how fast they come back."""

    capacity_gb: float = Field(gt=0, le=1e6, description="Capacity per device, 1e9 bytes")
    bandwidth_gb_s: float | None = Field(None, gt=0, le=1e6, description="Copy bandwidth back to the device per device, 1e9 bytes/s; default: the hardware's host link")
    latency_us: float | None = Field(None, ge=0, le=1e9, description="Per copy, microseconds; default: the host link's")


class KVCacheConfig(Frozen):
    layout: Literal["paged", "contiguous"] = Field(
        "paged", description="paged: blocks taken as a sequence grows; contiguous: max_model_len tokens reserved per request at admission")
    block_size: int = Field(16, ge=1, description="Tokens per KV block (paged attention)")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Fraction of device memory the engine may use")
    enable_prefix_caching: bool = Field(False, description="Reuse the KV of equal prompt prefixes (blocks found by content hash, LRU eviction)")
    swap_space_gb: float = Field(4.0, ge=0, le=1e6, description="Host memory per device for KV swapped out by scheduler.preemption: swap, 1e9 bytes")
    offload: OffloadConfig | None = Field(None, description="Second prefix-cache tier (host memory or SSD); needs enable_prefix_caching")


class SLOConfig(Frozen):
    """A request meets the SLO when every given bound holds; unset bounds are not checked."""

    ttft_ms: float | None = Field(None, gt=0, description="Time to first token bound, ms")
    tpot_ms: float | None = Field(None, gt=0, description="Time per output token bound, ms")
    e2el_ms: float | None = Field(None, gt=0, description="End-to-end latency bound, ms")


class SamplingConfig(Frozen):
    """Output sequences per request (vLLM ``SamplingParams.n``), or beam search with ``beam_width`` beams
    (vLLM v0 ``use_beam_search=True, best_of=beam_width``), returning the best beam."""

    n: int = Field(1, ge=1, le=1024, description="Parallel sampling: output sequences per request, sharing the prompt's KV (continuous scheduler only)")
    beam_width: int = Field(1, ge=1, le=1024, description="Beam search: beams per request, sharing KV copy-on-write and reshuffled every iteration; one output per request; 1 is off (continuous scheduler only)")
    beam_reshuffle: float = Field(1.0, ge=0, le=1, description="Beam search: probability that a beam's parent is redrawn uniformly among the request's beams after each iteration (1: parents drawn with replacement; 0: beams never swap)")


class RunConfig(Frozen):
    max_duration_s: float | None = Field(None, gt=0, description="Stop the clock here; requests still in flight are 'unfinished'")


class Scenario(Frozen):
    name: str = Field("scenario", description="Label carried into outputs")
    description: str = ""
    seed: int = Field(0, ge=0, description="Seed of every random draw in the run")
    model: str | dict[str, Any] = Field(description="Catalog name, path to a model YAML, or an inline model mapping")
    hardware: str = Field(description="Bundled profile name or path to a profile YAML")
    precision: PrecisionConfig = Field(default_factory=PrecisionConfig)
    deployment: DeploymentConfig = Field(default_factory=DeploymentConfig)
    scheduler: policies.SCHEDULERS.union() = Field(default_factory=lambda: policies.SCHEDULERS.default("continuous"))
    kv_cache: KVCacheConfig = Field(default_factory=KVCacheConfig)
    workload: WorkloadConfig
    slo: SLOConfig = Field(default_factory=SLOConfig)
    cost_model: policies.COST_MODELS.union() = Field(default_factory=lambda: policies.COST_MODELS.default("roofline"))
    pricing: str = Field("on_demand", description="Pricing model of the hardware profile")
    run: RunConfig = Field(default_factory=RunConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)
    failures: FailuresConfig = Field(default_factory=FailuresConfig)


@dataclass(frozen=True)
class Resolved:
    """A validated scenario with its references looked up and its memory planned."""

    config: Scenario
    model: ModelSpec
    hardware: HardwareProfile
    precision: Precision
    memory: MemoryPlan
    max_model_len: int
    base_dir: Path | None
    stage_memory: tuple[MemoryPlan, ...] = ()    # pipeline_parallel > 1: each stage's plan (``memory`` is the tightest)
    derived: tuple[str, ...] = ()                # deployment keys that were 'auto', now set in ``config``

    @property
    def devices_per_replica(self) -> int:
        """tensor_parallel x pipeline_parallel: expert parallelism reuses the tensor-parallel devices."""
        dep = self.config.deployment
        return dep.tensor_parallel * dep.pipeline_parallel

    @property
    def num_devices(self) -> int:
        return self.devices_per_replica * self.config.deployment.replicas

    @property
    def expert_parallelism(self) -> dict:
        """Keyword arguments of a cost-model factory beyond ``tp``: ``ep`` and ``moe_load_imbalance``."""
        dep = self.config.deployment
        return {"ep": dep.expert_parallel, "moe_load_imbalance": dep.moe_load_imbalance}


def parse_override(text: str) -> tuple[str, Any]:
    """``path=value`` with a YAML value: ``scheduler.max_num_seqs=64``, ``hardware=a100-sxm-80gb``."""
    if "=" not in text:
        raise ScenarioError(text, "an override is 'dotted.path=value'")
    path, _, raw = text.partition("=")
    return path.strip(), loads(raw, where=path.strip())


def apply_overrides(data: Any, overrides: list[str] | tuple[str, ...]) -> Any:
    for text in overrides:
        path, value = parse_override(text)
        data = set_path(data, path, value)
    return data


def load_scenario(source: str | Path | dict, overrides: list[str] | tuple[str, ...] = ()) -> Resolved:
    """A scenario file (bundled name or path) or mapping, with ``--set`` overrides -> :class:`Resolved`."""
    base_dir = None
    if isinstance(source, dict):
        data = source
    else:
        from . import resources
        path = resources.resolve("scenarios", str(source))
        if path is None:
            raise ScenarioError(str(source), "no such scenario file or bundled scenario; bundled: "
                                + ", ".join(resources.bundled_names("scenarios")))
        data = load_file(path)
        base_dir = path.parent
    if data is None:
        raise ScenarioError("(top level)", "the scenario is empty")
    if not isinstance(data, dict):
        raise ScenarioError("(top level)", f"a scenario must be a mapping, got {type(data).__name__}")
    data = apply_overrides(data, overrides)
    return resolve(validate(Scenario, data), base_dir)


def resolve(cfg: Scenario, base_dir: Path | None = None) -> Resolved:
    """Look up the model and hardware, check the combination can run, and plan memory."""
    hw = load_profile(cfg.hardware, base=base_dir)
    model = load_model(cfg.model, base=base_dir)
    p = cfg.precision
    check_precision(p.weights, p.activations, hw)
    if cfg.pricing not in hw.pricing:
        raise ScenarioError("pricing", f"unknown pricing model '{cfg.pricing}' for {hw.name}; known: "
                            + ", ".join(sorted(hw.pricing)))
    cfg = check_disaggregation(cfg)
    sched = cfg.scheduler
    max_len = sched.max_model_len or model.max_context
    if max_len > model.max_context:
        raise ScenarioError("scheduler.max_model_len", f"must be <= the model's max_context ({model.max_context}), got {max_len}")
    cfg, derived = derive_parallelism(cfg, model, hw, max_len)
    tp, pp = cfg.deployment.tensor_parallel, cfg.deployment.pipeline_parallel
    for i, event in enumerate(cfg.failures.events):
        if event.replica >= cfg.deployment.replicas:
            raise ScenarioError(f"failures.events.{i}.replica",
                                f"must be < deployment.replicas ({cfg.deployment.replicas}), got {event.replica}")
    if cfg.failures.spot is not None and cfg.failures.spot.replicas > cfg.deployment.replicas:
        raise ScenarioError("failures.spot.replicas",
                            f"must be <= deployment.replicas ({cfg.deployment.replicas}), got {cfg.failures.spot.replicas}")
    if model.num_heads % tp:
        raise ScenarioError("deployment.tensor_parallel", f"must divide the model's {model.num_heads} attention heads, got {tp}")
    if sched.max_num_batched_tokens < sched.max_num_seqs:
        raise ScenarioError("scheduler.max_num_batched_tokens",
                            f"must be >= scheduler.max_num_seqs ({sched.max_num_seqs}), got {sched.max_num_batched_tokens}")
    if getattr(sched, "chunked_prefill", True) is False and sched.max_num_batched_tokens < max_len:
        raise ScenarioError("scheduler.max_num_batched_tokens",
                            f"must be >= max_model_len ({max_len}) when chunked_prefill is false, got "
                            f"{sched.max_num_batched_tokens}; set scheduler.max_model_len or enable chunked prefill")
    if cfg.kv_cache.offload is not None and not cfg.kv_cache.enable_prefix_caching:
        raise ScenarioError("kv_cache.offload", "is a tier of the prefix cache: set kv_cache.enable_prefix_caching: true")
    if cfg.sampling.n > 1 and sched.policy != "continuous":
        raise ScenarioError("sampling.n", f"> 1 is supported by the continuous scheduler only, not '{sched.policy}'")
    if cfg.sampling.n > 1 and getattr(cfg.deployment, "disaggregation", None) is not None:
        raise ScenarioError("sampling.n", "> 1 is not modelled with deployment.disaggregation")
    check_beam_search(cfg)
    if cfg.kv_cache.enable_prefix_caching and sched.policy != "continuous":
        raise ScenarioError("kv_cache.enable_prefix_caching", f"is supported by the continuous scheduler only, not '{sched.policy}'")
    if cfg.kv_cache.enable_prefix_caching and cfg.kv_cache.layout != "paged":
        raise ScenarioError("kv_cache.enable_prefix_caching", "needs kv_cache.layout: paged (blocks are shared by content)")
    check_expert_parallel(cfg.deployment, model)
    precision = Precision.of(p.weights, p.activations, p.kv_cache)
    if pp == 1:
        plan = plan_memory(model, hw, precision, tp, cfg.kv_cache.gpu_memory_utilization,
                           sched.max_num_batched_tokens, sched.max_num_seqs, cfg.kv_cache.block_size,
                           cfg.kv_cache.layout, max_len, cfg.deployment.moe_load_imbalance)
        return Resolved(cfg, model, hw, precision, plan, max_len, base_dir, (), derived)
    check_pipeline(cfg, model)
    plan, stage_plans = plan_pipeline_memory(
        model, hw, precision, tp, pp, cfg.kv_cache.gpu_memory_utilization, sched.max_num_batched_tokens,
        sched.max_num_seqs, cfg.kv_cache.block_size, cfg.kv_cache.layout, max_len, cfg.deployment.moe_load_imbalance)
    if plan.num_blocks < pp:
        raise ScenarioError("kv_cache.gpu_memory_utilization",
                            f"the KV cache of {plan.num_blocks} blocks cannot be split over {pp} pipeline virtual "
                            f"engines; give it more memory or lower deployment.pipeline_parallel")
    return Resolved(cfg, model, hw, precision, plan, max_len, base_dir, stage_plans, derived)


def check_pipeline(cfg: Scenario, model: ModelSpec) -> None:
    """Pipeline parallelism runs the continuous scheduler with KV on the device only, without failures."""
    pp = cfg.deployment.pipeline_parallel
    if pp > model.num_layers:
        raise ScenarioError("deployment.pipeline_parallel", f"must be <= the model's {model.num_layers} layers, got {pp}")
    if cfg.scheduler.policy != "continuous":
        raise ScenarioError("deployment.pipeline_parallel",
                            f"> 1 needs scheduler.policy: continuous, not '{cfg.scheduler.policy}'")
    if cfg.deployment.disaggregation is not None:
        raise ScenarioError("deployment.pipeline_parallel", "> 1 is not modelled with deployment.disaggregation")
    if cfg.failures.enabled:
        raise ScenarioError("failures", "are not modelled with deployment.pipeline_parallel > 1 yet")
    if getattr(cfg.scheduler, "preemption", "recompute") == "swap":
        raise ScenarioError("scheduler.preemption", "swap is not modelled with deployment.pipeline_parallel > 1 yet")
    if cfg.kv_cache.offload is not None:
        raise ScenarioError("kv_cache.offload", "is not modelled with deployment.pipeline_parallel > 1 yet")
    if cfg.sampling.beam_width > 1:
        raise ScenarioError("sampling.beam_width", "> 1 is not modelled with deployment.pipeline_parallel > 1 yet")


def derive_parallelism(cfg: Scenario, model: ModelSpec, hw: HardwareProfile, max_len: int) -> tuple[Scenario, tuple[str, ...]]:
    """Replace ``auto`` in ``deployment.tensor_parallel`` / ``pipeline_parallel`` by the split with the
    fewest devices per replica (ties: the smaller tensor_parallel) whose every stage holds its weights,
    its workspace and the KV of ``max_num_seqs x max_model_len`` tokens: a full batch never preempts.
    ``tensor_parallel: auto`` tries the divisors of the model's attention heads. Returns the scenario
    with integers and the keys that were derived."""
    dep, sched = cfg.deployment, cfg.scheduler
    derived = tuple(k for k in ("tensor_parallel", "pipeline_parallel") if getattr(dep, k) == "auto")
    if not derived:
        return cfg, ()
    p = cfg.precision
    precision = Precision.of(p.weights, p.activations, p.kv_cache)
    tps = [dep.tensor_parallel] if dep.tensor_parallel != "auto" else [
        d for d in range(1, model.num_heads + 1) if model.num_heads % d == 0]
    pps = [dep.pipeline_parallel] if dep.pipeline_parallel != "auto" else range(1, model.num_layers + 1)
    kv_tokens = sched.max_num_seqs * max_len
    best = None
    for tp in tps:
        for pp in pps:
            if best is not None and tp * pp >= best[0] * best[1]:
                break
            if stage_fits(model, hw, precision, tp, pp, cfg.kv_cache.gpu_memory_utilization,
                          sched.max_num_batched_tokens, sched.max_num_seqs, kv_tokens, dep.moe_load_imbalance):
                best = (tp, pp)
                break
    if best is None:
        fixed = [k for k in ("tensor_parallel", "pipeline_parallel") if k not in derived]
        hint = "".join(f", or raise deployment.{k} (or make it auto)" for k in fixed)
        raise ScenarioError("deployment." + derived[-1],
                            f"auto: no split of {model.name} over {hw.name} devices holds its weights and the KV "
                            f"of scheduler.max_num_seqs x max_model_len = {sched.max_num_seqs} x {max_len} = "
                            f"{kv_tokens:,} tokens on every stage; lower those{hint}")
    update = dict(zip(("tensor_parallel", "pipeline_parallel"), best))
    return cfg.model_copy(update={"deployment": dep.model_copy(update=update)}), derived


def check_beam_search(cfg: Scenario) -> None:
    s = cfg.sampling
    if s.beam_width == 1:
        if s.beam_reshuffle != 1.0:
            raise ScenarioError("sampling.beam_reshuffle", "applies to beam search only: set sampling.beam_width > 1")
        return
    if s.n > 1:
        raise ScenarioError("sampling.beam_width", f"> 1 returns the best beam and cannot be combined with sampling.n > 1 (got n = {s.n})")
    if cfg.scheduler.policy != "continuous":
        raise ScenarioError("sampling.beam_width", f"> 1 is supported by the continuous scheduler only, not '{cfg.scheduler.policy}'")
    if getattr(cfg.deployment, "disaggregation", None) is not None:
        raise ScenarioError("sampling.beam_width", "> 1 is not modelled with deployment.disaggregation")


def check_disaggregation(cfg: Scenario) -> Scenario:
    """With ``deployment.disaggregation`` the replicas are the two pools: ``deployment.replicas`` is left
    unset (filled in with their sum) or equals it. Failures and request-level batching are not supported
    with it yet."""
    dep = cfg.deployment
    dis = dep.disaggregation
    if dis is None:
        return cfg
    total = dis.prefill_replicas + dis.decode_replicas
    if "replicas" in dep.model_fields_set and dep.replicas != total:
        raise ScenarioError("deployment.replicas",
                            f"must be unset or prefill_replicas + decode_replicas ({total}) with "
                            f"deployment.disaggregation, got {dep.replicas}")
    if cfg.failures.enabled:
        raise ScenarioError("failures", "are not supported with deployment.disaggregation yet")
    if cfg.scheduler.policy not in ("continuous", "speculative"):
        raise ScenarioError("deployment.disaggregation",
                            f"needs an iteration-level scheduler (continuous or speculative), not '{cfg.scheduler.policy}'")
    return cfg.model_copy(update={"deployment": dep.model_copy(update={"replicas": total})})


def check_expert_parallel(dep: DeploymentConfig, model: ModelSpec) -> None:
    """Expert parallelism needs an MoE model whose experts split evenly, over the tensor-parallel devices."""
    ep, tp = dep.expert_parallel, dep.tensor_parallel
    if ep > 1 and model.num_experts == 1:
        raise ScenarioError("deployment.expert_parallel",
                            f"needs a mixture-of-experts model; {model.name} is dense (num_experts: 1), got {ep}")
    if model.num_experts % ep:
        raise ScenarioError("deployment.expert_parallel",
                            f"must divide the model's {model.num_experts} experts, got {ep}")
    if ep > 1 and ep != tp:
        raise ScenarioError("deployment.expert_parallel",
                            f"must be 1 or deployment.tensor_parallel ({tp}): expert parallelism spreads the "
                            f"experts over the replica's tensor-parallel devices, got {ep}")
    if dep.moe_load_imbalance != 1.0 and ep == 1:
        raise ScenarioError("deployment.moe_load_imbalance",
                            "applies to expert parallelism only: set deployment.expert_parallel > 1")
