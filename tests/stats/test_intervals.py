"""Seed intervals against hand values; DeLong against a naive pair loop; bootstrap and DeLong interval
coverage of a known true AUC; paired-test calibration under the null; stratified and grouped resamples
keep class counts and whole patients."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from scipy.stats import norm
from scipy.stats import t as student_t
from sklearn.metrics import roc_auc_score

from medssl.errors import MedsslError
from medssl.stats.intervals import (
    auc,
    bootstrap_ci,
    bootstrap_replicates,
    crossed_interval,
    delong,
    mean_std,
    paired_bootstrap,
    paired_seed_diffs,
    t_interval,
    welch_interval,
)

T975_DF3 = 3.182446305284263  # Student t 0.975 quantile, 3 degrees of freedom


def binormal(rng, n_pos, n_neg, mu):
    """Positives ~ N(mu, 1), negatives ~ N(0, 1): true AUC = Phi(mu / sqrt(2))."""
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    return y, rng.normal(size=n_pos + n_neg) + mu * y


def psi(x, y):
    return 1.0 if x > y else 0.5 if x == y else 0.0


def naive_delong(y, score_rows):
    """DeLong et al. 1988 by loops: structural components V10 (per positive), V01 (per negative),
    S10, S01 sample covariances (divisor m - 1, n - 1); returns AUCs [K] and covariance [K, K]."""
    pos = [i for i in range(len(y)) if y[i] == 1]
    neg = [j for j in range(len(y)) if y[j] == 0]
    m, n = len(pos), len(neg)
    k = len(score_rows)
    v10 = [[sum(psi(s[i], s[j]) for j in neg) / n for i in pos] for s in score_rows]
    v01 = [[sum(psi(s[i], s[j]) for i in pos) / m for j in neg] for s in score_rows]
    aucs = [sum(sum(psi(s[i], s[j]) for j in neg) for i in pos) / (m * n) for s in score_rows]
    cov = [[0.0] * k for _ in range(k)]
    for r in range(k):
        for c in range(k):
            s10 = sum((v10[r][i] - aucs[r]) * (v10[c][i] - aucs[c]) for i in range(m)) / (m - 1)
            s01 = sum((v01[r][j] - aucs[r]) * (v01[c][j] - aucs[c]) for j in range(n)) / (n - 1)
            cov[r][c] = s10 / m + s01 / n
    return aucs, cov


# ---- seeds -------------------------------------------------------------------------------------

def test_mean_std_and_t_interval_hand_values():
    mean, std, n = mean_std([1, 2, 3, 4])
    assert (mean, n) == (2.5, 4)
    assert std == pytest.approx(math.sqrt(5 / 3), rel=1e-12)
    lo, hi = t_interval([1, 2, 3, 4])
    half = T975_DF3 * math.sqrt(5 / 3) / 2
    assert (lo, hi) == pytest.approx((2.5 - half, 2.5 + half), rel=1e-12)
    lo90, hi90 = t_interval([1, 2, 3, 4], level=0.90)
    assert 2.5 - half < lo90 < hi90 < 2.5 + half


def test_single_seed_has_no_interval():
    assert mean_std([0.8]) == (0.8, 0.0, 1)
    lo, hi = t_interval([0.8])
    assert math.isnan(lo) and math.isnan(hi)
    with pytest.raises(MedsslError):
        mean_std([])


def test_paired_seed_diffs_pairs_by_seed_and_refuses_unmatched_seeds():
    a = {2: 0.9, 0: 0.7, 1: 0.8, 3: 0.6}
    b = {0: 0.5, 1: 0.7, 2: 0.6, 3: 0.6}  # differences 0.2, 0.1, 0.3, 0.0 by seed
    mean, (lo, hi), n = paired_seed_diffs(a, b)
    assert n == 4 and mean == pytest.approx(0.15)
    half = T975_DF3 * math.sqrt(((0.05**2) * 2 + (0.15**2) * 2) / 3) / 2
    assert (lo, hi) == pytest.approx((0.15 - half, 0.15 + half))
    with pytest.raises(MedsslError, match=r"only in a \[3\], only in b \[4\]"):
        paired_seed_diffs({0: 1.0, 3: 1.0}, {0: 1.0, 4: 1.0})


def test_welch_interval_is_the_welch_satterthwaite_formula():
    a = [0.80, 0.82, 0.85]  # few values with a small spread, against many with a large one
    b = [0.64, 0.66, 0.72, 0.70, 0.69, 0.60]
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 6
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 5)
    diff = np.mean(a) - np.mean(b)
    half = student_t.ppf(0.975, df) * math.sqrt(va + vb)
    mean, lo, hi = welch_interval(a, b)
    assert mean == pytest.approx(diff, rel=1e-12)
    assert (lo, hi) == pytest.approx((diff - half, diff + half), rel=1e-10)
    pooled = ((2 * np.var(a, ddof=1) + 5 * np.var(b, ddof=1)) / 7) * (1 / 3 + 1 / 6)  # Student's, not Welch's
    assert hi - lo != pytest.approx(2 * student_t.ppf(0.975, 7) * math.sqrt(pooled), rel=1e-3)
    assert welch_interval(b, a)[1:] == pytest.approx((-hi, -lo), rel=1e-10)
    with pytest.raises(MedsslError, match="needs >= 2 values per arm, got 1 and 6"):
        welch_interval([0.8], b)


def test_crossed_interval_hand_values_and_its_three_cases():
    """Two-way random-effects ANOVA by hand on [[0, 2, 4], [2, 4, 12]]: grand mean 4, row means 2, 6,
    column means 1, 3, 8; MS_rows = 3 * (4 + 4) / 1 = 24, MS_cols = 2 * (9 + 1 + 16) / 2 = 26,
    residuals +-1, +-1, -+2 -> MS_resid = 12 / 2 = 6; Var(mean) = (24 + 26 - 6) / 6,
    Satterthwaite df = 44^2 / (24^2 / 1 + 26^2 / 2 + 6^2 / 2) = 1936 / 932."""
    mean, (lo, hi), df = crossed_interval([[0, 2, 4], [2, 4, 12]])
    half = student_t.ppf(0.975, 1936 / 932) * math.sqrt(44 / 6)
    assert (mean, df) == pytest.approx((4.0, 1936 / 932), rel=1e-12)
    assert (lo, hi) == pytest.approx((4 - half, 4 + half), rel=1e-10)
    # pretrainings that agree exactly: the t-interval over the fine-tuning seeds' means
    mean, ci, df = crossed_interval([[0, 0, 6], [0, 0, 6]])
    assert (mean, df) == (2.0, pytest.approx(2.0))
    assert ci == pytest.approx(t_interval([0, 0, 6]), rel=1e-10)
    # seeds that agree exactly (a pure row effect): the t-interval over the pretrainings' means
    assert crossed_interval([[1, 1, 1], [3, 3, 3], [8, 8, 8]])[1] == pytest.approx(t_interval([1, 3, 8]))
    # one component truncated with residual noise: [[0, 2, 10], [2, 0, 10]] has row means 4, 4
    # (MS_rows 0 < MS_resid = (1 + 1 + 1 + 1) / 2 = 2, so s2_rows = 0) and MS_cols = 2 * (9 + 9 + 36) / 2
    # = 54: Var(mean) = 54 / 6 with 2 df (untruncated: (0 + 54 - 2) / 6 with 52^2 / (54^2 / 2 + 2^2 / 2) df)
    mean, ci, df = crossed_interval([[0, 2, 10], [2, 0, 10]])
    assert (mean, df) == (pytest.approx(4.0), pytest.approx(2.0))
    assert ci == pytest.approx((4 - student_t.ppf(0.975, 2) * 3, 4 + student_t.ppf(0.975, 2) * 3), rel=1e-10)
    # residual noise only: MS_resid with its (P - 1)(K - 1) df
    y = np.array([[1.0, -1.0], [-1.0, 1.0]])  # row and column means all 0
    assert crossed_interval(y) == (0.0, pytest.approx((-student_t.ppf(0.975, 1), student_t.ppf(0.975, 1))),
                                   pytest.approx(1.0))
    assert crossed_interval([[0.5, 0.5], [0.5, 0.5]]) == (0.5, (0.5, 0.5), math.inf)
    with pytest.raises(MedsslError, match=r"needs a \[P >= 2, K >= 2\] table, got shape \(1, 3\)"):
        crossed_interval([[0.1, 0.2, 0.3]])


@pytest.mark.parametrize("sd_rows, sd_cols", [(1.0, 1.0), (0.0, 1.0), (1.0, 0.0)])
def test_crossed_interval_covers_the_grand_mean_under_both_random_factors(sd_rows, sd_cols):
    """2 pretrainings x 3 fine-tuning seeds drawn from the model: >= 95% coverage (the truncated
    components make it a little conservative). An interval over the pretraining means alone misses
    the seeds' variance (the (0, 1) case covers ~85%)."""
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(1000):
        y = rng.normal(0, sd_rows, (2, 1)) + rng.normal(0, sd_cols, (1, 3)) + rng.normal(0, 0.5, (2, 3))
        lo, hi = crossed_interval(y)[1]
        hits += lo <= 0 <= hi
    assert 0.945 <= hits / 1000 <= 0.995


