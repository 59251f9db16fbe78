"""Topology-aware GetPreferredAllocation: which devices to give a container.

Full GPUs: among the available ones, the set of the requested size that holds every
must-include device and has the best link score (Topology.set_score: NVLinks first, then PCIe
closeness, then NUMA locality). Among sets with equal scores, the one that leaves the rest of
the available GPUs best connected for the next request (no needless splitting of NVLink
pairs or quads). Found by an exact branch-and-bound over the topology's precomputed pair
scores, so the answer always has the best score an exhaustive search would find.

Shared devices (time-slicing replicas, MIG devices) live on physical GPUs: they are spread
over or packed onto GPUs per the shared-devices policy, preferring GPUs well linked to those
the request already uses.

The answer is a hint the kubelet may adjust, and an error fails pod admission, so every
request gets one that keeps core.allocation.PreferenceRequest's promises: only known IDs from
`available`, each once, the must-include ones among them first, exactly the requested number
when there are that many, never more. Unhealthy devices are picked only to make up that
number; a GPU missing from the topology just scores nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

from nvplugin.core.allocation import preference_request, preferred_shared_allocation
from nvplugin.core.resources import AdvertisedDevice, Resource, unhealthy_reason
from nvplugin.core.topology import Topology

# --shared-devices-allocation-policy values (NVIDIA's names).
DISTRIBUTED = "distributed"
PACKED = "packed"
SHARED_POLICIES = (DISTRIBUTED, PACKED)

_NO_MARKS: Mapping[str, str] = {}
# Below this many candidate subsets, plain enumeration beats the bookkeeping of the search.
_ENUMERATE_BELOW = 64
# Search nodes at most per request (about 10 ms of CPU); see _branch_and_bound.
_SEARCH_BUDGET = 5000


def preferred_allocation(
    topology: Topology | None,
    resource: Resource,
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
    *,
    unhealthy: Mapping[str, str] = _NO_MARKS,
    policy: str = DISTRIBUTED,
) -> list[str]:
    """The preferred device IDs for one container request (see the module docstring)."""
    request = preference_request(resource, available, must_include, size)
    need = request.need
    healthy = [d for d in request.candidates if unhealthy_reason(d, unhealthy) is None]
    if need >= len(healthy):
        # Unhealthy ones only to make up the count: the kubelet, which still lists them as
        # available, would have to take them anyway.
        sick = [d for d in request.candidates if unhealthy_reason(d, unhealthy) is not None]
        return request.answer([*healthy, *sick])
    fixed = request.fixed
    if any(_is_shared(d) for d in (*healthy, *fixed)):
        picks = _shared_devices(topology, resource, fixed, healthy, need, policy)
    elif topology is None:
        picks = healthy[:need]
    else:
        picks = _best_gpus(topology, fixed, healthy, need)
    return request.answer(picks)


def preferred_devices(
    topology: Topology | None,
    resource: Resource,
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
    *,
    unhealthy: Mapping[str, str] = _NO_MARKS,
    policy: str = DISTRIBUTED,
) -> list[str]:
    """GetPreferredAllocation's answer for one container request of `resource`: NVIDIA's
    greedy choice among time-sliced replicas (for parity), else the topology-aware choice
    (full GPUs by NVLink/PCIe/NUMA; MIG devices spread or packed over their GPUs). Both keep
    PreferenceRequest's promises."""
    if resource.replicas > 1:
        return preferred_shared_allocation(resource, available, must_include, size, policy)
    return preferred_allocation(
        topology, resource, available, must_include, size, unhealthy=unhealthy, policy=policy
    )


def _is_shared(device: AdvertisedDevice) -> bool:
    """A replica ("<UUID>::<n>") or a MIG device: not a whole physical GPU by itself."""
    return device.id != device.gpu_uuid


# --- full GPUs


