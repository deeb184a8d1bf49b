"""Reference points the eval reports beside the model, on the same rows.

* HITL predictors on the telemetry alone: majority, the best one-field threshold, the
  trust gate ("escalate iff trust < requirement"), the two-field rule ("... or
  distress"), a small MLP on the raw telemetry vector, and the noise-free rule (the
  oracle). The ones that learn are fit on the train split only, deterministically.
* 95% confidence intervals: Wilson for a proportion, percentile bootstrap for any
  statistic of per-example arrays.
* A prompt-blind byte n-gram over responses, fit on the train split, scored in nats
  per UTF-8 byte (tokenizer-independent, like the generator's floor in the manifest).

Everything is a pure function of records (the dicts of `records.load_split`).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from promethios_jax.data import schema

Z95 = 1.959963984540054


def hitl_labels(records) -> np.ndarray:
    """The recorded HITL labels, int64[N]."""
    return np.array([int(r["labels"]["hitl"]) for r in records], np.int64)


def telemetry_matrix(records) -> np.ndarray:
    """float32[N, TELEMETRY_DIM]: what the model receives (`schema.telemetry_vector`)."""
    if not len(records):
        return np.zeros((0, schema.TELEMETRY_DIM), np.float32)
    return np.stack([schema.telemetry_vector(r["telemetry"], r["domain"]) for r in records])


@dataclasses.dataclass(frozen=True)
class Baseline:
    """A HITL predictor: `prob(records)` is P(escalate) per record, in [0, 1]."""

    name: str
    description: str
    prob: Callable

    def predict(self, records) -> np.ndarray:
        return (np.asarray(self.prob(records)) >= 0.5).astype(np.int64)


def majority(train) -> Baseline:
    """The train split's majority class, for every row."""
    y = hitl_labels(train)
    cls = int(y.mean() > 0.5) if len(y) else 0
    return Baseline("majority", f"always {'escalate' if cls else 'proceed'} (train majority)",
                    lambda recs: np.full(len(recs), float(cls)))


def _field(records, key: str) -> np.ndarray:
    if key == "domain":
        return np.array([r["domain"] for r in records])
    return np.array([r["telemetry"][key] for r in records])


def one_field_threshold(train) -> Baseline:
    """The best single-field predictor on train: a threshold on a numeric tag, or a
    per-value majority on a categorical one (emotion, decision, model, domain)."""
    y = hitl_labels(train)
    best = (-1.0, None, None)
    for key in schema.NUMERIC_KEYS:
        x = _field(train, key).astype(np.float64)
        order = np.argsort(x, kind="stable")
        xs, ys = x[order], y[order]
        cuts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])  # first index of each distinct value
        pos_below = np.r_[0, np.cumsum(ys)][cuts]  # positives with x < xs[cut]
        neg_above = (len(ys) - ys.sum()) - (cuts - pos_below)
        for below, acc in ((True, pos_below + neg_above), (False, len(ys) - pos_below - neg_above)):
            i = int(np.argmax(acc))
            if acc[i] / len(y) > best[0]:
                best = (acc[i] / len(y), (key, float(xs[cuts[i]]), below), None)
    for key in ("emotion", "decision", "model", "domain"):
        x = _field(train, key)
        table = {v: int(y[x == v].mean() > 0.5) for v in np.unique(x)}
        acc = np.mean([table[v] == t for v, t in zip(x, y)])
        if acc > best[0]:
            best = (acc, None, (key, table))
    _, num, cat = best
    if num is not None:
        key, t, below = num

        def prob(recs):
            x = _field(recs, key).astype(np.float64)
            return ((x < t - 1e-9) if below else (x >= t - 1e-9)).astype(np.float64)

        return Baseline("one_field", f"escalate iff {key} {'<' if below else '>='} {t:.2f}", prob)
    key, table = cat
    fallback = float(y.mean() > 0.5)
    return Baseline("one_field", f"escalate iff {key} in {sorted(k for k, v in table.items() if v)}",
                    lambda recs: np.array([table.get(v, fallback) for v in _field(recs, key)], np.float64))


def trust_gate() -> Baseline:
    """Escalate iff trust is below the domain's requirement."""
    def prob(recs):
        a = schema.record_arrays(recs)
        return (a["trust"] < schema.requirement(a["domain"]) - 1e-9).astype(np.float64)

    return Baseline("trust_gate", "escalate iff trust < the domain's requirement", prob)


def two_field_rule() -> Baseline:
    """Escalate iff trust is below the requirement or the user is in distress: the rule
    without its evidence gate."""
    def prob(recs):
        r = schema.rule_records(recs)
        return (~r["evidence"]).astype(np.float64)

    return Baseline("two_field", "escalate iff trust < requirement or distress", prob)


def oracle() -> Baseline:
    """The noise-free rule: what the labels are, before reviewer noise."""
    return Baseline("oracle", "the noise-free governance rule",
                    lambda recs: schema.rule_records(recs)["hitl"].astype(np.float64))


