"""Uncertainty intervals and paired tests for the study report (numpy/scipy only).

Which variance each interval covers (the report must state it):

* :func:`t_interval`, :func:`paired_seed_diffs`: variation over training **seeds** (and, when the
  subset is redrawn per seed, over subsets) with the test set held fixed; a Student-t interval of
  the mean over seeds. They say nothing about the finite test set. :func:`welch_interval` is the
  same for two arms that share no seed (independent samples, unequal variances).
* :func:`bootstrap_ci`, :func:`paired_bootstrap`, :func:`delong`: sampling variation of the **test
  cases** only (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993; DeLong, DeLong &
  Clarke-Pearson, Biometrics 44(3), 1988), for one fixed trained model (or pair of models); they
  say nothing about retraining with another seed.

Bootstrap resampling can keep the class counts (``strata``: stratified bootstrap) and resample
whole patients (``groups``: cluster bootstrap, for several images or per-case Dice per patient).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping

import numpy as np
from scipy import stats

from medssl.errors import MedsslError

Metric = Callable[[np.ndarray, np.ndarray], float]
MAX_SKIPPED = 0.10  # share of undefined bootstrap resamples above which the interval is refused
_CHUNK = 1 << 22  # resampled indices held in memory at once


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise MedsslError(f"confidence level must be in (0, 1), got {level}")


def _values(values) -> np.ndarray:
    v = np.asarray(list(values.values()) if isinstance(values, Mapping) else values, np.float64).ravel()
    if v.size == 0:
        raise MedsslError("no values to summarise")
    if not np.isfinite(v).all():
        raise MedsslError(f"non-finite value among {v.tolist()}")
    return v


def mean_std(values) -> tuple[float, float, int]:
    """[n] values (e.g. one metric per seed) -> (mean, sample std with ddof=1 (0 for n=1), n)."""
    v = _values(values)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def t_interval(values, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of [n] values: mean ± t_{(1+level)/2, n-1} · std / sqrt(n).

    Covers seed-to-seed variation only (see the module docstring); n = 1 gives (nan, nan).
    """
    _check_level(level)
    mean, std, n = mean_std(values)
    if n < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf((1 + level) / 2, n - 1) * std / np.sqrt(n)
    return float(mean - half), float(mean + half)


def paired_seed_diffs(a: Mapping, b: Mapping, level: float = 0.95) -> tuple[float, tuple[float, float], int]:
    """Differences a[seed] - b[seed] paired by seed (same subset and seed for both arms).

    Args:
        a, b: {seed: metric value}; both must hold exactly the same seeds.

    Returns:
        (mean difference, :func:`t_interval` of the differences, number of seeds).
    """
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b), key=str), sorted(set(b) - set(a), key=str)
        raise MedsslError(f"seeds do not pair up: only in a {only_a}, only in b {only_b}")
    keys = sorted(a, key=str)
    diffs = _values([a[k] for k in keys]) - _values([b[k] for k in keys])
    mean, _, n = mean_std(diffs)
    return mean, t_interval(diffs, level), n


def welch_interval(a, b, level: float = 0.95) -> tuple[float, float, float]:
    """Mean difference mean(a) - mean(b) of two independent samples and its Welch t-interval
    (Welch, Biometrika 34, 1947: unequal variances, Welch-Satterthwaite degrees of freedom; scipy's
    ``ttest_ind(equal_var=False)``).

    For arms that share no seed, e.g. pretrained encoders against random-init encoders of other
    seeds; covers seed-to-seed variation in both arms, not the finite test set.

    Args:
        a, b: [n_a], [n_b] values, at least 2 each.

    Returns:
        (mean difference, interval low, interval high).
    """
    _check_level(level)
    a, b = _values(a), _values(b)
    if a.size < 2 or b.size < 2:
        raise MedsslError(f"a Welch interval needs >= 2 values per arm, got {a.size} and {b.size}")
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(level)
    return float(a.mean() - b.mean()), float(ci.low), float(ci.high)


