"""Options as this project declares them, for run configs and distillation methods alike: a default, a
help text (also the why-comment) and the valid values, on a dataclass field. Torch-free: the command line
checks every value before torch is imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from distill.errors import UserError


def dash(name: str) -> str:
    return name.replace("_", "-")


# The largest integer any option takes: torch and the OS hold counts, sizes and seeds in 64 bits, and Python's
# unbounded ints would otherwise fail deep inside (math.isfinite overflows on one of 400 digits).
INT_MAX = 2**63 - 1


def shown(value: float) -> str:
    """A value for an error line: an integer of hundreds of digits as its first digits and its length."""
    text = str(value)
    return text if len(text) <= 24 else f"{text[:12]}... ({len(text.lstrip('-'))} digits)"


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric option. NaN and infinities are in none: no option means anything by them;
    nor are integers past 64 bits (INT_MAX)."""

    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        # An int is compared exactly: converting it to a float would overflow past 1e308.
        representable = abs(value) <= INT_MAX if isinstance(value, int) else math.isfinite(value)
        return representable and above and below

    def text(self, kind: type) -> str:
        """'at least 1', 'positive and finite', 'in (0, 1)': what follows 'must be' in an error."""
        if self.high == math.inf:
            text = "positive" if self.low == 0 and self.low_open else f"at least {self.low}"
            return text + (" and finite" if kind is float else "")
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"

    def check(self, name: str, value: float) -> None:
        if value not in self:
            past_64_bits = isinstance(value, int) and abs(value) > INT_MAX and self.high == math.inf
            limit = " and at most 2^63 - 1" if past_64_bits else ""
            raise UserError(f"--{dash(name)} must be {self.text(type(value))}{limit} (got {shown(value)})")


AT_LEAST_1, NON_NEGATIVE, POSITIVE = Range(1), Range(0), Range(0, low_open=True)
# The smallest --image-size (and --resize). Every model runs from 1 pixel up (measured: the convolutions pad
# and the pooling is adaptive), so the floor is about meaning: the CIFAR ResNets downsample 4x, and at 8 their
# last stage still sees a 2x2 map, below 8 a single pixel (and the torchvision stem downsamples 32x). The
# augmentations need 5 or more anyway (the default crop's reflect padding of 4; TrivialAugment's 3x3 filters).
MIN_IMAGE_SIZE = 8


def opt(default, help: str, choices: tuple[str, ...] | None = None, within: Range | None = None,
        symbol: str | None = None):
    """A config field: its default, its --help text (also its why-comment), its valid values, and for a method's
    option the symbol its paper writes it with (a narrow HPARAMS column shows `kd T=4 α=0.9`)."""
    return field(default=default, metadata={"help": help, "choices": choices, "range": within, "symbol": symbol})
