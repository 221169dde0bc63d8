"""Speculative decoding (scheduler policy ``speculative``): the acceptance law, exact draft-then-verify
timelines, and where speculation pays off (low batch) and where it does not (large compute-bound batches)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from simserve.cost.batch import BatchShape
from simserve.cost.step import RooflineStep
from simserve.engine.request import COMPLETED
from simserve.errors import ScenarioError
from simserve.model import load_model

from conftest import run_tiny, tiny_resolved, timeline


def spec_sched(k=2, alpha=0.7, **kw):
    sched = {"policy": "speculative", "max_num_seqs": 4, "max_num_batched_tokens": 8,
             "num_speculative_tokens": k, "acceptance_rate": alpha}
    if "draft_model" not in kw:
        sched["draft_cost_fraction"] = 0.5
    sched.update(kw)
    return sched


def itl_ms(rec):
    return sorted(round(x * 1e3, 3) for x in np.repeat(rec.itl_s, rec.itl_counts))


def truncated_geometric(alphas):
    """P(a = j) for j = 0..k: the first j drafts accepted, then a rejection (none after the k-th)."""
    k = len(alphas)
    reach = np.concatenate([[1.0], np.cumprod(alphas)])          # P(a >= j)
    return np.array([reach[j] * (1 - alphas[j]) for j in range(k)] + [reach[k]])


@pytest.mark.parametrize("alpha", [0.6, [0.9, 0.7, 0.5, 0.3]])
def test_accepted_counts_follow_the_truncated_geometric_law(alpha):
    k = 4
    rows = [(0, 8, 200)] * 40
    rec = run_tiny(rows, scheduler=spec_sched(k, alpha, max_num_seqs=40, max_num_batched_tokens=512))
    hist = rec.replicas[0].scheduler.accepted_hist
    n = hist.sum()
    alphas = np.array(alpha if isinstance(alpha, list) else [alpha] * k)
    p = truncated_geometric(alphas)
    assert n > 1000
    chi2, pvalue = stats.chisquare(hist, n * p)
    assert pvalue > 1e-3, (hist, n * p, chi2)
    # mean tokens emitted per verification: (1 - alpha^(k+1)) / (1 - alpha) for a single alpha
    tokens = np.arange(k + 1) + 1
    mean = (hist * tokens).sum() / n
    expected = (p * tokens).sum()
    if not isinstance(alpha, list):
        assert expected == pytest.approx((1 - alpha ** (k + 1)) / (1 - alpha))
    sd = np.sqrt((p * tokens ** 2).sum() - expected ** 2)
    assert abs(mean - expected) < 4 * sd / np.sqrt(n)


def test_alpha_one_accepts_every_draft_exact():
    # constant 10 ms target step, draft head at 0.5 of it (5 ms when any sequence drafts), k = 2, budget 8.
    # A: prompt 4, output 6; B: prompt 2, output 3.
    # step1 0-10: prefill A (4) and B (2), no drafts: both first tokens at 10.
    # step2 10-25: A drafts 2 (q=3 over c=4), B drafts min(2, 3-1-1)=1 (q=2 over c=2); +5 ms drafting.
    #   All accepted: A emits 3 (g=4, c=7), B emits 2 (g=3): B done at 25.
    # step3 25-40: A drafts min(2, 6-4-1)=1 (q=2 over c=7), emits 2: g=6, done at 40.
    rec = run_tiny([(0, 4, 6), (0, 2, 3)], scheduler=spec_sched(2, 1.0))
    assert timeline(rec) == {0: (COMPLETED, 10.0, 40.0), 1: (COMPLETED, 10.0, 25.0)}
    assert itl_ms(rec) == [15.0, 15.0, 15.0]          # one chunk per step: 3 tokens count as one ITL
    st = rec.replicas[0].stats
    assert st.iterations == 3
    assert st.tokens == 6 + (3 + 2) + 2
    assert st.busy_s == pytest.approx(0.040)
    assert rec.replicas[0].scheduler.kv.num_used == 0


def test_alpha_zero_rejects_every_draft_exact():
    # as above, every draft rejected: each step emits one token per sequence.
    # step1 0-10: prefills, first tokens at 10.
    # step2 10-25: A q=3 (k=2), B q=2 (k=1), +5 ms: A g=2 c=5, B g=2 c=3.
    # step3 25-40: A q=3 (k=2); B has 1 token left, so k=0: plain decode q=1; +5 ms (A drafts):
    #   A g=3, B g=3 done at 40.
    # step4 40-55: A k=2 -> g=4. step5 55-70: A k=min(2, 6-4-1)=1 -> g=5.
    # step6 70-80: A has 1 token left: plain decode, no drafting, 10 ms -> g=6 done at 80.
    rec = run_tiny([(0, 4, 6), (0, 2, 3)], scheduler=spec_sched(2, 0.0))
    assert timeline(rec) == {0: (COMPLETED, 10.0, 80.0), 1: (COMPLETED, 10.0, 40.0)}
    assert itl_ms(rec) == [10.0] + [15.0] * 6
    st = rec.replicas[0].stats
    assert st.iterations == 6
    assert st.tokens == 6 + (3 + 2) + (3 + 1) + 3 + 2 + 1


@pytest.mark.parametrize("alpha, blocks_per_step", [
    # 2-token blocks; A: prompt 4, output 6, k = 2. KV slots held during each step, c + k + 1:
    # alpha 1: prefill 4 | c=4, k=2: 7 | c=7, k=1: 9                  -> 2, 4, 5 blocks
    (1.0, [2, 4, 5]),
    # alpha 0: prefill 4 | c=4: 7 | c=5: 8 | c=6: 9 | c=7, k=1: 9 | c=8, k=0: 9 -> rejected slots are reused
    (0.0, [2, 4, 4, 5, 5, 5]),
])
def test_lookahead_kv_is_allocated_before_the_step(alpha, blocks_per_step):
    rec = run_tiny([(0, 4, 6)], num_blocks=5, block_size=2, scheduler=spec_sched(2, alpha))
    st = rec.replicas[0].stats
    assert st.iterations == len(blocks_per_step)
    assert st.sum_kv_blocks == sum(blocks_per_step)
    assert st.peak_kv_blocks == max(blocks_per_step)        # prompt + output - 1 = 9 slots at most


def test_draft_model_cost_is_k_decode_passes_on_the_same_devices():
    # Llama-3.1-70B on two H100s drafted by Llama-3.1-8B, k = 2, alpha = 1, one request: prompt 100,
    # output 4. step1: target prefill + draft prefill. step2: target verifies 3 tokens over 100 cached,
    # the draft model decodes over 100 then 101 cached tokens; 3 tokens emitted, done.
    sched = spec_sched(2, 1.0, draft_model="llama-3.1-8b", max_num_batched_tokens=256)
    rec = run_tiny([(0, 100, 4)], scheduler=sched, model="llama-3.1-70b", deployment__tensor_parallel=2,
                   cost_model={"kind": "roofline"})
    r = tiny_resolved(model="llama-3.1-70b", deployment__tensor_parallel=2)
    target = RooflineStep(r.model, r.hardware, r.precision, 2)
    draft = RooflineStep(load_model("llama-3.1-8b"), r.hardware, r.precision, 2)
    step1 = target(BatchShape.from_pairs([(100, 0)])).time_s + draft(BatchShape.from_pairs([(100, 0)])).time_s
    step2 = (target(BatchShape.from_pairs([(3, 100)], num_logits=3)).time_s
             + draft(BatchShape.from_pairs([(1, 100)])).time_s + draft(BatchShape.from_pairs([(1, 101)])).time_s)
    q = rec.requests[0]
    assert q.first_token_s == pytest.approx(step1, rel=1e-12)
    assert q.finish_s == pytest.approx(step1 + step2, rel=1e-12)


def _tpot_s(rec):
    return np.mean([(q.finish_s - q.first_token_s) / (q.output_tokens - 1) for q in rec.requests])


def _speedup(alpha, heavy, cost):
    """Mean TPOT of continuous batching over speculative decoding (draft head at 5% of a decode step,
    k = 4), Llama-3.1-8B on one H100: 16 requests one after another (batch 1) or 256 at once."""
    rows, users = ([(0, 32, 129)] * 256, None) if heavy else ([(0, 32, 129)] * 16, 1)
    cost_model = {"kind": "roofline"} if cost == "roofline" else {"kind": "constant", "step_s": 0.01}
    base = {"max_num_seqs": 256, "max_num_batched_tokens": 8192}
    cont = run_tiny(rows, users=users, scheduler={"policy": "continuous", **base}, cost_model=cost_model)
    spec = run_tiny(rows, users=users, cost_model=cost_model, scheduler={
        "policy": "speculative", **base, "num_speculative_tokens": 4, "acceptance_rate": alpha,
        "draft_cost_fraction": 0.05})
    return _tpot_s(cont) / _tpot_s(spec)


def test_speedup_at_batch_one_rises_with_alpha():
    ups = [_speedup(a, heavy=False, cost="roofline") for a in (0.0, 0.3, 0.6, 0.9)]
    assert ups == sorted(ups)
    assert ups[0] < 1.0            # nothing accepted: the drafting and the wider verify pass are pure cost
    assert ups[-1] > 3.0


def test_speedup_falls_under_heavy_load():
    # 256 sequences verifying 5 tokens each is 1,280 tokens per step: compute-bound, so the verify pass
    # costs about 5 decode steps, and the rejected drafts are wasted compute
    light, heavy = _speedup(0.6, False, "roofline"), _speedup(0.6, True, "roofline")
    assert light > 1.8
    assert heavy < 1.0
    assert heavy < 0.5 * light


def test_without_batch_dependent_cost_the_fall_disappears():
    # counterfactual: the same workloads with a constant step cost. Speculation then costs the same at
    # any batch size, so the speed-up no longer depends on the load: the fall above comes from the model.
    light, heavy = _speedup(0.6, False, "constant"), _speedup(0.6, True, "constant")
    assert light > 1.8
    assert heavy == pytest.approx(light, rel=0.1)


def test_the_acceptance_draws_follow_the_scenario_seed():
    rows = [(0, 4, 40)] * 4
    a = timeline(run_tiny(rows, scheduler=spec_sched(3, 0.5)))
    b = timeline(run_tiny(rows, scheduler=spec_sched(3, 0.5)))
    c = timeline(run_tiny(rows, scheduler=spec_sched(3, 0.5), seed=1))
    assert a == b
    assert a != c


@pytest.mark.parametrize("seed", range(8))
def test_every_request_gets_exactly_its_tokens_under_preemption(seed):
    rng = np.random.default_rng(seed)
    rows = sorted((float(rng.uniform(0, 0.2)), int(rng.integers(1, 30)), int(rng.integers(1, 40)))
                  for _ in range(20))
    preemption = "swap" if seed % 2 else "recompute"
    rec = run_tiny(rows, num_blocks=12, block_size=4, seed=seed, deployment__replicas=1 + seed % 2,
                   scheduler=spec_sched(3, 0.7, max_num_batched_tokens=32, preemption=preemption))
    for q in rec.requests:
        if q.outcome == COMPLETED:
            assert q.num_generated == q.output_tokens
            assert q.first_token_s <= q.finish_s
    assert any(q.outcome == COMPLETED for q in rec.requests)
    for rep in rec.replicas:
        assert rep.scheduler.kv.num_used == 0


@pytest.mark.parametrize("sched, where", [
    ({"draft_cost_fraction": 0.1, "draft_model": "llama-3.1-8b"}, "exactly one"),
    ({}, "exactly one"),
    ({"draft_cost_fraction": 0.1, "acceptance_rate": [0.5, 0.5]}, "one value per draft position"),
    ({"draft_cost_fraction": 0.1, "acceptance_rate": 1.5}, "[0, 1]"),
    ({"draft_model": "no-such-model"}, "unknown draft model"),
])
def test_bad_speculative_params_are_refused(sched, where):
    with pytest.raises(ScenarioError, match="scheduler") as err:
        tiny_resolved(scheduler={"policy": "speculative", "num_speculative_tokens": 3, **sched})
    assert where in str(err.value)
