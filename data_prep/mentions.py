"""Object mentions in captions: which vocabulary objects a caption names, where, in which order.

The one home of this idea: mitigations (``train.mitigations.CaptionShuffle``), analyses
(``caption_order``, ``caption_stats``) and converters (``coco``) import it.

A mention is a :class:`Mention` ``(start, end, name)``: character offsets of the whole noun
phrase that names the object ("a red car", "two dogs", "a group of people", "a cup of coffee"),
so moving the span moves the phrase, plus the canonical vocabulary name. Matching rules (pure
Python, nothing to download):

- case-insensitive, on word boundaries; a hyphenated or possessive-plural word is one word
  ("dog-friendly", "women's" are not mentions); singular possessives are ("a dog's bowl");
- surface forms = the name, its synonyms and their plurals (regular rules + irregulars:
  people, men, mice, knives, sheep, ...); multi-word names win over their parts ("hot dog",
  "teddy bear", "cell phone", "fire hydrant", "wine glass");
- a name used as a modifier is not an object: followed directly by another name ("baby
  elephant", "apple laptop", "tv remote") or by a compound head ("bus stop", "dog food",
  "pizza box", "car park"); fixed non-object phrases ("train station", "toilet paper") block
  their words; "clock tower" is configurable (:func:`coco_vocabulary`);
- "orange"/"remote" in the singular are colour/adjective unless they stand alone.

Vocabularies: :func:`open_vocabulary` (every concrete, depictable noun of web alt-text: a curated
list shipped in ``vocabularies/open_objects.tsv``, the default of the caption mitigations),
:func:`rendered_vocabulary` (the drawable objects of :mod:`data_prep.vocab`),
:func:`coco_vocabulary` (the 80 COCO categories, usual synonyms and plurals),
:func:`default_vocabulary` (COCO plus the rendered objects COCO lacks) and
:meth:`Vocabulary.from_tsv` (a user file: ``name<TAB>synonym, synonym, ...``; a row whose name is
``-`` lists phrases that are never objects).

An optional spaCy backend (``backend="spacy"``) widens spans to spaCy's noun chunks; it is used
only when spaCy and a model are importable and is never downloaded.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping, Sequence

__all__ = [
    "Mention", "Vocabulary", "find_mentions", "mentioned_names", "coco_vocabulary", "rendered_vocabulary",
    "default_vocabulary", "load_vocabulary", "pluralize", "COCO_CATEGORIES", "spacy_available",
    "in_possessive", "open_vocabulary", "caption_problem", "VOCABULARIES", "noun_adjective_spans",
]

# ----------------------------------------------------------------------------- vocabularies

#: The 80 COCO categories (2017 names, id order).
COCO_CATEGORIES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

#: Usual synonyms (singular; plurals are generated) of COCO categories.
COCO_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("people", "man", "woman", "boy", "girl", "child", "kid", "baby", "toddler", "guy", "lady",
               "gentleman", "adult", "teenager", "teen", "player", "skier", "snowboarder", "surfer",
               "skateboarder", "rider", "cyclist", "biker", "driver", "pedestrian", "chef", "worker",
               "officer", "policeman", "policewoman", "soldier", "student", "bride", "groom", "mother",
               "father", "mom", "dad", "daughter", "son", "grandmother", "grandfather", "businessman",
               "businesswoman", "cowboy", "tourist", "batter", "catcher", "pitcher", "umpire", "athlete",
               "couple", "crowd"),
    "bicycle": ("bike", "mountain bike", "road bike", "bmx bike"),
    "car": ("automobile", "sedan", "taxi", "cab", "suv", "jeep", "minivan", "hatchback", "convertible",
            "sports car", "police car", "race car"),
    "motorcycle": ("motorbike", "motor bike", "scooter", "moped", "dirt bike"),
    "airplane": ("plane", "aeroplane", "airliner", "jet", "jetliner", "aircraft", "jumbo jet", "seaplane",
                 "biplane"),
    "bus": ("school bus", "double decker", "double-decker bus", "minibus", "trolleybus", "coach bus"),
    "train": ("locomotive", "tram", "streetcar", "subway train", "steam engine", "freight train"),
    "truck": ("pickup", "pickup truck", "lorry", "fire truck", "firetruck", "dump truck", "semi truck",
              "tow truck"),
    "boat": ("ship", "sailboat", "yacht", "kayak", "canoe", "ferry", "rowboat", "speedboat", "tugboat",
             "gondola", "catamaran"),
    "traffic light": ("traffic signal", "stop light", "stoplight", "traffic lamp"),
    "fire hydrant": ("hydrant", "fire plug"),
    "stop sign": (),
    "parking meter": ("parking meters",),
    "bench": ("park bench",),
    "bird": ("pigeon", "seagull", "gull", "duck", "goose", "parrot", "owl", "eagle", "sparrow", "swan",
             "hawk", "crow", "robin", "finch", "pelican", "flamingo", "chicken", "hen", "rooster", "heron",
             "songbird", "hummingbird"),
    "cat": ("kitten", "kitty", "tabby", "tomcat"),
    "dog": ("puppy", "pup", "doggy", "doggie", "hound", "terrier", "retriever", "labrador", "poodle",
            "bulldog", "chihuahua", "dachshund", "beagle", "corgi", "husky", "sheepdog", "german shepherd"),
    "horse": ("pony", "foal", "stallion", "mare", "colt"),
    "sheep": ("lamb", "ewe"),
    "cow": ("cattle", "bull", "calf", "ox", "heifer"),
    "elephant": (),
    "bear": ("polar bear", "grizzly", "grizzly bear", "brown bear", "black bear"),
    "zebra": (),
    "giraffe": (),
    "backpack": ("rucksack", "knapsack", "back pack", "bookbag"),
    "umbrella": ("parasol",),
    "handbag": ("purse", "hand bag", "clutch bag", "tote bag"),
    "tie": ("necktie", "bow tie", "bowtie"),
    "suitcase": ("luggage", "suit case", "carry-on"),
    "frisbee": ("flying disc",),
    "skis": ("ski",),
    "snowboard": ("snow board",),
    "sports ball": ("ball", "soccer ball", "football", "basketball", "baseball", "tennis ball", "volleyball",
                    "beach ball", "golf ball"),
    "kite": (),
    "baseball bat": ("bat",),
    "baseball glove": ("glove", "mitt", "baseball mitt"),
    "skateboard": ("skate board",),
    "surfboard": ("surf board",),
    "tennis racket": ("racket", "racquet", "tennis racquet"),
    "bottle": ("water bottle", "wine bottle", "beer bottle"),
    "wine glass": ("wineglass", "glass of wine", "champagne glass"),
    "cup": ("mug", "coffee cup", "teacup", "tea cup", "coffee mug", "paper cup"),
    "fork": (),
    "knife": (),
    "spoon": ("teaspoon", "tablespoon"),
    "bowl": (),
    "banana": (),
    "apple": (),
    "sandwich": ("sub sandwich", "panini"),
    "orange": ("tangerine", "mandarin"),
    "broccoli": (),
    "carrot": (),
    "hot dog": ("hotdog", "hot-dog", "frankfurter"),
    "pizza": (),
    "donut": ("doughnut",),
    "cake": ("cupcake", "cheesecake", "birthday cake", "wedding cake"),
    "chair": ("armchair", "stool", "recliner", "rocking chair", "office chair"),
    "couch": ("sofa", "loveseat", "settee"),
    "potted plant": ("plant", "houseplant", "house plant", "pot plant", "flower pot", "flowerpot"),
    "bed": (),
    "dining table": ("table", "desk", "kitchen table", "coffee table", "picnic table"),
    "toilet": ("toilet bowl", "toilet seat", "urinal"),
    "tv": ("television", "tv set", "flat screen tv", "flatscreen"),
    "laptop": ("laptop computer", "notebook computer", "macbook", "chromebook"),
    "mouse": ("computer mouse",),
    "remote": ("remote control", "tv remote", "controller"),
    "keyboard": ("computer keyboard",),
    "cell phone": ("phone", "cellphone", "mobile phone", "smartphone", "smart phone", "iphone", "telephone"),
    "microwave": ("microwave oven",),
    "oven": ("stove", "stovetop"),
    "toaster": (),
    "sink": (),
    "refrigerator": ("fridge", "freezer"),
    "book": ("novel", "textbook", "paperback"),
    "clock": (),
    "vase": (),
    "scissors": ("pair of scissors",),
    "teddy bear": ("teddy", "teddybear", "stuffed bear", "stuffed animal"),
    "hair drier": ("hair dryer", "hairdryer", "blow dryer", "blow drier", "hair-dryer"),
    "toothbrush": ("tooth brush",),
}

#: Phrases that are never objects (their words are not mentions).
NON_OBJECTS: tuple[str, ...] = (
    "bus stop", "bus station", "bus shelter", "bus lane", "train station", "train track", "train tracks",
    "train platform", "railroad", "car park", "parking lot", "toilet paper", "table tennis", "power plant",
    "tennis court", "baseball field", "baseball game", "baseball cap", "baseball diamond", "dog park",
    "hot air balloon", "bear market", "bull market", "table cloth", "tablecloth", "phone number", "phone call",
    "cake pan", "cup holder", "book shelf", "time table", "remote location", "remote area", "remote island",
    "television show", "tv show", "orange juice", "apple juice", "apple pie", "banana bread", "carrot cake",
    "cell phone case", "phone case", "bed sheet", "bed sheets", "dog food", "cat food", "horse race",
    "chair lift", "ski lift", "ski slope", "ski resort", "ski pole", "ski poles", "ski boots", "ski jacket",
    "skate park", "surf shop", "pizza box", "pizza oven", "cake stand", "horse trailer", "teddy bear picnic",
    "traffic jam", "traffic cone", "traffic sign", "street sign", "sports bra", "dvd player", "cd player",
    "record player", "mp3 player", "media player", "cake batter", "jet ski", "jet skis",
)

#: A singular name directly followed by one of these nouns is a modifier ("dog toy", "pizza boxes").
COMPOUND_HEADS: frozenset[str] = frozenset("""
    station stations lots lane lanes rack racks tracks food treats treat house houses boxes cases covers
    holder holders cage cages pie pies juice bread cutter opener paper frames trailer helmet helmets
    seats tire tires wheel wheels shelf shelves pad pads toy toys collar collars leash leashes costume
    costumes prints sticker stickers decal decals charger cable screen wallpaper field lamp lights signs
    keys tags bag bags crate carrier kennel dealership dealer garage repair mechanic insurance accessories
    accessory parts part mounts shelter sheet sheets fur tail tails paw paws nose ear ears legs leg skin
    slice slices crust crumbs topper toppers pan icing frosting sauce salad chart market pole poles booth
    wire wires number numbers clips owner owners lover lovers sill sills pane panes sleeve sleeves
