"""The bundled hardware profiles and model catalog: they load, every number has a source, derived sizes
match the published ones, and the docs tables agree with the YAML."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from simserve import resources
from simserve.config.yamlio import load_file
from simserve.hardware import load_profile
from simserve.model import catalog_names, load_model

ROOT = Path(__file__).resolve().parents[1]
PROFILE_DIR = resources.data_dir("hardware_profiles")
MODEL_DIR = resources.catalog_dir()
PROFILES = resources.bundled_names("hardware_profiles")
MODELS = catalog_names()
VIDUR_COMPUTE = Path("/work/shared/calibration/vidur/compute")

# Published total parameter counts, for the derived `num_params` check (within 3%).
PUBLISHED_PARAMS = {
    "llama-2-7b": 6.74e9,        # HF model page, safetensors parameter count (6.74B)
    "llama-2-13b": 13.0e9,       # HF model page, safetensors parameter count (13.0B)
    "llama-2-70b": 68.98e9,      # HF model page, safetensors parameter count (68,976,648,192)
    "llama-3-8b": 8.03e9,        # HF model page, safetensors parameter count (8.03B)
    "llama-3-70b": 70.6e9,       # HF model page, safetensors parameter count (70.6B)
    "llama-3.1-8b": 8.03e9,      # HF model page, safetensors parameter count (8.03B)
    "llama-3.1-70b": 70.6e9,     # HF model page, safetensors parameter count (70.6B)
    "llama-3.1-405b": 405.9e9,   # HF model page, safetensors parameter count (405.9B, 8 KV heads)
    "llama-3.3-70b": 70.6e9,     # HF model page, safetensors parameter count (70.6B)
    "mistral-7b": 7.24e9,        # HF model page, safetensors parameter count (7.24B)
    "mixtral-8x7b": 46.7e9,      # Mistral AI Mixtral announcement / model card: 46.7B total, 12.9B active
    "opt-13b": 13.0e9,           # OPT paper (Zhang et al. 2022) Table 1: 13B
    "gpt-j-6b": 6.053e9,         # EleutherAI/gpt-j-6b model card: n_parameters 6,053,381,344
    "codellama-34b": 33.7e9,     # HF model page, safetensors parameter count (33.7B)
    "internlm-20b": 20.0e9,      # internlm/internlm-20b model card: 20B
    "qwen-72b": 72.0e9,          # Qwen/Qwen-72B model card: 72B
    "phi-2": 2.78e9,             # HF safetensors count 2.78B (the model card rounds to 2.7B)
}
PUBLISHED_ACTIVE_PARAMS = {"mixtral-8x7b": 12.9e9}  # Mistral AI: 12.9B parameters used per token

# microsoft/vidur profiling folders (org/model) whose shape columns we cross-check against.
VIDUR_MODELS = {
    "meta-llama/Llama-2-7b-hf": "llama-2-7b",
    "meta-llama/Llama-2-70b-hf": "llama-2-70b",
    "meta-llama/Meta-Llama-3-8B": "llama-3-8b",
    "meta-llama/Meta-Llama-3-70B": "llama-3-70b",
    "codellama/CodeLlama-34b-Instruct-hf": "codellama-34b",
    "internlm/internlm-20b": "internlm-20b",
    "Qwen/Qwen-72B": "qwen-72b",
    "microsoft/phi-2": "phi-2",
}

EXPECTED_PROFILES = {
    "h100-sxm-80gb", "a100-sxm-40gb", "a100-sxm-80gb", "a40-48gb", "h200-sxm-141gb", "b200-180gb",
    "groq-lpu", "cerebras-cs3",
}
EXPECTED_MODELS = set(PUBLISHED_PARAMS)


def _raw(folder: Path, name: str) -> dict:
    return load_file(folder / f"{name}.yaml")


def _numeric_leaves(node, path=()):
    """Dotted paths of every int/float leaf (bools are flags, not numbers)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _numeric_leaves(value, path + (str(key),))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _numeric_leaves(value, path + (str(i),))
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield ".".join(path)


def _has_path(data: dict, dotted: str) -> bool:
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_expected_files_are_bundled():
    assert EXPECTED_PROFILES <= set(PROFILES)
    assert EXPECTED_MODELS <= set(MODELS)


# --- hardware profiles ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", PROFILES)
def test_profile_loads_and_stem_is_name(name):
    profile = load_profile(name)
    assert profile.name == name
    assert _raw(PROFILE_DIR, name)["name"] == name


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_number_has_a_source(name):
    data = _raw(PROFILE_DIR, name)
    sources = data["sources"]
    missing = []
    for leaf in _numeric_leaves({k: v for k, v in data.items() if k != "sources"}):
        parts = leaf.split(".")
        prefixes = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
        if not prefixes & set(sources):
            missing.append(leaf)
    assert not missing, f"{name}: numbers without a source: {missing}"