def _best_gpus(
    topology: Topology, fixed: Sequence[AdvertisedDevice], candidates: Sequence[AdvertisedDevice], need: int
) -> list[AdvertisedDevice]:
    """The `need` candidates maximising (link score of fixed + picks, link score of the rest)."""
    scores = topology.pair_scores
    fixed_positions = [p for p in (topology.index(d.gpu_uuid) for d in fixed) if p is not None]
    positions = [topology.index(d.gpu_uuid) for d in candidates]
    n = len(candidates)
    # Pair scores among the candidates; a GPU unknown to the topology scores 0 with all.
    pair = [[0 if a is None or b is None or a == b else scores[a][b] for b in positions] for a in positions]
    to_fixed = [0 if a is None else sum(scores[a][f] for f in fixed_positions) for a in positions]
    row_sums = [sum(row) for row in pair]
    # Primary: score(fixed + picks) = score(fixed) + sum(to_fixed) + score(picks).
    # Secondary: score(rest) = score(all) + score(picks) - sum(row_sums of picks).
    # Both folded into one objective: weight the primary by more than the secondary can vary.
    big = n * n * (topology.max_pair_score + 1) + 1
    pair_weight = big + 1
    q = [[pair_weight * s for s in row] for row in pair]
    w = [big * to_fixed[v] - row_sums[v] for v in range(n)]
    picked = _max_weight_subset(q, w, need)
    return [candidates[v] for v in sorted(picked)]


def _max_weight_subset(q: list[list[int]], w: list[int], k: int) -> list[int]:
    """The k-subset T of range(len(w)) maximising sum(q over pairs of T) + sum(w over T); exact.

    Searches the smaller side: picking T is leaving out its complement U, and
    value(T) = constant - sum over U of (w[u] + row sum of q[u]) + sum(q over pairs of U).
    """
    n = len(w)
    if 2 * k > n:
        complement_w = [-(w[u] + sum(q[u])) for u in range(n)]
        left_out = set(_max_weight_subset(q, complement_w, n - k))
        return [v for v in range(n) if v not in left_out]
    if k == 0:
        return []
    if _binomial_below(n, k, _ENUMERATE_BELOW):
        _, best = max((_value(q, w, subset), subset) for subset in combinations(range(n), k))
        return list(best)
    return _branch_and_bound(q, w, k)


def _binomial_below(n: int, k: int, limit: int) -> bool:
    count = 1
    for i in range(k):
        count = count * (n - i) // (i + 1)
        if count >= limit:
            return False
    return True


def _value(q: list[list[int]], w: list[int], subset: Sequence[int]) -> int:
    total = sum(w[v] for v in subset)
    for i, a in enumerate(subset):
        row = q[a]
        for b in subset[i + 1 :]:
            total += row[b]
    return total


def _twin_classes(q: list[list[int]], w: list[int]) -> list[int]:
    """class_of[v]: vertices in one class are interchangeable (same weight, same pair scores
    to every other vertex), so a search need only try the first m of each class."""
    n = len(w)
    class_of = list(range(n))
    representatives: list[int] = []
    for v in range(n):
        row_v = q[v]
        for r in representatives:
            row_r = q[r]
            # Equal everywhere but at r and v themselves (slices compare in C).
            same_rows = row_r[:r] == row_v[:r] and row_r[r + 1 : v] == row_v[r + 1 : v]
            if w[r] == w[v] and same_rows and row_r[v + 1 :] == row_v[v + 1 :]:
                class_of[v] = r
                break
        else:
            representatives.append(v)
    return class_of


