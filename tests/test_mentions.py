"""Object mentions in free-form captions (data_prep.mentions): gold set + one test per rule."""
from __future__ import annotations

import pytest

from data_prep.mentions import (
    COCO_CATEGORIES, Mention, Vocabulary, coco_vocabulary, default_vocabulary, find_mentions, first_mentions,
    load_vocabulary, mentioned_names, pluralize, rendered_vocabulary, spacy_available,
)

# (caption, gold distinct names in order of first mention) with the default vocabulary
# (COCO categories + synonyms, plus the rendered objects COCO lacks: plate, hat, shoe, window, ...).
# The gold names what the caption names as an object: modifiers ("bus stop", "laptop bag", "cat
# food"), audiences ("for Men") and collectives that are not people ("happy family" is no
# person word) are not mentions.
GOLD = [
    ('A man riding a wave on top of a surfboard.', ['person', 'surfboard']),
    ('A woman holding an umbrella next to a red fire hydrant.', ['person', 'umbrella', 'fire hydrant']),
    ('Two giraffes standing next to a tall tree in a field.', ['giraffe']),
    ('A cat laying on a laptop keyboard on a desk.', ['cat', 'keyboard', 'dining table']),
    ('A plate with a hot dog, fries and a cup of coffee.', ['plate', 'hot dog', 'cup']),
    ('A teddy bear sitting on a bed next to a pillow.', ['teddy bear', 'bed']),
    ('A bus stopped at a bus stop on a city street.', ['bus']),
    ('A young boy swinging a baseball bat at a ball.', ['person', 'baseball bat', 'sports ball']),
    ('A kitchen with a refrigerator, an oven and a microwave.', ['refrigerator', 'oven', 'microwave']),
    ('Several people are flying kites on the beach.', ['person', 'kite']),
    ('A herd of elephants walking across a dirt road.', ['elephant']),
    ('A person holding a cell phone in front of a TV.', ['person', 'cell phone', 'tv']),
    ('A bowl of broccoli and carrots on a wooden table.', ['bowl', 'broccoli', 'carrot', 'dining table']),
    ('A clock tower rising above the buildings of a town.', ['clock']),
    ('A dog catching a frisbee in a grassy park.', ['dog', 'frisbee']),
    ('A bathroom with a toilet, a sink and a mirror.', ['toilet', 'sink', 'mirror']),
    ('An airplane flying over a city with tall buildings.', ['airplane']),
    ('Sheep grazing in a field near a fence.', ['sheep']),
    ('A man on a motorcycle waiting at a traffic light.', ['person', 'motorcycle', 'traffic light']),
    ('A pizza sitting on top of a pan next to a glass of wine.', ['pizza', 'wine glass']),
    ('A little girl hugging her teddy bear on the couch.', ['person', 'teddy bear', 'couch']),
    ('A train traveling down the train tracks next to a station.', ['train']),
    ('A zebra and a giraffe standing in the grass.', ['zebra', 'giraffe']),
    ('A bunch of bananas hanging next to some apples and oranges.', ['banana', 'apple', 'orange']),
    ('A skier going down a snowy slope on his skis.', ['person', 'skis']),
    ('A laptop, a mouse and a cell phone on an office desk.', ['laptop', 'mouse', 'cell phone', 'dining table']),
    ('The living room has a couch, two chairs and a television.', ['couch', 'chair', 'tv']),
    ('A horse pulling a cart with two men on it.', ['horse', 'person']),
    ('A vase of flowers sitting on a window sill.', ['vase']),
    ('A sandwich and a donut on a white plate.', ['sandwich', 'donut', 'plate']),
    ('A stop sign on the corner of a street with cars parked nearby.', ['stop sign', 'car']),
    ('A cow standing next to a truck on a farm.', ['cow', 'truck']),
    ('A bird perched on top of a park bench.', ['bird', 'bench']),
    ('A pair of scissors and a toothbrush on a counter.', ['scissors', 'toothbrush']),
    ('A boat docked in the harbor near a large ship.', ['boat']),
    ('Kids playing with a soccer ball in a field.', ['person', 'sports ball']),
    ('A person riding a bike past a parked car.', ['person', 'bicycle', 'car']),
    ('Luggage sitting on the floor next to a backpack and a handbag.', ['suitcase', 'backpack', 'handbag']),
    ('A black and white dog lying on a bed with a remote control.', ['dog', 'bed', 'remote']),
    ('A man in a suit and tie standing by a bus.', ['person', 'tie', 'bus']),
    ('A polar bear swimming in the water.', ['bear']),
    ('Slices of pizza on a tray next to a knife and fork.', ['pizza', 'knife', 'fork']),
    ('A tennis player hitting the ball with a tennis racket.', ['person', 'sports ball', 'tennis racket']),
    ('A baby elephant walking behind an adult elephant.', ['elephant']),
    ('A hair dryer and a toothbrush next to the sink.', ['hair drier', 'toothbrush', 'sink']),
    ('Stock photo of a golden retriever puppy playing with a ball', ['dog', 'sports ball']),
    ('Vintage red truck with a surfboard on the roof', ['truck', 'surfboard']),
    ('Woman holding a cup of coffee while reading a book', ['person', 'cup', 'book']),
    ('Cute orange cat sleeping on a laptop', ['cat', 'laptop']),
    ('Leather Backpack for Men, Vintage Laptop Bag', ['backpack']),
    ('Modern grey sofa with two wooden chairs and a coffee table', ['couch', 'chair', 'dining table']),
    ('Portrait of a young man with his dog on the beach at sunset', ['person', 'dog']),
    ('Businessman using a smartphone while sitting on a bench', ['person', 'cell phone', 'bench']),
    ('Ceramic vase with dried flowers on a wooden table', ['vase', 'dining table']),
    ('Horse and rider jumping over a fence at a show', ['horse', 'person']),
    ('The dog that sleeps on the couch belongs to the girl who plays the piano', ['dog', 'couch', 'person']),
    ('A cat which is sitting on a chair looks at a bird', ['cat', 'chair', 'bird']),
    ('Illustration of a girl riding a bicycle with a basket full of apples', ['person', 'bicycle', 'apple']),
    ('Birthday cake with candles and a knife on a plate', ['cake', 'knife', 'plate']),
    ('Mother and daughter baking a cake in the kitchen', ['person', 'cake']),
    ('Yellow school bus parked in front of a school', ['bus']),
    ('Red umbrella and a pair of shoes on a wet street', ['umbrella', 'shoe']),
    ('Silver laptop computer with wireless mouse and keyboard isolated on white', ['laptop', 'mouse', 'keyboard']),
    ('Happy family eating pizza at home', ['pizza']),
    ('Handmade ceramic mug and spoon, rustic kitchen decor', ['cup', 'spoon']),
    ('Photo of a man skateboarding with his skateboard in a skate park', ['person', 'skateboard']),
    ('Snowboarder jumping on a snowboard in the mountains', ['person', 'snowboard']),
    ('Two horses and a dog running in a meadow', ['horse', 'dog']),
    ('Hot dogs with mustard on a paper plate', ['hot dog', 'plate']),
    ('Teddy bears and toy trains in a shop window', ['teddy bear', 'train', 'window']),
    ('Close-up of an apple next to a bottle of water', ['apple', 'bottle']),
    ('Wine glass and bottle on a dining table', ['wine glass', 'bottle', 'dining table']),
    ('Kitten playing with a mouse toy', ['cat']),
    ('Cat food bowl with kibble', ['bowl']),
    ('Parking meter on a sidewalk next to a bicycle', ['parking meter', 'bicycle']),
    ('Man wearing a hat and a tie, holding a suitcase', ['person', 'hat', 'tie', 'suitcase']),
    ('Boy with a kite running towards his father', ['person', 'kite']),
    ('Oranges and bananas in a fruit bowl on the counter', ['orange', 'banana', 'bowl']),
    ('Smartphone, headphones and a cup of tea on a desk, flat lay', ['cell phone', 'cup', 'dining table']),
    ('Dog in a car looking out of the window', ['dog', 'car', 'window']),
    ('A sunset over the ocean', []),
    ('Beautiful landscape with mountains and a lake', []),
    ('A man sitting on a wooden bench in the park with his old dog', ['person', 'bench', 'dog']),
]
# Written after the rules above were tuned, and measured before any further change (1 miss:
# "its calf" of an elephant reads as a cow).
HELD_OUT = [
    ('A woman in a kitchen cutting vegetables with a knife.', ['person', 'knife']),
    ('Three zebras drinking water at a watering hole.', ['zebra']),
    ('An old truck parked beside a barn with a dog sitting in the back.', ['truck', 'dog']),
    ('Person using laptop at cafe table with a latte', ['person', 'laptop', 'dining table']),
    ('Close up of a slice of pizza and a bottle of beer', ['pizza', 'bottle']),
    ('A giraffe bending down to eat leaves from a tree.', ['giraffe']),
    ('Brown leather handbag with gold chain strap', ['handbag']),
    ('A man is holding a tennis racket on a tennis court.', ['person', 'tennis racket']),
    ('Little boy sleeping with his puppy on the sofa', ['person', 'dog', 'couch']),
    ('Two surfers carrying their surfboards along the beach', ['person', 'surfboard']),
    ('Fresh carrots, broccoli and an orange on a chopping board', ['carrot', 'broccoli', 'orange']),
    ('The motorcycle is parked next to a blue car and a bicycle.', ['motorcycle', 'car', 'bicycle']),
    ('A bed with a suitcase on it and a chair in the corner', ['bed', 'suitcase', 'chair']),
    ('Blue ceramic bowl with a wooden spoon, isolated on white background', ['bowl', 'spoon']),
    ('A pigeon standing on a stop sign', ['bird', 'stop sign']),
    ('Children playing frisbee in the park while a dog watches', ['person', 'frisbee', 'dog']),
    ('Airplane taking off from the airport runway', ['airplane']),
    ('A man talking on his phone while riding a horse', ['person', 'cell phone', 'horse']),
    ('Toaster and microwave on a kitchen counter', ['toaster', 'microwave']),
    ('A cake decorated with strawberries next to a cup of tea', ['cake', 'cup']),
    ('A sheep dog herding sheep on a hill', ['dog', 'sheep']),
    ('Boats on the river under a bridge at night', ['boat']),
    ('A young woman with a backpack waiting for the train', ['person', 'backpack', 'train']),
    ('Elephant and its calf walking in the savanna', ['elephant']),
]