def crossed_interval(table, level: float = 0.95) -> tuple[float, tuple[float, float], float]:
    """Grand mean of a [P, K] table crossed by two random factors and its interval, e.g. SSL − scratch
    differences for P pretrainings x K fine-tuning seeds, where fine-tuning seed k (its labelled
    subset, its scratch run) is the same for every pretraining.

    Two-way random-effects ANOVA without replication, y_pk = mu + a_p + b_k + e_pk (Searle, Casella &
    McCulloch, "Variance Components", 1992, ch. 4): Var(mean) = s2_a/P + s2_b/K + s2_e/(PK), with the
    components from the mean squares (negative estimates set to 0) and Welch-Satterthwaite degrees of
    freedom for the sum. A t-interval of the P pretraining means would miss s2_b (the shared scratch
    runs and subsets cancel between pretrainings); one of the K seed means would miss s2_a. Written
    here because scipy has no variance-components interval and statsmodels' MixedLM is not a
    dependency (and fits crossed effects only through a workaround).

    Args:
        table: [P, K] values, P, K >= 2, no missing cell.

    Returns:
        (grand mean, interval, degrees of freedom).
    """
    _check_level(level)
    y = np.asarray(table, np.float64)
    if y.ndim != 2 or min(y.shape) < 2:
        raise MedsslError(f"a crossed interval needs a [P >= 2, K >= 2] table, got shape {y.shape}")
    _values(y)
    p, k = y.shape
    mean = y.mean()
    rows, cols = y.mean(1), y.mean(0)
    ms_rows = k * ((rows - mean) ** 2).sum() / (p - 1)
    ms_cols = p * ((cols - mean) ** 2).sum() / (k - 1)
    resid = y - rows[:, None] - cols[None, :] + mean
    ms_resid = (resid**2).sum() / ((p - 1) * (k - 1))
    # (coefficient, mean square, df) of p*k*Var(mean) = max(MSr, MSe) + max(MSc, MSe) - MSe
    terms = [(1.0, ms, df) for ms, df in ((ms_rows, p - 1), (ms_cols, k - 1)) if ms > ms_resid]
    terms += [(1.0 - len(terms), ms_resid, (p - 1) * (k - 1))] if len(terms) != 1 else []
    total = sum(c * ms for c, ms, _ in terms)
    if total <= 0:  # every value identical
        return float(mean), (float(mean), float(mean)), float("inf")
    df = total**2 / sum((c * ms) ** 2 / d for c, ms, d in terms)
    half = stats.t.ppf((1 + level) / 2, df) * np.sqrt(total / (p * k))
    return float(mean), (float(mean - half), float(mean + half)), float(df)


