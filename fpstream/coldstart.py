"""Cold start: what a never-seen instance will need, from what is known before it runs.

A River multinomial naive Bayes learns, online, which cluster an app falls in from the tokens
of its labels and its size; a deploy request is mapped to a cluster distribution and gets the
typical need of the most likely cluster. Unknown label values carry no weight, so the request
falls back on the labels it shares with known apps, then on its requested size, then on the
fleet prior.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from river import naive_bayes

from fpstream.events import RESOURCES


@dataclass(frozen=True, slots=True)
class Guess:
    need: dict[str, float]
    cluster: int
    confidence: float


def tokens(labels: Mapping[str, str], size: Mapping[str, float]) -> dict[str, int]:
    """Label and size tokens; sizes are bucketed by powers of two so near sizes share one."""
    out = {f"{k}={v}": 1 for k, v in labels.items()}
    for key in ("cpu_cores", "mem_bytes"):
        value = size.get(key)
        if value and value > 0:
            out[f"{key}~{round(math.log2(value))}"] = 1
    return out


class ColdStart:
    def __init__(self, seed: int = 0, alpha: float = 0.5) -> None:
        self.seed = seed  # the model is deterministic; kept for a uniform constructor
        self.classifier = naive_bayes.MultinomialNB(alpha=alpha)
        self.cluster_needs: dict[int, dict[str, float]] = {}
        self.learned = 0

    def learn(self, labels: Mapping[str, str], capacity: Mapping[str, float], cluster: int,
              observed: Mapping[str, float]) -> None:
        x = tokens(labels, capacity)
        if x:
            self.classifier.learn_one(x, cluster)
            self.learned += 1

    def set_cluster_needs(self, cluster: int, need: Mapping[str, float]) -> None:
        if need:
            self.cluster_needs[cluster] = dict(need)

    def predict(self, labels: Mapping[str, str], requested: Mapping[str, float]) -> Guess:
        x = tokens(labels, requested)
        proba = self.classifier.predict_proba_one(x) if x and self.learned else {}
        ranked = sorted(((p, c) for c, p in proba.items() if c in self.cluster_needs),
                        reverse=True)
        if ranked:
            p, cluster = ranked[0]
            return Guess(dict(self.cluster_needs[cluster]), int(cluster), float(p))
        if requested:
            need = {r: float(requested.get(r, 0.0)) for r in RESOURCES}
            return Guess(need, -1, 0.1)
        return Guess(self.fleet_prior(), -1, 0.05)

    def fleet_prior(self) -> dict[str, float]:
        """The median typical need over clusters: a guess for an instance nothing is known of."""
        out = {}
        for r in RESOURCES:
            values = sorted(n.get(r, 0.0) for n in self.cluster_needs.values())
            out[r] = values[len(values) // 2] if values else 0.0
        return out