@pytest.mark.parametrize("name", PROFILES)
def test_profile_sources_point_at_real_keys_and_say_something(name):
    data = _raw(PROFILE_DIR, name)
    for key, text in data["sources"].items():
        assert _has_path(data, key), f"{name}: source for '{key}', which is not in the profile"
        assert isinstance(text, str) and len(text.strip()) > 5, f"{name}: empty source for '{key}'"


@pytest.mark.parametrize("name", PROFILES)
def test_profile_shape(name):
    profile = load_profile(name)
    assert (profile.memory is None) == (profile.kind == "sram_accelerator")
    if profile.kind == "sram_accelerator":
        assert profile.sram is not None
    assert re.fullmatch(r"\d{4}-\d{2}", profile.pricing["on_demand"].date)
    assert profile.power.idle_w < profile.power.busy_w
    assert profile.interconnect.inter_node.bandwidth_gb_s <= profile.interconnect.intra_node.bandwidth_gb_s
    # fitted only where kernel timings were measured (simserve/calibration/data); the rest carry them over
    assert profile.calibration.calibrated is (name in ("a100-sxm-80gb", "h100-sxm-80gb", "a40-48gb"))


def test_low_precision_dtypes_only_where_supported():
    with_fp8 = {n for n in PROFILES if "fp8" in load_profile(n).peak_tflops}
    with_fp4 = {n for n in PROFILES if "fp4" in load_profile(n).peak_tflops}
    # FP8 tensor cores arrived with Hopper (and Ada); FP4 with Blackwell. Ampere (A100, A40), the Groq LPU
    # and the WSE-3 have neither.
    assert with_fp8 == {"h100-sxm-80gb", "h200-sxm-141gb", "b200-180gb"}
    assert with_fp4 == {"b200-180gb"}


def test_sram_chips():
    groq, cs3 = load_profile("groq-lpu"), load_profile("cerebras-cs3")
    assert groq.sram.capacity_mb == 230 and groq.sram.bandwidth_tb_s == 80
    assert groq.interconnect.devices_per_node == 8
    assert cs3.sram.capacity_mb == 44_000 and cs3.sram.bandwidth_tb_s == 21_000
    assert groq.weight_memory_bytes == 230e6 and cs3.weight_bandwidth_bytes_s == 21e15


def test_b200_memory_note_mentions_the_192gb_disagreement():
    data = _raw(PROFILE_DIR, "b200-180gb")
    assert data["memory"]["capacity_gb"] == 180
    assert "192" in data["sources"]["memory.capacity_gb"]


def test_llama2_70b_fp16_weights_do_not_fit_one_a100_80gb():
    weights_bytes = 2 * load_model("llama-2-70b").num_params
    capacity = load_profile("a100-sxm-80gb").weight_memory_bytes
    assert weights_bytes == pytest.approx(138e9, rel=0.01)
    assert weights_bytes > capacity


# --- model catalog ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_model_loads_and_stem_is_name(name):
    model = load_model(name)
    assert model.name == name
    assert _raw(MODEL_DIR, name)["name"] == name
    assert model.source.startswith("https://huggingface.co/") and model.source.endswith("config.json")
    assert model.hf_id and model.hf_id in model.source


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_derived_params_match_published(name):
    assert load_model(name).num_params == pytest.approx(PUBLISHED_PARAMS[name], rel=0.03)


@pytest.mark.parametrize("name", sorted(PUBLISHED_ACTIVE_PARAMS))
def test_derived_active_params_match_published(name):
    assert load_model(name).active_params == pytest.approx(PUBLISHED_ACTIVE_PARAMS[name], rel=0.03)


def test_every_catalog_model_has_a_published_size():
    assert set(MODELS) <= set(PUBLISHED_PARAMS)


def test_architecture_flags():
    opt, mistral, mixtral = load_model("opt-13b"), load_model("mistral-7b"), load_model("mixtral-8x7b")
    assert (opt.ffn_gated, opt.norm, opt.tied_embeddings, opt.attention_bias, opt.max_context) == (
        False, "layernorm", True, True, 2048)
    assert mistral.sliding_window == 4096
    assert (mixtral.num_experts, mixtral.experts_per_token, mixtral.sliding_window) == (8, 2, None)