def _scores(items):
    tp = fp = fn = exact = 0
    misses = []
    for caption, gold in items:
        pred = mentioned_names(caption)
        tp += len(set(pred) & set(gold))
        fp += len(set(pred) - set(gold))
        fn += len(set(gold) - set(pred))
        exact += pred == gold
        if pred != gold:
            misses.append((caption, pred, gold))
    return tp / (tp + fp), tp / (tp + fn), exact / len(items), misses


def test_gold_set_precision_recall_order():
    items = GOLD + HELD_OUT
    assert len(items) >= 60
    precision, recall, order_exact, misses = _scores(items)
    print(f"\nmentions on {len(items)} captions: precision {precision:.3f} recall {recall:.3f} "
          f"order exact {order_exact:.3f}; misses: {misses}")
    assert precision >= 0.95 and recall >= 0.95 and order_exact >= 0.95, misses


def test_held_out_set_alone():
    precision, recall, order_exact, misses = _scores(HELD_OUT)
    assert precision >= 0.95 and recall >= 0.95 and order_exact >= 0.9, misses


def spans(caption, vocab=None):
    return [(caption[m.start:m.end], m.name) for m in find_mentions(caption, vocab)]


# ----------------------------------------------------------------------------- spans


@pytest.mark.parametrize("caption, expected", [
    ("a red car and two dogs", [("a red car", "car"), ("two dogs", "dog")]),
    ("Vintage red truck with a surfboard on the roof", [("Vintage red truck", "truck"), ("a surfboard", "surfboard")]),
    ("Woman holding a cup of coffee while reading a book",
     [("Woman", "person"), ("a cup of coffee", "cup"), ("a book", "book")]),
    ("A group of people next to a bunch of bananas", [("A group of people", "person"), ("a bunch of bananas", "banana")]),
    ("a black and white cat on a sofa", [("a black and white cat", "cat"), ("a sofa", "couch")]),
    ("all the sleeping cats", [("all the sleeping cats", "cat")]),
    ("a dog's bowl", [("a dog", "dog"), ("bowl", "bowl")]),
    ("Stock photo of cute puppies", [("cute puppies", "dog")]),
])
def test_span_covers_the_noun_phrase(caption, expected):
    assert spans(caption) == expected