# ---- DeLong ------------------------------------------------------------------------------------

def tied_example():
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(9, int), np.zeros(12, int)]
    a = np.round(rng.normal(size=21) + y, 0)  # rounded: many ties, within and across classes
    b = np.round(rng.normal(size=21) + 0.5 * y, 1)
    b[:3] = a[:3]
    return y, a, b


def test_auc_is_the_pair_count_and_matches_sklearn():
    y, a, b = tied_example()
    pairs = np.mean([[psi(a[i], a[j]) for j in np.flatnonzero(y == 0)] for i in np.flatnonzero(y == 1)])
    assert auc(y, a) == pytest.approx(pairs, abs=1e-12)
    assert auc(y, a) == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    rows = auc(np.stack([y, y]), np.stack([a, b]))  # vectorised over rows
    assert rows == pytest.approx([roc_auc_score(y, a), roc_auc_score(y, b)], abs=1e-12)
    assert math.isnan(auc(np.ones(5), np.arange(5.0)))


def test_delong_single_auc_variance_matches_naive_loops():
    y, a, _ = tied_example()
    (naive_auc,), ((var,),) = naive_delong(y, [a])
    out = delong(y, a)
    assert out["auc"] == pytest.approx(naive_auc, abs=1e-12)
    assert out["se"] ** 2 == pytest.approx(var, rel=1e-10)
    assert (out["lo"], out["hi"]) == pytest.approx((naive_auc - 1.959963984540054 * math.sqrt(var),
                                                    min(1.0, naive_auc + 1.959963984540054 * math.sqrt(var))))
    assert (out["n_pos"], out["n_neg"]) == (9, 12)