@pytest.mark.skipif(not VIDUR_COMPUTE.is_dir(), reason="shared calibration data not available")
@pytest.mark.parametrize("folder", sorted(VIDUR_MODELS))
def test_shapes_agree_with_vidur_profiling(folder):
    model = load_model(VIDUR_MODELS[folder])
    files = sorted(VIDUR_COMPUTE.glob(f"*/{folder}/mlp.csv"))
    if not files:
        pytest.skip(f"no Vidur profile for {folder}")
    for path in files:
        with path.open() as fh:
            row = next(csv.DictReader(fh))
        assert int(row["n_head"]) == model.num_heads, path
        assert int(row["n_kv_head"]) == model.num_kv_heads, path
        assert int(row["n_embd"]) == model.hidden_size, path
        assert int(row["n_expanded_embd"]) == model.ffn_size, path
        assert (row["use_gated_mlp"] == "True") == model.ffn_gated, path
        # Vidur pads Llama-2's 32000-token vocabulary to 32768; otherwise they agree.
        assert model.vocab_size <= int(row["vocab_size"]) <= model.vocab_size * 1.03, path


# --- docs ------------------------------------------------------------------------------------------

def _table_rows(doc: Path) -> dict[str, dict[str, str]]:
    """Rows of the first Markdown table whose first column is `name`, keyed by the name cell."""
    rows: dict[str, dict[str, str]] = {}
    header = None
    for line in doc.read_text().splitlines():
        if not line.startswith("|"):
            if header is not None and rows:
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            if cells[0] == "name":
                header = cells
            continue
        if set(cells[0]) <= set("-: "):
            continue
        rows[cells[0].strip("`")] = dict(zip(header, cells))
    return rows


def _num(cell: str) -> float | None:
    cell = cell.replace(",", "").strip()
    return None if cell in ("", "-", "—") else float(cell)


def test_docs_mention_every_name():
    hardware, models = (ROOT / "docs" / "hardware.md").read_text(), (ROOT / "docs" / "models.md").read_text()
    assert [n for n in PROFILES if n not in hardware] == []
    assert [n for n in MODELS if n not in models] == []


def test_hardware_doc_numbers_equal_the_yaml():
    rows = _table_rows(ROOT / "docs" / "hardware.md")
    assert set(rows) == set(PROFILES)
    for name, row in rows.items():
        p = load_profile(name)
        expect = {
            "fp16": p.peak_tflops.get("fp16"), "bf16": p.peak_tflops.get("bf16"),
            "fp8": p.peak_tflops.get("fp8"), "int8": p.peak_tflops.get("int8"),
            "fp4": p.peak_tflops.get("fp4"),
            "memory GB": p.memory.capacity_gb if p.memory else None,
            "memory GB/s": p.memory.bandwidth_gb_s if p.memory else None,
            "SRAM MB": p.sram.capacity_mb if p.sram else None,
            "SRAM TB/s": p.sram.bandwidth_tb_s if p.sram else None,
            "per node": p.interconnect.devices_per_node,
            "intra GB/s": p.interconnect.intra_node.bandwidth_gb_s,
            "inter GB/s": p.interconnect.inter_node.bandwidth_gb_s,
            "host GB/s": p.host_link.bandwidth_gb_s,
            "idle W": p.power.idle_w, "busy W": p.power.busy_w,
            "USD/h": p.pricing["on_demand"].usd_per_device_hour,
        }
        for column, value in expect.items():
            assert _num(row[column]) == value, f"docs/hardware.md {name} {column}: {row[column]} != {value}"
        assert row["price date"] == p.pricing["on_demand"].date
        assert row["calibrated"] == ("yes" if p.calibration.calibrated else "no")


def test_models_doc_numbers_equal_the_yaml():
    rows = _table_rows(ROOT / "docs" / "models.md")
    assert set(rows) == set(MODELS)
    for name, row in rows.items():
        m = load_model(name)
        expect = {
            "layers": m.num_layers, "hidden": m.hidden_size, "heads": m.num_heads, "kv heads": m.num_kv_heads,
            "head dim": m.head_size, "ffn": m.ffn_size, "experts": m.num_experts, "top-k": m.experts_per_token,
            "vocab": m.vocab_size, "context": m.max_context, "window": m.sliding_window,
        }
        for column, value in expect.items():
            assert _num(row[column]) == value, f"docs/models.md {name} {column}: {row[column]} != {value}"
        assert row["gated"] == ("yes" if m.ffn_gated else "no")
        assert _num(row["params (B)"]) == round(m.num_params / 1e9, 2)
        assert row["hf_id"].strip("`") == m.hf_id