def auc(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray | float:
    """ROC AUC as the Mann-Whitney statistic with midranks (a tie counts 1/2), over the last axis.

    Equal to sklearn's ``roc_auc_score`` for one row, but vectorised over resamples, which
    sklearn is not: y_true [..., N] 0/1, scores [..., N] -> [...] (a float for 1-D input), nan
    for rows with one class only. Usable as a ``batched=True`` metric of :func:`bootstrap_ci`.
    """
    s = np.asarray(scores, np.float64)
    y = np.broadcast_to(np.asarray(y_true).astype(bool), s.shape)
    n1 = y.sum(-1)
    n0 = y.shape[-1] - n1
    rank_sum = np.where(y, stats.rankdata(s, axis=-1), 0.0).sum(-1)
    defined = (n1 > 0) & (n0 > 0)
    out = np.where(defined, (rank_sum - n1 * (n1 + 1) / 2) / np.where(defined, n1 * n0, 1), np.nan)
    return float(out) if out.ndim == 0 else out


def _codes(labels: np.ndarray | None, n: int, name: str) -> np.ndarray:
    if labels is None:
        return np.arange(n) if name == "groups" else np.zeros(n, np.int64)
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise MedsslError(f"{name} has shape {labels.shape}, expected ({n},) like y_true")
    return np.unique(labels, return_inverse=True)[1].ravel()


def _resamples(n: int, strata: np.ndarray | None, groups: np.ndarray | None, n_boot: int,
               rng: np.random.Generator) -> Iterator[np.ndarray | list[np.ndarray]]:
    """Case indices of ``n_boot`` resamples, in chunks: [b, n] arrays when every resample has the same
    length (no groups, or groups of one size), else lists of 1-D arrays.

    Groups (each case its own group without ``groups``) are drawn with replacement, within each
    stratum when ``strata`` is given, so every resample keeps the number of groups per stratum.
    """
    gid = _codes(groups, n, "groups")
    sid = _codes(strata, n, "strata")
    order = np.argsort(gid, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(gid[order]) != 0])
    sizes = np.diff(np.r_[starts, n])
    group_stratum = sid[order[starts]]
    if np.unique(np.stack([gid, sid]), axis=1).shape[1] != len(starts):
        raise MedsslError("a group (patient) spans several strata; stratify by a per-group label")
    per_stratum = [np.flatnonzero(group_stratum == s) for s in np.unique(group_stratum)]
    equal = bool((sizes == sizes[0]).all())
    chunk = max(1, _CHUNK // n)
    for done in range(0, n_boot, chunk):
        b = min(chunk, n_boot - done)
        chosen = np.hstack([g[rng.integers(0, len(g), (b, len(g)))] for g in per_stratum])  # [b, G]
        if equal:
            pos = starts[chosen][..., None] + np.arange(sizes[0])
            yield order[pos.reshape(b, -1)]
        else:
            rows = []
            for c in chosen:
                lengths = sizes[c]
                offsets = np.repeat(starts[c] - (np.cumsum(lengths) - lengths), lengths)
                rows.append(order[offsets + np.arange(lengths.sum())])
            yield rows


def _call(metric: Metric, batched: bool, y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Metric values [b] of a chunk y, s [b, m, ...]; nan where undefined (ValueError or non-finite)."""
    if batched:
        return np.asarray(metric(y, s), np.float64).reshape(len(y))
    out = np.empty(len(y))
    for i, (yi, si) in enumerate(zip(y, s, strict=True)):
        try:
            out[i] = metric(yi, si)
        except ValueError:
            out[i] = np.nan
    return out


def _point(metric: Metric, batched: bool, y: np.ndarray, s: np.ndarray) -> float:
    try:
        value = float(_call(metric, batched, y[None], s[None])[0])
    except ValueError as err:  # batched metrics are not caught by _call
        raise MedsslError(f"the metric is undefined on the full test set: {err}") from None
    if not np.isfinite(value):
        raise MedsslError("the metric is undefined on the full test set (e.g. one class only)")
    return value


def bootstrap_replicates(metric: Metric, y_true: np.ndarray, *scores: np.ndarray, strata=None, groups=None,
                         n_boot: int = 2000, seed: int = 0, batched: bool = False) -> tuple[np.ndarray, int]:
    """Metric of every score set on the same bootstrap resamples of the test cases.

    Args:
        metric: ``metric(y_true, scores) -> float``, independent of case order; with
            ``batched=True`` it takes [b, m, ...] arrays and returns [b] values (e.g. :func:`auc`),
            nan for undefined rows.
        y_true: [N] labels (or per-case targets). scores: one or more [N, ...] arrays.
        strata: [N] labels to resample within (stratified bootstrap: class counts are kept).
        groups: [N] patient ids; whole groups are resampled (cluster bootstrap).
        n_boot, seed: number of resamples and seed of ``numpy.random.default_rng``.

    Returns:
        (replicates [n_valid, len(scores)], number of skipped resamples). A resample is skipped when
        the metric raises ValueError or is non-finite for any score set; more than 10% skipped
        raises MedsslError.
    """
    if n_boot < 1:
        raise MedsslError(f"n_boot must be >= 1, got {n_boot}")
    y = np.asarray(y_true)
    arrays = [np.asarray(s) for s in scores]
    for s in arrays:
        if len(s) != len(y):
            raise MedsslError(f"scores have {len(s)} cases but y_true has {len(y)}")
    rng = np.random.default_rng(seed)
    reps = []
    with warnings.catch_warnings():  # undefined resamples are counted below, not warned about each time
        warnings.simplefilter("ignore")
        for idx in _resamples(len(y), strata, groups, n_boot, rng):
            if isinstance(idx, np.ndarray):
                reps.append(np.stack([_call(metric, batched, y[idx], s[idx]) for s in arrays], 1))
            else:  # resamples of different lengths: one at a time
                reps.append(np.array([[_call(metric, batched, y[i][None], s[i][None])[0] for s in arrays]
                                      for i in idx]))
    reps = np.concatenate(reps)
    valid = np.isfinite(reps).all(1)
    skipped = int(n_boot - valid.sum())
    if skipped > MAX_SKIPPED * n_boot:
        raise MedsslError(f"the metric is undefined on {skipped} of {n_boot} bootstrap resamples (more than "
                          f"{MAX_SKIPPED:.0%}, e.g. one class only): stratify by the label or use more cases")
    return reps[valid], skipped


def bootstrap_ci(metric: Metric, y_true: np.ndarray, scores: np.ndarray, *, strata=None, groups=None,
                 n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                 batched: bool = False) -> tuple[float, float, float]:
    """Percentile bootstrap interval of ``metric`` over test cases (Efron & Tibshirani 1993, ch. 13).

    y_true [N], scores [N, ...]; ``strata``, ``groups``, ``batched`` as in
    :func:`bootstrap_replicates`. Returns (metric on all cases, lo, hi), lo/hi the (1 - level)/2
    and (1 + level)/2 quantiles of the valid resampled values. Covers test-case variation only.
    """
    _check_level(level)
    point = _point(metric, batched, np.asarray(y_true), np.asarray(scores))
    reps, _ = bootstrap_replicates(metric, y_true, scores, strata=strata, groups=groups, n_boot=n_boot,
                                   seed=seed, batched=batched)
    lo, hi = np.quantile(reps[:, 0], [(1 - level) / 2, (1 + level) / 2])
    return point, float(lo), float(hi)


def paired_bootstrap(metric: Metric, y_true: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, *,
                     strata=None, groups=None, n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                     batched: bool = False) -> dict[str, float]:
    """Paired bootstrap of metric(a) - metric(b), both computed on the same resampled cases each time.

    y_true [N], scores_a and scores_b [N, ...] of two models on the same test cases; ``strata``,
    ``groups``, ``batched`` as in :func:`bootstrap_replicates`.

    Returns:
        ``a``, ``b``, ``diff`` (metrics on all cases and their difference), ``lo``, ``hi`` (percentile
        interval of the resampled differences d*), ``p`` and ``n_valid`` (resamples used). ``p`` is the
        two-sided bootstrap p-value of diff = 0: with ``count`` the number of d* on the other side of
        0 from ``diff`` (d* <= 0 when diff > 0, d* >= 0 when diff < 0),
        ``p = min(1, 2 * (1 + count) / (1 + n_valid))``; p = 1 when diff = 0. Its smallest value is
        2 / (1 + n_valid), so use n_boot >= 2000 for p near 0.001. Covers test-case variation only.
    """
    _check_level(level)
    y = np.asarray(y_true)
    a = _point(metric, batched, y, np.asarray(scores_a))
    b = _point(metric, batched, y, np.asarray(scores_b))
    reps, _ = bootstrap_replicates(metric, y_true, scores_a, scores_b, strata=strata, groups=groups,
                                   n_boot=n_boot, seed=seed, batched=batched)
    d = reps[:, 0] - reps[:, 1]
    diff = a - b
    lo, hi = np.quantile(d, [(1 - level) / 2, (1 + level) / 2])
    if diff == 0:
        p = 1.0
    else:
        count = int((d <= 0).sum() if diff > 0 else (d >= 0).sum())
        p = min(1.0, 2 * (1 + count) / (1 + len(d)))
    return {"a": a, "b": b, "diff": diff, "lo": float(lo), "hi": float(hi), "p": p, "n_valid": len(d)}


def _delong_components(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sun & Xu 2014 (Alg. 2) for K score rows: s [K, N], y [N] bool -> AUC [K], V10 [K, m], V01 [K, n].

    With midranks T_z over all cases, T_x within positives, T_y within negatives:
    V10_i = (T_z_i - T_x_i) / n, V01_j = 1 - (T_z_j - T_y_j) / m, AUC = mean(V10) = mean(V01).
    """
    x, z = s[:, y], s[:, ~y]
    m, n = x.shape[1], z.shape[1]
    tz = stats.rankdata(s, axis=1)
    v10 = (tz[:, y] - stats.rankdata(x, axis=1)) / n
    v01 = 1 - (tz[:, ~y] - stats.rankdata(z, axis=1)) / m
    return v10.mean(1), v10, v01


def delong(y_true: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray | None = None,
           level: float = 0.95) -> dict[str, float]:
    """DeLong et al. (Biometrics 1988) AUC variance and paired AUC test, by the fast midrank
    algorithm of Sun & Xu ("Fast Implementation of DeLong's Algorithm for Comparing the Areas Under
    Correlated ROC Curves", IEEE Signal Processing Letters 21(11), 2014). Neither scipy nor sklearn
    has it, hence written here.

    Var = S10 / m + S01 / n, with S10, S01 the sample covariances (ddof=1) of the structural
    components over the m positives and n negatives. Covers test-case variation only.

    Args:
        y_true: [N] binary labels (0/1 or bool; 1 = positive).
        scores_a: [N] scores of model a (higher = more positive).
        scores_b: optional [N] scores of model b on the same cases.
        level: of the Wald intervals (normal quantile).

    Returns:
        One model: ``auc``, ``se``, ``lo``, ``hi`` (Wald interval clipped to [0, 1]). Two models:
        ``auc_a``, ``auc_b``, ``diff`` = auc_a - auc_b, its ``se``, ``z``, two-sided normal ``p`` and
        ``lo``, ``hi`` (Wald interval of diff, clipped to [-1, 1]). Both also hold ``n_pos``, ``n_neg``.
    """
    _check_level(level)
    y = np.asarray(y_true)
    if y.ndim != 1 or not np.isin(y, (0, 1)).all():
        raise MedsslError("delong needs 1-D binary labels (0/1 or bool)")
    y = y.astype(bool)
    rows = [scores_a] if scores_b is None else [scores_a, scores_b]
    s = np.asarray(rows, np.float64)
    if s.shape[1:] != y.shape:
        raise MedsslError(f"scores have shape {s.shape[1:]}, expected {y.shape} like y_true")
    if not np.isfinite(s).all():
        raise MedsslError("delong: non-finite scores")
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        raise MedsslError(f"delong needs at least 2 positives and 2 negatives, got {m} and {n}")
    aucs, v10, v01 = _delong_components(y, s)
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n  # [K, K]
    q = stats.norm.ppf((1 + level) / 2)
    counts = {"n_pos": m, "n_neg": n}
    if scores_b is None:
        a, se = float(aucs[0]), float(np.sqrt(cov[0, 0]))
        lo, hi = float(max(0.0, a - q * se)), float(min(1.0, a + q * se))
        return {"auc": a, "se": se, "lo": lo, "hi": hi, **counts}
    diff = float(aucs[0] - aucs[1])
    se = float(np.sqrt(max(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1], 0.0)))
    # se = 0: both models order every positive-negative pair alike (e.g. both separate perfectly)
    z = diff / se if se > 0 else 0.0 if diff == 0 else float(np.copysign(np.inf, diff))
    p = float(2 * stats.norm.sf(abs(z)))
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "diff": diff, "se": se, "z": z, "p": p,
            "lo": float(max(-1.0, diff - q * se)), "hi": float(min(1.0, diff + q * se)), **counts}
