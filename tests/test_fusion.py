import pytest
import torch
from torch import nn

from study import fusion
from study.fusion.merge import fuse, is_bn_buffer, recompute_bn_statistics
from study.models import build_model

torch.set_num_threads(1)


def make_experts(n: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """A tiny-model base and n experts: every parameter and BN buffer perturbed differently."""
    torch.manual_seed(seed)
    base = build_model("tiny", 10).state_dict()
    experts = []
    for i in range(n):
        sd = {}
        for k, v in base.items():
            if k.endswith("num_batches_tracked"):
                sd[k] = torch.tensor(100 * (i + 1))
            elif k.endswith("running_var"):
                sd[k] = torch.rand_like(v) + 0.5
            else:
                sd[k] = v + 0.1 * torch.randn_like(v)
        experts.append(sd)
    return base, experts


def params(sd: dict) -> dict:
    return {k: v for k, v in sd.items() if not is_bn_buffer(k)}


def assert_sd_close(a: dict, b: dict, **tol) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        torch.testing.assert_close(a[k], b[k], msg=k, **tol)


# --- structure ---------------------------------------------------------------------------------


def test_is_bn_buffer():
    assert is_bn_buffer("stage1.0.bn1.running_mean")
    assert is_bn_buffer("bn1.running_var")
    assert is_bn_buffer("stage2.0.shortcut.1.num_batches_tracked")
    assert not is_bn_buffer("bn1.weight")
    assert not is_bn_buffer("bn1.bias")
    assert not is_bn_buffer("my_running_mean_head.weight")


def test_one_hot_weights_return_that_expert_exactly():
    _, experts = make_experts(3)
    out = fuse(experts, "weighted", weights=[0.0, 1.0, 0.0])
    for k, v in params(out).items():
        assert torch.equal(v, experts[1][k]), k
    # BN buffers still come from expert 0 (copy_first)
    assert torch.equal(out["bn1.running_mean"], experts[0]["bn1.running_mean"])


@pytest.mark.parametrize(
    "method,kwargs",
    [
        ("uniform", {}),
        ("weighted", {"weights": [0.2, 0.3, 0.5]}),
        ("task_arithmetic", {}),  # default lambdas 1/3 each: the mean of identical experts
        ("ties", {"density": 1.0, "lambdas": 1.0}),  # tau_i all equal: the disjoint mean is tau
        ("dare", {"drop_rate": 0.0}),
    ],
)
def test_identical_experts_return_themselves(method, kwargs):
    base, (expert,) = make_experts(1)
    out = fuse([expert, expert, expert], method, base=base, **kwargs)
    assert_sd_close(out, expert, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "method,kwargs",
    [("ties", {"density": 0.2}), ("dare", {"drop_rate": 0.9}), ("task_arithmetic", {})],
)
def test_zero_task_vectors_return_base(method, kwargs):
    base, _ = make_experts(0)
    out = fuse([base, base], method, base=base, **kwargs)
    assert_sd_close(params(out), params(base), rtol=0, atol=0)


def test_task_arithmetic_lambda_zero_returns_base_and_lambdas_apply():
    base, experts = make_experts(2)
    out = fuse(experts, "task_arithmetic", base=base, lambdas=0.0)
    for k, v in params(out).items():
        assert torch.equal(v, base[k]), k
    out = fuse(experts, "task_arithmetic", base=base, lambdas=[0.5, 2.0])
    k = "fc.weight"
    expected = base[k] + 0.5 * (experts[0][k] - base[k]) + 2.0 * (experts[1][k] - base[k])
    torch.testing.assert_close(out[k], expected)


def test_uniform_is_the_mean_and_equals_equal_weights():
    _, experts = make_experts(4)
    uni = fuse(experts, "uniform")
    for k, v in params(uni).items():
        torch.testing.assert_close(v, sum(e[k] for e in experts) / 4)
    assert_sd_close(uni, fuse(experts, "weighted", weights=[0.25] * 4))


def test_bn_copy_first_and_average():
    _, experts = make_experts(3)
    buffers = [k for k in experts[0] if is_bn_buffer(k)]
    assert len(buffers) == 3 * 9  # stem + 2 per block x 3 + 2 projection shortcuts, 3 buffers each
    for mode in ("copy_first", "recompute"):
        out = fuse(experts, "uniform", bn=mode)
        for k in buffers:
            assert torch.equal(out[k], experts[0][k]), (mode, k)
    out = fuse(experts, "uniform", bn="average")
    for k in buffers:
        if k.endswith("num_batches_tracked"):
            assert out[k].dtype == torch.int64 and out[k].item() == 100  # expert 0's, not 200
        else:
            torch.testing.assert_close(out[k], sum(e[k] for e in experts) / 3)
            assert not torch.allclose(out[k], experts[0][k])


def test_outputs_are_new_tensors_and_load_into_the_model():
    base, experts = make_experts(2)
    snapshot = [{k: v.clone() for k, v in e.items()} for e in experts]
    for method in fusion.METHODS:
        kw = {"weights": [0.5, 0.5]} if method == "weighted" else {}
        out = fuse(experts, method, base=base, **kw)
        inputs = {v.data_ptr() for sd in [base, *experts] for v in sd.values()}
        assert not inputs & {v.data_ptr() for v in out.values()}, method
        for v in out.values():
            v.add_(1)  # must not reach the inputs
        model = build_model("tiny", 10)
        model.load_state_dict(fuse(experts, method, base=base, **kw))  # strict
    for e, s in zip(experts, snapshot, strict=True):
        assert_sd_close(e, s, rtol=0, atol=0)


def test_half_precision_experts_keep_their_dtype():
    _, experts = make_experts(2)
    half = [{k: v.half() if v.is_floating_point() else v for k, v in e.items()} for e in experts]
    out = fuse(half, "uniform", bn="average")
    assert out["fc.weight"].dtype == torch.float16
    assert out["bn1.num_batches_tracked"].dtype == torch.int64
    torch.testing.assert_close(
        out["fc.weight"].float(),
        (half[0]["fc.weight"].float() + half[1]["fc.weight"].float()) / 2,
        rtol=1e-3,
        atol=1e-3,
    )


# --- TIES and DARE -----------------------------------------------------------------------------


def test_ties_hand_made_example():
    # tau1 = [3, -1, .5, 2, -4], tau2 = [1.5, 2, -.2, -3, -1]; density .6 keeps 3 of 5 each:
    # trimmed [3, 0, 0, 2, -4] and [1.5, 2, 0, -3, 0]; sum [4.5, 2, 0, -1, -4] elects
    # signs [+, +, 0, -, -]; disjoint means [(3+1.5)/2, 2, 0, -3 (the +2 disagrees), -4].
    # "b" (4 entries, 2 kept) is trimmed on its own although all its values are tiny.
    base = {"w": torch.ones(5), "b": torch.zeros(2, 2)}
    tau1 = {"w": torch.tensor([3, -1, 0.5, 2, -4]), "b": torch.tensor([[0.01, -0.02], [0, 0]])}
    tau2 = {"w": torch.tensor([1.5, 2, -0.2, -3, -1]), "b": torch.tensor([[0.03, 0], [0, -0.01]])}
    experts = [{k: base[k] + t[k] for k in base} for t in (tau1, tau2)]
    out = fuse(experts, "ties", base=base, density=0.6, lambdas=0.5)
    torch.testing.assert_close(out["w"], 1 + 0.5 * torch.tensor([2.25, 2.0, 0.0, -3.0, -4.0]))
    torch.testing.assert_close(out["b"], 0.5 * torch.tensor([[0.02, -0.02], [0.0, -0.01]]))
    with pytest.raises(ValueError, match="scalar"):
        fuse(experts, "ties", base=base, lambdas=[1.0, 1.0])


def test_dare_is_deterministic_per_seed_and_drops_the_right_fraction():
    base, experts = make_experts(2)
    a = fuse(experts, "dare", base=base, seed=3)
    assert_sd_close(a, fuse(experts, "dare", base=base, seed=3), rtol=0, atol=0)
    b = fuse(experts, "dare", base=base, seed=4)
    assert not torch.equal(a["stage3.0.conv2.weight"], b["stage3.0.conv2.weight"])
    # one expert, lambda 1: each entry is base (dropped) or base + tau / (1 - p) (kept)
    k = "stage3.0.conv2.weight"  # 16*16*9 = 2304 entries
    out = fuse([experts[0]], "dare", base=base, drop_rate=0.9, lambdas=1.0, seed=0)
    kept = ~torch.isclose(out[k], base[k])
    assert kept.float().mean().item() == pytest.approx(0.1, abs=0.03)
    torch.testing.assert_close(out[k][kept], (base[k] + 10 * (experts[0][k] - base[k]))[kept])


def test_dare_is_unbiased_in_expectation():
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.zeros(200)}
    experts = [{"w": torch.randn(200, generator=g)} for _ in range(2)]
    ta = fuse(experts, "task_arithmetic", base=base)["w"]  # lambdas 1/2 each
    draws = torch.stack(
        [fuse(experts, "dare", base=base, drop_rate=0.5, seed=s)["w"] for s in range(400)]
    )
    # per-entry std of one draw ~ 0.5 * |tau| ~ 0.7; of the 400-draw mean ~ 0.035
    assert (draws[0] - ta).abs().mean() > 0.2
    assert (draws.mean(0) - ta).abs().mean() < 0.05
    assert (draws.mean(0) - ta).abs().max() < 0.2