def _mlp_forward(params, x):
    w1, c1, w2, c2 = params
    h = np.maximum(x @ w1 + c1, 0.0)
    return h, h @ w2 + c2


def _logistic_loss(logit, y) -> float:
    return float(np.mean(np.logaddexp(0.0, logit) - y * logit))


def mlp(train, hidden: int = 64, epochs: int = 200, batch: int = 256, lr: float = 1e-2,
        weight_decay: float = 1e-4, patience: int = 20, seed: int = 0) -> Baseline:
    """A one-hidden-layer ReLU MLP on the raw telemetry vector, fit on train.

    Minibatch Adam on the logistic loss with L2, early-stopped on a tenth of train held
    back for validation (the labels carry 2.5% noise that a free fit would memorise);
    seeded numpy throughout, so the fit is deterministic.
    """
    x = telemetry_matrix(train).astype(np.float64)
    y = hitl_labels(train).astype(np.float64)
    if len(y) < 10:
        raise ValueError(f"mlp baseline: the train split has {len(y)} examples; it needs at least 10")
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 1e-6, std, 1.0)
    x = ((x - mean) / std).astype(np.float32)
    y = y.astype(np.float32)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_val = max(1, len(y) // 10)
    xv, yv, xf, yf = x[order[:n_val]], y[order[:n_val]], x[order[n_val:]], y[order[n_val:]]
    d = x.shape[1]
    params = [rng.normal(0, np.sqrt(2 / d), (d, hidden)).astype(np.float32), np.zeros(hidden, np.float32),
              rng.normal(0, np.sqrt(1 / hidden), hidden).astype(np.float32), np.zeros((), np.float32)]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    b1, b2, t = 0.9, 0.999, 0
    best, best_loss, stale = [p.copy() for p in params], np.inf, 0
    for _ in range(epochs):
        perm = rng.permutation(len(yf))
        for start in range(0, len(perm), batch):
            idx = perm[start:start + batch]
            xb, yb = xf[idx], yf[idx]
            h, logit = _mlp_forward(params, xb)
            g = (1.0 / (1.0 + np.exp(-logit)) - yb) / len(idx)  # d loss / d logit
            gh = np.outer(g, params[2]) * (h > 0)
            grads = [xb.T @ gh + weight_decay * params[0], gh.sum(0), h.T @ g + weight_decay * params[2], g.sum()]
            t += 1
            for i, gr in enumerate(grads):
                m[i] = b1 * m[i] + (1 - b1) * gr
                v[i] = b2 * v[i] + (1 - b2) * gr * gr
                params[i] = (params[i] - lr * (m[i] / (1 - b1 ** t)) / (np.sqrt(v[i] / (1 - b2 ** t)) + 1e-8)
                             ).astype(np.float32)
        loss = _logistic_loss(_mlp_forward(params, xv)[1], yv)
        if loss < best_loss - 1e-6:
            best, best_loss, stale = [p.copy() for p in params], loss, 0
        else:
            stale += 1
            if stale >= patience:
                break

    def prob(recs):
        z = ((telemetry_matrix(recs).astype(np.float64) - mean) / std).astype(np.float32)
        return 1.0 / (1.0 + np.exp(-_mlp_forward(best, z)[1].astype(np.float64)))

    return Baseline("mlp", f"MLP {d}-{hidden}-1 on the raw telemetry, fit on train", prob)


def fit_baselines(train) -> dict:
    """Every HITL baseline, fit on `train` where it learns: {name: Baseline}."""
    return {b.name: b for b in (majority(train), one_field_threshold(train), trust_gate(), two_field_rule(),
                                mlp(train), oracle())}


def wilson_interval(successes, n, z: float = Z95) -> tuple:
    """Wilson score interval of a proportion (95% by default); (nan, nan) when n == 0."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def bootstrap_interval(statistic: Callable, *arrays, n_boot: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple:
    """Percentile bootstrap interval of `statistic(*arrays)`, resampling rows together."""
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0])
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = np.array([statistic(*(a[idx] for a in arrays))
                      for idx in rng.integers(0, n, (n_boot, n))], np.float64)
    lo, hi = np.nanquantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def accuracy(pred, labels) -> dict:
    """{accuracy, ci_low, ci_high, n}: accuracy with its 95% Wilson interval."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    n = len(labels)
    k = int((pred == labels).sum())
    lo, hi = wilson_interval(k, n)
    return {"accuracy": k / n if n else float("nan"), "ci_low": lo, "ci_high": hi, "n": n}


def score(baselines: dict, records) -> dict:
    """HITL accuracy (with its 95% CI) of each baseline on `records`, overall and on the
    evidence slice (rows where neither trust nor distress decides)."""
    y = hitl_labels(records)
    evidence = schema.rule_records(records)["evidence"]
    out = {}
    for name, b in baselines.items():
        pred = b.predict(records)
        out[name] = {**accuracy(pred, y), "evidence_slice": accuracy(pred[evidence], y[evidence]),
                     "description": b.description}
    return out


# ---- Response language baseline -------------------------------------------------------

_END, _BOS, _BASE = 256, 257, 258  # symbols: bytes, end of response, start padding


class ByteNgram:
    """Prompt-blind byte n-gram over responses with interpolated absolute discounting.

    P_k(b | h) = max(c(h b) - D, 0) / c(h) + D T(h) / c(h) * P_{k-1}(b | h'), where T(h)
    is the number of distinct symbols seen after h and h' drops h's oldest byte; an
    unseen h falls back to P_{k-1}; P_0 is uniform over the 256 bytes and the end symbol.
    The end of each response is predicted too (its cost counts; its byte does not).
    """

    def __init__(self, order: int = 5, discount: float = 0.75):
        if order < 1 or not 0 < discount < 1:
            raise ValueError(f"ByteNgram needs order >= 1 and 0 < discount < 1, got {order}, {discount}")
        self.order, self.discount = order, discount
        self.tables = None

    def _grams(self, texts) -> list:
        """Per order k = 1..order: (context keys, full keys) of every predicted position."""
        enc = [t.encode("utf-8") for t in texts]
        if not enc:
            return [(np.zeros(0, np.int64), np.zeros(0, np.int64))] * self.order
        lens = np.array([len(e) for e in enc], np.int64)
        pad = self.order - 1
        span = lens + pad + 1  # start padding, the bytes, the end symbol
        starts = np.r_[0, np.cumsum(span)[:-1]].astype(np.int64)
        seq = np.full(int(span.sum()), _BOS, np.int64)
        body = np.frombuffer(b"".join(enc), np.uint8).astype(np.int64)
        seq[np.repeat(starts + pad - np.r_[0, np.cumsum(lens)[:-1]], lens) + np.arange(len(body))] = body
        seq[starts + pad + lens] = _END
        n_pred = lens + 1  # every byte and the end
        pos = np.repeat(starts + pad - np.r_[0, np.cumsum(n_pred)[:-1]], n_pred) + np.arange(int(n_pred.sum()))
        out, ctx = [], np.zeros(len(pos), np.int64)
        for k in range(1, self.order + 1):
            if k > 1:
                ctx = ctx + seq[pos - (k - 1)] * _BASE ** (k - 2)
            out.append((ctx, ctx * _BASE + seq[pos]))
        return out

    def fit(self, texts) -> "ByteNgram":
        self.tables = []
        for _, full in self._grams(texts):
            keys, counts = np.unique(full, return_counts=True)  # sorted, so their contexts are too
            first = np.flatnonzero(np.r_[True, np.diff(keys // _BASE) != 0]) if len(keys) else keys
            hist = keys[first] // _BASE
            hist_counts = np.add.reduceat(counts, first) if len(keys) else counts
            types = np.diff(np.r_[first, len(keys)])
            self.tables.append((keys, counts, hist, hist_counts, types))
        return self

    @staticmethod
    def _lookup(keys, values, query) -> np.ndarray:
        if not len(keys):
            return np.zeros(len(query), np.int64)
        i = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
        return np.where(keys[i] == query, values[i], 0)

    def _probs(self, texts) -> np.ndarray:
        """P of every predicted symbol (each byte and each response's end), in order."""
        if self.tables is None:
            raise ValueError("ByteNgram: fit it before scoring")
        p = None
        for (ctx, full), (keys, counts, hist, hist_counts, types) in zip(self._grams(texts), self.tables):
            if p is None:
                p = np.full(len(full), 1.0 / (_END + 1))
            c = self._lookup(keys, counts, full)
            ch = self._lookup(hist, hist_counts, ctx)
            t = self._lookup(hist, types, ctx)
            seen = ch > 0
            safe = np.where(seen, ch, 1)
            p = np.where(seen, np.maximum(c - self.discount, 0) / safe + self.discount * t / safe * p, p)
        return p

    def nats(self, texts) -> tuple:
        """(total nats, total UTF-8 bytes) of `texts` under the fitted model."""
        each = self.nats_each(texts)
        return float(each.sum()), sum(len(t.encode("utf-8")) for t in texts)

    def nats_each(self, texts) -> np.ndarray:
        """float64[len(texts)]: the nats of each text (its bytes and its end)."""
        texts = list(texts)
        if not texts:
            return np.zeros(0)
        nll = -np.log(self._probs(texts))
        starts = np.r_[0, np.cumsum([len(t.encode("utf-8")) + 1 for t in texts])[:-1]]
        return np.add.reduceat(nll, starts)

    def nats_per_byte(self, texts) -> float:
        total, nbytes = self.nats(texts)
        return total / nbytes if nbytes else float("nan")


def ngram_nats_per_byte(train, splits: dict, order: int = 5) -> dict:
    """{split: nats per byte} of each split's responses under a byte n-gram fit on train's."""
    model = ByteNgram(order).fit([r["response"] for r in train])
    return {name: model.nats_per_byte([r["response"] for r in recs]) for name, recs in splits.items()}
