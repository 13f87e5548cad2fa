"""Detection state across restarts: the engine's windows, open alerts and suppression intervals,
saved with the input positions they belong to, and restored at the next start.

Format: one JSON document (`STATE_FILE` in the monitor's state directory), written atomically
(temporary file, fsync, rename)::

    {"format": "flowtrail-detect-state", "version": 1, "saved_at": "<RFC 3339 wall time>",
     "engine": {...},                 # t0, newest flow time, node silences, the last lost-events alert
     "rules": [{"id", "digest", "function", "agg": {...}, "open": [alert...], "done": [alert...]}],
     "policy_dns": {ip: [names]},     # the policy replay's DNS answers (FQDN policies), when policies are on
     "positions": {name: {...}|null}} # each source's position file, as it was at this checkpoint

Times are integer nanoseconds. A window of flow times is packed as three columns (group keys,
lengths, all times concatenated), so saving and loading cost numpy work, not a Python object per
flow. Nothing is pickled: loading only builds numbers, strings, lists and dicts, then checks them.

A rule's state is keyed by its id and `rule_digest()`, a hash of what decides its verdicts (scope,
conditions, grouping, aggregation, tunable values, exceptions, suppression). A rule whose digest
changed, or that is gone, loses its state; presentation (title, severity, description) may change
freely. A file that is corrupt, of another version, or of a wholly different rule set is reported
and ignored: detection starts empty, as without a state file.

Positions: offsets of followed files and relay positions are saved by the sources several times a
second, detection state only at checkpoints. So that both describe the same point of the input,
every checkpoint first makes each source write its committed position, then copies those files
into the state document; at the next start the position files are put back to the copies before
any source reads them. After a crash the input is re-read from the last checkpoint into the state
of that checkpoint: nothing is counted twice, nothing is missed, and alerts opened after the
checkpoint are sent again under the same id (at-least-once, as the sinks' spools already are).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from flowtrail.detect.alerts import Alert, iso_ns
from flowtrail.detect.rules import Rule

if TYPE_CHECKING:
    from flowtrail.detect.engine import Engine

log = logging.getLogger("flowtrail.state")

FORMAT = "flowtrail-detect-state"
VERSION = 1
STATE_FILE = "detect-state.json"

# what decides a rule's verdicts; title, severity and texts only shape its alerts
_VERDICT_KEYS = ("scope", "where", "group_by", "entity", "entity_kind", "peers", "explain", "aggregate")


class StateError(ValueError):
    """A state document that cannot be restored (corrupt, another format or version)."""


def rule_digest(rule: Rule) -> str:
    doc: dict[str, Any] = {k: getattr(rule, k) for k in _VERDICT_KEYS}
    doc["id"] = rule.id
    doc["tunables"] = {k: v.get("value") for k, v in rule.tunables.items()}
    doc["exceptions"] = rule.exceptions
    doc["suppress_ns"] = rule.suppress_ns
    # default=str: YAML may carry dates; any stable rendering will do for a hash
    raw = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str)
    return hashlib.sha256(raw).hexdigest()[:24]


# -- checks ------------------------------------------------------------------------------------------

def need(cond: bool, what: str) -> None:
    if not cond:
        raise StateError(what)


def member(doc: Any, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    need(isinstance(doc, dict) and key in doc, f"{what}: no {key!r}")
    v = doc[key]
    # bool is an int to isinstance; no field here takes a bool where a number is meant
    need(isinstance(v, kind) and not (isinstance(v, bool) and bool not in _kinds(kind)),
         f"{what}.{key}: not {_name(kind)}")
    return v


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _name(kind: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in _kinds(kind))


def opt_int(doc: dict[str, Any], key: str, what: str) -> int | None:
    v = doc.get(key)
    need(v is None or (isinstance(v, int) and not isinstance(v, bool)), f"{what}.{key}: not an integer")
    return v


def _strs(v: Any, what: str) -> list[str]:
    need(isinstance(v, list) and all(isinstance(x, str) for x in v), f"{what}: not a list of strings")
    return list(v)


def _ints(v: Any, what: str) -> np.ndarray:
    need(isinstance(v, list), f"{what}: not a list")
    if not v:
        return np.zeros(0, np.int64)
    try:
        # no dtype asked for: a float, a string or a nested list shows in the dtype numpy infers
        # (asking for int64 would truncate floats silently)
        arr = np.asarray(v)
    except (TypeError, ValueError, OverflowError):
        raise StateError(f"{what}: not a list of integers") from None
    need(arr.ndim == 1 and arr.dtype.kind == "i", f"{what}: not a list of integers")
    return arr.astype(np.int64, copy=False)


# -- packed columns ---------------------------------------------------------------------------------

def pack_arrays(groups: dict[str, Any]) -> dict[str, Any]:
    """{key: int sequence} as keys, lengths and one concatenated array."""
    keys = list(groups)
    parts = [np.asarray(v, dtype=np.int64) if not isinstance(v, np.ndarray) else v for v in groups.values()]
    lengths = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    flat = np.concatenate(parts).astype(np.int64, copy=False) if parts else np.zeros(0, np.int64)
    return {"keys": keys, "lengths": lengths, "values": flat}


def unpack_arrays(doc: Any, what: str) -> dict[str, np.ndarray]:
    """Inverse of pack_arrays: {key: int64 array} (one copy per group, so none pins the others)."""
    keys = _strs(member(doc, "keys", list, what), f"{what}.keys")
    lengths = _ints(member(doc, "lengths", list, what), f"{what}.lengths")
    flat = _ints(member(doc, "values", list, what), f"{what}.values")
    need(len(lengths) == len(keys) and bool((lengths >= 0).all()) and int(lengths.sum()) == len(flat),
         f"{what}: lengths do not match")
    need(len(set(keys)) == len(keys), f"{what}: repeated key")
    parts = np.split(flat, np.cumsum(lengths)[:-1]) if len(keys) else []
    return {k: p.copy() for k, p in zip(keys, parts, strict=True)}


def pack_maps(groups: Mapping[str, Mapping[Any, int]]) -> dict[str, Any]:
    """{key: {value: int}} as keys, lengths, the values and the ints, each concatenated."""
    keys = list(groups)
    lengths = np.fromiter((len(m) for m in groups.values()), dtype=np.int64, count=len(keys))
    values = list(chain.from_iterable(m.keys() for m in groups.values()))
    ints = np.fromiter(chain.from_iterable(m.values() for m in groups.values()), dtype=np.int64,
                       count=int(lengths.sum()))
    return {"keys": keys, "lengths": lengths, "values": values, "ints": ints}


def unpack_maps(doc: Any, what: str, scalar: bool = False) -> dict[str, list[tuple[Any, int]]]:
    """Inverse of pack_maps, as (value, int) pairs per key in the saved order. `scalar`: values are
    strings, numbers or booleans (what a rule's field yields), not just integers."""
    keys = _strs(member(doc, "keys", list, what), f"{what}.keys")
    lengths = _ints(member(doc, "lengths", list, what), f"{what}.lengths")
    values = member(doc, "values", list, what)
    ints = _ints(member(doc, "ints", list, what), f"{what}.ints").tolist()
    need(len(lengths) == len(keys) and bool((lengths >= 0).all()) and int(lengths.sum()) == len(values) == len(ints),
         f"{what}: lengths do not match")
    need(len(set(keys)) == len(keys), f"{what}: repeated key")
    ok = (str, int, float, bool) if scalar else (int,)
    need(all(isinstance(v, ok) for v in values), f"{what}.values: not {_name(ok)}")
    out: dict[str, list[tuple[Any, int]]] = {}
    pos = 0
    for k, n in zip(keys, lengths.tolist(), strict=True):
        out[k] = list(zip(values[pos:pos + n], ints[pos:pos + n], strict=True))
        pos += n
    return out


# -- alerts -----------------------------------------------------------------------------------------

_ALERT_FIELDS = [f.name for f in dataclasses.fields(Alert)]
_ALERT_TYPES: dict[str, type | tuple[type, ...]] = {
    "rule": str, "title": str, "category": str, "severity": str, "mitre": list, "entity": dict, "group": str,
    "first_seen": int, "detected_at": int, "last_seen": int, "description": str, "remediation": str,
    "count": int, "peers": dict, "evidence": list, "evidence_text": list, "until": int, "details": dict,
    "emitted": bool,
}


def alert_state(a: Alert) -> dict[str, Any]:
    doc = {k: getattr(a, k) for k in _ALERT_FIELDS}
    doc["peers"] = dict(a.peers)
    return doc


def alert_from_state(doc: Any, what: str) -> Alert:
    need(isinstance(doc, dict), f"{what}: not an object")
    kw: dict[str, Any] = {}
    for k in _ALERT_FIELDS:
        if k in doc:
            kw[k] = member(doc, k, _ALERT_TYPES.get(k, object), what)
        else:
            # a field added to Alert after the file was written keeps its default; the others must be there
            f = next(f for f in dataclasses.fields(Alert) if f.name == k)
            need(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING,
                 f"{what}: no {k!r}")
    peers = kw.get("peers", {})
    need(all(isinstance(v, int) for v in peers.values()), f"{what}.peers: counts are not integers")
    kw["peers"] = Counter(peers)
    _strs(kw.get("evidence", []), f"{what}.evidence")
    _strs(kw.get("evidence_text", []), f"{what}.evidence_text")
    _strs(kw.get("mitre", []), f"{what}.mitre")
    return Alert(**kw)


def alerts_from_state(docs: Any, what: str) -> list[Alert]:
    need(isinstance(docs, list), f"{what}: not a list")
    return [alert_from_state(d, f"{what}[{i}]") for i, d in enumerate(docs)]


# -- the file ---------------------------------------------------------------------------------------

def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_document(path: Path) -> dict[str, Any] | None:
    """The state document in `path`, checked for format and version; None when there is no file.
    StateError when it cannot be used."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read it: {exc.strerror}") from None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise StateError(f"not JSON ({exc})") from None
    need(isinstance(doc, dict) and doc.get("format") == FORMAT, f"not a {FORMAT} document")
    need(doc.get("version") == VERSION,
         f"version {doc.get('version')!r}, this flowtrail reads version {VERSION}")
    return doc


class Checkpoints:
    """Saves the engine's state with the input positions it belongs to, at most every
    `interval_s` (and at stop); restores both at start."""

    def __init__(self, path: Path, interval_s: float) -> None:
        self.path = path
        self.interval_s = interval_s
        self.last = time.monotonic()
        self.last_bytes = 0  # size of the last state written

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.interval_s

    # -- start -------------------------------------------------------------------------------------
    def restore(self, engine: Engine, position_files: Iterable[Path], *, resume_nodes: bool = True) -> bool:
        """Restore `engine` from the state file and put the position files back to the state's
        copies; before any source reads its position. False (logged) when there was nothing usable."""
        try:
            doc = read_document(self.path)
        except StateError as exc:
            log.warning("detection state %s ignored: %s; detection starts empty", self.path, exc)
            return False
        if doc is None:
            return False
        files = list(position_files)
        positions = doc.get("positions")
        if isinstance(positions, dict):
            reset = [p.name for p in files if positions.get(p.name) is not None and not p.exists()]
            if reset:
                # someone removed a position to read that input again: the state already counts it
                log.warning("detection state %s ignored: position file(s) %s removed since it was saved (their "
                            "input is read again from the start); detection starts empty", self.path,
                            ", ".join(reset))
                return False
        try:
            restored, dropped = engine.load_state(doc, resume_nodes=resume_nodes)
        except StateError as exc:
            log.warning("detection state %s ignored: %s; detection starts empty", self.path, exc)
            return False
        except (TypeError, ValueError, KeyError, IndexError) as exc:  # a shape the checks did not foresee
            log.warning("detection state %s ignored: unreadable (%s: %s); detection starts empty",
                        self.path, type(exc).__name__, exc)
            return False
        if restored is None:
            log.warning("detection state %s ignored: saved for another rule set (none of its %d rule(s) "
                        "matches a rule of this run); detection starts empty", self.path, len(dropped))
            return False
        if dropped:
            log.info("detection state: %d rule(s) removed or changed since it was saved; they start empty: %s",
                     len(dropped), ", ".join(sorted(dropped)[:20]) + (" …" if len(dropped) > 20 else ""))
        self._rewind(positions, files)
        log.info("detection state restored", extra={"state_file": str(self.path), "rules": restored,
                                                    "saved_at": doc.get("saved_at")})
        return True

    def _rewind(self, positions: Any, files: Iterable[Path]) -> None:
        if not isinstance(positions, dict):
            return
        for p in files:
            if p.name not in positions:
                continue  # a source added since: its own position stands
            want = positions[p.name]
            try:
                have = orjson.loads(p.read_bytes()) if p.exists() else None
            except (OSError, orjson.JSONDecodeError):
                have = {}  # unreadable: replace it
            if have == want:
                continue
            try:
                if want is None:
                    # nothing of this source was in the state: read it from where a fresh start would
                    p.unlink(missing_ok=True)
                else:
                    write_atomic(p, orjson.dumps(want))
            except OSError as exc:
                log.error("cannot put the position %s back to the detection checkpoint: %s", p, exc.strerror)
                continue
            log.info("%s: back to the position of the detection checkpoint (input read after it is read again)",
                     p.name)

    # -- checkpoint ----------------------------------------------------------------------------------
    def save(self, engine: Engine, sources: Iterable[Any]) -> bool:
        """Write the state now. Called between batches, on the thread that commits them, so the
        committed positions are those of the state."""
        self.last = time.monotonic()
        try:
            positions: dict[str, Any] = {}
            for src in sources:
                pfile = getattr(src, "state_file", None)
                if pfile is None:
                    continue
                pfile = Path(pfile)
                _save_position(src)
                try:
                    positions[pfile.name] = orjson.loads(pfile.read_bytes())
                except FileNotFoundError:
                    positions[pfile.name] = None  # nothing committed yet
            doc = engine.dump_state()
            doc.update(format=FORMAT, version=VERSION, saved_at=iso_ns(time.time_ns()), positions=positions)
            data = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
            write_atomic(self.path, data)
        except (OSError, orjson.JSONEncodeError) as exc:
            log.error("cannot save the detection state %s: %s", self.path, exc)
            return False
        self.last_bytes = len(data)
        return True


def _save_position(src: Any) -> None:
    """Make a source write its committed position now (it otherwise saves it at its own pace):
    Relay sources have save(), followed files save_position()."""
    save = getattr(src, "save", None) or getattr(src, "save_position", None)
    if save is not None:
        save()