# --- validation --------------------------------------------------------------------------------


def test_mismatched_keys_and_shapes_name_the_key():
    base, experts = make_experts(2)
    missing = dict(experts[1])
    del missing["stage2.0.conv1.weight"]
    with pytest.raises(ValueError, match=r"stage2\.0\.conv1\.weight.*expert 1"):
        fuse([experts[0], missing], "uniform")
    extra = dict(experts[1], **{"head.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"head\.weight"):
        fuse([experts[0], extra], "uniform")
    reshaped = dict(experts[1], **{"fc.weight": torch.zeros(3, 64)})
    with pytest.raises(ValueError, match=r"shape mismatch at 'fc\.weight'"):
        fuse([experts[0], reshaped], "uniform")
    bad_base = dict(base, **{"fc.bias": torch.zeros(4)})
    with pytest.raises(ValueError, match=r"fc\.bias.*base"):
        fuse(experts, "task_arithmetic", base=bad_base)


@pytest.mark.parametrize(
    "weights,match",
    [
        ([0.5, 0.6], "sum to 1"),
        ([1.5, -0.5], "non-negative"),
        ([1.0], "1 values of fusion.weights for 2 experts"),
        (None, "needs fusion.weights"),
    ],
)
def test_weighted_validates_the_simplex(weights, match):
    _, experts = make_experts(2)
    with pytest.raises(ValueError, match=match):
        fuse(experts, "weighted", weights=weights)


def test_weights_within_tolerance_are_accepted():
    _, experts = make_experts(3)
    fuse(experts, "weighted", weights=[1 / 3, 1 / 3, 1 / 3 + 5e-7])


def test_bad_method_mode_and_missing_base():
    _, experts = make_experts(2)
    with pytest.raises(ValueError, match="uniform.*weighted.*task_arithmetic.*ties.*dare"):
        fuse(experts, "soup")
    with pytest.raises(ValueError, match="copy_first, average, recompute"):
        fuse(experts, "uniform", bn="mean")
    for method in ("task_arithmetic", "ties", "dare"):
        with pytest.raises(ValueError, match="needs base"):
            fuse(experts, method)
    with pytest.raises(ValueError, match="at least one"):
        fuse([], "uniform")


# --- BN statistics -----------------------------------------------------------------------------


def test_recompute_bn_statistics_matches_the_batch_statistics():
    torch.manual_seed(0)
    model = build_model("tiny", 10)
    model.bn1.running_mean.fill_(100.0)  # stale statistics that must be reset
    model.bn1.momentum = 0.3
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(8, 3, 16, 16, generator=g) * 2 + 1 for _ in range(3)]
    recompute_bn_statistics(model, batches, torch.device("cpu"))

    with torch.no_grad():
        z = [model.conv1(x) for x in batches]  # what the first BN sees
    means = torch.stack([t.mean((0, 2, 3)) for t in z])
    variances = torch.stack([t.var((0, 2, 3), unbiased=True) for t in z])
    # momentum=None: a cumulative average, i.e. every batch weighted equally
    torch.testing.assert_close(model.bn1.running_mean, means.mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.bn1.running_var, variances.mean(0), rtol=1e-4, atol=1e-5)
    assert model.bn1.num_batches_tracked.item() == 3
    assert model.bn1.momentum == 0.3 and model.stage1[0].bn1.momentum == 0.1
    assert not model.training
    assert not any(m.training for m in model.modules())
    # a deeper BN changed too (it was reset from its init 0/1 and re-estimated)
    assert not torch.allclose(model.stage3[0].bn2.running_var, torch.ones(16))


def test_recompute_bn_statistics_accepts_pairs_and_rejects_nothing():
    model = build_model("tiny", 10)
    x = torch.randn(4, 3, 8, 8)
    recompute_bn_statistics(model, [(x, torch.zeros(4, dtype=torch.long))], "cpu")
    with torch.no_grad():
        torch.testing.assert_close(model.bn1.running_mean, model.conv1(x).mean((0, 2, 3)))
    with pytest.raises(ValueError, match="no batches"):
        recompute_bn_statistics(model, [], "cpu")
    assert model.bn1.momentum == 0.1 and not model.training


def test_recompute_rescues_a_model_whose_statistics_do_not_fit():
    # copy_first keeps statistics from a model whose features differ: the fused model's
    # eval-mode outputs are then off; re-estimating them on the data restores train-mode outputs
    torch.manual_seed(0)
    model = build_model("tiny", 10)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 3)
            m.running_var.uniform_(10, 20)
    x = torch.randn(64, 3, 16, 16)
    with torch.no_grad():
        model.eval()
        _, stale = model(x)
        model.train()
        _, batch_stats = model(x)
        recompute_bn_statistics(model, [x], "cpu")
        _, fresh = model(x)
    stale, batch_stats, fresh = stale["stage3"], batch_stats["stage3"], fresh["stage3"]
    scale = batch_stats.abs().mean()
    assert (stale - batch_stats).abs().mean() > 0.5 * scale  # measured 1.7x
    # not exact: running_var is the unbiased variance, the train-mode forward uses the biased
    # one (stage 3 sees 64*4*4 = 1024 values per channel); measured 0.1% of the scale
    assert (fresh - batch_stats).abs().mean() < 0.005 * scale
