"""The units stream of a record: what ``units``, ``durations`` and ``units_meta`` mean, in one
place for every tool that reads or writes them.

* ``units`` are deduplicated (runs of a repeated unit merged, as SpeechGPT hears them) unless
  ``units_meta.dedup`` is false (``sgpt-units --no-dedup``, fairseq ``.km`` lines);
* ``durations``, when present, give the frames of each unit (same length as ``units``);
* ``units_meta.k`` is the k-means the units came from: a consumer with another k refuses them,
  as it refuses any unit outside 0..k-1, naming the record.
"""

from __future__ import annotations

from collections.abc import Sequence

from sgpt.core.errors import RecordError


def dedup(units: Sequence[int]) -> tuple[list[int], list[int]]:
    """Merge runs of a repeated unit: ([5, 5, 7], ) -> ([5, 7], [2, 1])."""
    out: list[int] = []
    durations: list[int] = []
    for u in units:
        if out and out[-1] == u:
            durations[-1] += 1
        else:
            out.append(int(u))
            durations.append(1)
    return out, durations


def merge_runs(units: Sequence[int]) -> list[int]:
    """The units with runs merged, without their durations: [5, 5, 7, 5] -> [5, 7, 5]."""
    return dedup(units)[0]


def is_deduplicated(record: dict) -> bool:
    """Units are deduplicated unless ``units_meta.dedup`` is false."""
    meta = record.get("units_meta")
    return not (isinstance(meta, dict) and meta.get("dedup") is False)


def heard_units(record: dict, key: str = "units") -> list[int]:
    """``record[key]`` as SpeechGPT hears them: deduplicated (merged here if they are not)."""
    units = list(record[key])
    return units if is_deduplicated(record) else merge_runs(units)


def frame_units(record: dict) -> list[int]:
    """The record's units one per frame: deduplicated units repeated by their durations;
    RecordError when they are deduplicated and have none."""
    units = record["units"]
    if "durations" in record:
        return [u for u, d in zip(units, record["durations"]) for _ in range(d)]
    if not is_deduplicated(record):
        return list(units)
    raise RecordError(record["id"], "deduplicated units without 'durations' cannot be aligned "
                                    "to the audio (encode with durations, or with --no-dedup)")


def check_durations(record: dict) -> list[int] | None:
    """``record["durations"]`` (None when absent), checked: integers >= 1, one per unit."""
    durations = record.get("durations")
    if durations is not None and (
            not isinstance(durations, list) or len(durations) != len(record.get("units") or ())
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1
                       for d in durations)):
        raise RecordError(record["id"], "'durations' must be integers >= 1, one per unit")
    return durations


def check_units(record: dict, k: int, owner: str | None = None, key: str = "units"
                ) -> list[int]:
    """``record[key]``, checked: a non-empty list of integers in 0..k-1, from a k-means of k
    units if ``units_meta`` says which. ``owner``, what has k units ("this vocoder"),
    completes the error: a RecordError naming the record."""
    where = record["id"]
    if key not in record:
        raise RecordError(where, f"no '{key}' key")
    units = record[key]
    if not isinstance(units, list) or not all(
            isinstance(u, int) and not isinstance(u, bool) for u in units):
        raise RecordError(where, f"'{key}' must be a list of integers")
    if not units:
        raise RecordError(where, f"'{key}' is empty")
    has = f"{owner} has {k} units" if owner else f"k={k}"
    meta = record.get("units_meta")
    if isinstance(meta, dict) and isinstance(meta.get("k"), int) and meta["k"] != k:
        raise RecordError(where, f"units are from k-means with k={meta['k']}, {has}")
    bad = next((u for u in units if not 0 <= u < k), None)
    if bad is not None:
        raise RecordError(where, f"unit {bad} in '{key}' is outside 0..{k - 1} ({has})")
    return units
