"""Split protocols as pure array functions: scans in, (scan, fold, role) out.

Every protocol assigns *units*, never scans: a unit is a subject, or a coarser group (a
family, a study site) when one is given, so all scans of one unit share a role within a
fold. Each function takes a :class:`Scans` table of integer codes and a seeded generator
and returns a :class:`Assignment`: for each fold, the scans it uses and their roles. A scan
a fold does not use (the held-out sequence of a training subject, say) is simply absent
from that fold.

The protocols (CrossPan and A-Eval):

- ``holdout``: stratified train/val/test (CrossPan's 70/10/20 per center x sequence);
- ``kfold``: stratified group k-fold, train/val per fold, an optional fixed test share;
- ``leave-one-out`` on a column: each value tested once, trained on the others
  (leave-one-center-out; CrossPan's leave-one-sequence-out);
- ``single-source`` on a column: train on one value, test on the rest;
- ``cross-dataset``: train on dataset A, test on every dataset's test part (A-Eval's matrix);
- ``semi-supervised``: a holdout whose train role is labelled at nested fractions
  (5 % inside 10 % inside 20 % inside 40 %), the rest ``unlabeled`` (CrossPan's SSL setting).

Any protocol can hold a fixed external test set out of everything: its units are ``test``
in every fold and never seen in training.

Allocation is vectorized: units with the same strata *signature* (the set of strata their
scans fall in) are exchangeable, so each signature group gets its role counts by quota with
the rounding carried from group to group, and its units are dealt those roles in random
order. A million scans take well under a second; a local repair then brings every stratum
within one unit of its exact share.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ROLES = ("train", "val", "test", "unlabeled")
TRAIN, VAL, TEST, UNLABELED = range(4)
STRATEGIES = (
    "holdout", "kfold", "leave-one-out", "single-source", "cross-dataset", "semi-supervised",
)  # fmt: skip


@dataclass(frozen=True)
class Scans:
    """One row per scan: its unit, its stratum and the column a protocol varies over.

    All arrays have one entry per scan and hold small integer codes.
    """

    unit: np.ndarray  # unit index, 0..n_units-1
    stratum: np.ndarray  # stratum code (e.g. center x sequence)
    column: np.ndarray | None = None  # code of the protocol's column (center, sequence...)
    column_names: tuple[str, ...] = ()  # column code -> value

    @property
    def n_units(self) -> int:
        """Number of units."""
        return int(self.unit.max()) + 1 if len(self.unit) else 0


@dataclass
class Assignment:
    """Per fold: scan indices and role codes (indices into :data:`ROLES`)."""

    folds: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    fold_info: list[dict] = field(default_factory=list)  # what each fold holds out


def unit_signatures(scans: Scans, mask: np.ndarray | None = None) -> np.ndarray:
    """Per unit, a code for the set of strata its (masked) scans fall in; -1 for none.

    The set is hashed as a sum of fixed random 64-bit weights of its strata (wrapping), so
    a million scans need no Python loop; a collision needs two different sets with equal
    sums modulo 2^64.
    """
    keep = np.ones(len(scans.unit), bool) if mask is None else mask
    sig = np.full(scans.n_units, -1, np.int64)
    if not keep.any():
        return sig
    pair_unit, pair_stratum = _unit_strata(scans, keep)
    n_strata = int(scans.stratum.max()) + 1
    weights = np.random.default_rng(2**31 - 1).integers(1, 2**63, n_strata, dtype=np.uint64)
    total = np.zeros(scans.n_units, np.uint64)
    np.add.at(total, pair_unit, weights[pair_stratum])
    units = np.unique(pair_unit)
    _, codes = np.unique(total[units], return_inverse=True)
    sig[units] = codes
    return sig


def allocate(signature: np.ndarray, shares, rng: np.random.Generator) -> np.ndarray:
    """Role index per unit so each signature group follows ``shares`` within one unit.

    Units with signature -1 get -1. Rounding is carried from group to group (visited in
    random order), so small groups do not all round toward the largest share.
    """
    shares = np.asarray(shares, np.float64)
    shares = shares / shares.sum()
    out = np.full(len(signature), -1, np.int64)
    active = np.flatnonzero(signature >= 0)
    if active.size == 0:
        return out
    order = active[np.lexsort((rng.random(active.size), signature[active]))]
    sig_sorted = signature[order]
    starts = np.flatnonzero(np.r_[True, sig_sorted[1:] != sig_sorted[:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    roles = np.empty(len(order), np.int64)
    carry = np.zeros(len(shares))
    for g in rng.permutation(len(starts)):
        counts, carry = _quota(sizes[g], shares, carry)
        roles[starts[g] : starts[g] + sizes[g]] = np.repeat(np.arange(len(shares)), counts)
    out[order] = roles
    return out


def _quota(n: int, shares: np.ndarray, carry: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    exact = n * shares + carry
    target = np.where(shares > 0, np.maximum(exact, 0), 0)
    target = target * (n / target.sum()) if target.sum() > 0 else n * shares
    counts = np.floor(target).astype(np.int64)
    rest = n - counts.sum()
    if rest:
        counts[np.argsort(-(target - counts), kind="stable")[:rest]] += 1
    return counts, exact - counts


def _unit_strata(scans: Scans, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (unit, stratum) pairs of the kept scans, sorted by unit then stratum."""
    n_strata = int(scans.stratum.max()) + 1
    key = np.unique(scans.unit[keep].astype(np.int64) * n_strata + scans.stratum[keep])
    return key // n_strata, key % n_strata