""".split())
#: Nouns that are also verbs: modifier heads only in the singular and only after a singular name
#: ("bus stop", "dog show"), never "a dog stands", "a man rides", "two dogs stand".
VERBISH_HEADS: frozenset[str] = frozenset("""
    stop stand park parking race racing ride show wash track shop store box case cover frame seat print
    pattern lot tag key court club team game light sign line mount face head eye mix bed door
""".split())
#: Names that are verbs after a subject ("a man skis down the slope", "a boy surfs").
_VERBS_AFTER_SUBJECT = frozenset({"ski", "skis", "bikes", "snowboards", "skateboards", "surfs", "cycles"})

#: Words that never begin a noun phrase a name is part of (function words, stop-scan markers).
_FUNCTION = frozenset("""
    of on in at by for from to into onto over under above below behind beside besides near next with
    without while and or but nor so as than that which who whom whose where when what why how is are was
    were be been being has have had do does did it they he she we you i them him her us there here
    up down out off around through across along against between among toward towards about after before
    during since until via per not
""".split())

_DETERMINERS = frozenset("""
    a an the this that these those some any each every another other both all his her its their my our
    your no several many few multiple various numerous lots
""".split())
_NUMBERS = frozenset("""
    one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen
    seventeen eighteen nineteen twenty thirty forty fifty hundred hundreds dozen dozens couple pair single
