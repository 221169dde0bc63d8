"""Print the Mixtral-8x7B TP vs TP+EP table of docs/policies.md (calibrated H100 profile, bf16, one step).

    python benchmarks/moe_ep_table.py
"""
from simserve.cost.batch import BatchShape
from simserve.cost.step import Precision, RooflineStep
from simserve.hardware import load_profile
from simserve.model import load_model

NETWORK_OPS = ("attn_allreduce", "ffn_allreduce", "moe_dispatch", "moe_combine")

model, hw, bf16 = load_model("mixtral-8x7b"), load_profile("h100-sxm-80gb"), Precision.of("bf16", "bf16", "bf16")
print("| devices | batch | TP only | TP + EP | expert kernel per layer (TP / EP) | network per layer (TP / EP) |")
print("|---|---|---|---|---|---|")
for devices in (2, 8):
    for batch in (1, 64):
        b = BatchShape.from_pairs([(1, 1000)] * batch)     # decode with 1,000 cached tokens per sequence
        cells = []
        for ep in (1, devices):
            step = RooflineStep(model, hw, bf16, devices, ep=ep)
            layer = step.layer_ops(b)
            experts = dict(layer)["moe_experts"].time_s
            network = sum(op.time_s for name, op in layer if name in NETWORK_OPS)
            cells.append((step.step(b).time_s * 1e3, experts * 1e6, network * 1e6))
        (tp, tp_exp, tp_net), (ep_, ep_exp, ep_net) = cells
        print(f"| {devices} | {batch} | {tp:.2f} ms | {ep_:.2f} ms | {tp_exp:.0f} / {ep_exp:.0f} us | "
              f"{tp_net:.1f} / {ep_net:.1f} us |")
prefill = BatchShape.from_pairs([(4096, 0)])
with_ep, without = (RooflineStep(model, hw, bf16, 8, ep=ep).step(prefill).time_s * 1e3 for ep in (8, 1))
print(f"prefill of 4,096 tokens on 8 devices: {with_ep:.1f} ms with EP, {without:.1f} ms without")
