import pytest
import torch
from conftest import rel_err

from lrq_kernels import Rotation, choose_rotation, stats_from_tokens
from lrq_kernels.rotation.ars import candidate_rotations, serpentine_permutation


def _acts(t, k, salient=(3, 17, 40, 41), factor=50.0):
    x = torch.randn(t, k)
    x[:, list(salient)] *= factor
    return x


@pytest.mark.parametrize("which", [0, 1, 2, 3])
def test_folding_leaves_float_forward_unchanged(which):
    k = 192
    x, w = _acts(64, k), torch.randn(96, k)
    rot = candidate_rotations(stats_from_tokens(x, 4), 64, w.abs().amax(0))[which]
    y_ref = x.double() @ w.double().t()
    y = rot.apply(x) @ rot.fold_into_weight(w).t()
    assert rel_err(y, y_ref) <= 1e-5


@pytest.mark.parametrize("which", [0, 1, 2, 3])
def test_unapply_and_unfold_invert(which):
    x, w = _acts(16, 128), torch.randn(8, 128)
    rot = candidate_rotations(stats_from_tokens(x, 2), 32, w.abs().amax(0))[which]
    assert rel_err(rot.unapply(rot.apply(x)), x) < 1e-6
    assert rel_err(rot.unfold_weight(rot.fold_into_weight(w)), w) < 1e-6


def test_serpentine_spreads_salient_channels_over_blocks():
    absmax = torch.ones(1152)
    salient = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8])    # all in the first block of 128
    absmax[salient] = 100.0
    perm = serpentine_permutation(absmax, 128)
    assert torch.equal(torch.sort(perm).values, torch.arange(1152))
    blocks_of_salient = {int(torch.nonzero(perm == c)) // 128 for c in salient}
    assert len(blocks_of_salient) == 9                      # 9 salient channels, 9 blocks: one each


def test_stats_record_salient_channels_and_fluctuation():
    x = _acts(400, 64, salient=(5, 9))
    st = stats_from_tokens(x, calls=4)
    assert set(st.salient_channels().tolist()) == {5, 9}
    f = st.fluctuation()
    assert f["salient_channels"] == 2 and f["timestep_cv_mean"] >= 0 and st.calls == 4


@pytest.mark.parametrize("a_format,a_bits", [("int", 4), ("int", 8), ("fp8", 8)])
def test_choose_rotation_picks_the_least_error_candidate(a_format, a_bits):
    x = _acts(256, 256)
    st = stats_from_tokens(x, 4)
    rot = choose_rotation(st, a_format, a_bits, 64)
    errs = [float(e.split()[-2]) for e in rot.note.split(", ")]
    assert len(errs) == 4
    names = [e.split()[0] for e in rot.note.split(", ")]
    label = rot.kind if rot.kind != "ars" else ("ars+smooth" if rot.channel_scale is not None else "ars-perm")
    assert errs[names.index(label)] == max(errs)            # note lists SQNRs: the best is the chosen


def test_ars_beats_no_rotation_on_int4_with_salient_channels():
    x = _acts(512, 256)
    st = stats_from_tokens(x[:256], 4)
    rot = choose_rotation(st, "int", 4, 64)
    from lrq_kernels.reference import dequantize_tokens_ref, quantize_tokens_ref
    test = x[256:]
    err_ars = (rot.unapply(dequantize_tokens_ref(*quantize_tokens_ref(rot.apply(test), "int", 4))) - test).norm()
    err_none = (dequantize_tokens_ref(*quantize_tokens_ref(test, "int", 4)) - test).norm()
    assert err_ars < 0.5 * err_none