""".split())
_COLOURS = frozenset("""
    red blue green yellow orange purple pink black white gray grey brown silver golden gold beige tan
    teal navy maroon turquoise violet cream ivory bronze copper dark light bright pale colorful colourful
    multicolored multicoloured rainbow striped spotted
""".split())
_ADJECTIVES = _COLOURS | frozenset("""
    big large small little tiny huge giant tall short long wide narrow thin fat massive mini miniature
    old young new vintage antique modern classic retro cute pretty adorable beautiful lovely nice happy
    sad funny fancy elegant luxury cheap premium empty full clean dirty wet dry open closed broken parked
    stuffed sliced half whole fresh ripe cooked fried baked frozen hot cold warm wooden wood metal
    metallic plastic leather glass ceramic steel stainless porcelain stone brick cotton silk wild stray
    domestic fluffy furry sleeping sitting standing lone lonely single double various assorted delicious
    tasty healthy homemade handmade custom personalized cartoon toy real electric fake digital personal
    black-and-white round square rectangular flat smart shiny rusty busy crowded quiet lazy playful
    friendly angry tired
""".split())
_ADJ_SUFFIX = re.compile(r".+(?:ful|ous|ive|able|ible|ish|ic|ical|less|y|ed|en|al)$")
#: nouns that take "of" + the object ("a group of people", "a slice of pizza")
_QUANTITY = frozenset("""
    group groups herd herds flock flocks bunch bunches pair pairs couple lot lots slice slices piece pieces
    pitcher pitchers crowd crowds
    box boxes stack stacks pile piles row rows line lines set sets variety collection number team family
    pack packs litter bundle tray trays basket baskets crowd dozen dozens handful half plate plates platter
    assortment selection fleet bouquet loaf
""".split())
#: containers that take "of" + what they hold ("a cup of coffee", "a glass of wine"): the phrase's object
#: is what follows when a vocabulary names it (the open one names coffee and wine), else the container
_CONTAINERS = frozenset("""
    cup cups glass glasses bowl bowls bottle bottles jar jars mug mugs bag bags bucket buckets can cans
    jug jugs pot pots carton cartons sack sacks vase vases