def repair(role: np.ndarray, scans: Scans, shares, units: np.ndarray | None = None) -> np.ndarray:
    """Move units until every stratum is within one unit of its exact share.

    Quota allocation per signature keeps each *signature group* within one unit; a stratum
    shared by several groups can drift further. Each step takes the first stratum that is
    off, and of its units in the role it has too many of, moves the one whose move lowers
    the total cost most (excess over one unit first, then squared error), scoring every
    candidate at once. It stops when nothing is off or no move helps.
    """
    shares = np.asarray(shares, np.float64) / np.sum(shares)
    keep = role[scans.unit] >= 0 if units is None else np.isin(scans.unit, units)
    if not keep.any():
        return role
    pair_unit, pair_stratum = _unit_strata(scans, keep)
    n_strata = int(scans.stratum.max()) + 1
    counts = np.zeros((n_strata, len(shares)))
    np.add.at(counts, (pair_stratum, role[pair_unit]), 1)
    exact = counts.sum(1, keepdims=True) * shares[None, :]
    allowed = np.flatnonzero(shares > 0)
    by_stratum = np.argsort(pair_stratum, kind="stable")
    stratum_ptr = np.searchsorted(pair_stratum[by_stratum], np.arange(n_strata + 1))
    unit_ptr = np.searchsorted(pair_unit, np.arange(scans.n_units + 1))
    for _ in range(10 * n_strata + 100):
        dev = counts - exact
        bad = np.flatnonzero((np.abs(dev) > 1 + 1e-9).any(1))
        if bad.size == 0:
            break
        k = int(bad[0])
        over = int(np.argmax(dev[k]))
        under = int(allowed[np.argmin(dev[k][allowed])])
        members = pair_unit[by_stratum[stratum_ptr[k] : stratum_ptr[k + 1]]]
        cand = members[role[members] == over]
        if cand.size == 0:
            break
        # every (candidate, stratum) pair: the cost change of moving the candidate
        lengths = unit_ptr[cand + 1] - unit_ptr[cand]
        owner = np.repeat(np.arange(cand.size), lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        rows = pair_stratum[np.repeat(unit_ptr[cand], lengths) + offsets]
        a, b = dev[rows, over], dev[rows, under]
        delta = _f(a - 1) + _f(b + 1) - _f(a) - _f(b)
        change = np.bincount(owner, weights=delta, minlength=cand.size)
        best = int(np.argmin(change))
        if change[best] >= -1e-9:
            break
        unit = cand[best]
        strata = pair_stratum[unit_ptr[unit] : unit_ptr[unit + 1]]
        counts[strata, over] -= 1
        counts[strata, under] += 1
        role[unit] = under
    return role


def _f(dev: np.ndarray) -> np.ndarray:
    return 1e3 * np.maximum(np.abs(dev) - 1 - 1e-9, 0) + dev**2


def _fold(scans: Scans, unit_role: np.ndarray, scan_mask: np.ndarray | None = None):
    role = unit_role[scans.unit]
    keep = role >= 0 if scan_mask is None else (role >= 0) & scan_mask
    idx = np.flatnonzero(keep)
    return idx, role[idx]


def _external(scans: Scans, external: np.ndarray | None) -> np.ndarray:
    """Per unit: True when any of its scans is in the external test set."""
    out = np.zeros(scans.n_units, bool)
    if external is not None:
        out[np.unique(scans.unit[external])] = True
    return out


def holdout(scans, shares, rng, external=None) -> Assignment:
    """One fold: train/val/test by ``shares`` (3 numbers), stratified; external units test."""
    ext = _external(scans, external)
    sig = unit_signatures(scans, ~ext[scans.unit])
    role = allocate(sig, shares, rng)
    role = repair(role, scans, shares, units=np.flatnonzero(~ext))
    role[ext] = TEST
    return Assignment([_fold(scans, role)], [{"fold": 0}])


def kfold(scans, k, rng, test_share=0.0, external=None) -> Assignment:
    """Stratified group k-fold: train/val per fold over the units not held out as test.

    ``test_share`` of the units (stratified) and the external units are test in every fold.
    """
    ext = _external(scans, external)
    sig = unit_signatures(scans, ~ext[scans.unit])
    fixed = np.zeros(scans.n_units, bool)
    if test_share > 0:
        split = allocate(sig, [1 - test_share, test_share], rng)
        fixed = split == 1
        sig = np.where(fixed, -1, sig)
    fold_of = allocate(sig, np.ones(k), rng)
    out = Assignment()
    for f in range(k):
        role = np.where(fold_of == f, VAL, TRAIN)
        role[fold_of < 0] = -1
        role[fixed | ext] = TEST
        out.folds.append(_fold(scans, role))
        out.fold_info.append({"fold": f})
    return out


def leave_one_out(scans, shares, rng, external=None, single_source=False) -> Assignment:
    """One fold per value of ``scans.column``.

    Leave-one-out: the value's scans are tested, the others' trained on. Single-source: the
    other way round. A unit with scans on both sides (a subject with every sequence) joins
    one side only, at random by ``shares`` (train+val vs test), so no subject is in two
    roles; on its side, only its scans of that side are used.
    """
    ext = _external(scans, external)
    out = Assignment()
    train_val = np.asarray(shares[:2], np.float64)
    sig = unit_signatures(scans)  # the same for every fold
    key = "trained_on" if single_source else "held_out"
    for value, name in enumerate(scans.column_names):
        inside = scans.column == value
        test_scans = ~inside if single_source else inside
        on_test = _any_per_unit(scans, test_scans)
        on_train = _any_per_unit(scans, ~test_scans)
        both = on_test & on_train & ~ext
        side = allocate(np.where(both, sig, -1), [shares[0] + shares[1], shares[2]], rng)
        to_test = (on_test & ~on_train) | (side == 1)
        to_train = ((on_train & ~on_test) | (side == 0)) & ~ext
        train_sig = unit_signatures(scans, ~test_scans & to_train[scans.unit])
        role = allocate(train_sig, train_val, rng)
        role[to_test | ext] = TEST
        scan_ok = np.where(role[scans.unit] == TEST, test_scans | ext[scans.unit], ~test_scans)
        out.folds.append(_fold(scans, role, scan_ok))
        out.fold_info.append({"fold": value, key: name})
    return out


def _any_per_unit(scans: Scans, mask: np.ndarray) -> np.ndarray:
    out = np.zeros(scans.n_units, bool)
    out[scans.unit[mask]] = True
    return out


def cross_dataset(scans, shares, rng, external=None) -> Assignment:
    """A-Eval's matrix: one holdout, then one fold per dataset (``scans.column``).

    Fold A trains on A's train/val units and tests on every dataset's test units, so
    column A of the matrix is in-domain and the others cross-dataset.
    """
    base = holdout(scans, shares, rng, external)
    idx, role = base.folds[0]
    unit_role = np.full(scans.n_units, -1)
    unit_role[scans.unit[idx]] = role
    out = Assignment()
    for value, name in enumerate(scans.column_names):
        in_a = _any_per_unit(scans, scans.column == value)
        fold_role = np.where((unit_role == TEST) | in_a, unit_role, -1)
        out.folds.append(_fold(scans, fold_role))
        out.fold_info.append({"fold": value, "trained_on": name})
    return out


def semi_supervised(scans, shares, fractions, rng, external=None) -> Assignment:
    """A holdout whose train units are labelled at nested ``fractions`` (one fold each).

    One stratified random order of the train units serves every fraction: a fraction's
    labelled units are the first ``round(fraction * n)`` of it (at least one), so 5 % sits
    inside 10 % and 10 % is 10 % of the train units, however many signature groups there
    are. The rest of the train role is ``unlabeled``; val and test never change.
    """
    base = holdout(scans, shares, rng, external)
    idx, role = base.folds[0]
    unit_role = np.full(scans.n_units, -1)
    unit_role[scans.unit[idx]] = role
    sig = np.where(unit_role == TRAIN, unit_signatures(scans), -1)
    order = _stratified_order(sig, rng)
    n_train = int((sig >= 0).sum())
    out = Assignment()
    for f, fraction in enumerate(fractions):
        fold_role = unit_role.copy()
        take = max(int(np.floor(fraction * n_train + 0.5)), 1) if n_train else 0
        labelled = (order >= 0) & (order < take)
        fold_role[(unit_role == TRAIN) & ~labelled] = UNLABELED
        out.folds.append(_fold(scans, fold_role))
        out.fold_info.append({"fold": f, "labelled_fraction": fraction})
    return out


def _stratified_order(sig: np.ndarray, rng) -> np.ndarray:
    """Each unit's place in one random order that spreads every signature group evenly.

    Systematic sampling: the unit of rank ``r`` (random) in a group of ``n`` units gets key
    ``(r + u) / n`` with one random offset ``u`` in [0, 1) per group, and the order sorts
    the keys. Any prefix of ``k`` units then holds ``k * n / N`` of each group to within
    about one unit. The old rule, a prefix of each group with at least one unit per group,
    labelled 37 % of the train scans when 10 % was asked on a small phantom world.
    Units with ``sig < 0`` stay at -1.
    """
    active = np.flatnonzero(sig >= 0)
    order = np.full(len(sig), -1)
    if not active.size:
        return order
    _, group_of, sizes = np.unique(sig[active], return_inverse=True, return_counts=True)
    shuffled = active[np.lexsort((rng.random(active.size), group_of))]
    g = np.sort(group_of)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    rank = np.arange(active.size) - starts[g]
    key = (rank + rng.random(len(sizes))[g]) / sizes[g]
    by_key = shuffled[np.lexsort((rng.random(active.size), key))]
    order[by_key] = np.arange(active.size)
    return order
