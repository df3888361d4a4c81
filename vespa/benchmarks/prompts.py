# -*- test-case-name: tests.test_benchmarks -*-
"""
Prompts for the built-in probes.

Every request gets different words: servers cache prompt prefixes (vLLM,
SGLang) and whole results (ComfyUI), and a benchmark that sends the same
prompt twice measures the cache instead of the model. The words come from a
generator seeded by the request's number, so the probes only need to start
from a fresh random base on each benchmark (a restarted worker in front of a
server that kept running must not meet its own earlier prompts).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TypeVar

__all__ = ["IMAGE_PROMPTS", "INSTRUCTION", "fresh_seeds", "image_prompt", "text_prompt"]

_T = TypeVar("_T")

#: What the model is asked to do: something long, so it rarely stops before
#: ``max_tokens`` (which would make the run shorter, not wrong: tokens are
#: counted, not assumed).
INSTRUCTION = (
    "Write a long, detailed story that uses each of the following words, "
    "describing every scene at length:"
)

_WORDS = tuple(
    """
    amber anchor apple arch arrow autumn badge bakery balloon bamboo banner
    barrel basket beacon beetle bicycle blanket blossom boulder bridge bucket
    cabin cactus camera candle canyon canvas carpet castle cellar chalk cherry
    chimney cinnamon circus cliff clock cloud comet compass copper coral cotton
    crane crystal curtain daisy desert diamond dolphin dragon drum eagle ember
    engine feather fern festival fiddle flame forest fountain fox galaxy garden
    glacier glove granite harbor harvest hammock helmet honey horizon island
    ivory jacket jungle kettle kite lagoon lantern lava lemon library lighthouse
    lily magnet mango maple marble meadow meteor mirror monsoon mosaic mountain
    necklace needle nest notebook oasis ocean olive orbit orchard otter paddle
    palace parrot pebble pepper piano pilgrim pine planet pocket pond puzzle
    quartz quill rabbit rainbow raven reef ribbon river rocket saddle sail
    satellite scarf shadow shell silver sketch sled snowflake spice spiral
    sponge spring stable statue storm sunrise swan tapestry teapot telescope
    thistle thunder tiger timber torch tower tractor trumpet tulip tunnel
    umbrella valley velvet village violin volcano wagon walnut waterfall whale
    whistle willow window winter wizard wolf yarn zebra zephyr
    """.split()
)

#: The subjects of the built-in text-to-image job (the original benchmark's
#: idea: a few varied scenes rather than one).
IMAGE_PROMPTS = (
    "a lighthouse on a rocky cliff at sunset, oil painting",
    "a red fox in a snowy pine forest, photograph, soft light",
    "an old library with tall shelves and floating candles, fantasy art",
    "a busy night market in the rain, neon reflections, cinematic",
    "a bowl of ramen on a wooden table, studio photograph",
    "a small sailing boat on a calm turquoise sea, watercolour",
    "a mountain village in autumn, detailed illustration",
    "a vintage bicycle leaning on a flower-covered wall, film photograph",
    "an astronaut tending a greenhouse on the moon, digital art",
    "a waterfall in a tropical jungle, morning mist, photograph",
)


def fresh_seeds(build: Callable[[int], _T], span: int = 1 << 30) -> Callable[[int], _T]:
    """
    ``build``, given request ``i``'s seed: ``i`` past a random base drawn now,
    below ``span``, so this benchmark's prompts differ from an earlier one's.
    """
    base = random.randrange(span)
    return lambda i: build(base + i)


def text_prompt(words: int, seed: int) -> str:
    """
    The prompt of one text-generation request.

    :param words: how many random words follow the instruction.
    :param seed: makes the words of this request differ from the others'.
    """
    chooser = random.Random(seed)
    return INSTRUCTION + " " + " ".join(chooser.choice(_WORDS) for _ in range(words))


def image_prompt(seed: int) -> str:
    """
    The prompt of one built-in image job.

    :param seed: which of :data:`IMAGE_PROMPTS`.
    """
    return IMAGE_PROMPTS[seed % len(IMAGE_PROMPTS)]