def test_delong_paired_test_matches_naive_loops():
    y, a, b = tied_example()
    (auc_a, auc_b), cov = naive_delong(y, [a, b])
    se = math.sqrt(cov[0][0] + cov[1][1] - 2 * cov[0][1])
    z = (auc_a - auc_b) / se
    out = delong(y.astype(bool), a, b)
    assert (out["auc_a"], out["auc_b"]) == pytest.approx((auc_a, auc_b), abs=1e-12)
    assert out["diff"] == pytest.approx(auc_a - auc_b, abs=1e-12)
    assert out["se"] == pytest.approx(se, rel=1e-10)
    assert out["z"] == pytest.approx(z, rel=1e-10)
    assert out["p"] == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-9)
    assert (out["lo"], out["hi"]) == pytest.approx((out["diff"] - 1.959963984540054 * se,
                                                    out["diff"] + 1.959963984540054 * se))


def test_delong_refuses_one_class_and_non_binary_labels():
    with pytest.raises(MedsslError, match="positives"):
        delong(np.ones(6, int), np.arange(6.0))
    with pytest.raises(MedsslError, match="binary"):
        delong(np.array([0, 1, 2, 1, 0, 2]), np.arange(6.0))


def test_delong_identical_perfect_models():
    y = np.array([0, 0, 0, 1, 1, 1])
    out = delong(y, np.arange(6.0), np.arange(6.0) * 2)
    assert (out["diff"], out["se"], out["z"], out["p"]) == (0.0, 0.0, 0.0, 1.0)


def test_delong_interval_covers_true_auc():
    rng = np.random.default_rng(11)
    mu, truth = 1.0, norm.cdf(1.0 / math.sqrt(2))
    hits = 0
    for _ in range(500):  # cheap: more repeats than the bootstrap, a tighter check
        y, s = binormal(rng, 80, 120, mu)
        out = delong(y, s)
        hits += out["lo"] <= truth <= out["hi"]
    assert 0.92 <= hits / 500 <= 0.975


# ---- bootstrap ---------------------------------------------------------------------------------

