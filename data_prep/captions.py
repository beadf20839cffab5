"""Caption templates. Names are always joined in the order given (mention order = list order)."""
from __future__ import annotations

from collections.abc import Sequence


def article(name: str) -> str:
    """``"a dog"`` / ``"an apple"``."""
    return ("an " if name[:1].lower() in "aeiou" else "a ") + name


def _join(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


#: template id -> format string; ``{list}`` = "a dog, a pizza and a car",
#: ``{bare}`` = "dog, pizza and car", ``{chain}`` = "a dog next to a pizza and a car".
TEMPLATES: dict[str, str] = {
    "photo": "a photo of {list}",
    "picture": "a picture showing {list}",
    "image_with": "an image with {list}",
    "there_is": "there is {list}",
    "bare": "{bare}",
    "next_to": "{chain}",
    "and_chain": "{and_chain}",
}


#: templates the rendered training corpus never uses by default, so every order-bias probe has a
#: held-out version: the paper's bare "A and B and C" form and a natural sentence ("there is ...").
#: The probes score them next to "photo", which the corpus does use (in-distribution).
HELD_OUT_TEMPLATES: tuple[str, ...] = ("and_chain", "there_is")


def training_templates(held_out: Sequence[str] = HELD_OUT_TEMPLATES) -> list[str]:
    """Template ids a corpus draws from: :data:`TEMPLATES` minus ``held_out`` (order kept).

    Raises ``ValueError`` naming an unknown id, or when nothing would be left to draw from.
    """
    unknown = [t for t in held_out if t not in TEMPLATES]
    if unknown:
        raise ValueError(f"unknown held-out caption template(s) {unknown} (valid: {', '.join(TEMPLATES)})")
    left = [t for t in TEMPLATES if t not in held_out]
    if not left:
        raise ValueError(f"holding out every caption template ({', '.join(held_out)}) leaves none to train on")
    return left


def caption_bare(names: list[str]) -> str:
    """The paper's form: ``"dog and pizza and car"``."""
    return " and ".join(names)


def make_caption(names: list[str], template: str) -> str:
    """Caption naming ``names`` in the given order with template id ``template``."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown caption template {template!r}; valid: {', '.join(TEMPLATES)}")
    if not names:
        raise ValueError("make_caption needs at least one object name")
    arts = [article(n) for n in names]
    chain = arts[0] if len(arts) == 1 else f"{arts[0]} next to {_join(arts[1:])}"
    return TEMPLATES[template].format(
        list=_join(arts), bare=_join(list(names)), chain=chain, and_chain=caption_bare(list(names))
    )