def test_spans_are_ordered_disjoint_and_name_the_head():
    for caption, _ in GOLD + HELD_OUT:
        ms = find_mentions(caption)
        for a, b in zip(ms, ms[1:]):
            assert a.end <= b.start
        for m in ms:
            assert m.start <= m.head_start < m.head_end <= m.end
            assert caption[m.start:m.end] == caption[m.start:m.end].strip()


def test_every_occurrence_is_a_mention_and_first_mentions_dedupe():
    ms = find_mentions("A dog chasing a cat and another dog")
    assert [m.name for m in ms] == ["dog", "cat", "dog"]
    assert [m.name for m in first_mentions(ms)] == ["dog", "cat"]
    assert mentioned_names("A dog chasing a cat and another dog") == ["dog", "cat"]


# ----------------------------------------------------------------------------- rules


@pytest.mark.parametrize("caption, names", [
    ("A hot dog on a plate", ["hot dog", "plate"]),
    ("a teddy bear and a bear", ["teddy bear", "bear"]),
    ("a cell phone next to a wine glass", ["cell phone", "wine glass"]),
    ("a fire hydrant", ["fire hydrant"]),
    ("hot-dogs and hotdogs", ["hot dog"]),
])
def test_multi_word_names_win_over_parts(caption, names):
    assert mentioned_names(caption) == names