def test_stratified_bootstrap_interval_covers_true_auc():
    rng = np.random.default_rng(5)
    mu, truth = 1.0, norm.cdf(1.0 / math.sqrt(2))
    hits = 0
    for rep in range(200):
        y, s = binormal(rng, 80, 120, mu)
        point, lo, hi = bootstrap_ci(auc, y, s, strata=y, n_boot=500, seed=rep, batched=True)
        assert lo <= point <= hi
        hits += lo <= truth <= hi
    assert 0.90 <= hits / 200 <= 0.99


def test_bootstrap_ci_is_the_percentile_of_the_replicates_and_batching_changes_nothing():
    rng = np.random.default_rng(0)
    y, s = binormal(rng, 30, 50, 1.0)
    point, lo, hi = bootstrap_ci(auc, y, s, strata=y, n_boot=300, level=0.9, seed=4, batched=True)
    reps, skipped = bootstrap_replicates(auc, y, s, strata=y, n_boot=300, seed=4, batched=True)
    assert skipped == 0 and reps.shape == (300, 1)
    assert point == pytest.approx(roc_auc_score(y, s))
    assert (lo, hi) == pytest.approx(tuple(np.quantile(reps[:, 0], [0.05, 0.95])))
    assert bootstrap_ci(roc_auc_score, y, s, strata=y, n_boot=300, level=0.9, seed=4) == pytest.approx(
        (point, lo, hi))
    assert bootstrap_ci(auc, y, s, n_boot=300, seed=4, batched=True) == bootstrap_ci(
        auc, y, s, n_boot=300, seed=4, batched=True)  # seeded: deterministic


def test_bootstrap_se_agrees_with_delong():
    rng = np.random.default_rng(2)
    y, s = binormal(rng, 400, 600, 1.0)
    reps, _ = bootstrap_replicates(auc, y, s, strata=y, n_boot=1000, seed=0, batched=True)
    assert reps[:, 0].std(ddof=1) == pytest.approx(delong(y, s)["se"], rel=0.1)


def test_stratified_bootstrap_keeps_class_counts():
    y = np.r_[np.ones(7, int), np.zeros(23, int)]
    scores = np.arange(30.0)
    seen = []

    def record(yt, sc):
        seen.append((len(yt), int(yt.sum())))
        return 0.5

    bootstrap_ci(record, y, scores, strata=y, n_boot=200)
    assert len(seen) == 201 and set(seen) == {(30, 7)}
    rows = []

    def record_rows(yt, sc):  # batched: [b, 30] per call
        rows.extend(yt.sum(1).tolist())
        return np.zeros(len(yt))

    bootstrap_ci(record_rows, y, scores, strata=y, n_boot=200, batched=True)
    assert len(rows) == 201 and set(rows) == {7}
    seen.clear()
    bootstrap_ci(record, y, scores, n_boot=200)  # unstratified: the counts vary
    assert len({k for _, k in seen}) > 3


def group_draws(groups, drawn):
    """{group: times drawn}, asserting every drawn group appears with all its members, each the
    same number of times."""
    counts = Counter(drawn.tolist())
    draws = {}
    for g in np.unique(groups):
        times = {counts[i] for i in np.flatnonzero(groups == g)}
        assert len(times) == 1, f"group {g} cut: member counts {times}"
        draws[g] = times.pop()
    return draws


def test_grouped_bootstrap_resamples_whole_groups():
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 5, 25)  # 25 patients with 1-4 images each
    groups = np.repeat(rng.permutation(25) * 10, sizes)  # arbitrary ids, not contiguous
    order = rng.permutation(len(groups))
    groups = groups[order]
    y = (groups % 20 == 0).astype(int)  # label per patient
    case_ids = np.arange(len(groups), dtype=float)
    calls = []

    def record(yt, sc):
        assert sum(group_draws(groups, sc.astype(int)).values()) == 25  # as many draws as patients
        calls.append(len(sc))
        return 0.0

    bootstrap_ci(record, y, case_ids, groups=groups, n_boot=100)
    assert len(calls) == 101 and len(set(calls)) > 3  # resample sizes follow the drawn patients
    positive = set(groups[y == 1].tolist())
    pos_draws = []

    def record_strata(yt, sc):
        draws = group_draws(groups, sc.astype(int))
        assert sum(draws.values()) == 25
        pos_draws.append(sum(k for g, k in draws.items() if g in positive))
        return 0.0

    bootstrap_ci(record_strata, y, case_ids, groups=groups, strata=y, n_boot=100)
    assert set(pos_draws) == {len(positive)}  # the number of positive patients is kept
    with pytest.raises(MedsslError, match="spans several strata"):
        bootstrap_ci(record, y, case_ids, groups=groups, strata=np.arange(len(y)) % 2, n_boot=10)


