"""Fleet clusters: online assignment of fingerprints plus a periodic full, id-stable re-clustering.

Between re-clusterings, ``river.cluster.KMeans`` assigns each new fingerprint and nudges its
centre. ``recluster`` runs a seeded batch k-means (k-means++, several starts) over the latest
fingerprint of every key, picks the number of clusters (2..k) by silhouette, and gives a new
centroid the id of the previous clustering's centroid when each is the other's nearest, so a
cluster keeps its id while it exists. Mutual nearest, rather than closest pairs first, so a
cluster that vanished does not hand its id to an unrelated one that appeared elsewhere (online
assignment would otherwise have dragged its centre there). A split keeps the id on the nearer
half; the other half, like any new cluster, gets a fresh id; ids are never reused.

>>> import numpy as np
>>> fc = FleetClusters(k=4, seed=0)
>>> for i in range(30):
...     _ = fc.assign(f"app{i}", np.array([10.0 * (i % 2), 0.0]) + 0.01 * i)
>>> labels = fc.recluster()
>>> len(set(labels.values())), labels["app0"] == labels["app2"] != labels["app1"]
(2, True)
"""

from __future__ import annotations

from collections import Counter, OrderedDict, defaultdict

import numpy as np
from river import cluster

__all__ = ["FleetClusters", "kmeans", "silhouette"]

_N_INIT = 4
_MAX_ITER = 100
_SILHOUETTE_SAMPLE = 1000