""".split())
#: "for men", "for kids": the audience of a product, not a depicted person
_AUDIENCE = frozenset("men women kids boys girls children toddlers babies adults teens ladies".split())
#: singular names that are adjectives unless they stand alone ("an orange cat", "remote island")
_AMBIGUOUS_ADJ = frozenset({"orange", "remote"})

_IRREGULAR = {
    "person": ("people", "persons"), "man": ("men",), "woman": ("women",), "child": ("children",),
    "mouse": ("mice",), "knife": ("knives",), "sheep": ("sheep",), "fish": ("fish",), "goose": ("geese",),
    "ox": ("oxen",), "policeman": ("policemen",), "policewoman": ("policewomen",),
    "businessman": ("businessmen",), "businesswoman": ("businesswomen",), "gentleman": ("gentlemen",),
    "skis": ("skis",), "scissors": ("scissors",), "cattle": ("cattle",), "people": ("peoples",),
    "broccoli": ("broccoli",), "luggage": ("luggage", "luggages"), "deer": ("deer",), "calf": ("calves",),
    "wife": ("wives",), "shelf": ("shelves",), "leaf": ("leaves",), "half": ("halves",),
    "grandfather": ("grandfathers",), "bus": ("buses", "busses"), "hair drier": ("hair driers", "hair dryers"),
    "teddy": ("teddies",), "ski": ("skis",), "pair of scissors": ("pairs of scissors",),
    "glass of wine": ("glasses of wine",), "carry-on": ("carry-ons",), "family": ("families",),
}


def pluralize(word: str) -> tuple[str, ...]:
    """Plural forms of ``word`` (last word of a phrase), e.g. ``("dogs",)``, ``("buses", "busses")``."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    head, _, last = word.rpartition(" ")
    prefix = head + " " if head else ""
    if last in _IRREGULAR:
        return tuple(prefix + p for p in _IRREGULAR[last])
    if re.search(r"(s|x|z|ch|sh)$", last):
        forms = (last + "es",)
    elif re.search(r"[^aeiou]y$", last):
        forms = (last[:-1] + "ies",)
    elif last.endswith("fe"):
        forms = (last[:-2] + "ves", last + "s")
    elif re.search(r"[^aeiou]o$", last):
        forms = (last + "es", last + "s")
    else:
        forms = (last + "s",)
    return tuple(prefix + f for f in forms)


def _norm(phrase: str) -> tuple[str, ...]:
    return tuple(_tokenize_words(phrase.lower()))


@dataclass
class Vocabulary:
    """Surface phrase (tuple of lower-case words) → canonical name; plus never-object phrases.

    Build with :meth:`from_names`, the factory functions, or :meth:`from_tsv`; combine with
    :meth:`merged` (earlier entries win).
    """

    phrases: dict[tuple[str, ...], str] = field(default_factory=dict)
    blocked: set[tuple[str, ...]] = field(default_factory=set)
    plurals: set[tuple[str, ...]] = field(default_factory=set)  # surface forms that are plurals

    @classmethod
    def from_names(cls, names: Mapping[str, Iterable[str]] | Iterable[str],
                   non_objects: Iterable[str] = ()) -> "Vocabulary":
        """``{name: synonyms}`` (or just names) → vocabulary with plurals of names and synonyms."""
        items = names.items() if isinstance(names, Mapping) else ((n, ()) for n in names)
        vocab = cls()
        for name, synonyms in items:
            name = name.strip().lower()
            for surface in (name, *synonyms):
                surface = surface.strip().lower()
                if not surface:
                    continue
                plurals = [p for p in pluralize(surface) if p != surface]
                for form in (surface, *plurals):
                    keys = [_norm(form)]
                    if "-" in form:  # "hot-dog" also as "hot dog"; "hotdog" is its own synonym
                        keys.append(_norm(form.replace("-", " ")))
                    elif " " in form:
                        keys.append(_norm(form.replace(" ", "-")))
                    for key in keys:
                        vocab.phrases.setdefault(key, name)
                        if form in plurals:
                            vocab.plurals.add(key)
        for phrase in non_objects:
            for form in (phrase, *pluralize(phrase.lower())):
                key = _norm(form)
                if key not in vocab.phrases:
                    vocab.blocked.add(key)
        return vocab

    @classmethod
    def from_tsv(cls, path: str | Path) -> "Vocabulary":
        """Read ``name<TAB>synonym, synonym ...`` rows (``#`` comments, blank lines skipped).

        Further tab-separated columns are synonyms too. A row named ``-`` lists phrases that are
        never objects (e.g. ``-<TAB>bus stop, clock tower``). Raises ``ValueError`` naming the
        line of a malformed row.
        """
        names: dict[str, list[str]] = {}
        blocked: list[str] = []
        for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            cols = line.rstrip("\n").split("\t")
            name = cols[0].strip()
            syns = [s.strip() for c in cols[1:] for s in c.split(",") if s.strip()]
            if not name:
                raise ValueError(f"{path}:{lineno}: empty name in {line!r} (expected name<TAB>synonyms)")
            if name == "-":
                blocked.extend(syns)
            else:
                names.setdefault(name, []).extend(syns)
        if not names:
            raise ValueError(f"{path}: no object names found (expected rows name<TAB>synonym, synonym)")
        return cls.from_names(names, blocked)

    def merged(self, other: "Vocabulary") -> "Vocabulary":
        """Union; on a phrase both define, ``self`` wins. Blocked phrases of either stay blocked
        unless the other defines them as a name."""
        phrases = {**other.phrases, **self.phrases}
        blocked = {b for b in self.blocked | other.blocked if b not in phrases}
        return Vocabulary(phrases, blocked, self.plurals | other.plurals)

    def with_phrase(self, phrase: str, name: str | None) -> "Vocabulary":
        """Copy where ``phrase`` means ``name`` (``None``: never an object), e.g. "clock tower"."""
        new = Vocabulary(dict(self.phrases), set(self.blocked), set(self.plurals))
        key = _norm(phrase)
        new.phrases.pop(key, None)
        new.blocked.discard(key)
        if name is None:
            new.blocked.add(key)
        else:
            new.phrases[key] = name
        return new

    @property
    def names(self) -> list[str]:
        """Sorted canonical names."""
        return sorted(set(self.phrases.values()))

    def canonical(self, word: str) -> str:
        """Canonical name of a surface form (``"dogs"`` → ``"dog"``); unknown words unchanged."""
        return self.phrases.get(_norm(word), word)

    @property
    def max_len(self) -> int:
        """Words in the longest phrase (cached; vocabularies are not changed after building)."""
        key = (len(self.phrases), len(self.blocked))
        if getattr(self, "_max_len_key", None) != key:
            self._max_len = max((len(p) for p in (*self.phrases, *self.blocked)), default=1)
            self._max_len_key = key
        return self._max_len

    @property
    def first_words(self) -> frozenset[str]:
        """Words that start some phrase (cached like :attr:`max_len`)."""
        key = (len(self.phrases), len(self.blocked))
        if getattr(self, "_first_key", None) != key:
            self._first = frozenset(p[0] for p in (*self.phrases, *self.blocked))
            self._first_key = key
        return self._first