def test_equal_size_groups_take_the_vectorised_path():
    groups = np.repeat(np.arange(20), 3)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    rows = []

    def record(yt, sc):
        for r in sc.astype(int):
            assert sum(group_draws(groups, r).values()) == 20
        rows.append(sc.shape)
        return np.zeros(len(sc))

    bootstrap_ci(record, y, np.arange(60.0), groups=groups, n_boot=50, batched=True)
    assert rows[1] == (50, 60)


@pytest.mark.filterwarnings("ignore:Only one class")  # sklearn warns before the nan it returns
def test_undefined_resamples_are_skipped_and_too_many_refused():
    y = np.r_[np.ones(3, int), np.zeros(27, int)]
    s = np.arange(30.0)
    reps, skipped = bootstrap_replicates(roc_auc_score, y, s, n_boot=500, seed=0)
    assert 0 < skipped <= 50 and len(reps) + skipped == 500  # P(no positive) = 0.9^30 = 4%
    reps_nan, skipped_nan = bootstrap_replicates(auc, y, s, n_boot=500, seed=0, batched=True)
    assert skipped_nan == skipped and reps_nan[:, 0] == pytest.approx(reps[:, 0])
    y1 = np.r_[1, np.zeros(19, int)]
    with pytest.raises(MedsslError, match=r"undefined on \d+ of 200 bootstrap resamples"):
        bootstrap_ci(roc_auc_score, y1, np.arange(20.0), n_boot=200)
    with pytest.raises(MedsslError, match="full test set"):
        bootstrap_ci(roc_auc_score, np.zeros(10, int), np.arange(10.0))


# ---- paired bootstrap --------------------------------------------------------------------------

def test_paired_bootstrap_p_is_the_documented_formula():
    rng = np.random.default_rng(8)
    y, latent = binormal(rng, 40, 60, 1.0)
    a, b = latent + rng.normal(size=100), latent + rng.normal(size=100)
    out = paired_bootstrap(auc, y, a, b, strata=y, n_boot=400, seed=3, batched=True)
    reps, _ = bootstrap_replicates(auc, y, a, b, strata=y, n_boot=400, seed=3, batched=True)
    d = reps[:, 0] - reps[:, 1]
    diff = roc_auc_score(y, a) - roc_auc_score(y, b)
    count = (d <= 0).sum() if diff > 0 else (d >= 0).sum()
    assert out["diff"] == pytest.approx(diff)
    assert out["p"] == pytest.approx(min(1.0, 2 * (1 + count) / 401))
    assert (out["lo"], out["hi"]) == pytest.approx(tuple(np.quantile(d, [0.025, 0.975])))
    assert out["n_valid"] == 400 and out["lo"] < out["hi"]


def test_paired_bootstrap_is_calibrated_under_the_null():
    """a and b: the same latent score plus independent noise of equal size -> equal true AUC."""
    rng = np.random.default_rng(9)
    rejected = 0
    for rep in range(200):
        y, latent = binormal(rng, 80, 120, 1.5)
        a, b = latent + rng.normal(size=200), latent + rng.normal(size=200)
        out = paired_bootstrap(auc, y, a, b, strata=y, n_boot=500, seed=rep, batched=True)
        rejected += out["p"] < 0.05
    assert 0.01 <= rejected / 200 <= 0.12


def test_paired_tests_detect_a_clearly_better_model():
    rng = np.random.default_rng(4)
    y, latent = binormal(rng, 80, 120, 1.5)
    a, b = latent, latent + 2.0 * rng.normal(size=200)
    out = paired_bootstrap(auc, y, a, b, strata=y, n_boot=500, batched=True)
    assert out["p"] < 0.01 and out["lo"] > 0
    assert delong(y, a, b)["p"] < 0.01
    flipped = paired_bootstrap(auc, y, b, a, strata=y, n_boot=500, batched=True)
    assert flipped["p"] < 0.01 and flipped["hi"] < 0