def test_case_insensitive_on_word_boundaries():
    assert mentioned_names("A DOG and a Cat") == ["dog", "cat"]
    assert mentioned_names("catalogue of dogma, a carpet, scattered bust") == []
    assert mentioned_names("dog-friendly hotel") == []  # hyphenated compound is one word


@pytest.mark.parametrize("caption, names", [
    ("people, men and women", ["person"]),
    ("three mice and two knives", ["mouse", "knife"]),
    ("sheep and buses and benches", ["sheep", "bus", "bench"]),
    ("puppies, ponies and bikes", ["dog", "horse", "bicycle"]),
    ("two televisions and sofas", ["tv", "couch"]),
    ("planes and jets", ["airplane"]),
])
def test_plurals_and_synonyms(caption, names):
    assert mentioned_names(caption) == names


def test_pluralize():
    assert pluralize("dog") == ("dogs",)
    assert pluralize("bus") == ("buses", "busses")
    assert pluralize("cherry") == ("cherries",)
    assert pluralize("knife") == ("knives",)
    assert pluralize("hot dog") == ("hot dogs",)
    assert pluralize("person") == ("people", "persons")


@pytest.mark.parametrize("caption, names", [
    ("a bus stop", []),
    ("waiting at the bus stop for the bus", ["bus"]),
    ("a train station", []),
    ("dog food and a cat toy", []),
    ("a baby elephant", ["elephant"]),
    ("an apple laptop", ["laptop"]),
    ("pizza boxes", []),
])
def test_a_name_inside_another_phrase_is_not_an_object(caption, names):
    assert mentioned_names(caption) == names


def test_verbs_are_not_compounds():
    assert mentioned_names("a dog stands next to a man") == ["dog", "person"]
    assert mentioned_names("two men stand by a bus") == ["person", "bus"]
    assert mentioned_names("a man skis down the hill") == ["person"]


def test_clock_tower_is_configurable():
    assert mentioned_names("a clock tower", coco_vocabulary()) == ["clock"]
    assert mentioned_names("a clock tower", coco_vocabulary(clock_tower_is_clock=False)) == []
    assert mentioned_names("a clock on a clock tower", coco_vocabulary(clock_tower_is_clock=False)) == ["clock"]


def test_colour_and_adjective_readings():
    assert mentioned_names("an orange cat") == ["cat"]
    assert mentioned_names("an orange and white cat") == ["cat"]
    assert mentioned_names("an orange on a table") == ["orange", "dining table"]
    assert mentioned_names("a remote island") == []


def test_possessives():
    assert mentioned_names("Women's shoes") == ["shoe"]
    assert mentioned_names("a woman's hat") == ["person", "hat"]
    assert mentioned_names("Backpack for Men") == ["backpack"]


@pytest.mark.parametrize("caption, expected", [
    # a possessive word ends the "of" phrase instead of being its noun, and its marker is never cut
    ("a cup of men's coffee and a laptop", [("a cup", "cup"), ("a laptop", "laptop")]),
    ("a bowl of kids' cereal beside a spoon", [("a bowl", "bowl"), ("a spoon", "spoon")]),
    ("a cup of children's juice", [("a cup", "cup")]),
    # a possessor's span stops before the marker, however it is written
    ("A woman's handbag on a chair", [("A woman", "person"), ("handbag", "handbag"), ("a chair", "chair")]),
    ("a dog’s bowl", [("a dog", "dog"), ("bowl", "bowl")]),
    ("the dogs' bowl and a cat", [("bowl", "bowl"), ("a cat", "cat")]),
])
def test_possessive_spans(caption, expected):
    assert spans(caption) == expected


def test_in_possessive():
    from data_prep.mentions import in_possessive

    for caption, flags in [
        ("A woman's handbag on a chair", [True, True, False]),
        ("a cup of men's coffee and a laptop", [False, False]),
        ("the children's bicycle and a car", [True, False]),
        ("a dog’s bowl", [True, True]),
    ]:
        assert [in_possessive(caption, m) for m in find_mentions(caption)] == flags, caption