@lru_cache(maxsize=4)
def coco_vocabulary(clock_tower_is_clock: bool = True) -> Vocabulary:
    """The 80 COCO categories with usual synonyms and plurals.

    Args:
        clock_tower_is_clock: "clock tower" names a clock (COCO annotates the clock faces of
            towers); ``False`` makes it a non-object like "bus stop".
    """
    vocab = Vocabulary.from_names({c: COCO_SYNONYMS.get(c, ()) for c in COCO_CATEGORIES}, NON_OBJECTS)
    return vocab.with_phrase("clock tower", "clock" if clock_tower_is_clock else None)


@lru_cache(maxsize=1)
def rendered_vocabulary() -> Vocabulary:
    """The drawable objects of :mod:`data_prep.vocab` under their own names, with the COCO
    synonyms of the names they share with COCO ("man" → person, "sofa" → couch)."""
    from .vocab import OBJECTS

    coco_alias = {"ski": "skis"}
    syn = {n: COCO_SYNONYMS.get(coco_alias.get(n, n), ()) for n in OBJECTS}
    return Vocabulary.from_names(syn, NON_OBJECTS)


@lru_cache(maxsize=1)
def default_vocabulary() -> Vocabulary:
    """COCO (with synonyms) plus the rendered objects COCO lacks (axe, door, hat, mirror, plate,
    shoe, window); "ski" maps to COCO's "skis"."""
    from .vocab import OBJECTS

    extra = Vocabulary.from_names([n for n in OBJECTS if n not in COCO_CATEGORIES and n != "ski"], NON_OBJECTS)
    return coco_vocabulary().merged(extra)


#: the curated names of :func:`open_vocabulary` (sources and cleaning: CREDITS.md beside it)
OPEN_VOCABULARY_FILE = Path(__file__).parent / "vocabularies" / "open_objects.tsv"
#: ``--vocabulary`` values besides a TSV path
VOCABULARIES = ("open", "default", "coco", "rendered")


@lru_cache(maxsize=1)
def open_vocabulary() -> Vocabulary:
    """Every concrete, depictable noun of free-form captions (web alt-text): the curated names of
    :data:`OPEN_VOCABULARY_FILE` (LVIS, Open Images and COCO objects, people words, clothing,
    buildings and rooms, plants, body parts, landscape features as things), over
    :func:`default_vocabulary` for the names it lacks. Its own canonical names win, so "man" and
    "woman" stay two objects (COCO folds both into "person")."""
    return Vocabulary.from_tsv(OPEN_VOCABULARY_FILE).merged(default_vocabulary())


def load_vocabulary(spec: str | Path | None) -> Vocabulary:
    """``"open"``, ``None``/``"default"``, ``"coco"``, ``"rendered"``, or a TSV path (merged over nothing)."""
    if str(spec) == "open":
        return open_vocabulary()
    if spec is None or str(spec) == "default":
        return default_vocabulary()
    if str(spec) == "coco":
        return coco_vocabulary()
    if str(spec) == "rendered":
        return rendered_vocabulary()
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"vocabulary {str(spec)!r} is neither {', '.join(VOCABULARIES)} nor an existing TSV file")
    return Vocabulary.from_tsv(path)


# ----------------------------------------------------------------------------- matching

@dataclass(frozen=True)
class Mention:
    """One object mention: ``text[start:end]`` is the noun phrase, ``name`` the canonical object."""

    start: int
    end: int
    name: str
    head_start: int = -1  # offsets of the matched name words inside the phrase
    head_end: int = -1


_TOKEN = re.compile(r"[A-Za-z0-9]+(?:[-'’][A-Za-z0-9]+)*(?:['’](?=\s|$|[^\w]))?")


def _tokenize_words(text: str) -> list[str]:
    return [m.group(0) for m in _TOKEN.finditer(text)]


@dataclass(frozen=True)
class _Tok:
    start: int
    end: int
    word: str       # lower-case, possessive stripped
    possessive: str  # "", "s" (dog's) or "p" (dogs', women's)
    gap: str        # text between the previous token and this one


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    prev = 0
    for m in _TOKEN.finditer(text):
        raw = m.group(0).lower().replace("’", "'")
        pos = ""
        if raw.endswith("'s"):
            raw, pos = raw[:-2], "s"
        elif raw.endswith("'"):
            raw, pos = raw[:-1], "p"
        if pos == "s" and raw in ("men", "women", "children", "people", "kids", "boys", "girls"):
            pos = "p"  # plural possessive: "women's shoes" classifies, it does not name a person
        out.append(_Tok(m.start(), m.end(), raw, pos, text[prev:m.start()]))
        prev = m.end()
    return out


