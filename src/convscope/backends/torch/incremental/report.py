"""What an incremental evaluation did, node by node: how each node ran, how much of it was
recomputed, the multiply-adds done against a full pass, the bytes its region reads copied, and
its time.

Example::

    occ = Occlusion(model, window=16, stride=8)
    occ.attribute(x, 3)
    print(occ.last_report)           # path, reason, then one line per node
    occ.last_report.totals()         # {'macs': ..., 'full_macs': ..., 'gathered': ..., ...}
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: how a node ran: recomputed on boxes ("local"), on whole maps through the same rule after
#: the box grew past the area threshold ("local, whole"), a global pooling updated from the
#: changed region ("global"), computed on whole maps as the model would ("full"), or copied
#: from the clean pass because it does not depend on the input ("static")
MODES = ("input", "local", "global", "full", "static")


@dataclass
class NodeRun:
    """One graph node over an ``attribute`` call (counts summed over its chunks)."""

    name: str
    label: str
    mode: str
    reason: str = ""  # why a "full" node could not be recomputed locally
    calls: int = 0
    whole_calls: int = 0  # local calls whose box had grown to the whole map
    elements: int = 0
    area: float = 0.0  # sum over elements of the box's share of the map
    macs: int = 0
    full_macs: int = 0
    gathered: int = 0  # bytes copied by region reads feeding this node
    seconds: float = 0.0  # CPU time of this process
    whole_seconds: float = 0.0  # of which in local calls whose box had grown to the whole map

    def line(self) -> str:
        share = f"{self.area / self.elements:6.1%}" if self.elements and self.mode == "local" else "     -"
        work = f"{self.macs / self.full_macs:6.1%}" if self.full_macs else "     -"
        why = f"  ({self.reason})" if self.reason else ""
        whole = f" [{self.whole_calls}/{self.calls} whole]" if self.whole_calls else ""
        return (f"{self.name:<28} {self.mode:<7} {self.label[:24]:<24} area {share}  macs {work}  "
                f"read {self.gathered / 2 ** 20:8.1f} MiB  {self.seconds * 1e3:9.1f} ms{whole}{why}")


@dataclass
class Report:
    """The path an ``attribute`` call took and, for the incremental one, its nodes."""

    path: str  # "incremental" or "plain"
    reason: str
    estimate: float | None = None  # predicted share of a full pass's multiply-adds
    nodes: list[NodeRun] = field(default_factory=list)
    cache_bytes: int = 0  # the largest clean-pass cache held at once (activations and padded copies)
    tau: float | None = None  # the projective-field cap (approximate), None: exact

    def full_nodes(self) -> list[NodeRun]:
        """The nodes computed on whole maps because no local rule applies (the fallbacks)."""
        return [n for n in self.nodes if n.mode == "full"]

    def totals(self) -> dict[str, float]:
        macs, full = sum(n.macs for n in self.nodes), sum(n.full_macs for n in self.nodes)
        return {"macs": macs, "full_macs": full, "mac_share": macs / full if full else float("nan"),
                "gathered": sum(n.gathered for n in self.nodes), "seconds": sum(n.seconds for n in self.nodes),
                "whole_seconds": sum(n.whole_seconds for n in self.nodes),
                "full_seconds": sum(n.seconds for n in self.full_nodes()),
                "local_nodes": sum(n.mode in ("local", "global") for n in self.nodes),
                "full_nodes": len(self.full_nodes()), "cache_bytes": self.cache_bytes}

    def __str__(self) -> str:
        head = f"occlusion path: {self.path} ({self.reason})"
        if self.tau is not None and self.path == "incremental":
            head += f"; approximate: changes capped at {self.tau:g} of each map's side"
        if self.estimate is not None:
            head += f"; predicted multiply-adds: {self.estimate:.1%} of a full pass"
        if not self.nodes:
            return head
        t = self.totals()
        lines = [head, f"done: {t['mac_share']:.1%} of the multiply-adds, {t['gathered'] / 2 ** 20:.1f} MiB read "
                       f"into regions, clean cache {self.cache_bytes / 2 ** 20:.1f} MiB; {t['local_nodes']} nodes "
                       f"local, {t['full_nodes']} full"]
        return "\n".join(lines + [n.line() for n in self.nodes])
