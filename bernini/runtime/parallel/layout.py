"""Where each rank sits: ``world = dp × cfg × ulysses``, with Ulysses innermost.

``rank = (dp_rank × cfg + cfg_rank) × ulysses + ulysses_rank``. Ulysses groups are consecutive rank
blocks because their all-to-alls carry the most traffic (keep them inside a node, on NVLink); CFG
groups take one rank of each Ulysses group of a task group and exchange one prediction per step;
data-parallel task groups never talk to each other until the final summary.

This module is pure Python (no torch), so bad degrees are refused before anything heavy starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ...errors import BerniniError


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_degrees(world: int, ulysses: int, cfg: int, heads: int | None = None) -> None:
    """Refuse a Ulysses degree that does not divide ``heads`` or a world that ``ulysses × cfg`` does not divide."""
    if ulysses < 1:
        raise BerniniError(f"--ulysses must be at least 1, got {ulysses}")
    if cfg < 1:
        raise BerniniError(f"--cfg_parallel must be at least 1, got {cfg}")
    if heads is not None and heads % ulysses:
        valid = ", ".join(str(d) for d in divisors(heads))
        raise BerniniError(
            f"--ulysses {ulysses} does not divide the model's {heads} attention heads; valid degrees: {valid}"
        )
    block = ulysses * cfg
    if world % block:
        need = f"ulysses {ulysses} × cfg {cfg} = {block}" if cfg > 1 else f"--ulysses {ulysses}"
        raise BerniniError(
            f"world size {world} is not divisible by {need}; launch a multiple of {block} processes "
            f"(torchrun --nproc-per-node N, N × nodes % {block} == 0)"
        )


@dataclass(frozen=True)
class Layout:
    """One rank's coordinates in the ``dp × cfg × ulysses`` grid and the rank lists of its groups."""

    world: int
    rank: int
    ulysses: int = 1
    cfg: int = 1

    def __post_init__(self) -> None:
        check_degrees(self.world, self.ulysses, self.cfg)
        if not 0 <= self.rank < self.world:
            raise BerniniError(f"rank {self.rank} is outside the world of {self.world}")

    @property
    def block(self) -> int:
        """Ranks that serve one task together."""
        return self.ulysses * self.cfg

    @property
    def dp(self) -> int:
        return self.world // self.block

    @property
    def dp_rank(self) -> int:
        return self.rank // self.block

    @property
    def cfg_rank(self) -> int:
        return (self.rank // self.ulysses) % self.cfg

    @property
    def ulysses_rank(self) -> int:
        return self.rank % self.ulysses

    @property
    def leader(self) -> int:
        """Global rank of this task group's leader (decodes, writes, calls the prompt enhancer)."""
        return self.dp_rank * self.block

    @property
    def is_leader(self) -> bool:
        return self.rank == self.leader

    def _rank(self, dp: int, cfg: int, ulysses: int) -> int:
        return (dp * self.cfg + cfg) * self.ulysses + ulysses

    def ulysses_groups(self) -> list[list[int]]:
        return [
            [self._rank(dp, cfg, u) for u in range(self.ulysses)] for dp in range(self.dp) for cfg in range(self.cfg)
        ]

    def cfg_groups(self) -> list[list[int]]:
        return [
            [self._rank(dp, cfg, u) for cfg in range(self.cfg)] for dp in range(self.dp) for u in range(self.ulysses)
        ]

    def task_groups(self) -> list[list[int]]:
        return [list(range(dp * self.block, (dp + 1) * self.block)) for dp in range(self.dp)]

    def task_indices(self, total: int) -> range:
        """This rank's tasks: task group ``g`` takes tasks ``g, g + dp, g + 2 dp, ...``."""
        return range(self.dp_rank, total, self.dp)

    def describe(self) -> str:
        return (
            f"world {self.world} = dp {self.dp} × cfg {self.cfg} × ulysses {self.ulysses}; rank {self.rank} is "
            f"dp {self.dp_rank}, cfg {self.cfg_rank}, ulysses {self.ulysses_rank}"
        )


@dataclass(frozen=True)
class LaunchEnv:
    """What torchrun tells a worker (defaults describe a plain single process)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> LaunchEnv:
        """From torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``)."""
        try:
            world = int(environ.get("WORLD_SIZE", "1"))
            return cls(
                int(environ.get("RANK", "0")),
                world,
                int(environ.get("LOCAL_RANK", "0")),
                int(environ.get("LOCAL_WORLD_SIZE", str(world))),
            )
        except ValueError:
            raise BerniniError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun)") from None

    def spans_nodes(self, ulysses: int) -> bool:
        """Whether some Ulysses group would straddle two machines (its all-to-alls then cross the network)."""
        return self.world > self.local_world and self.local_world % ulysses != 0
