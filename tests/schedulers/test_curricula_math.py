"""SPL, ACL and ICL math on hand-made inputs (docs/baselines.md)."""

import math
import subprocess
import sys

import pytest

from kpod.data.prefix_ratio import prefix_char_cut, prefix_tokens
from kpod.schedulers.curricula_math import (
    IclValidationPace,
    acl_advance,
    acl_growth_for_stages,
    acl_pace,
    acl_update_difficulty,
    icl_prefix_ratio,
    icl_step_cut,
    spl_advance,
    spl_easy,
    spl_initial_lambda,
    spl_lambda,
)

# --------------------------------------------------------------------------------------- SPL


def test_spl_advances_exactly_the_questions_under_lambda():
    given = {"a": 3, "b": 2, "c": 1, "d": 0, "e": 2}
    losses = {"a": 0.4, "b": 0.9, "c": 0.49, "d": 0.1, "e": 0.5}
    nxt = spl_advance(given, losses, lam=0.5)
    # a and c are under 0.5 and move one step; e sits exactly on λ (strict <) and stays;
    # d is already at 0 and stays at 0.
    assert nxt == {"a": 2, "b": 2, "c": 0, "d": 0, "e": 2}
    assert spl_easy(losses, 0.5) == {"a", "c", "d"}


def test_spl_delta_s_clips_at_zero_and_missing_loss_is_an_error():
    assert spl_advance({"a": 1, "b": 3}, {"a": 0.0, "b": 0.0}, lam=1.0, delta_s=2) == {"a": 0, "b": 1}
    with pytest.raises(KeyError, match="no measured loss"):
        spl_advance({"a": 2}, {}, lam=1.0)
    spl_advance({"a": 0}, {}, lam=1.0)  # nothing left to move: no loss needed