def _branch_and_bound(q: list[list[int]], w: list[int], k: int, budget: int = _SEARCH_BUDGET) -> list[int]:
    """Depth-first include/exclude search in a good-first order, pruned by an upper bound.

    Bound for picking r more from the undecided vertices R, given gains g (w plus pair scores
    to the vertices already picked): each undecided v can add at most g[v] plus half of its r-1
    best pair scores (each pair is shared by two vertices), so the best r of those values
    bound the rest. Values are doubled to stay in integers. Interchangeable vertices (twins,
    such as two GPUs behind one PCIe switch on an NVSwitch board) sit next to each other in
    the order, and leaving one out leaves out the rest of its run: picking any of them instead
    would only repeat an answer already weighed.

    `budget` caps the nodes visited: the shipped 16-GPU layouts need a few hundred, but a
    large irregular node could need far more, and a late answer is worse than a near-best one.
    Past the cap the best set found so far (at least the greedy one) is returned.
    """
    n = len(w)
    # half_best[v][m]: the sum of v's m best pair scores (to anyone); an over-estimate is safe.
    half_best = []
    for v in range(n):
        ordered = sorted((q[v][u] for u in range(n) if u != v), reverse=True)
        sums = [0]
        for value in ordered[: k - 1]:
            sums.append(sums[-1] + value)
        half_best.append(sums)
    class_of = _twin_classes(q, w)
    order = sorted(range(n), key=lambda v: (-(2 * w[v] + half_best[v][k - 1]), class_of[v], v))
    # skip_to[p]: the first position after p's run of twins.
    skip_to = [0] * n
    for p in range(n - 1, -1, -1):
        same = p + 1 < n and class_of[order[p + 1]] == class_of[order[p]]
        skip_to[p] = skip_to[p + 1] if same else p + 1

    # A greedy answer first, so the bound prunes from the start.
    gains = list(w)
    greedy: list[int] = []
    for _ in range(k):
        v = max((u for u in order if u not in greedy), key=lambda u: gains[u])
        greedy.append(v)
        row = q[v]
        gains = [g + row[u] for u, g in enumerate(gains)]
    best_value = _value(q, w, greedy)
    best: list[int] = greedy

    picked: list[int] = []
    visits = 0

    def visit(position: int, remaining: int, value: int, gains: list[int]) -> None:
        nonlocal best_value, best, visits
        visits += 1
        if visits > budget:
            return
        if remaining == 0:
            if value > best_value:
                best_value, best = value, list(picked)
            return
        undecided = order[position:]
        if len(undecided) < remaining:
            return
        if len(undecided) == remaining:
            total = value + sum(gains[v] for v in undecided) + _value(q, [0] * n, undecided)
            if total > best_value:
                best_value, best = total, [*picked, *undecided]
            return
        hb = remaining - 1
        optimistic = sorted((2 * gains[v] + half_best[v][hb] for v in undecided), reverse=True)
        if 2 * value + sum(optimistic[:remaining]) <= 2 * best_value:
            return
        v = order[position]
        row = q[v]
        picked.append(v)
        visit(position + 1, remaining - 1, value + gains[v], [g + row[u] for u, g in enumerate(gains)])
        picked.pop()
        visit(skip_to[position], remaining, value, gains)

    visit(0, k, 0, list(w))
    return best


# --- shared devices (replicas, MIG)


def _shared_devices(
    topology: Topology | None,
    resource: Resource,
    fixed: Sequence[AdvertisedDevice],
    candidates: Sequence[AdvertisedDevice],
    need: int,
    policy: str,
) -> list[AdvertisedDevice]:
    """Pick `need` shared devices one at a time, GPU by GPU, per the policy.

    distributed: each pick comes from the GPU with the fewest of this resource's devices in
    use (by others or by this request): a multi-device request spreads over GPUs.
    packed: keep the request on as few GPUs as possible: a GPU it already uses, else the
    fullest GPU that can hold all it still needs (tightest fit), else the GPU with the most
    free devices.
    Ties go to the GPU best linked to those the request already uses, then to the order of
    `available`.
    """
    total: dict[str, int] = {}
    for device in resource.devices:
        total[device.gpu_uuid] = total.get(device.gpu_uuid, 0) + 1
    free: dict[str, list[AdvertisedDevice]] = {}
    for device in candidates:
        free.setdefault(device.gpu_uuid, []).append(device)
    rank = {gpu: i for i, gpu in enumerate(free)}
    request_gpus = list(dict.fromkeys(d.gpu_uuid for d in fixed))

    def link_score(gpu: str) -> int:
        if topology is None:
            return 0
        return sum(topology.pair_score(gpu, other) for other in request_gpus if other != gpu)

    picks: list[AdvertisedDevice] = []
    while len(picks) < need and free:
        left = need - len(picks)

        def key(gpu: str, left: int = left) -> tuple[int, ...]:
            available_here = len(free[gpu])
            in_use = total.get(gpu, available_here) - available_here
            if policy == PACKED:
                in_request = gpu in request_gpus
                fits = available_here >= left
                # Tightest fit among GPUs that can hold the rest, else the roomiest.
                fit = -available_here if fits else available_here - 10**9
                return (int(in_request), int(fits), fit, link_score(gpu), -rank[gpu])
            return (-in_use, link_score(gpu), -rank[gpu])

        gpu = max(free, key=key)
        picks.append(free[gpu].pop(0))
        if not free[gpu]:
            del free[gpu]
        if gpu not in request_gpus:
            request_gpus.append(gpu)
    return picks
