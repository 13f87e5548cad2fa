"""DNS name features: registered domain (eTLD+1 by the Public Suffix List, offline), shape, and a
DGA-likeness score.

The PSL ships inside the pinned `publicsuffixlist` package, so no network is needed. The DGA score
is a transparent heuristic instead of a trained model: random-looking labels have high character
entropy, few common English bigrams, digits mixed into letters and long consonant runs. Each part
is in [0, 1] and the score is their weighted mean; `dga_threshold` in the rule pack is the cut-off.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from publicsuffixlist import PublicSuffixList


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    # parsed on first use (~0.1 s): commands that never look at a DNS name start faster, and
    # `detect` parses it while its workers already scan the input
    return PublicSuffixList()


CLUSTER_SUFFIXES = (".cluster.local", ".svc", ".local", ".internal")
# the 60 most frequent bigrams of English text (Norvig's Google-books counts): pronounceable
# names hit many of them, random strings few
COMMON_BIGRAMS = frozenset(
    ["th", "he", "in", "er", "an", "re", "on", "at", "en", "nd", "ti", "es", "or", "te", "of", "ed", "is", "it", "al", "ar", "st", "to", "nt", "ng", "se", "ha", "as", "ou", "io", "le", "ve", "co", "me", "de", "hi", "ri", "ro", "ic", "ne", "ea", "ra", "ce", "li", "ch", "ll", "be", "ma", "si", "om", "ur", "ca", "el", "ta", "la", "ns", "di", "fo", "ho", "pe", "ec", "pr", "no", "ct", "us", "ac", "ot", "il", "tr", "ly"])
VOWELS = frozenset("aeiouy")


@dataclass(frozen=True)
class NameFeatures:
    name: str  # lower-case, without the trailing dot
    registered: str  # eTLD+1 ("" when the name is a public suffix or cluster-local)
    tld: str
    length: int
    labels: int
    max_label: int
    subdomain: str  # the part left of the registered domain
    entropy: float
    dga: float
    cluster_local: bool


def normalise(query: str) -> str:
    return query.rstrip(".").lower()


def entropy(text: str) -> float:
    if not text:
        return 0.0
    counts = Counter(text)
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def dga_score(label: str) -> float:
    """0 (word-like) .. 1 (random-looking) for the most significant label of a name."""
    s = "".join(ch for ch in label if ch.isalnum())
    if len(s) < 6 or label.startswith("xn--"):  # punycode (IDN) labels are random-looking by design
        return 0.0
    letters = [ch for ch in s if ch.isalpha()]
    bigrams = [s[i:i + 2] for i in range(len(s) - 1)]
    common = sum(b in COMMON_BIGRAMS for b in bigrams) / len(bigrams)
    ent = min(entropy(s) / 4.0, 1.0)  # 4 bits ≈ a random string over ~16+ symbols at these lengths
    digits = sum(ch.isdigit() for ch in s) / len(s)
    mixed = 1.0 if letters and 0.15 <= digits <= 0.6 else digits
    run = longest = 0
    for ch in s:
        run = run + 1 if ch.isalpha() and ch not in VOWELS else 0
        longest = max(longest, run)
    consonants = min(longest / 5.0, 1.0)
    length = min(max(len(s) - 6, 0) / 14.0, 1.0)
    return round(0.35 * (1 - min(common / 0.35, 1.0)) + 0.2 * ent + 0.15 * mixed + 0.15 * consonants
                 + 0.15 * length, 4)


@lru_cache(maxsize=200_000)
def features(query: str) -> NameFeatures:
    name = normalise(query)
    cluster_local = name.endswith(CLUSTER_SUFFIXES) or "." not in name
    labels = name.split(".") if name else []
    # a name that is itself a (private-section) public suffix, like googleapis.com, is its own
    # registered domain for counting purposes
    registered = "" if cluster_local else (_psl().privatesuffix(name) or name)
    tld = labels[-1] if labels else ""
    sub = name[: -len(registered) - 1] if registered and len(name) > len(registered) else ""
    sld = registered.split(".")[0] if registered else (labels[0] if labels else "")
    # the label a DGA randomises is the registered one; tunnels randomise the subdomain instead
    return NameFeatures(name=name, registered=registered, tld=tld, length=len(name), labels=len(labels),
                        max_label=max((len(x) for x in labels), default=0), subdomain=sub,
                        entropy=round(entropy(name.replace(".", "")), 4), dga=dga_score(sld),
                        cluster_local=cluster_local)
