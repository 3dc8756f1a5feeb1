"""The built-in evaluation sentences: 240 varied English sentences, always the same ones in the same order.

200 come from 25 topics x 8 sentence frames (statements, questions, past tense, numbers, quotes),
so that sentences on one topic are each other's nearest neighbours and the nearest-neighbour
agreement of :func:`qlayers.evaluate.embedding_agreement` measures something; 40 stand alone
(instructions, code, dates, negations, other languages, very short and long ones).
"""
from __future__ import annotations

from typing import List, Tuple

_TOPICS: Tuple[Tuple[str, str, str, str], ...] = (
    # subject, verb (3rd person), verb (base), object
    ("cat", "sleeps", "sleep", "warm window"),
    ("river", "floods", "flood", "old stone bridge"),
    ("robot", "sorts", "sort", "pile of invoices"),
    ("violinist", "practises", "practise", "concert hall"),
    ("glacier", "melts", "melt", "mountain village"),
    ("bakery", "opens", "open", "busy market square"),
    ("satellite", "orbits", "orbit", "blue planet"),
    ("gardener", "prunes", "prune", "apple orchard"),
    ("compiler", "optimizes", "optimize", "inner loop"),
    ("surgeon", "operates", "operate", "emergency ward"),
    ("hawk", "circles", "circle", "empty field"),
    ("train", "departs", "depart", "crowded platform"),
    ("volcano", "erupts", "erupt", "sleeping island"),
    ("teacher", "explains", "explain", "difficult proof"),
    ("battery", "charges", "charge", "solar panel"),
    ("chef", "seasons", "season", "tomato soup"),
    ("goalkeeper", "dives", "dive", "penalty spot"),
    ("lawyer", "argues", "argue", "crowded courtroom"),
    ("dolphin", "jumps", "jump", "fishing boat"),
    ("database", "replicates", "replicate", "backup server"),
    ("painter", "sketches", "sketch", "foggy harbour"),
    ("bee", "pollinates", "pollinate", "clover meadow"),
    ("pilot", "lands", "land", "windy runway"),
    ("economist", "predicts", "predict", "housing market"),
    ("child", "builds", "build", "sand castle"),
)

_FRAMES: Tuple[str, ...] = (
    "The {s} {v} near the {o}.",
    "Why does the {s} {b} every morning beside the {o}?",
    "Yesterday a {s} tried to {b} close to the {o}, and everyone watched.",
    "Researchers measured how often a {s} {v} when the {o} is quiet.",
    "In 2019, about 40 people saw the {s} {b} next to the {o}.",
    "\"I have never seen a {s} {b} like that,\" she said, pointing at the {o}.",
    "No {s} {v} on Sundays, not even near the {o}.",
    "A tired {s} slowly {v} while the {o} fades into the evening light.",
)

_STANDALONE: Tuple[str, ...] = (
    "Quantization maps real numbers to a small set of representable values.",
    "Please restart the server before running the migration script.",
    "def add(a, b): return a + b",
    "The meeting was moved from Tuesday, 3 March, to Friday, 6 March.",
    "Nobody expected the bridge to close for repairs so soon.",
    "Das Wetter ist heute schön und warm.",
    "Le musée ouvre ses portes à neuf heures.",
    "El tren llega a la estación a las ocho.",
    "Yes.",
    "Absolutely not, and I will not change my mind.",
    "The stock price fell by 12 percent after the announcement.",
    "Mix two cups of flour with one cup of water and a pinch of salt.",
    "Light travels about 300,000 kilometres per second in a vacuum.",
    "Can you recommend a good book about the history of mathematics?",
    "The committee approved the budget by a vote of seven to two.",
    "Error: file not found at /usr/local/share/data.csv",
    "She whispered the password so that nobody else could hear it.",
    "The ancient library burned down, and thousands of scrolls were lost forever.",
    "Turn left at the second traffic light, then continue straight for two miles.",
    "My grandmother grew tomatoes, beans and sunflowers in her tiny garden every summer.",
    "The referee blew the whistle and the stadium erupted in cheers.",
    "Photosynthesis converts sunlight, water and carbon dioxide into sugar and oxygen.",
    "I think, therefore I am.",
    "The quarterly report is due at the end of the month.",
    "A neural network with billions of parameters needs a lot of memory.",
    "Rain is expected tomorrow afternoon, with strong winds along the coast.",
    "He forgot his umbrella on the bus again.",
    "The orchestra tuned their instruments while the audience found their seats.",
    "Two plus two equals four, but two times three equals six.",
    "SELECT name, age FROM users WHERE age > 30 ORDER BY name;",
    "The museum's new exhibition features sculptures from West Africa.",
    "Wash your hands before eating.",
    "The spacecraft sent back photographs of the rings of Saturn.",
    "After years of silence, the old clock in the tower started ticking again.",
    "Is this seat taken?",
    "The vaccine trial enrolled more than thirty thousand volunteers.",
    "Our flight was delayed by three hours because of fog.",
    "The poem compares love to a red, red rose.",
    "Interest rates rose for the third time this year.",
    "The kitten chased a ball of yarn under the sofa and fell asleep there.",
)


def builtin_sentences() -> List[str]:
    """The 240 built-in sentences (a new list each call, always the same content and order)."""
    generated = [
        frame.format(s=s, v=v, b=b, o=o) for s, v, b, o in _TOPICS for frame in _FRAMES
    ]
    return generated + list(_STANDALONE)
