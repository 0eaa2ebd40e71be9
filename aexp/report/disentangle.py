"""Disentanglement metrics of codes against the factors that generated the data: MIG, DCI
(disentanglement, completeness, informativeness), SAP, the FactorVAE score and the beta-VAE
score. Pure numpy + scikit-learn on two arrays, codes float [N, D] and factors int [N, K] (value
indices), so each metric can be checked on hand-made codes whose answer is known (tests) and
scored for a model, a random encoder (the trivial baseline) and the true factors (the ceiling)
alike (aexp.report.factors).

Every estimator choice is pinned here and reported with the numbers (`estimators`): the
metrics are known to move with them (disentanglement_lib's issue #33 on the MI estimator).
The two vote-based scores draw their groups from the given samples (a finite test split) rather
than rendering new images: a group "with factor k fixed" is drawn, with replacement, from the
samples that share one value of k. Factors with a single value among the samples carry no
information and are left out of every metric."""
import warnings

import numpy as np

ESTIMATORS = {
    "mig": "mutual information of each code unit, discretised into {bins} equal-width bins "
           "over its range, with each factor (sklearn mutual_info_score, nats), divided by the "
           "factor's entropy; the gap between the two most informative units, averaged over factors",
    "dci": "importance matrix (impurity decrease) from one RandomForestClassifier per factor "
           "(n_estimators={dci_trees}, max_features=None, min_samples_leaf=8, random_state={seed}: "
           "bagged trees, a lighter stand-in for disentanglement_lib's gradient boosting) fitted "
           "on half of the samples; informativeness = its accuracy on the other half; "
           "entropies with log base K (disentanglement) and D (completeness), as Eastwood & Williams",
    "sap": "accuracy of LinearSVC(C=0.01, class_weight=balanced) on one code unit predicting one "
           "factor (half the samples to fit, half to score), the gap between the two best units, "
           "averaged over factors (disentanglement_lib's discrete-factor SAP)",
    "factorvae": "{votes_train} training + {votes_eval} evaluation votes; each fixes a factor "
                 "and one of its values, draws {batch} samples sharing it, and votes for the "
                 "unit of least variance after scaling each unit by its std over all samples "
                 "(units of variance < 0.05 left out); a majority-vote classifier unit -> factor",
    "betavae": "{votes_train} training + {votes_eval} evaluation points; each fixes a factor, "
               "draws {batch} pairs sharing its value and takes the mean |z1 - z2|; accuracy of "
               "LogisticRegression (sklearn's defaults: C=1, lbfgs, max_iter=100) predicting the "
               "fixed factor",
}
DEFAULTS = {"points": 4000, "bins": 20, "dci_trees": 10, "votes_train": 400, "votes_eval": 200,
            "batch": 64, "seed": 0}


def estimators(settings: dict) -> dict:
    """The pinned estimator of every metric, in words, with `settings` filled in."""
    s = {**DEFAULTS, **settings}
    return {name: text.format(**s) for name, text in ESTIMATORS.items()} | {"settings": s}


def score_all(codes, factors, settings: dict | None = None, names=None) -> dict:
    """Every metric of `codes` against `factors` (at most `points` samples, drawn with `seed`),
    with the units x factors mutual information (nats) and the names of the factors used."""
    with warnings.catch_warnings():   # sklearn's notes on small samples and unconverged fits
        warnings.simplefilter("ignore")
        return _score_all(codes, factors, {**DEFAULTS, **(settings or {})}, names)


def _score_all(codes, factors, s: dict, names) -> dict:
    codes, factors = np.asarray(codes, np.float64), np.asarray(factors, np.int64)
    keep = np.random.default_rng([s["seed"], 0]).permutation(len(codes))[:s["points"]]
    cols = live_columns(factors[keep])
    codes, factors = codes[keep], factors[keep][:, cols]
    names = [names[k] if names else f"factor{k}" for k in cols]
    mi = mutual_information(codes, factors, s["bins"])
    d, c, i = dci(codes, factors, s["dci_trees"], s["seed"])
    return {"mig": mig(mi, factors), "dci_disentanglement": d, "dci_completeness": c,
            "dci_informativeness": i, "sap": sap(codes, factors, s["seed"]),
            "factorvae_score": factorvae_score(codes, factors, s["votes_train"], s["votes_eval"],
                                               s["batch"], s["seed"]),
            "betavae_score": betavae_score(codes, factors, s["votes_train"], s["votes_eval"],
                                           s["batch"], s["seed"]),
            "samples": len(codes), "factors": names,
            "mutual_information": np.round(mi, 5).tolist()}