def test_quantifier_nouns_are_not_people():
    assert mentioned_names("a couple of dogs") == ["dog"]
    assert mentioned_names("a couple walking a dog") == ["person", "dog"]


# ----------------------------------------------------------------------------- vocabularies


def test_coco_vocabulary_covers_the_80_categories():
    vocab = coco_vocabulary()
    assert len(COCO_CATEGORIES) == 80
    assert set(vocab.names) == set(COCO_CATEGORIES)
    for name in COCO_CATEGORIES:
        assert mentioned_names(f"a photo of a {name}", vocab) == [name], name


def test_rendered_vocabulary_uses_rendered_names():
    from data_prep.vocab import OBJECTS

    vocab = rendered_vocabulary()
    assert set(vocab.names) == set(OBJECTS)
    assert mentioned_names("a man on skis next to a door", vocab) == ["person", "ski", "door"]
    assert mentioned_names("a man on skis next to a door") == ["person", "skis", "door"]  # default: COCO name


def test_default_vocabulary_adds_rendered_extras():
    names = set(default_vocabulary().names)
    assert set(COCO_CATEGORIES) <= names and {"plate", "hat", "shoe", "window", "axe"} <= names
    assert "ski" not in names


def test_user_tsv(tmp_path):
    f = tmp_path / "vocab.tsv"
    f.write_text("# name<TAB>synonyms\nguitar\tacoustic guitar, ukulele\nlamp\tlampshade\tfloor lamp\n"
                 "-\tguitar pick\n\n", encoding="utf-8")
    vocab = Vocabulary.from_tsv(f)
    assert vocab.names == ["guitar", "lamp"]
    assert mentioned_names("Two ukuleles and an acoustic guitar next to a floor lamp", vocab) == ["guitar", "lamp"]
    assert mentioned_names("a guitar pick", vocab) == []
    assert load_vocabulary(f).names == ["guitar", "lamp"]
    merged = vocab.merged(coco_vocabulary())
    assert mentioned_names("a dog with a guitar", merged) == ["dog", "guitar"]
    bad = tmp_path / "bad.tsv"
    bad.write_text("\tsynonym\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.tsv:1"):
        Vocabulary.from_tsv(bad)
    with pytest.raises(ValueError, match="neither open, default"):
        load_vocabulary(tmp_path / "missing.tsv")


def test_canonical():
    assert default_vocabulary().canonical("dogs") == "dog"
    assert default_vocabulary().canonical("motorbike") == "motorcycle"
    assert default_vocabulary().canonical("zeppelin") == "zeppelin"


# ----------------------------------------------------------------------------- spaCy backend


class _Chunk:
    def __init__(self, start, end):
        self.start_char, self.end_char = start, end


class _FakeNLP:
    """Stands in for a spaCy pipeline: noun chunks given by hand."""

    def __init__(self, chunks):
        self.chunks = chunks

    def __call__(self, text):
        doc = type("Doc", (), {})()
        doc.noun_chunks = [_Chunk(text.index(c), text.index(c) + len(c)) for c in self.chunks]
        return doc


def test_spacy_backend_widens_spans_to_noun_chunks():
    caption = "Labradoodle dog near the car"
    assert spans(caption) == [("dog", "dog"), ("the car", "car")]  # rules know no breed names
    nlp = _FakeNLP(["Labradoodle dog", "the car"])
    ms = find_mentions(caption, backend="spacy", nlp=nlp)
    assert [(caption[m.start:m.end], m.name) for m in ms] == [("Labradoodle dog", "dog"), ("the car", "car")]
    # a chunk that holds two mentions is not used (spans must stay disjoint)
    ms = find_mentions("a dog and a cat", backend="spacy", nlp=_FakeNLP(["a dog and a cat"]))
    assert [(m.start, m.end) for m in ms] == [(0, 5), (10, 15)]


def test_spacy_backend_is_never_required():
    assert find_mentions("a dog", backend="auto")[0].name == "dog"
    if not spacy_available():
        with pytest.raises(RuntimeError, match="rules"):
            find_mentions("a dog", backend="spacy")
    with pytest.raises(ValueError, match="backend"):
        find_mentions("a dog", backend="nltk")


def test_mention_is_a_value():
    assert Mention(0, 5, "dog", 2, 5) == find_mentions("a dog")[0]