def _punct(gap: str) -> bool:
    """True if the text between two tokens breaks a phrase (anything but spaces)."""
    return bool(gap.strip())


def _match_at(toks: list[_Tok], i: int, vocab: Vocabulary) -> tuple[int, str | None] | None:
    """Longest phrase starting at token ``i``: ``(length, name or None if blocked)``."""
    if toks[i].word not in vocab.first_words:
        return None
    max_len = vocab.max_len
    for n in range(min(max_len, len(toks) - i), 0, -1):
        if any(_punct(toks[j].gap) for j in range(i + 1, i + n)):
            continue
        if any(toks[j].possessive for j in range(i, i + n - 1)):
            continue
        key = tuple(t.word for t in toks[i:i + n])
        if key in vocab.phrases:
            return n, vocab.phrases[key]
        if key in vocab.blocked:
            return n, None
    return None


def _heads(toks: list[_Tok], vocab: Vocabulary) -> list[tuple[int, int, str]]:
    """``(first token, end token, name)`` of every name used as an object, in order."""
    raw: list[tuple[int, int, str | None]] = []
    i = 0
    while i < len(toks):
        m = _match_at(toks, i, vocab)
        if m is None:
            i += 1
            continue
        n, name = m
        raw.append((i, i + n, name))
        i += n
    heads = []
    for k, (i, j, name) in enumerate(raw):
        if name is None or toks[j - 1].possessive == "p":
            continue
        prev_is_name = k > 0 and raw[k - 1][1] == i and raw[k - 1][2] is not None and not _punct(toks[i].gap)
        nxt = toks[j] if j < len(toks) and not _punct(toks[j].gap) else None
        if j - i == 1 and toks[i].word in _VERBS_AFTER_SUBJECT and prev_is_name \
                and (nxt is None or nxt.word in _FUNCTION):
            continue  # "a man skis down the slope"
        if i > 0 and toks[i - 1].word == "for" and j - i == 1 and toks[i].word in _AUDIENCE:
            continue  # product titles: "Backpack for Men"
        if nxt is not None and nxt.word == "of" and j - i == 1 and toks[i].word in _QUANTITY:
            continue  # "a couple of dogs", "a crowd of people"
        if nxt is not None and nxt.word == "of" and j - i == 1 and toks[i].word in _CONTAINERS \
                and _names_after_of(toks, raw, k, j):
            continue  # "a cup of coffee" where coffee is a name: one phrase, its object the coffee
        singular = tuple(t.word for t in toks[i:j]) not in vocab.plurals
        if nxt is not None and not toks[j - 1].possessive:
            nxt_m = raw[k + 1] if k + 1 < len(raw) and raw[k + 1][0] == j else None
            nxt_is_verb = (nxt_m is not None and nxt_m[1] - nxt_m[0] == 1 and nxt.word in _VERBS_AFTER_SUBJECT)
            if nxt_m is not None and nxt_m[2] is not None and singular and not nxt_is_verb:
                continue  # modifier: "baby elephant", "apple laptop", "tv remote"
            if singular and (nxt.word in COMPOUND_HEADS or nxt.word in VERBISH_HEADS):
                continue  # modifier: "bus stop", "dog toy", "pizza boxes"
            if j - i == 1 and toks[i].word in _AMBIGUOUS_ADJ and nxt.word not in _FUNCTION \
                    and not nxt.word.endswith("ing"):
                continue  # "an orange shirt", "remote island"
            if toks[i].word in _AMBIGUOUS_ADJ and nxt.word in ("and", "&") and j + 1 < len(toks) \
                    and toks[j + 1].word in _COLOURS:
                continue  # "orange and white cat"
        if j - i == 1 and toks[i].word in _AMBIGUOUS_ADJ and i > 0 and not _punct(toks[i].gap) \
                and toks[i - 1].word in ("bright", "dark", "light", "pale", "and"):
            continue  # "bright orange", "black and orange"
        heads.append((i, j, name))
    return heads


def _names_after_of(toks: list[_Tok], raw: list[tuple[int, int, str | None]], k: int, j: int) -> bool:
    """True if the noun phrase after the "of" at token ``j`` (match ``k`` ends there) is headed by a name:
    the next match starts after only determiners, numbers and adjectives, and is no possessor
    ("a cup of men's coffee": the men are not in the cup)."""
    if k + 1 >= len(raw) or raw[k + 1][2] is None:
        return False
    start, end, _ = raw[k + 1]
    between = toks[j + 1:start]
    if start <= j or any(_punct(t.gap) for t in toks[j + 1:start + 1]) or toks[end - 1].possessive:
        return False
    return all(t.word in _DETERMINERS or t.word in _NUMBERS or _is_adjective(t.word) for t in between)