def _sqdist(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    return np.maximum((X * X).sum(1)[:, None] - 2.0 * X @ C.T + (C * C).sum(1)[None, :], 0.0)


def kmeans(X: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means from k-means++ seeds, best of a few starts: (labels, centroids)."""
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(_N_INIT):
        C = X[[rng.integers(len(X))]]
        for _ in range(1, k):
            d2 = _sqdist(X, C).min(1)
            p = d2 / d2.sum() if d2.sum() > 0 else None
            C = np.vstack([C, X[rng.choice(len(X), p=p)]])
        labels = np.full(len(X), -1)
        for _ in range(_MAX_ITER):
            D = _sqdist(X, C)
            new = D.argmin(1)
            if np.array_equal(new, labels):
                break
            labels = new
            for j in range(k):
                mask = labels == j
                # An emptied cluster restarts at the point worst served by the others.
                C[j] = X[mask].mean(0) if mask.any() else X[D.min(1).argmax()]
        inertia = float(_sqdist(X, C)[np.arange(len(X)), labels].sum())
        if best is None or inertia < best[0]:
            best = (inertia, labels, C.copy())
    assert best is not None
    return best[1], best[2]


def silhouette(D: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette from a full distance matrix; points alone in their cluster count 0."""
    _, labels = np.unique(labels, return_inverse=True)
    if labels.max() == 0:
        return 0.0
    onehot = np.eye(labels.max() + 1)[labels]
    counts = onehot.sum(0)
    sums = D @ onehot
    own = counts[labels] - 1
    a = np.where(own > 0, sums[np.arange(len(D)), labels] / np.maximum(own, 1), 0.0)
    other = np.where(onehot > 0, np.inf, sums / counts)
    b = other.min(1)
    s = np.where(own > 0, (b - a) / np.maximum(np.maximum(a, b), 1e-300), 0.0)
    return float(s.mean())


class FleetClusters:
    """Cluster ids per key (app) from their latest fingerprint; at most ``max_keys`` keys kept."""

    def __init__(
        self, k: int = 6, seed: int = 0, halflife: float = 0.1, max_keys: int = 100_000
    ) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if not 0.0 < halflife <= 1.0:
            raise ValueError(f"halflife must be in (0, 1], got {halflife!r}")
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ValueError(f"max_keys must be a positive integer, got {max_keys!r}")
        self.k = k
        self.seed = seed
        self.halflife = halflife
        self.max_keys = max_keys
        self.version = 0
        self.silhouette: float | None = None  # of the last re-clustering
        self._online = cluster.KMeans(n_clusters=k, halflife=halflife, seed=seed)
        self._next_id = k  # ids 0..k-1 are the online model's initial clusters
        self._dim: int | None = None
        self._defined: dict[int, np.ndarray] = {}  # centroids of the last re-clustering
        # key -> (latest vector, cluster id), least recently updated first.
        self._keys: OrderedDict[str, tuple[tuple[float, ...], int]] = OrderedDict()

    def assign(self, key: str, vec: np.ndarray) -> int:
        """Assign (and learn from) ``key``'s latest fingerprint; returns its cluster id."""
        v = np.asarray(vec, dtype=np.float64)
        if self._dim is None:
            if v.ndim != 1 or len(v) == 0:
                raise ValueError(f"expected a non-empty 1-D fingerprint, got shape {v.shape}")
            self._dim = len(v)
        elif v.shape != (self._dim,):
            raise ValueError(f"expected a fingerprint of {self._dim} values, got shape {v.shape}")
        if not np.isfinite(v).all():
            raise ValueError(f"fingerprint of {key!r} is not finite: {v}")
        values = tuple(v.tolist())
        cid: int = self._online.learn_predict_one(dict(enumerate(values)))
        self._keys[key] = (values, cid)
        self._keys.move_to_end(key)
        if len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        return cid

    def forget(self, key: str) -> None:
        self._keys.pop(key, None)

    def cluster_of(self, key: str) -> int | None:
        entry = self._keys.get(key)
        return None if entry is None else entry[1]

    def members(self) -> dict[int, int]:
        """Cluster id -> number of keys in it."""
        return dict(sorted(Counter(cid for _, cid in self._keys.values()).items()))

    def centroids(self) -> dict[int, np.ndarray]:
        """Current centre of every cluster that has members."""
        live = self.members()
        return {
            cid: np.array([c[i] for i in range(self._dim or 0)])
            for cid, c in self._online.centers.items()
            if cid in live
        }

    def __len__(self) -> int:
        return len(self._keys)

    def recluster(self) -> dict[str, int]:
        """Full k-means over every key's latest vector; returns key -> (stable) cluster id."""
        if not self._keys:
            return {}
        keys = sorted(self._keys)  # order-independent: same data and seed, same clusters
        X = np.array([self._keys[key][0] for key in keys])
        rng = np.random.default_rng(self.seed)
        labels, C = self._best_partition(X, rng)
        ids = self._match(C)
        self._defined = {ids[j]: C[j].copy() for j in range(len(C))}
        self._online.centers = {
            ids[j]: defaultdict(float, enumerate(C[j].tolist())) for j in range(len(C))
        }
        out = {key: ids[int(j)] for key, j in zip(keys, labels, strict=True)}
        for key, cid in out.items():
            self._keys[key] = (self._keys[key][0], cid)
        self.version += 1
        return out

    def _best_partition(
        self, X: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        kmax = min(self.k, len(np.unique(X, axis=0)))
        if kmax < 2:
            self.silhouette = None
            return np.zeros(len(X), dtype=int), X.mean(0, keepdims=True)
        sample = rng.permutation(len(X))[:_SILHOUETTE_SAMPLE]
        D = np.sqrt(_sqdist(X[sample], X[sample]))
        best: tuple[float, np.ndarray, np.ndarray] | None = None
        for kk in range(2, kmax + 1):
            labels, C = kmeans(X, kk, rng)
            keep = np.unique(labels)  # drop clusters that ended empty
            C, labels = C[keep], np.searchsorted(keep, labels)
            score = silhouette(D, labels[sample]) if len(keep) > 1 else -1.0
            if best is None or score > best[0] + 1e-9:  # ties keep the smaller k
                best = (score, labels, C)
        assert best is not None
        self.silhouette = best[0]
        return best[1], best[2]

    def _match(self, C: np.ndarray) -> list[int]:
        old = self._defined if self.version else self.centroids()
        ids = [-1] * len(C)
        if old:
            old_ids = list(old)
            D = _sqdist(C, np.array([old[i] for i in old_ids]))
            nearest_old, nearest_new = D.argmin(1), D.argmin(0)
            for j in range(len(C)):
                if nearest_new[nearest_old[j]] == j:
                    ids[j] = old_ids[nearest_old[j]]
        for j in range(len(C)):
            if ids[j] < 0:
                ids[j] = self._next_id
                self._next_id += 1
        return ids