def live_columns(factors: np.ndarray) -> list[int]:
    """The columns of `factors` that take more than one value."""
    return [k for k in range(factors.shape[1]) if len(np.unique(factors[:, k])) > 1]


def discretize(codes: np.ndarray, bins: int) -> np.ndarray:
    """Each unit's values as bin indices 0..bins-1 of `bins` equal-width bins over its range."""
    out = np.zeros(codes.shape, np.int64)
    for j in range(codes.shape[1]):
        edges = np.histogram_bin_edges(codes[:, j], bins)
        out[:, j] = np.digitize(codes[:, j], edges[1:-1])
    return out


def mutual_information(codes: np.ndarray, factors: np.ndarray, bins: int = 20) -> np.ndarray:
    """[D, K] mutual information (nats) between each discretised unit and each factor."""
    from sklearn.metrics import mutual_info_score
    disc = discretize(codes, bins)
    return np.array([[mutual_info_score(factors[:, k], disc[:, j]) for k in range(factors.shape[1])]
                     for j in range(codes.shape[1])])


def entropy(factors: np.ndarray) -> np.ndarray:
    """[K] entropy (nats) of each factor over the samples."""
    from sklearn.metrics import mutual_info_score
    return np.array([mutual_info_score(factors[:, k], factors[:, k]) for k in range(factors.shape[1])])


def mig(mi: np.ndarray, factors: np.ndarray) -> float:
    """Mutual information gap (Chen et al. 2018): per factor, (largest - second largest MI over
    units) / the factor's entropy, averaged. A one-unit code's second MI is 0."""
    top = -np.sort(-np.vstack([mi, np.zeros((1, mi.shape[1]))]), axis=0)[:2]
    return float(np.mean((top[0] - top[1]) / entropy(factors)))