def _is_adjective(word: str) -> bool:
    return (word in _ADJECTIVES or word in _NUMBERS or word.isdigit() or "-" in word
            or (bool(_ADJ_SUFFIX.match(word)) and word not in _FUNCTION and len(word) > 3))


def _extend_left(toks: list[_Tok], i: int, floor: int) -> int:
    """First token of the noun phrase whose head starts at token ``i`` (not before ``floor``)."""
    start = i
    # adjectives / numerals directly before the head: "Vintage red truck", "two dogs"
    k = i - 1
    while k >= floor and not _punct(toks[k + 1].gap) and not toks[k].possessive:
        w = toks[k].word
        if _is_adjective(w) and w not in _FUNCTION and w not in _DETERMINERS:
            start = k
        elif w in ("and", "&") and start == k + 1 and k - 1 >= floor and toks[k + 1].word in _COLOURS \
                and toks[k - 1].word in _COLOURS:
            start = k  # "black and white cat"
        else:
            break
        k -= 1
    # a determiner within 3 words, nothing but non-function words between: "a sleeping cat"
    k = start - 1
    steps = 0
    while k >= floor and steps < 3 and not _punct(toks[k + 1].gap):
        w = toks[k].word
        if w in _DETERMINERS or (w in _NUMBERS and w not in ("couple", "pair")):
            start = k
            # pre-determiners: "all the", "both of the"
            if k - 1 >= floor and toks[k - 1].word in ("all", "both") and not _punct(toks[k].gap):
                start = k - 1
            break
        if w in _FUNCTION or toks[k].possessive == "p":
            break
        steps += 1
        k -= 1
    # quantity prefix: "a group of people", "a slice of pizza", "lots of birds"
    k = start - 1
    if k - 1 >= floor and toks[k].word == "of" and not _punct(toks[k].gap) and not _punct(toks[start].gap) \
            and (toks[k - 1].word in _QUANTITY or toks[k - 1].word in _CONTAINERS):
        q = k - 1
        start = q
        if q - 1 >= floor and not _punct(toks[q].gap) and (toks[q - 1].word in _DETERMINERS
                                                           or toks[q - 1].word in _NUMBERS
                                                           or _is_adjective(toks[q - 1].word)):
            start = q - 1
            if q - 2 >= floor and toks[q - 1].word not in _DETERMINERS and toks[q - 2].word in _DETERMINERS \
                    and not _punct(toks[q - 1].gap):
                start = q - 2
    return start


def _extend_right(toks: list[_Tok], j: int, ceil: int) -> int:
    """Token end of the phrase whose head ends at token ``j``: "a cup of (hot) coffee" takes
    "of (hot) coffee" — determiners and adjectives, then one noun."""
    if j < ceil and toks[j].word == "of" and not _punct(toks[j].gap) and not toks[j - 1].possessive:
        k = j + 1
        while k < ceil and k - j <= 4 and not _punct(toks[k].gap) and toks[k].word not in _FUNCTION:
            w = toks[k].word
            if w in _DETERMINERS and k > j + 1:
                break
            if toks[k].possessive:
                break  # "a cup of men's coffee": the possessive is not the phrase's noun
            k += 1
            if w not in _DETERMINERS and not (w in _ADJECTIVES or w in _NUMBERS):
                return k  # the noun ends the phrase
    return j


def _rule_mentions(text: str, vocab: Vocabulary) -> list[Mention]:
    toks = _tokens(text)
    heads = _heads(toks, vocab)
    out: list[Mention] = []
    prev_end = 0
    for idx, (i, j, name) in enumerate(heads):
        nxt_start = heads[idx + 1][0] if idx + 1 < len(heads) else len(toks)
        s = _extend_left(toks, i, prev_end)
        e = _extend_right(toks, j, nxt_start)
        last = toks[e - 1]
        end = last.end
        if last.possessive:  # cut the marker as written ("'s"/"’s" = 2, "'"/"’" = 1), not by flag
            end -= 2 if text[end - 2:end].lower() in ("'s", "’s") else 1
        out.append(Mention(toks[s].start, end, name, toks[i].start, toks[j - 1].end))
        prev_end = e
    return out


# ----------------------------------------------------------------------------- spaCy (optional)

_SPACY_MODELS = ("en_core_web_sm", "en_core_web_md", "en_core_web_lg", "en_core_web_trf")


def spacy_available(model: str | None = None) -> bool:
    """True if spaCy and ``model`` (default: any en_core_web_*) are importable. Never downloads."""
    import importlib.util

    if importlib.util.find_spec("spacy") is None:
        return False
    return any(importlib.util.find_spec(m) is not None for m in ([model] if model else _SPACY_MODELS))


@lru_cache(maxsize=2)
def _load_spacy(model: str | None):
    import spacy

    for m in [model] if model else _SPACY_MODELS:
        try:
            return spacy.load(m)
        except OSError:
            continue
    raise RuntimeError("spaCy backend requested but no English model is installed "
                       "(pip install en_core_web_sm from your mirror); the default backend needs none")


