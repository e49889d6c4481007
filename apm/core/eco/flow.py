"""Min-cost flow by successive shortest paths (Dijkstra on reduced costs), for real capacities.

Small and exact for the planner's graphs (a few hundred nodes). Run to exhaustion it returns a maximum
flow that is cheapest among maximum flows: each augmentation follows a cheapest residual path, so the
flow stays cheapest for its value (the residual graph never holds a negative cycle). Costs may be
negative on edges leaving the source side (negative spot prices); the first potentials come from
Bellman-Ford. Cost of one augmentation: O(E log V).
"""

from __future__ import annotations

import heapq
import math

EPS = 1e-9  # residual capacity below this is treated as saturated (Ah; far below any meter's resolution)


class FlowNetwork:
    def __init__(self, nodes: int) -> None:
        self.n = nodes
        self.adj: list[list[int]] = [[] for _ in range(nodes)]
        self.to: list[int] = []
        self.cap: list[float] = []
        self.cost: list[float] = []

    def add_edge(self, u: int, v: int, cap: float, cost: float) -> int:
        """Add u->v; returns the edge id (its flow is ``flow(id)``)."""
        if cap < 0 or math.isnan(cap) or not math.isfinite(cost):
            raise ValueError(f"bad edge {u}->{v}: cap {cap}, cost {cost}")
        e = len(self.to)
        self.to += [v, u]
        self.cap += [cap, 0.0]
        self.cost += [cost, -cost]
        self.adj[u].append(e)
        self.adj[v].append(e + 1)
        return e

    def flow(self, e: int) -> float:
        return self.cap[e ^ 1]

    def _bellman_ford(self, s: int) -> list[float]:
        dist = [math.inf] * self.n
        dist[s] = 0.0
        for _ in range(self.n):
            changed = False
            for u in range(self.n):
                if dist[u] == math.inf:
                    continue
                for e in self.adj[u]:
                    if self.cap[e] > EPS and dist[u] + self.cost[e] < dist[self.to[e]] - 1e-15:
                        dist[self.to[e]] = dist[u] + self.cost[e]
                        changed = True
            if not changed:
                return [d if d < math.inf else 0.0 for d in dist]
        raise ValueError("negative cycle in the flow network")

    def min_cost_flow(self, s: int, t: int, want: float) -> tuple[float, float]:
        """Send up to ``want`` from s to t at least cost; returns (sent, cost)."""
        pot = self._bellman_ford(s)
        sent = cost = 0.0
        while sent < want - EPS:
            dist = [math.inf] * self.n
            via = [-1] * self.n
            dist[s] = 0.0
            heap = [(0.0, s)]
            while heap:
                d, u = heapq.heappop(heap)
                if d > dist[u]:
                    continue
                for e in self.adj[u]:
                    if self.cap[e] <= EPS:
                        continue
                    v = self.to[e]
                    # Reduced costs are >= 0 in exact arithmetic; clip rounding noise.
                    nd = d + max(0.0, self.cost[e] + pot[u] - pot[v])
                    if nd < dist[v]:
                        dist[v] = nd
                        via[v] = e
                        heapq.heappush(heap, (nd, v))
            if dist[t] == math.inf:
                break
            for v in range(self.n):
                if dist[v] < math.inf:
                    pot[v] += dist[v]
            push = want - sent
            v = t
            while v != s:
                e = via[v]
                push = min(push, self.cap[e])
                v = self.to[e ^ 1]
            v = t
            while v != s:
                e = via[v]
                self.cap[e] -= push
                self.cap[e ^ 1] += push
                cost += push * self.cost[e]
                v = self.to[e ^ 1]
            sent += push
        return sent, cost