def halves(n: int, seed: int, salt: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng([seed, salt]).permutation(n)
    return perm[:n // 2], perm[n // 2:]


def dci(codes: np.ndarray, factors: np.ndarray, trees: int, seed: int) -> tuple[float, float, float]:
    """(disentanglement, completeness, informativeness) of Eastwood & Williams (2018)."""
    from sklearn.ensemble import RandomForestClassifier
    fit, test = halves(len(codes), seed, 1)
    d, k = codes.shape[1], factors.shape[1]
    importance, accuracy = np.zeros((d, k)), []
    for f in range(k):
        model = RandomForestClassifier(n_estimators=trees, max_features=None, min_samples_leaf=8,
                                       random_state=seed)
        model.fit(codes[fit], factors[fit, f])
        importance[:, f] = np.abs(model.feature_importances_)
        accuracy.append(model.score(codes[test], factors[test, f]))
    return (*dci_scores(importance), float(np.mean(accuracy)))


def dci_scores(importance: np.ndarray) -> tuple[float, float]:
    """(disentanglement, completeness) of an importance matrix [D units, K factors]."""
    d, k = importance.shape
    total = importance.sum()
    if total <= 0:
        return 0.0, 0.0
    per_unit = importance / np.maximum(importance.sum(1, keepdims=True), 1e-12)
    dis = 1 - _entropy_rows(per_unit, k)
    rho = importance.sum(1) / total
    per_factor = importance / np.maximum(importance.sum(0, keepdims=True), 1e-12)
    comp = 1 - _entropy_rows(per_factor.T, d)
    return float(np.sum(rho * dis)), float(np.mean(comp))


def _entropy_rows(p: np.ndarray, base: int) -> np.ndarray:
    """Entropy of each row of probabilities, log base `base` (0 for base 1: one outcome)."""
    if base < 2:
        return np.zeros(len(p))
    logs = np.log(np.where(p > 0, p, 1.0))
    return -(p * logs).sum(1) / np.log(base)


def sap(codes: np.ndarray, factors: np.ndarray, seed: int) -> float:
    """Separated attribute predictability (Kumar et al. 2018), discrete-factor form."""
    from sklearn.svm import LinearSVC
    fit, test = halves(len(codes), seed, 2)
    scores = np.zeros((codes.shape[1], factors.shape[1]))
    for j in range(codes.shape[1]):
        x = codes[:, j:j + 1]
        if np.ptp(x) == 0:
            continue                       # a constant unit predicts nothing (score 0)
        for k in range(factors.shape[1]):
            model = LinearSVC(C=0.01, class_weight="balanced", random_state=seed)
            model.fit(x[fit], factors[fit, k])
            scores[j, k] = model.score(x[test], factors[test, k])
    top = -np.sort(-np.vstack([scores, np.zeros((1, scores.shape[1]))]), axis=0)[:2]
    return float(np.mean(top[0] - top[1]))


class Groups:
    """Samples grouped by the value of each factor: `draw(k, v, n)` gives n indices (with
    replacement) of samples whose factor k has value v."""

    def __init__(self, factors: np.ndarray, rng: np.random.Generator):
        self.factors, self.rng = factors, rng
        self.order = [np.argsort(factors[:, k], kind="stable") for k in range(factors.shape[1])]
        self.span = []                     # per factor: [value] -> (first, end) in its order
        for k, o in enumerate(self.order):
            values, first, counts = np.unique(factors[o, k], return_index=True, return_counts=True)
            span = np.zeros((values.max() + 1, 2), np.int64)
            span[values] = np.c_[first, first + counts]
            self.span.append(span)

    def draw(self, k: int, values, n: int | None = None) -> np.ndarray:
        """One index per value of `values` (an array), or `n` for a single value."""
        values = np.atleast_1d(values) if n is None else np.full(n, values)
        span = self.span[k][values]
        return self.order[k][span[:, 0] + self.rng.integers(0, span[:, 1] - span[:, 0])]


def factorvae_score(codes, factors, votes_train: int, votes_eval: int, batch: int, seed: int) -> float:
    """FactorVAE score (Kim & Mnih 2018); chance is about 1/K, the ceiling 1."""
    rng = np.random.default_rng([seed, 3])
    groups = Groups(factors, rng)
    std = codes.std(0)
    active = np.flatnonzero(codes.var(0) > 0.05)
    if len(active) == 0:
        return 0.0
    k_all = factors.shape[1]

    def vote():
        k = int(rng.integers(k_all))
        v = factors[rng.integers(len(factors)), k]
        z = codes[groups.draw(k, v, batch)][:, active] / std[active]
        return int(np.argmin(z.var(0))), k
    train = np.zeros((len(active), k_all), np.int64)
    for _ in range(votes_train):
        unit, k = vote()
        train[unit, k] += 1
    guess = train.argmax(1)
    hits = sum(guess[unit] == k for unit, k in (vote() for _ in range(votes_eval)))
    return float(hits / votes_eval)


def betavae_score(codes, factors, votes_train: int, votes_eval: int, batch: int, seed: int) -> float:
    """beta-VAE score (Higgins et al. 2017); chance is about 1/K, the ceiling 1."""
    from sklearn.linear_model import LogisticRegression
    rng = np.random.default_rng([seed, 4])
    groups = Groups(factors, rng)
    k_all = factors.shape[1]

    def points(n):
        ks = rng.integers(k_all, size=n)
        feats = np.empty((n, codes.shape[1]))
        for i, k in enumerate(ks):
            first = rng.integers(len(codes), size=batch)
            second = groups.draw(int(k), factors[first, k])
            feats[i] = np.abs(codes[first] - codes[second]).mean(0)
        return feats, ks
    xt, yt = points(votes_train)
    xe, ye = points(votes_eval)
    if len(np.unique(yt)) < 2:
        return float(np.mean(ye == yt[0]))
    model = LogisticRegression(C=1.0, max_iter=100)
    model.fit(xt, yt)
    return float(model.score(xe, ye))