def _spacy_mentions(text: str, vocab: Vocabulary, nlp) -> list[Mention]:
    """Rule mentions whose spans are widened to the noun chunk holding their head (when the chunk
    holds no other mention and does not cross a neighbour's span)."""
    base = _rule_mentions(text, vocab)
    chunks = [(c.start_char, c.end_char) for c in nlp(text).noun_chunks]
    out = []
    for k, m in enumerate(base):
        lo = base[k - 1].end if k else 0
        hi = base[k + 1].start if k + 1 < len(base) else len(text)
        for cs, ce in chunks:
            if cs <= m.head_start and m.head_end <= ce and lo <= cs and ce <= hi:
                m = Mention(min(cs, m.start), max(ce, m.end), m.name, m.head_start, m.head_end)
                break
        out.append(m)
    return out


def find_mentions(text: str, vocab: Vocabulary | None = None, backend: str = "rules",
                  nlp=None) -> list[Mention]:
    """Object mentions of ``text`` in caption order (every occurrence; see :func:`mentioned_names`).

    Args:
        text: any caption.
        vocab: defaults to :func:`default_vocabulary`.
        backend: ``"rules"`` (pure Python), ``"spacy"`` (noun-chunk spans; needs spaCy and a
            model, else ``RuntimeError``) or ``"auto"`` (spaCy when available, else rules).
        nlp: a loaded spaCy pipeline (or anything whose call returns a doc with ``noun_chunks``).
    """
    vocab = vocab or default_vocabulary()
    if backend not in ("rules", "spacy", "auto"):
        raise ValueError(f"backend={backend!r}; valid: rules, spacy, auto")
    if backend == "rules" or (backend == "auto" and nlp is None and not spacy_available()):
        return _rule_mentions(text, vocab)
    if nlp is None:
        if not spacy_available():
            raise RuntimeError("backend='spacy' needs spaCy and an English model installed; "
                               "use backend='rules' (the default) otherwise")
        nlp = _load_spacy(None)
    return _spacy_mentions(text, vocab, nlp)


def mentioned_names(text: str, vocab: Vocabulary | None = None) -> list[str]:
    """Distinct canonical names in order of first mention."""
    seen: list[str] = []
    for m in find_mentions(text, vocab):
        if m.name not in seen:
            seen.append(m.name)
    return seen


def first_mentions(mentions: Sequence[Mention]) -> list[Mention]:
    """The first mention of each distinct name, in caption order."""
    seen: set[str] = set()
    out = []
    for m in mentions:
        if m.name not in seen:
            seen.add(m.name)
            out.append(m)
    return out


#: longest caption searched for mentions; longer text is left as it is (counted as ``too_long``)
MAX_CAPTION_CHARS = 1000
_HTML = re.compile(r"<\s*/?\s*[a-zA-Z][^>]*>|&(?:[a-zA-Z]+|#\d+);")


def caption_problem(caption: str) -> str | None:
    """Why a caption is not searched for mentions (a mitigation leaves it unchanged and counts the
    reason), or None: ``empty``, ``too_long`` (> :data:`MAX_CAPTION_CHARS`), ``html`` (tags or
    entities left in the alt-text), ``no_letters`` (emoji, digits, punctuation only), ``not_latin``
    (fewer than half of the letters are ASCII: another script, likely not English), ``all_caps``
    (shouting, often a product title: case tells nothing about the phrase boundaries)."""
    text = caption.strip() if isinstance(caption, str) else ""
    if not text:
        return "empty"
    if len(text) > MAX_CAPTION_CHARS:
        return "too_long"
    if _HTML.search(text):
        return "html"
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return "no_letters"
    if sum(c.isascii() for c in letters) < len(letters) / 2:
        return "not_latin"
    if len(letters) >= 8 and text.upper() == text:
        return "all_caps"
    return None


_POSSESSIVE_AFTER = re.compile(r"['’]")
_POSSESSIVE_BEFORE = re.compile(r"\w['’]s?\s+$", re.IGNORECASE)


def in_possessive(text: str, mention: Mention) -> bool:
    """True if ``mention`` is a possessor ("a woman|'s handbag") or a possessed phrase
    ("a woman's |handbag", "the children's |bicycle"): moving its span alone would move or
    strand the "'s"/"'" and break the caption."""
    return bool(_POSSESSIVE_AFTER.match(text, mention.end) or _POSSESSIVE_BEFORE.search(text[:mention.start]))


def noun_adjective_spans(text: str, vocab: Vocabulary | None = None) -> list[tuple[int, int]]:
    """Character spans of the nouns and adjectives of every object mention, in text order: each
    mention's head words (the matched name) and the adjectives before it ("large brown" of "a
    large brown dog"; no determiners or numbers). The rule-based stand-in for the NOUN/ADJ tags
    that ARO's word-order perturbations use (``eval.word_order``)."""
    spans: list[tuple[int, int]] = []
    for m in find_mentions(text, vocab):
        head_start = m.head_start if m.head_start >= 0 else m.start
        for t in _tokens(text[m.start:head_start]):
            if t.word not in _DETERMINERS and t.word not in _NUMBERS and not t.word.isdigit() and _is_adjective(t.word):
                spans.append((m.start + t.start, m.start + t.end))
        for t in _tokens(text[head_start:m.end if m.head_end < 0 else m.head_end]):
            spans.append((head_start + t.start, head_start + t.end))
    return spans
