"""Random instance names in LXD's style (``adjective-noun``)."""

from __future__ import annotations

import random
import re
from collections.abc import Callable

ADJECTIVES = (
    "able", "active", "amazed", "amused", "big", "bold", "brave", "bright", "busy", "calm",
    "capital", "careful", "charming", "clever", "cool", "cosmic", "crisp", "daring", "eager",
    "easy", "electric", "enabled", "epic", "equal", "fair", "fancy", "fast", "fine", "fit",
    "fluent", "fond", "free", "fresh", "funny", "gentle", "giving", "glad", "golden", "good",
    "grand", "great", "happy", "hardy", "helpful", "holy", "honest", "humble", "ideal", "immune",
    "jolly", "just", "keen", "kind", "large", "lasting", "legal", "lively", "loved", "loyal",
    "lucky", "magic", "main", "merry", "mighty", "modern", "moral", "native", "neat", "noble",
    "novel", "open", "optimal", "patient", "perfect", "pleasant", "polite", "precise", "proud",
    "quick", "quiet", "rapid", "rare", "ready", "renewed", "rich", "robust", "safe", "sharp",
    "shining", "simple", "smart", "smooth", "solid", "steady", "still", "strong", "sunny",
    "super", "sure", "swift", "tender", "tidy", "true", "trusted", "united", "upward", "usable",
    "valid", "vast", "vital", "warm", "welcome", "wise", "witty", "working", "worthy",
)

NOUNS = (
    "aardvark", "albatross", "alpaca", "ant", "antelope", "badger", "bat", "bear", "beaver",
    "bee", "bison", "boar", "bobcat", "buffalo", "bull", "camel", "caribou", "cat", "cheetah",
    "chicken", "chimp", "cicada", "clam", "cobra", "condor", "corgi", "cougar", "cow", "coyote",
    "crab", "crane", "cricket", "crow", "deer", "dingo", "dodo", "dog", "dolphin", "donkey",
    "dove", "dragon", "duck", "eagle", "eel", "elk", "emu", "falcon", "ferret", "finch", "fish",
    "flamingo", "fox", "frog", "gator", "gazelle", "gecko", "gibbon", "giraffe", "gnu", "goat",
    "goose", "gopher", "gorilla", "grouse", "gull", "hare", "hawk", "hedgehog", "heron", "hippo",
    "hornet", "horse", "hound", "ibex", "ibis", "iguana", "impala", "jackal", "jaguar", "jay",
    "kangaroo", "kid", "kite", "kiwi", "koala", "lab", "lamb", "lark", "lemur", "leopard",
    "lion", "lizard", "llama", "lobster", "lynx", "macaw", "magpie", "mako", "mammoth", "mantis",
    "marmot", "marten", "mink", "mole", "molly", "mongoose", "monkey", "moose", "moth", "mouse",
    "mule", "newt", "ocelot", "octopus", "orca", "oriole", "osprey", "ostrich", "otter", "owl",
    "ox", "panda", "panther", "parrot", "peacock", "pelican", "penguin", "pheasant", "pig",
    "pigeon", "pika", "polecat", "pony", "porpoise", "possum", "puma", "quail", "rabbit",
    "raccoon", "ram", "raven", "reindeer", "robin", "rooster", "salmon", "seal", "shark",
    "sheep", "shrew", "skunk", "sloth", "snail", "snake", "sparrow", "squid", "stag", "stork",
    "swan", "tahr", "tapir", "termite", "tiger", "toad", "trout", "tuna", "turkey", "turtle",
    "viper", "vulture", "walrus", "wasp", "weasel", "whale", "wolf", "wombat", "worm", "yak",
    "zebra",
)

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,62}$")


def valid_instance_name(name: str) -> bool:
    """LXD's rules: 1-63 letters, digits and ``-``; not starting with a digit or ``-``, not
    ending with ``-``."""
    return bool(NAME_RE.match(name)) and not name.endswith("-")


def random_name(taken: Callable[[str], bool] = lambda _n: False,
                rng: random.Random | None = None) -> str:
    """An ``adjective-noun`` name for which ``taken(name)`` is false."""
    rng = rng or random.SystemRandom()
    for _ in range(100):
        name = f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"
        if not taken(name):
            return name
    while True:
        name = f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}-{rng.randrange(1000, 10000)}"
        if not taken(name):
            return name