def test_spl_threshold_grows_geometrically_from_the_median():
    lam0 = spl_initial_lambda({"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}, quantile=0.5)
    assert lam0 == pytest.approx(2.5)
    lams = [spl_lambda(t, lam0, mu=1.3) for t in range(4)]
    assert lams[0] == pytest.approx(2.5)
    for a, b in zip(lams, lams[1:]):
        assert b / a == pytest.approx(1.3)
    with pytest.raises(ValueError):
        spl_lambda(1, lam0, mu=0.9)


# --------------------------------------------------------------------------------------- ACL


def test_acl_difficulty_is_an_ema_of_the_current_losses():
    upd = acl_update_difficulty({"a": [1.0, 3.0]}, {"a": [2.0, 1.0]}, alpha=0.25)
    assert upd["a"] == pytest.approx([1.25, 2.5])
    assert acl_update_difficulty({"a": [1.0]}, {"a": [5.0]}, alpha=1.0)["a"] == [5.0]
    with pytest.raises(ValueError, match="measured"):
        acl_update_difficulty({"a": [1.0, 2.0]}, {"a": [1.0]}, alpha=0.5)


def test_acl_pace_reaches_one_at_the_requested_stage():
    q = acl_growth_for_stages(0.2, 4)
    shares = [acl_pace(t, 0.2, q) for t in range(6)]
    assert shares[0] == pytest.approx(0.2)
    assert shares[4] == pytest.approx(1.0) and shares[5] == 1.0
    assert all(b >= a for a, b in zip(shares, shares[1:]))
    assert acl_pace(3, 0.5, 2.0, every=2) == pytest.approx(1.0)  # ⌊3/2⌋ = 1 doubling


def test_acl_moves_the_easiest_next_steps_until_the_share_is_reached():
    # 3 questions x 3 steps = 9 steps; each outputs its last step: 3/9 on the output side.
    given = {"a": 2, "b": 2, "c": 2}
    diff = {"a": [0.1, 5.0, 0.1], "b": [0.1, 1.0, 0.1], "c": [0.1, 2.0, 0.1]}
    nxt = acl_advance(given, diff, target_share=5 / 9)
    # two more output steps needed; next steps cost a 5.0, b 1.0, c 2.0 -> b and c move.
    assert nxt == {"a": 2, "b": 1, "c": 1}
    # re-measured difficulty changes who moves
    diff2 = {"a": [0.1, 0.5, 0.1], "b": [0.1, 1.0, 0.1], "c": [0.1, 2.0, 0.1]}
    assert acl_advance(given, diff2, target_share=5 / 9) == {"a": 1, "b": 1, "c": 2}
    # share already reached: nothing moves
    assert acl_advance(given, diff, target_share=3 / 9) == given
    assert acl_advance(given, diff, target_share=1.0) == {"a": 1, "b": 1, "c": 1}  # one move each


# --------------------------------------------------------------------------------------- ICL


def test_icl_fixed_pace_follows_start_minus_stride():
    assert [icl_prefix_ratio(t) for t in range(4)] == [0.6, 0.3, 0.0, 0.0]
    assert [icl_prefix_ratio(t, 0.9, 0.1) for t in (0, 1, 8, 9, 10)] == [0.9, 0.8, 0.1, 0.0, 0.0]


def test_icl_target_length_follows_the_pace():
    n = 23
    targets = [n - prefix_tokens(n, icl_prefix_ratio(t)) for t in range(3)]
    assert targets == [n - math.floor(23 * 0.6), n - math.floor(23 * 0.3), n]
    assert targets == [10, 17, 23]


def test_icl_char_cut_puts_the_given_tokens_before_the_cut():
    anchors = [10, 12, 15, 15, 20, 30]  # a whitespace token shares its anchor with the next
    cut = prefix_char_cut(anchors, 0.5, end=40)  # floor(6 * 0.5) = 3 given
    assert cut == 15
    assert prefix_char_cut(anchors, 0.0, end=40) == 10
    assert prefix_char_cut(anchors, 1.0, end=40) == 40


def test_icl_step_cut_rounds_down_to_whole_steps():
    starts, answer = [0, 5, 9], 14
    assert [icl_step_cut(starts, answer, g) for g in (0, 4, 5, 8, 9, 13, 14, 20)] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_icl_validation_pace_drops_exactly_after_patience_evaluations_without_a_best():
    pace = IclValidationPace(ratio=0.9, stride=0.3, patience=2)
    scores = [1.0, 2.0, 1.5, 1.9, 1.0, 2.5, 2.5, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    ratios = [pace.update(x) for x in scores]
    # 1.0 first best, 2.0 best; 1.5, 1.9: two without a best -> drop; 1.0 one (count restarted);
    # 2.5 best (count reset, p kept); 2.5 ties are not a best; 2.0 second -> drop; then pairs
    assert ratios == pytest.approx([0.9, 0.9, 0.9, 0.6, 0.6, 0.6, 0.6, 0.3, 0.3, 0.0, 0.0, 0.0, 0.0])
    restored = IclValidationPace.from_state(pace.state_dict())
    assert restored == pace and restored.update(3.0) == 0.0  # p never rises again


def test_icl_validation_pace_with_patience_one_is_the_release_rule():
    # run_summarization_icl.py (decrease mode): every epoch without a new best lowers p by stride
    pace = IclValidationPace(ratio=0.6, stride=0.3, patience=1)
    assert [pace.update(x) for x in (1.0, 0.5, 2.0, 2.0, 1.0)] == pytest.approx([0.6, 0.3, 0.3, 0.0, 0.0])
    with pytest.raises(ValueError, match="patience >= 1"):
        IclValidationPace(patience=0)


def test_the_curricula_math_imports_neither_torch_nor_the_collator():
    """The math is plain numbers: reading it (or testing it) must not load torch or the collator."""
    probe = ("import sys, kpod.schedulers.curricula_math; "
             "print(sorted({'torch', 'kpod.data.collate'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
